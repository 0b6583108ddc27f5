"""Every services module imports on its own, first: an import cycle fails here (a module that only
works when something else was imported before it)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest

import services

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(services.__path__, "services."))


def _forget_services() -> None:
    for name in [name for name in sys.modules if name == "services" or name.startswith("services.")]:
        del sys.modules[name]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module):
    saved = {name: mod for name, mod in sys.modules.items() if name == "services" or name.startswith("services.")}
    _forget_services()
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and not error.name.startswith("services"):
            pytest.skip(f"optional dependency {error.name} is not installed")
        raise
    finally:
        _forget_services()
        sys.modules.update(saved)


def test_common_does_not_import_the_edge():
    saved = {name: mod for name, mod in sys.modules.items() if name == "services" or name.startswith("services.")}
    _forget_services()
    try:
        for module in (m for m in MODULES if m.startswith("services.common.")):
            importlib.import_module(module)
        assert not [name for name in sys.modules if name.startswith("services.edge")]
    finally:
        _forget_services()
        sys.modules.update(saved)
