"""Duplex calls at the edge: choosing cascade or duplex per call, and turns inferred from audio levels."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import float_to_pcm16
from services.edge.config import DuplexConfig, EdgeConfig
from services.edge.duplex import InferredTurns, call_mode
from services.edge.transport import ProtocolError


def test_the_config_default_applies_without_a_claim():
    assert call_mode(DuplexConfig(), {}) == "cascade"
    assert call_mode(DuplexConfig(default_mode="duplex"), {"sub": "caller"}) == "duplex"


def test_the_token_claim_overrides_the_default_both_ways():
    assert call_mode(DuplexConfig(), {"mode": "duplex"}) == "duplex"
    assert call_mode(DuplexConfig(default_mode="duplex"), {"mode": "cascade"}) == "cascade"


def test_an_unknown_mode_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="telepathy") as raised:
        call_mode(DuplexConfig(), {"mode": "telepathy"})
    assert raised.value.close_code == 4400


def test_edge_config_rejects_unknown_duplex_settings():
    with pytest.raises(ValueError):
        EdgeConfig.model_validate({"duplex": {"when_full": "queue_forever"}})


LOUD = float_to_pcm16(0.1 * np.ones(480, dtype=np.float32))
QUIET = bytes(960)


def test_a_turn_ends_with_the_first_audible_agent_frame_after_the_callers_silence():
    turns = InferredTurns(min_silence_s=0.3)
    for t in (0.0, 0.1, 0.2):
        turns.caller_audio(LOUD, t)
    turns.caller_audio(QUIET, 0.4)
    assert turns.agent_audio(LOUD, 0.45) is None  # the silence is not long enough yet: no turn is due
    turns.caller_audio(QUIET, 0.55)
    assert turns.agent_audio(QUIET, 0.6) is None  # the agent is still silent
    turn = turns.agent_audio(LOUD, 0.7)
    assert turn.turn_id == 1 and turn.speech_end == 0.2 and turn.first_audio_sent == 0.7
    assert turn.to_event()["ttfat_ms"] == 500.0
    assert turns.agent_audio(LOUD, 0.8) is None  # one reply per turn


def test_speech_resuming_before_the_reply_cancels_the_turn():
    turns = InferredTurns(min_silence_s=0.3)
    turns.caller_audio(LOUD, 0.0)
    turns.caller_audio(QUIET, 0.5)
    turns.caller_audio(LOUD, 0.6)
    assert turns.agent_audio(LOUD, 0.65) is None
    turns.caller_audio(QUIET, 1.0)
    assert turns.agent_audio(LOUD, 1.1).turn_id == 2
