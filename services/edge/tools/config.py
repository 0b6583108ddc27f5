"""Typed declarations of the tools an agent may call during a call (docs/tools.md).

A tool is a name, a description and JSON-schema parameters (what the model sees) plus a runner
(what the edge does): an HTTP webhook, a Python callable by import path, or a built-in
(`end_call`, `transfer`). Tools are declared in the persona: in the edge config, or in the signed
token's `persona` claim (there: webhooks and built-ins only, never a Python import path).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from services.common.config import Config
from services.common.signing import check_http_url

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"  # what OpenAI-style function names allow


class WebhookRunner(Config):
    """POST the arguments to `url`, signed with the secret in $secret_env (HMAC-SHA256)."""

    kind: Literal["webhook"] = "webhook"
    url: str
    secret_env: str = "PARLEY_TOOLS_SECRET"

    @model_validator(mode="after")
    def _http_url(self) -> WebhookRunner:
        check_http_url(self.url)
        return self


class PythonRunner(Config):
    """Call `path` ("package.module:function", sync or async) with (arguments, context)."""

    kind: Literal["python"] = "python"
    path: str = Field(pattern=r"^[\w.]+:[\w.]+$")


class EndCallRunner(Config):
    """Built-in: the agent says goodbye, then the call closes (1000, reason `agent_ended`)."""

    kind: Literal["end_call"] = "end_call"


class TransferRunner(Config):
    """Built-in: hand the caller to `target` after the agent's words (Twilio: a <Dial> to this
    number or SIP URI; WebSocket: a `transfer` event for the client)."""

    kind: Literal["transfer"] = "transfer"
    target: str = Field(min_length=1, max_length=256)


Runner = Annotated[WebhookRunner | PythonRunner | EndCallRunner | TransferRunner, Field(discriminator="kind")]

BUILTIN_DESCRIPTIONS = {
    "end_call": "End the call. Use it when the caller says goodbye or the conversation is over; "
                "say a short goodbye in the same reply.",
    "transfer": "Transfer the caller to a human. Tell the caller you are transferring them in the same reply.",
}


class ToolSpec(Config):
    """One tool: what the model sees (name, description, parameters) and how it runs."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    runner: Runner
    timeout_s: float = Field(5.0, gt=0, le=120)
    # Barge-in while it runs: cancel it (only for tools without side effects), or let it finish
    # and keep its result in the history for the next turn (the default).
    cancel_on_interrupt: bool = False

    @model_validator(mode="before")
    @classmethod
    def _builtin_defaults(cls, data: Any) -> Any:
        # `{"name": "end_call"}` is enough for a built-in.
        if isinstance(data, dict) and data.get("name") in BUILTIN_DESCRIPTIONS and "runner" not in data:
            data = {**data, "runner": {"kind": data["name"], **data.get("options", {})}}
            data.pop("options", None)
        if isinstance(data, dict) and not data.get("description"):
            kind = (data.get("runner") or {}).get("kind") if isinstance(data.get("runner"), dict) else None
            if kind in BUILTIN_DESCRIPTIONS:
                data = {**data, "description": BUILTIN_DESCRIPTIONS[kind]}
        return data

    @model_validator(mode="after")
    def _schema(self) -> ToolSpec:
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON schema of type object")
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as error:
            raise ValueError(f"tool {self.name!r}: parameters are not a valid JSON schema: {error.message}") from None
        return self

    def openai(self) -> dict[str, Any]:
        """The OpenAI-style declaration the LLM stage renders for the model."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


class ToolsConfig(Config):
    """How the edge runs tools (the tools themselves are in the persona)."""

    # LLM rounds per agent turn that may call tools; the round after them is offered none.
    max_steps: int = Field(4, ge=1, le=16)
    # Said once per turn when tools are still running this long after they started.
    filler_text: str = "One moment."
    filler_after_ms: int = Field(700, ge=0, le=10_000)
    # A tool's result is cut to this many characters before it goes to the model.
    max_result_chars: int = Field(4000, ge=100, le=100_000)
    # Webhook hosts allowed ("" entries are ignored). Empty: any host for tools from the edge
    # config; a token's webhooks must always be on this list.
    allowed_hosts: list[str] = []


def check_unique(tools: list[ToolSpec]) -> list[ToolSpec]:
    """Tool names must be unique within a persona."""
    names = [tool.name for tool in tools]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique, repeated: {', '.join(duplicates)}")
    return tools
