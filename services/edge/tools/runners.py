"""How a tool runs: a signed HTTP webhook or a Python callable; every outcome becomes a ToolResult.

Webhook contract (docs/tools.md): POST `{"call_id", "tool_call_id", "name", "arguments"}` as JSON
with `X-Parley-Timestamp` (unix seconds) and `X-Parley-Signature: sha256=<hex>`, the HMAC-SHA256
of `<timestamp>.<body>` under the secret in the runner's $secret_env (services/common/signing.py). A 2xx answer's body is the
result (`{"result": ...}` is unwrapped); anything else, a timeout included, is a tool error the
model is told about.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.registry import import_object
from services.common.signing import signed_headers
from services.edge.tools.config import PythonRunner, WebhookRunner


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model as the tool message."""

    content: str
    error: bool = False

    @classmethod
    def failed(cls, message: str) -> ToolResult:
        return cls(json.dumps({"error": message}), error=True)


class ToolError(Exception):
    """A tool failed in a way the model should hear about (its message goes to the model)."""


@dataclass
class ToolContext:
    """What a running tool knows of its call; built-ins act on the call through it."""

    call_id: str
    tool_call_id: str
    end_call: Callable[[], None] = lambda: None
    transfer: Callable[[str], Awaitable[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def as_text(value: Any) -> str:
    """A result as the model reads it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


async def run_webhook(runner: WebhookRunner, client: Any, name: str, arguments: dict, context: ToolContext) -> str:
    """POST the call; the answer's body (unwrapped from `result`) or ToolError."""
    import httpx

    secret = os.environ.get(runner.secret_env, "")
    if not secret:
        raise ToolError(f"the tool is not configured (no secret in ${runner.secret_env})")
    body = json.dumps({"call_id": context.call_id, "tool_call_id": context.tool_call_id, "name": name,
                       "arguments": arguments}).encode()
    try:
        response = await client.post(runner.url, content=body, headers=signed_headers(secret, body))
    except httpx.HTTPError as error:
        raise ToolError(f"the tool's service could not be reached ({type(error).__name__})") from None
    if not 200 <= response.status_code < 300:
        raise ToolError(f"the tool's service answered HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        return response.text
    return as_text(answer["result"] if isinstance(answer, dict) and "result" in answer else answer)


async def run_python(runner: PythonRunner, arguments: dict, context: ToolContext) -> str:
    """Call the function (awaited when async) with (arguments, context)."""
    result = import_object(runner.path)(arguments, context)
    if inspect.isawaitable(result):
        result = await result
    return as_text(result)
