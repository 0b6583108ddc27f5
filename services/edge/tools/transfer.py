"""Handing the caller over (the `transfer` built-in) and ending the call from the agent's side.

WebSocket: the client gets a `transfer` event and connects the caller itself. Twilio: the live
call is updated through Twilio's REST API with TwiML that dials the target, which also ends the
media stream. LiveKit: the room's phone (SIP) participant is transferred by the server's
TransferSIPParticipant API; in a room without one the tool answers the model with an error.
Transports that transfer by themselves offer `transfer_problem()` and `transfer_caller(target)`.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

from services.edge.config import TwilioConfig
from services.edge.tools.runners import ToolError
from services.edge.transport import Transport


class CallEnded(Exception):
    """The agent ended the call (`end_call`, or after a transfer): close 1000 with `reason`."""

    def __init__(self, reason: str, target: str = ""):
        super().__init__(reason)
        self.reason, self.target = reason, target


def transfer_twiml(target: str) -> str:
    """TwiML that dials `target` (a phone number, or a SIP URI)."""
    if target.startswith("sip:"):
        return f"<Response><Dial><Sip>{escape(target)}</Sip></Dial></Response>"
    return f"<Response><Dial>{escape(target)}</Dial></Response>"


def check_transfer(transport: Transport, twilio: TwilioConfig) -> None:
    """ToolError when this line cannot transfer (asked while the tool runs, so the model hears it)."""
    if getattr(transport, "call_sid", None) is not None:
        if not (transport.call_sid and transport.account_sid and os.environ.get(twilio.auth_token_env)):
            raise ToolError("transfer is not available: the phone line lacks its Twilio call or credentials")
        return
    own = getattr(transport, "transfer_problem", None)
    if own is not None:
        problem = own()
        if problem:
            raise ToolError(problem)
        return
    if not getattr(transport, "can_transfer", False):
        raise ToolError("transfer is not available on this line")


async def transfer(transport: Transport, target: str, twilio: TwilioConfig) -> None:
    """Hand the caller to `target` (after the `transfer` event went out)."""
    if hasattr(transport, "transfer_caller"):
        await transport.transfer_caller(target)
        return
    if getattr(transport, "call_sid", None) is None:
        return  # WebSocket: the event is the transfer
    import httpx

    url = (f"{twilio.api_base_url.rstrip('/')}/2010-04-01/Accounts/{transport.account_sid}/Calls/"
           f"{transport.call_sid}.json")
    auth = (transport.account_sid, os.environ.get(twilio.auth_token_env, ""))
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(url, data={"Twiml": transfer_twiml(target)}, auth=auth)
    if response.status_code >= 300:
        raise RuntimeError(f"Twilio refused the transfer: HTTP {response.status_code} {response.text[:200]}")
