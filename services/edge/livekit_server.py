"""Talking to the LiveKit server: credentials, the agent's access tokens, webhook signatures, and
the server API calls the edge makes (livekit-api's Twirp client): the room's explicit agent
dispatches, and SIP transfers for the `transfer` tool.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any

from livekit import api
from livekit.protocol import webhook

from services.edge.config import LiveKitConfig

AGENT_TOKEN_TTL = datetime.timedelta(hours=6)  # outlives any call; the SDK refreshes nothing itself
API_TIMEOUT_S = 10.0


class WebhookError(Exception):
    """A webhook whose signature or body does not verify."""


@dataclass(frozen=True)
class LiveKitCredentials:
    """The server's URL and the API key pair (from the environment, never from config)."""

    url: str
    api_key: str
    api_secret: str
    api_url: str = ""  # the server's HTTP API; "" = `url` with http(s) for ws(s)

    @classmethod
    def from_env(cls, config: LiveKitConfig) -> LiveKitCredentials:
        key, secret = os.environ.get(config.api_key_env, ""), os.environ.get(config.api_secret_env, "")
        if not key or len(secret.encode()) < 32:
            raise RuntimeError(f"LiveKit is enabled but ${config.api_key_env} is empty or ${config.api_secret_env} "
                               "is shorter than 32 bytes (set them in the runtime_env or from a secret store)")
        return cls(os.environ.get(config.url_env) or config.url, key, secret, config.api_url)

    @property
    def http_url(self) -> str:
        if self.api_url:
            return self.api_url
        return self.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)

    def client(self) -> api.LiveKitAPI:
        """A server API client (use as `async with`); no region failover: it is the operator's server."""
        import aiohttp

        return api.LiveKitAPI(self.http_url, self.api_key, self.api_secret,
                              timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S), failover=False)


def agent_token(credentials: LiveKitCredentials, config: LiveKitConfig, room: str) -> str:
    """An access token for the agent participant in one room, minted by the edge itself (it may set
    its own attributes: `lk.agent.state`)."""
    grants = api.VideoGrants(room_join=True, room=room, agent=True, can_publish=True, can_subscribe=True,
                             can_publish_data=True, can_update_own_metadata=True)
    return (api.AccessToken(credentials.api_key, credentials.api_secret)
            .with_identity(config.agent_identity).with_name(config.agent_name).with_kind("agent")
            .with_grants(grants).with_ttl(AGENT_TOKEN_TTL).to_jwt())


def verify_webhook(credentials: LiveKitCredentials, body: bytes, authorization: str) -> webhook.WebhookEvent:
    """The webhook's event, if its token is signed with our API key/secret and hashes this body."""
    receiver = api.WebhookReceiver(api.TokenVerifier(credentials.api_key, credentials.api_secret))
    try:
        return receiver.receive(body.decode(), authorization.removeprefix("Bearer ").strip())
    except Exception as error:  # noqa: BLE001 - jwt, hash and JSON failures all mean "not from LiveKit"
        raise WebhookError(f"webhook rejected: {error}") from None


async def agent_dispatch(credentials: LiveKitCredentials, room: str, agent_name: str) -> dict[str, Any] | None:
    """The room's explicit dispatch of `agent_name` (a RoomAgentDispatch in a participant's token,
    or AgentDispatchService.CreateDispatch), as call claims: its metadata when that is a JSON
    object (`persona`, `mode` as in an edge token), else {}. None when there is none."""
    async with credentials.client() as server:
        dispatches = await server.agent_dispatch.list_dispatch(room)
    for dispatch in dispatches:
        if dispatch.agent_name == agent_name:
            try:
                metadata = json.loads(dispatch.metadata) if dispatch.metadata else {}
            except (ValueError, RecursionError):
                metadata = {}
            claims = metadata if isinstance(metadata, dict) else {}
            return {key: claims[key] for key in ("persona", "mode") if key in claims}
    return None


async def sip_transfer(credentials: LiveKitCredentials, room: str, identity: str, target: str) -> None:
    """Hand a SIP participant to `target` (a phone number or SIP URI): TransferSIPParticipant."""
    from livekit.protocol.sip import SIPTransferStatus, TransferSIPParticipantRequest

    if not target.startswith(("sip:", "tel:")):
        target = f"tel:{target}"  # LiveKit takes a URI: a bare phone number is a tel: one
    async with credentials.client() as server:
        answer = await server.sip.transfer_sip_participant(TransferSIPParticipantRequest(
            room_name=room, participant_identity=identity, transfer_to=target))
    if answer.status == SIPTransferStatus.STS_TRANSFER_FAILED:
        raise RuntimeError(f"LiveKit could not transfer the caller (reason {answer.reason})")
