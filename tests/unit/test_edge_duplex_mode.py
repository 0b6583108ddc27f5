"""How the edge picks cascade or duplex for a call: config default, overridden by the signed token."""

from __future__ import annotations

import pytest

from services.edge.config import DuplexConfig, EdgeConfig
from services.edge.duplex import call_mode
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
