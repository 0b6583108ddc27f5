"""Request bodies read with limits, for every JSON route of the HTTP ingress.

`read_json_body` reads a body within a size and a time limit and refuses JSON nested deeper than
`MAX_JSON_DEPTH` before any parser sees it (Python's json module recurses per level: a body of
100,000 `[` would raise RecursionError, a 500). `check_json_body` is the same check on bytes
already read, for a handler that gets its body from elsewhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

MAX_JSON_DEPTH = 32
MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0


class BodyError(ValueError):
    """A body refused before parsing: the HTTP status to answer and a short message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (a linear scan, no recursion;
    brackets inside strings do not count). Malformed text is left for the parser to reject."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def check_json_body(body: bytes, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH) -> bytes:
    """`body` if it is within `max_bytes` and nested at most `max_depth` deep; else BodyError (413, 400)."""
    if len(body) > max_bytes:
        raise BodyError(413, f"the body is over {max_bytes} bytes")
    if json_depth(body) > max_depth:
        raise BodyError(400, f"the JSON body is nested deeper than {max_depth} levels")
    return body


async def read_body(request: Any, max_bytes: int = MAX_BODY_BYTES, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """A Starlette request's body, refused once it passes `max_bytes` (413) or takes over `timeout_s` (408)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyError(413, f"the body is over {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


async def read_json_body(request: Any, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH,
                         timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """`read_body`, then `check_json_body`: the bytes of a JSON body safe to hand to a parser."""
    return check_json_body(await read_body(request, max_bytes, timeout_s), max_bytes, max_depth)
