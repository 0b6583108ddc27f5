"""A reference LLM engine for tests, loaded by import path (engine kind "plugin"): it answers each
request with the next reply of its script, tool calls included, as a real engine's items."""

from __future__ import annotations

import asyncio
import json

from services.llm.config import PluginConfig
from services.llm.engine import ChatRequest, Delta, Finished, LLMEngine, ToolCall
from services.llm.tool_calls import HermesSplitter, new_call_id

# A reply is a list of items: text, {"call": name, "arguments": {...}}, {"raw": model text in the
# hermes format, parsed as a real model's output would be}, or {"sleep": seconds}.


class ScriptedEngine(LLMEngine):
    """Replies from `options["script"]`, one per request; the last one repeats."""

    def __init__(self, config: PluginConfig):
        super().__init__()
        self.model_name = config.model
        self.script = list(config.options.get("script", [["Okay."]]))
        self.requests: list[ChatRequest] = []

    async def generate(self, request: ChatRequest):
        self.requests.append(request)
        reply = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        with self.stats.track(request.request_id) as tracked:
            called = False
            for item in reply:
                if isinstance(item, str):
                    yield Delta(item, 1)
                elif "sleep" in item:
                    await asyncio.sleep(item["sleep"])
                elif "call" in item:
                    called = True
                    yield ToolCall(new_call_id(), item["call"], json.dumps(item.get("arguments", {})))
                else:
                    splitter = HermesSplitter()
                    for part in (splitter.feed(item["raw"]), splitter.finish()):
                        if part[0]:
                            yield Delta(part[0], 1)
                        for call in part[1]:
                            called = True
                            yield call
            tracked.finish()
            yield Finished("tool_calls" if called else "stop", 10, len(reply))
