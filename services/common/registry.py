"""Engine registries: each stage maps its engine kinds to import paths, imported on selection.

A stage's `engines/__init__.py` holds its table (kind -> "package.module:Class" or
"package.module:Class.factory"); the engine module, and the heavy library it wraps, is imported
only when a config selects that kind. The interface modules (`engine.py`) never import engines,
so engines can import their interface without a cycle.

Besides its built-in kinds, every stage takes any engine class by import path:
`engine: {kind: "mypkg.engines:MyTTS", ...its own args}` (see PluginEngineConfig). That is how a
user plugs in an engine of their own, and how the benchmarks plug in reference engines.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator

from services.common.config import Config

IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
PLUGIN = "plugin"  # the tag of an engine named by import path (and the LLM's older spelling of it)


def import_object(path: str) -> Any:
    """The object named by "package.module:Name" (or "package.module:Name.attribute")."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"an engine import path looks like 'package.module:Class', got {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(f"{module_name} has no attribute {attribute!r} (engine import path {path!r})") from None
    return target


class PluginEngineConfig(Config):
    """An engine class named by import path, with its own arguments beside `kind`.

        engine: {kind: "mypkg.engines:MyTTS", voice_dir: /data/voices, speed: 1.1}

    The class is imported and checked when the config is validated (once, at replica start), so a
    bad path fails there with the path in the message. When the class declares a pydantic model
    `Config`, the extra arguments are validated by it and the typed result is `config.args`; without
    one they are plain attributes of this config. The engine is built as `Class(config)`.

    Each stage subclasses this with the settings its deployment itself reads (`model`, the name its
    spans show; ASR's worker count; the duplex slots) and the interface the class must implement.
    The older LLM spelling `{kind: plugin, path: "pkg.mod:Class", options: {...}}` is still read.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    interface: ClassVar[str] = ""  # "package.module:Interface" the engine class must subclass

    kind: str = Field(pattern=IMPORT_PATH)
    model: str = ""  # a name for logs and spans; defaults to the import path
    _args: BaseModel | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _older_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind", PLUGIN) == PLUGIN and "path" in data:
            data = {**{key: value for key, value in data.items() if key != "path"}, "kind": data.get("path")}
            data.setdefault("options", {})
        return data

    @property
    def path(self) -> str:
        """The engine's import path (the older spelling's `path`)."""
        return self.kind

    @property
    def args(self) -> BaseModel | None:
        """The extra arguments as validated by the engine class's `Config`, if it declares one."""
        return self._args

    @model_validator(mode="after")
    def _check_engine(self) -> PluginEngineConfig:
        engine = self.engine_class()
        if self.interface and isinstance(engine, type):
            interface = import_object(self.interface)
            if not issubclass(engine, interface):
                raise ValueError(f"engine class {self.kind!r} does not implement {self.interface}")
        declared = getattr(engine, "Config", None)
        if isinstance(declared, type) and issubclass(declared, BaseModel):
            self._args = declared.model_validate(dict(self.model_extra or {}))
        if not self.model:
            self.__dict__["model"] = self.kind
        return self

    def engine_class(self) -> Any:
        """The class (or factory) `kind` names; an import failure is a ValueError naming the path."""
        try:
            engine = import_object(self.kind)
        except (ImportError, ValueError) as error:
            raise ValueError(f"cannot load engine {self.kind!r}: {error}") from None
        if not callable(engine):
            raise ValueError(f"engine {self.kind!r} is not a class or factory")
        return engine


def _tag_for(builtin_kinds: tuple[str, ...]):
    def tag(value: Any) -> str | None:
        kind = value.get("kind", builtin_kinds[0]) if isinstance(value, dict) else getattr(value, "kind", None)
        if kind == PLUGIN or (isinstance(kind, str) and ":" in kind):
            return PLUGIN
        return kind
    return tag


def engine_config_union(plugin: type[PluginEngineConfig], *builtin: type[Config]) -> Any:
    """A stage's `engine` field type: one of its built-in kinds (the first is the default when
    `kind` is left out) or any engine class by import path (`plugin`)."""
    kinds = tuple(model.model_fields["kind"].default for model in builtin)
    members = tuple(Annotated[model, Tag(kind)] for model, kind in zip(builtin, kinds, strict=True))
    message = (f"unknown engine kind: use one of {', '.join(repr(k) for k in kinds)} "
               "or an engine class by import path ('package.module:Class')")
    return Annotated[Union[(*members, Annotated[plugin, Tag(PLUGIN)])],  # noqa: UP007 - built at run time
                     Discriminator(_tag_for(kinds), custom_error_type="engine_kind", custom_error_message=message)]


def load_engine(table: Mapping[str, str], config: Any, stage: str) -> Any:
    """Build the engine `config.kind` names in `table`, passing it the config; an engine named by
    import path (PluginEngineConfig) is built from that path."""
    if isinstance(config, PluginEngineConfig):
        return config.engine_class()(config)
    path = table.get(config.kind)
    if path is None:
        raise ValueError(f"unknown {stage} engine kind {config.kind!r}; known kinds: {', '.join(sorted(table))}")
    return import_object(path)(config)
