"""Target `tool_calls`: lifting tool calls out of model text (services/llm/tool_calls.py).

The input is model output, fed to the hermes splitter in pieces whose sizes come from the input's
first byte. Checks: no part of a `<tool_call>` block is ever released as text to speak, text
outside the blocks comes out whole, and every call is either well-formed (a name and a JSON
object of arguments) or carries an error.
"""

from __future__ import annotations

import json

import atheris

with atheris.instrument_imports(include=["services"]):
    from services.llm.tool_calls import HermesSplitter


def fuzz_tool_calls(data: bytes) -> None:
    if not data:
        return
    piece = data[0] % 16 + 1
    text = data[1:].decode("utf-8", errors="replace")
    splitter, spoken, calls = HermesSplitter(), [], []
    for start in range(0, len(text), piece):
        out, done = splitter.feed(text[start:start + piece])
        spoken.append(out)
        calls += done
    out, done = splitter.finish()
    spoken.append(out)
    calls += done
    said = "".join(spoken)
    assert HermesSplitter.START not in said, "a tool call was released as text"
    if HermesSplitter.START not in text:
        assert said == text and not calls
    for call in calls:
        if not call.error:
            assert call.name and isinstance(json.loads(call.arguments), dict)
