"""Typed input over the WebSocket protocol: `user_text` is a user turn and interrupts like speech."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.edge.cascade import CascadeCall
from services.edge.transport import ProtocolError
from services.edge.transports.websocket import WebSocketTransport
from tests.unit.edge.fakes import RATE, Model, Recognizer, Stages, Synthesizer, edge_config


class Socket:
    """The ASGI side of an accepted WebSocket: what the client sends, and what it received."""

    def __init__(self):
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def send(self, message: dict) -> None:
        if "text" in message:
            self.sent.append(json.loads(message["text"]))

    def client_sends(self, control: dict) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(control)})

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.sent if event["type"] == kind]


async def test_user_text_is_a_turn_that_interrupts_the_agent():
    model = Model("one two three four five six seven eight.")
    async with Stages(Recognizer(), model, Synthesizer()) as stages:
        socket = Socket()
        transport = WebSocketTransport(socket, RATE, RATE, RATE * 2, {"type": "start"})
        call = CascadeCall(transport, stages.clients, edge_config(), "w1")
        task = asyncio.create_task(call.run())
        await asyncio.sleep(0.1)
        socket.client_sends({"type": "user_text", "text": "  tell me a story  "})
        await asyncio.sleep(0.8)  # the reply is speaking
        socket.client_sends({"type": "user_text", "text": "stop"})
        await asyncio.sleep(0.5)
        socket.inbox.put_nowait({"type": "websocket.disconnect"})
        await asyncio.wait_for(task, 5)
    assert [r.messages[-1].content for r in model.requests] == ["tell me a story", "stop"]
    assert socket.of_type("interruption")[0]["turn_id"] == 1
    assert [e["turn_id"] for e in socket.of_type("agent_text")][-1] == 2


@pytest.mark.parametrize("control", [{"type": "user_text"}, {"type": "user_text", "text": "   "},
                                     {"type": "user_text", "text": 5}, {"type": "user_text", "text": "x" * 4001}])
async def test_bad_user_text_is_a_protocol_error(control):
    socket = Socket()
    transport = WebSocketTransport(socket, RATE, RATE, RATE * 2, {"type": "start"})

    async def turn(text: str) -> None:
        raise AssertionError("no turn for bad input")
    transport.on_user_text = turn
    socket.client_sends(control)
    with pytest.raises(ProtocolError, match="user_text") as error:
        await transport.receive_audio()
    assert error.value.close_code == 4400
