"""VLLMEngine on the tiny model: needs the `vllm` package and a CUDA GPU, skipped elsewhere."""

from __future__ import annotations

import importlib.util

import pytest
import pytest_asyncio

from services.llm.config import VLLMConfig
from services.llm.engine import ChatRequest, ChatTurn, Delta, Finished, Sampling


def _skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (it is CUDA-only: install parley[llm-vllm] in the GPU image)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU: vLLM's engine needs one"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


def chat(max_tokens: int, request_id: str = "", temperature: float = 0.0) -> ChatRequest:
    return ChatRequest(
        messages=(ChatTurn("system", "Be brief."), ChatTurn("user", "Hello, who are you?")),
        sampling=Sampling(temperature=temperature, max_tokens=max_tokens, seed=1),
        request_id=request_id,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(tiny_llm):
    from services.llm.engines.vllm import VLLMEngine

    eng = VLLMEngine(VLLMConfig(model=str(tiny_llm), gpu_memory_utilization=0.2, max_model_len=2048,
                                enforce_eager=True))
    yield eng
    await eng.close()


async def test_vllm_streams_deltas_then_finished(engine):
    request = chat(max_tokens=32)
    deltas, finished = [], []
    async for item in engine.generate(request):
        assert not finished
        (finished if isinstance(item, Finished) else deltas).append(item)
    assert deltas and len(finished) == 1
    done = finished[0]
    # The tiny model's special tokens have zero output rows: greedy never stops early.
    assert done.reason == "length" and done.completion_tokens == 32 == sum(d.tokens for d in deltas)
    assert done.prompt_tokens == len(await engine.encode_prompt(request))
    assert engine.stats.active == 0 and engine.stats.finished >= 1


async def test_vllm_aclose_aborts(engine):
    aborted = engine.stats.aborted
    stream = engine.generate(chat(max_tokens=1500, request_id="vllm-barge-in"))
    assert isinstance(await anext(stream), Delta)
    await stream.aclose()
    assert engine.stats.aborted == aborted + 1 and engine.stats.recent_aborts[-1] == "vllm-barge-in"
    assert engine.stats.active == 0
    # The engine is healthy afterwards and serves the next turn.
    items = [item async for item in engine.generate(chat(max_tokens=4, temperature=0.8))]
    assert isinstance(items[-1], Finished) and items[-1].completion_tokens == 4
