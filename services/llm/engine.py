"""The narrow interface every LLM engine meets.

`generate` is an async generator of Delta items ending with one Finished. Closing it early
(`aclose()`, or cancelling the task iterating it) must abort the work in the engine at once and
count the abort in `stats`, so a barge-in frees the GPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from services.llm.config import LLMEngineConfig


@dataclass(frozen=True)
class ChatTurn:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_call_id: str = ""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatTurn, ...]
    sampling: Sampling = Sampling()
    tools: tuple[dict[str, Any], ...] = ()
    request_id: str = ""


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finished:
    reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    # Seconds the request waited in the engine's queue before its first computation; None when
    # the engine cannot tell (a remote server).
    queue_s: float | None = None


@dataclass
class EngineStats:
    started: int = 0
    finished: int = 0
    aborted: int = 0
    active: int = 0
    recent_aborts: list[str] = field(default_factory=list)  # request ids, newest last, bounded

    def record_abort(self, request_id: str) -> None:
        self.aborted += 1
        self.recent_aborts = [*self.recent_aborts[-63:], request_id]

    def track(self, request_id: str) -> TrackedRequest:
        return TrackedRequest(self, request_id)


class TrackedRequest:
    """Counts one generation in EngineStats: `with stats.track(id) as tracked:` around the whole
    generator body, and `tracked.finish()` just before yielding Finished. Leaving the block early
    without finishing counts as an abort when the consumer closed or cancelled the stream
    (GeneratorExit, CancelledError), and as neither finished nor aborted on an error."""

    def __init__(self, stats: EngineStats, request_id: str):
        self.stats, self.request_id, self.finished = stats, request_id, False

    def finish(self) -> None:
        # Counted before Finished is yielded: a consumer may never resume the generator after it.
        self.finished = True
        self.stats.active -= 1
        self.stats.finished += 1

    def __enter__(self) -> TrackedRequest:
        self.stats.started += 1
        self.stats.active += 1
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.finished:
            return
        self.stats.active -= 1
        if error is not None and not isinstance(error, Exception):
            self.stats.record_abort(self.request_id)


class LLMEngine(ABC):
    model_name: str

    def __init__(self) -> None:
        self.stats = EngineStats()

    @abstractmethod
    def generate(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        """Stream the reply to `request`; see the module docstring for the abort contract."""

    async def close(self) -> None:
        """Release engine resources."""


def load_engine(config: LLMEngineConfig) -> LLMEngine:
    # Engines import heavy libraries, so they are imported only when selected.
    if config.kind == "transformers":
        from services.llm.engines.transformers import TransformersEngine

        return TransformersEngine(config)
    if config.kind == "vllm":
        from services.llm.engines.vllm import VLLMEngine

        return VLLMEngine(config)
    if config.kind == "openai":
        from services.llm.engines.openai import OpenAIEngine

        return OpenAIEngine(config)
    raise ValueError(f"unknown LLM engine {config.kind!r}")
