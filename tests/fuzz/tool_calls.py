"""Target `tool_calls`: lifting tool calls out of model text (services/llm/tool_calls.py).

The input is model output, fed to the hermes splitter in pieces whose sizes come from the input's
first byte. Checks against a regular expression's reading of the whole text: exactly the text
outside `<tool_call>` blocks is released to speak (none of a block, whatever the piece sizes),
one call per block, and every call is either well-formed (a name and a JSON object of
arguments) or carries an error.
"""

from __future__ import annotations

import json
import re

import atheris

with atheris.instrument_imports(include=["services"]):
    from services.llm.tool_calls import HermesSplitter


BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.S)  # an unterminated block runs to the end


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
    assert "".join(spoken) == BLOCK.sub("", text), "text released to speak is not the text outside the calls"
    assert len(calls) == len(BLOCK.findall(text))
    for call in calls:
        if not call.error:
            assert call.name and isinstance(json.loads(call.arguments), dict)
