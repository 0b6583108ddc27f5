"""The edge's Twilio ingress: the incoming-call webhook, and the signature check on Media Streams.

Point a Twilio number's "A call comes in" webhook (HTTP POST) at `<public_url>/v1/twilio/voice`.
Twilio posts the call's details, signed with the account's auth token; the edge answers with TwiML
that connects the call to `/v1/twilio/media` over wss, carrying a fresh short-lived edge token
whose subject is `twilio:<CallSid>`, so it opens a stream for that call only:

    <Response><Connect><Stream url="wss://voice.example.com/v1/twilio/media">
      <Parameter name="token" value="<edge token>"/>
    </Stream></Connect></Response>

That token is single-use: the first stream it opens spends it, and another stream with it is
closed 4401. When the edge is full (`max_conversations`) the webhook turns the call away at once
(`<Reject reason="busy"/>`, or `twilio.busy_message` spoken) instead of connecting a stream that
would then be refused. `twilio.status_callback_url` goes into `<Stream statusCallback>`, and
`POST /v1/twilio/status` (signed like the webhook) counts Twilio's call and stream statuses.

Twilio then opens the stream with a signed WebSocket upgrade. An upgrade whose signature is
missing or wrong is refused before it is accepted: the ASGI server answers HTTP 403 and nothing is
started for it (no socket, no task, no conversation). A close code after accepting would tell a
forger no more, but would first hand it an open socket.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from urllib.parse import parse_qsl
from xml.etree import ElementTree

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from services.common import metrics
from services.edge.auth import AuthError, SingleUse, mint_token
from services.edge.config import TwilioConfig
from services.edge.transport import ProtocolError, Transport
from services.edge.transports.twilio import CALL_SUBJECT_PREFIX, TOKEN_PARAMETER, call_subject
from services.edge.twilio_auth import SIGNATURE_HEADER, public_base_url, signature_is_valid, url_under

MEDIA_PATH = "/v1/twilio/media"
# Twilio's voice webhook posts a few dozen short fields; anything near this is not Twilio.
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 500
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Twilio's call statuses and Media Streams events (the only values counted).
KNOWN_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed",
                            "no-answer", "canceled", "stream-started", "stream-stopped", "stream-error"})
POLICY_VIOLATION = 1008  # the close code sent before accept; the server turns it into HTTP 403

logger = logging.getLogger("ray.serve")


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _twiml(response: ElementTree.Element) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str], status_callback: str = "") -> str:
    """TwiML connecting the call to a bidirectional Media Stream at `stream_url` (attributes escaped),
    with Twilio posting the stream's status to `status_callback` when one is given."""
    response = ElementTree.Element("Response")
    callback = {"statusCallback": status_callback, "statusCallbackMethod": "POST"} if status_callback else {}
    stream = ElementTree.SubElement(ElementTree.SubElement(response, "Connect"), "Stream", url=stream_url, **callback)
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return _twiml(response)


def busy_twiml(message: str = "") -> str:
    """TwiML turning a call away: a busy signal, or `message` spoken and then a hang-up."""
    response = ElementTree.Element("Response")
    if message:
        ElementTree.SubElement(response, "Say").text = message
        ElementTree.SubElement(response, "Hangup")
    else:
        ElementTree.SubElement(response, "Reject", reason="busy")
    return _twiml(response)


class TwilioIngress:
    """Checks Twilio's signatures for the edge's Twilio routes and answers the voice webhook."""

    def __init__(self, config: TwilioConfig, edge_secret: str, auth_token: str):
        if config.require_signature and not auth_token:
            raise RuntimeError(
                f"twilio.require_signature is set but ${config.auth_token_env} is empty: put the Twilio "
                "account's auth token there (the serve config's runtime_env or the cluster's environment)")
        self.config = config
        self.edge_secret = edge_secret
        self.auth_token = auth_token
        # Unset: checked whenever the auth token is there to check with.
        self.media_needs_signature = bool(auth_token) if config.require_signature is None else config.require_signature
        self.used_tokens = SingleUse()  # call tokens that have opened their stream
        if auth_token and not self.media_needs_signature:
            logger.warning("twilio.require_signature is false: Media Streams upgrades are not checked "
                           "for Twilio's signature (the edge token still is)")

    @classmethod
    def from_env(cls, config: TwilioConfig, edge_secret: str) -> TwilioIngress:
        return cls(config, edge_secret, os.environ.get(config.auth_token_env, ""))

    @property
    def enabled(self) -> bool:
        """Whether Twilio is configured (its auth token is set): the voice webhook is served."""
        return bool(self.auth_token)

    def _base_url(self, connection: Request | WebSocket) -> str:
        return public_base_url(self.config.public_url, connection.headers, str(connection.url))

    async def admit_media(self, websocket: WebSocket) -> bool:
        """Call before accepting a Media Streams upgrade. False: it was refused (HTTP 403), do nothing more."""
        if not self.media_needs_signature:
            return True
        url = url_under(self._base_url(websocket), websocket.url.path, websocket.url.query, websocket=True)
        if signature_is_valid(self.auth_token, url, (), websocket.headers.get(SIGNATURE_HEADER)):
            return True
        logger.warning("refused a Twilio media stream: %s X-Twilio-Signature for %s",
                       "wrong" if websocket.headers.get(SIGNATURE_HEADER) else "no", url)
        await websocket.close(code=POLICY_VIOLATION)
        return False

    def admit_stream(self, transport: Transport) -> None:
        """Spend a call token on its first stream (ProtocolError 4401 on a second one). Tokens not
        minted for a Twilio call (a bridge's own) are left as they are."""
        subject = transport.claims.get("sub")
        if isinstance(subject, str) and subject.startswith(CALL_SUBJECT_PREFIX):
            try:
                self.used_tokens.spend(transport.claims)
            except AuthError as error:
                raise ProtocolError(str(error), 4401) from None

    async def _signed_form(self, request: Request, base: str) -> dict[str, str]:
        """The form of a POST Twilio signed (_BadRequest 403 unsigned or wrong, 4xx malformed)."""
        if not request.headers.get(SIGNATURE_HEADER):
            raise _BadRequest(403, "the request has no X-Twilio-Signature")
        params = await _read_form(request)
        url = url_under(base, request.url.path, request.url.query)
        if not signature_is_valid(self.auth_token, url, params, request.headers.get(SIGNATURE_HEADER)):
            raise _BadRequest(403, "the X-Twilio-Signature does not match the request")
        return dict(params)

    async def voice(self, request: Request, full: bool = False) -> Response:
        """Twilio's incoming-call webhook: TwiML connecting the call to the edge's media stream, or
        turning it away when the edge is `full`."""
        if not self.enabled:
            return JSONResponse({"error": "Twilio is not configured on this edge"}, 404)
        base = self._base_url(request)
        try:
            call_sid = (await self._signed_form(request, base)).get("CallSid", "")
            if not call_sid:
                raise _BadRequest(400, "the webhook has no CallSid")
        except _BadRequest as error:
            if error.status == 403:
                logger.warning("refused a Twilio voice webhook: %s", error)
            return JSONResponse({"error": str(error)}, error.status)
        if full:
            logger.info("Twilio call %s turned away: the edge is at its conversation limit", call_sid)
            metrics.record_twilio_call("rejected_busy")
            return Response(busy_twiml(self.config.busy_message), media_type="application/xml")
        token = mint_token(self.edge_secret, ttl_s=self.config.stream_token_ttl_s, subject=call_subject(call_sid))
        twiml = connect_stream_twiml(url_under(base, MEDIA_PATH, websocket=True), {TOKEN_PARAMETER: token},
                                     self.config.status_callback_url)
        return Response(twiml, media_type="application/xml")

    async def status(self, request: Request) -> Response:
        """Twilio's status callbacks (a call's `CallStatus`, a stream's `StreamEvent`): counted by
        status in ray_parley_twilio_calls_total and logged with the call's sid, nothing else kept."""
        if not self.enabled:
            return JSONResponse({"error": "Twilio is not configured on this edge"}, 404)
        try:
            form = await self._signed_form(request, self._base_url(request))
        except _BadRequest as error:
            return JSONResponse({"error": str(error)}, error.status)
        status = form.get("CallStatus") or form.get("StreamEvent") or ""
        if status not in KNOWN_STATUSES:  # a label must stay low-cardinality
            return JSONResponse({"error": "the callback has no known CallStatus or StreamEvent"}, 400)
        metrics.record_twilio_call(status)
        logger.info("Twilio call %s: %s%s", form.get("CallSid", "?"), status,
                    f" ({form['StreamError']})" if form.get("StreamError") else "")
        return Response(status_code=204)


async def _read_form(request: Request) -> list[tuple[str, str]]:
    """The form fields of a urlencoded POST, blank values kept (Twilio signs them too)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise _BadRequest(415, f"expected {FORM_CONTENT_TYPE}, got {content_type or 'no content type'}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _BadRequest(413, f"the form is over {MAX_FORM_BYTES} bytes")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as error:
        raise _BadRequest(400, f"the form cannot be parsed: {error}") from None
