"""Duplex engines by kind. Each module is imported only when a config selects its kind."""

from __future__ import annotations

from services.common import registry

ENGINES = {
    "moshi": "services.moshi.engines.moshi:MoshiEngine.load",
}


def load_engine(config):
    """The duplex engine `config.kind` names, built from `config`."""
    return registry.load_engine(ENGINES, config, "duplex")
