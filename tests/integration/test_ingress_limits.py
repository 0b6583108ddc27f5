"""The ingress holes an outside attacker found, closed on a real cluster through Serve's real proxies:

- a 5 MiB gRPC message is refused RESOURCE_EXHAUSTED by the proxy as it arrives, before the token
  check and before any replica sees it, and the proxy's memory does not grow with such messages;
- a gRPC method sent to an application that does not serve it is UNAUTHENTICATED without the token
  and UNIMPLEMENTED with it, and a prompt over the model's context is RESOURCE_EXHAUSTED: always a
  short message, never a traceback;
- a deeply nested JSON body at /v1/livekit/dispatch is a 400;
- a client trickling request headers (a plain request or a WebSocket upgrade) to the HTTP proxy is
  dropped at the header deadline the test cluster sets (PARLEY_HTTP_HEADER_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import grpc
import psutil
import pytest

from services.proto import asr_pb2, asr_pb2_grpc, common_pb2, llm_pb2, llm_pb2_grpc
from tests.integration.conftest import GRPC_TOKEN, HEADER_TIMEOUT_S, HTTP_PORT, stage_stats

pytestmark = pytest.mark.cluster

FIVE_MIB = 5 * 1024 * 1024
TOKEN = ("authorization", f"Bearer {GRPC_TOKEN}")


def _generate(channel, content: str, metadata):
    return llm_pb2_grpc.LanguageModelStub(channel).Generate(
        llm_pb2.GenerateRequest(messages=[llm_pb2.ChatMessage(role="user", content=content)],
                                sampling=llm_pb2.SamplingParams(max_tokens=2)), metadata=metadata)


async def _status(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        [response async for response in call]
    return error.value


def _proxy_rss(serve_cluster) -> int:
    from ray.util.state import list_actors

    [proxy] = list_actors(address=serve_cluster.cluster.dashboard,
                          filters=[("class_name", "=", "ProxyActor"), ("state", "=", "ALIVE")])
    return psutil.Process(proxy.pid).memory_info().rss


def _short(error: grpc.aio.AioRpcError) -> None:
    details = error.details() or ""
    assert "Traceback" not in details and "\n" not in details and len(details) < 300, details


async def test_a_5_mib_message_is_refused_before_authentication_and_memory_stays_flat(
        channel, ray_client, serve_cluster):
    before = await stage_stats(ray_client, "llm")
    rss_before = await asyncio.to_thread(_proxy_rss, serve_cluster)
    for _ in range(8):  # 40 MiB offered in all, without a token
        error = await _status(_generate(channel, "x" * FIVE_MIB, [("application", "llm")]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        _short(error)
    grown = await asyncio.to_thread(_proxy_rss, serve_cluster) - rss_before
    assert grown < 64 * 1024 * 1024, f"the proxy grew by {grown / 2**20:.0f} MiB"
    after = await stage_stats(ray_client, "llm")
    assert after["engine"]["started"] == before["engine"]["started"]
    # A bidi stream's oversized frame is refused the same way (before the token check too).
    frames = iter([asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(sample_rate_hz=16000)),
                   asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=bytes(FIVE_MIB)))])
    error = await _status(asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(
        frames, metadata=[("application", "asr")]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("application", ["edge", "asr", "tts"])
async def test_a_method_the_application_does_not_serve_is_refused_cleanly(channel, application):
    unauthenticated = await _status(_generate(channel, "hi", [("application", application)]))
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await _status(_generate(channel, "hi", [("application", application), TOKEN]))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    _short(error)
    assert f"the {application} application does not serve Generate" in error.details()
    assert "application: llm" in error.details()


async def test_another_stages_method_on_a_stage_is_unimplemented(channel):
    requests = iter([asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(sample_rate_hz=16000))])
    error = await _status(asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(
        requests, metadata=[("application", "llm"), TOKEN]))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "application: asr" in error.details()


async def test_a_prompt_over_the_context_is_resource_exhausted_with_a_short_message(channel, ray_client):
    error = await _status(_generate(channel, "hello there " * 1500, [("application", "llm"), TOKEN]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _short(error)
    assert error.details().startswith("context_length_exceeded:")
    assert (await stage_stats(ray_client, "llm"))["engine"]["active"] == 0


def test_deeply_nested_json_at_dispatch_is_a_400(edge_http_url, edge_token):
    body = b'{"room": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    request = urllib.request.Request(f"{edge_http_url}/v1/livekit/dispatch", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {edge_token}",
                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code in (400, 413)  # 100 KB of brackets: nested too deep, or over the size limit
    small = b'{"room": ' + b"[" * 1000 + b"]" * 1000 + b"}"  # within the size limit: the depth refuses it
    request = urllib.request.Request(f"{edge_http_url}/v1/livekit/dispatch", data=small, method="POST",
                                     headers={"Authorization": f"Bearer {edge_token}"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 400 and b"nested" in error.value.read()


async def _trickle(headers: bytes) -> float:
    """Send `headers` a byte every 200 ms until the proxy closes; seconds until it did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", HTTP_PORT)
    started = time.monotonic()
    try:
        for byte in headers:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
        return float("inf")
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


async def test_slowloris_clients_are_dropped_at_the_header_deadline(serve_cluster):
    plain = b"GET /healthz HTTP/1.1\r\nHost: parley\r\nX-Padding: " + b"a" * 400
    upgrade = (b"GET /v1/conversation HTTP/1.1\r\nHost: parley\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Version: 13\r\nX-Padding: " + b"a" * 400)
    held = await asyncio.gather(*(_trickle(plain) for _ in range(10)), *(_trickle(upgrade) for _ in range(5)))
    assert all(HEADER_TIMEOUT_S * 0.8 <= seconds <= HEADER_TIMEOUT_S + 3 for seconds in held), held
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=10) as response:
        assert response.status == 200  # a prompt client is still served
