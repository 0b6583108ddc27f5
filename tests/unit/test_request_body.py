"""Request bodies read with limits (services/common/request_body.py), through a real FastAPI app."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from services.common.request_body import MAX_JSON_DEPTH, BodyError, check_json_body, json_depth, read_json_body

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    try:
        body = await read_json_body(request, max_bytes=1024)
    except BodyError as error:
        return JSONResponse({"error": error.message}, error.status)
    return JSONResponse(json.loads(body))


@pytest.mark.parametrize("text, depth", [(b'{"a": 1}', 1), (b'[[[]]]', 3), (b'{"a": "[[[[{{"}', 1),
                                         (b'{"a": "\\"[["}', 1), (b'"x"', 0), (b'[1, [2], {"b": [3]}]', 3)])
def test_depth_counts_brackets_outside_strings(text, depth):
    assert json_depth(text) == depth


def test_a_deeply_nested_body_is_refused_before_the_parser_recurses():
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RecursionError):  # what a route parsing it directly would raise (a 500)
        json.loads(nested)
    with pytest.raises(BodyError) as refused:
        check_json_body(nested, max_bytes=1 << 20)
    assert refused.value.status == 400
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert check_json_body(ok) == ok


def test_a_route_answers_400_for_nesting_413_for_size_and_serves_the_rest():
    client = TestClient(app)
    assert client.post("/echo", content=b"[" * 500 + b"]" * 500).status_code == 400
    too_big = client.post("/echo", content=b'{"a": "' + b"x" * 2000 + b'"}')
    assert too_big.status_code == 413 and "1024 bytes" in too_big.json()["error"]
    assert client.post("/echo", content=b'{"room": "r1"}').json() == {"room": "r1"}
