"""Tool declarations (config and token), the webhook signature, and the Twilio transfer against
a local stand-in of Twilio's REST API."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from pydantic import ValidationError

from services.common.signing import sign, verify
from services.edge.config import EdgeConfig, PersonaConfig, TwilioConfig
from services.edge.persona import persona_for
from services.edge.tools.runners import ToolContext
from services.edge.tools.toolset import ToolSet
from services.edge.tools.transfer import check_transfer, transfer, transfer_twiml
from services.edge.transport import ProtocolError
from services.edge.transports.twilio import TwilioTransport

HOOK = {"name": "lookup", "runner": {"kind": "webhook", "url": "https://tools.example.com/lookup"}}


def test_declarations_are_checked_once():
    persona = PersonaConfig(tools=[{"name": "end_call"}, {"name": "transfer", "options": {"target": "+15550100"}}])
    assert persona.tools[1].runner.target == "+15550100" and "Transfer" in persona.tools[1].description
    with pytest.raises(ValidationError, match="unique"):
        PersonaConfig(tools=[HOOK, HOOK])
    with pytest.raises(ValidationError, match="not a valid JSON schema"):
        PersonaConfig(tools=[{**HOOK, "parameters": {"type": "object", "required": 3}}])
    with pytest.raises(ValidationError, match="http"):
        PersonaConfig(tools=[{"name": "x", "runner": {"kind": "webhook", "url": "file:///etc/passwd"}}])
    with pytest.raises(ValidationError, match="allowed_hosts"):
        EdgeConfig(persona={"tools": [HOOK]}, tools={"allowed_hosts": ["other.example.com"]})


def test_a_token_may_declare_allowed_webhooks_but_never_python():
    base = PersonaConfig()
    persona = persona_for(base, {"persona": {"tools": [HOOK]}}, allowed_hosts=["tools.example.com"])
    assert persona.tools[0].name == "lookup"
    with pytest.raises(ProtocolError, match="allowed_hosts"):
        persona_for(base, {"persona": {"tools": [HOOK]}})
    python = {"name": "p", "runner": {"kind": "python", "path": "os:system"}}
    with pytest.raises(ProtocolError, match="Python"):
        persona_for(base, {"persona": {"tools": [python]}}, allowed_hosts=["tools.example.com"])


def test_the_signature_binds_body_and_time():
    now = str(int(time.time()))
    signature = sign(b"s3cret", now, b'{"a": 1}')
    assert verify(b"s3cret", now, b'{"a": 1}', signature)
    assert not verify(b"s3cret", now, b'{"a": 2}', signature)
    assert not verify(b"other", now, b'{"a": 1}', signature)
    old = str(int(time.time()) - 3600)
    assert not verify(b"s3cret", old, b'{"a": 1}', sign(b"s3cret", old, b'{"a": 1}'))  # a replay


async def test_a_webhook_without_its_secret_is_a_tool_error(monkeypatch):
    monkeypatch.delenv("PARLEY_TOOLS_SECRET", raising=False)
    tools = ToolSet(PersonaConfig(tools=[HOOK]).tools, EdgeConfig().tools)
    result = await tools.run("lookup", "{}", "", ToolContext("c", "t"))
    assert result.error and "PARLEY_TOOLS_SECRET" in result.content


class TwilioApi:
    """Twilio's call-update endpoint, as a stand-in: records the form and the basic auth."""

    def __init__(self):
        self.updates = []

    async def __aenter__(self) -> TwilioApi:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self.update)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def update(self, request: web.Request) -> web.Response:
        auth = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
        self.updates.append((request.match_info["account"], request.match_info["call"], auth,
                             parse_qs(await request.text())["Twiml"][0]))
        return web.json_response({"sid": request.match_info["call"], "status": "in-progress"})


async def test_transfer_on_twilio_updates_the_live_call_with_a_dial(monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "twilio-token")
    line = TwilioTransport(None, stream_sid="MZ1", call_sid="CA123", account_sid="AC9")
    async with TwilioApi() as api:
        config = TwilioConfig(api_base_url=api.url)
        check_transfer(line, config)
        await transfer(line, "+15550100", config)
    assert api.updates == [("AC9", "CA123", "AC9:twilio-token", "<Response><Dial>+15550100</Dial></Response>")]
    assert transfer_twiml("sip:desk@pbx.example.com?x=<1>") == \
        "<Response><Dial><Sip>sip:desk@pbx.example.com?x=&lt;1&gt;</Sip></Dial></Response>"
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    with pytest.raises(Exception, match="credentials"):
        check_transfer(line, config)
