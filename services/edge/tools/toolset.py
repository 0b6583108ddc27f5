"""One call's tools: what the model is offered, and running one call of them.

Every outcome is a ToolResult: an unknown tool, a malformed call, arguments that break the
schema, an error, a timeout. None of them ends the call; the model hears about it and answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

from services.edge.tools.config import EndCallRunner, PythonRunner, ToolsConfig, ToolSpec, TransferRunner, WebhookRunner
from services.edge.tools.runners import ToolContext, ToolError, ToolResult, run_python, run_webhook

logger = logging.getLogger("ray.serve")

END_CALL_RESULT = "The call ends after your next words: say a short goodbye now."
TRANSFER_RESULT = "The caller is transferred after your next words: tell them so now."


class ToolSet:
    """The persona's tools for one call."""

    def __init__(self, specs: list[ToolSpec], config: ToolsConfig):
        self.specs = {spec.name: spec for spec in specs}
        self.config = config
        self.schemas_json = json.dumps([spec.openai() for spec in specs]) if specs else ""

    def __bool__(self) -> bool:
        return bool(self.specs)

    def spec(self, name: str) -> ToolSpec | None:
        return self.specs.get(name)

    async def run(self, name: str, arguments_json: str, parse_error: str, context: ToolContext) -> ToolResult:
        """Run one call; never raises (cancellation aside)."""
        spec = self.specs.get(name)
        if parse_error:
            return ToolResult.failed(f"your tool call was malformed ({parse_error}); write it again correctly")
        if spec is None:
            return ToolResult.failed(f"there is no tool named {name!r}; available: {', '.join(self.specs)}")
        try:
            arguments = json.loads(arguments_json or "{}")
        except (ValueError, RecursionError):
            arguments = None
        if not isinstance(arguments, dict):
            return ToolResult.failed("the arguments must be a JSON object")
        problem = _schema_problem(spec, arguments)
        if problem:
            return ToolResult.failed(f"bad arguments for {name}: {problem}")
        try:
            async with asyncio.timeout(spec.timeout_s):
                content = await self._dispatch(spec, arguments, context)
        except TimeoutError:
            return ToolResult.failed(f"{name} did not answer within {spec.timeout_s:g} s")
        except ToolError as error:
            return ToolResult.failed(str(error))
        except Exception as error:  # noqa: BLE001 - a broken tool must not end the call
            logger.warning("tool %s failed: %r", name, error)
            return ToolResult.failed(f"{name} failed")
        return ToolResult(content[:self.config.max_result_chars])

    async def _dispatch(self, spec: ToolSpec, arguments: dict, context: ToolContext) -> str:
        runner = spec.runner
        if isinstance(runner, WebhookRunner):
            import httpx

            # Redirects are not followed: a webhook must not bounce the call's data elsewhere.
            async with httpx.AsyncClient(follow_redirects=False, timeout=None) as client:
                return await run_webhook(runner, client, spec.name, arguments, context)
        if isinstance(runner, PythonRunner):
            return await run_python(runner, arguments, context)
        if isinstance(runner, EndCallRunner):
            context.end_call()
            return END_CALL_RESULT
        if isinstance(runner, TransferRunner):
            if context.transfer is None:
                raise ToolError("transfer is not available on this line")
            await context.transfer(runner.target)
            return TRANSFER_RESULT
        raise ToolError(f"{spec.name} has no runner")


def _schema_problem(spec: ToolSpec, arguments: dict) -> str:
    from jsonschema import Draft202012Validator

    error = next(iter(Draft202012Validator(spec.parameters).iter_errors(arguments)), None)
    return "" if error is None else error.message[:200]


def check_hosts(specs: list[ToolSpec], allowed: list[str], from_token: bool) -> None:
    """ValueError for a webhook whose host is not allowed (a token's webhooks need the list)."""
    hosts = {host for host in allowed if host}
    for spec in specs:
        if isinstance(spec.runner, PythonRunner) and from_token:
            raise ValueError(f"tool {spec.name!r}: a token may not name Python callables")
        if isinstance(spec.runner, WebhookRunner):
            host = urlsplit(spec.runner.url).hostname or ""
            if (hosts or from_token) and host not in hosts:
                raise ValueError(f"tool {spec.name!r}: webhook host {host!r} is not in tools.allowed_hosts")
