"""Hugging Face transformers engine: the embedded default, for CPU or a small GPU.

One generation runs at a time per engine, on a dedicated worker thread. The thread calls
`model.generate` with a stopping criterion that, after every new token, detokenizes it
incrementally, checks stop strings, pushes text to the asyncio side and checks a per-request
abort event. Closing or cancelling the async generator sets the event, so the running generation
ends after at most one more token; a request still waiting for the thread is simply dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from services.common.config import is_local_path, require_path, resolve_device
from services.common.rpc import context_exceeded
from services.llm.config import TransformersConfig
from services.llm.engine import (
    ChatRequest,
    Delta,
    Finished,
    LLMEngine,
    Sampling,
    TemplateTraits,
    ToolCall,
    chat_messages,
)
from services.llm.text_stream import IncrementalDetokenizer, StopStringMatcher
from services.llm.tool_calls import SPLITTERS, split_stream


class _Job:
    """One generation's state, shared between the asyncio side and the worker thread."""

    def __init__(self, request_id: str, prompt_ids: list[int], sampling: Sampling, max_new_tokens: int,
                 push: Callable[[Any], None]) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.push = push
        self.abort = threading.Event()
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None  # the worker thread picked it up


def _build_stopping_criterion(engine: TransformersEngine, job: _Job, eos_ids: set[int]):
    """A StoppingCriteria that also streams: it runs once per generated token, before the next forward."""
    import torch
    from transformers import StoppingCriteria

    class _StreamAndStop(StoppingCriteria):
        def __init__(self) -> None:
            self.detok = IncrementalDetokenizer(engine.tokenizer)
            self.matcher = StopStringMatcher(job.sampling.stop)
            self.prompt_len = len(job.prompt_ids)
            self.completion_tokens = 0
            self.pending_tokens = 0  # generated but not yet attached to a Delta
            self.hit_eos = False

        def _emit(self, text: str) -> None:
            if text:
                job.push(Delta(text, self.pending_tokens))
                self.pending_tokens = 0

        def flush(self) -> None:
            """End of generation: emit held-back text and the tokens not yet reported."""
            text = self.matcher.feed(self.detok.flush()) if not self.matcher.stopped else ""
            text += self.matcher.finish()
            if text or self.pending_tokens:
                job.push(Delta(text, self.pending_tokens))
                self.pending_tokens = 0

        def __call__(self, input_ids, scores, **kwargs):
            stop = job.abort.is_set()
            generated = input_ids.shape[-1] - self.prompt_len
            # Normally exactly one new token per call; loop in case a version calls less often.
            while not stop and self.completion_tokens < generated and not self.matcher.stopped:
                token = int(input_ids[0, self.prompt_len + self.completion_tokens])
                self.completion_tokens += 1
                self.pending_tokens += 1
                engine.tokens_generated += 1
                if token in eos_ids:
                    self.hit_eos = True
                    break
                self._emit(self.matcher.feed(self.detok.add(token)))
            stop = stop or self.matcher.stopped or self.hit_eos
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return _StreamAndStop()


class TransformersEngine(LLMEngine):
    def __init__(self, config: TransformersConfig) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.model_name = config.model
        self.device = resolve_device(config.device)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("LLM engine device 'cuda' requested but CUDA is not available: set device to cpu or auto")
        if config.dtype == "auto":
            self.dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        else:
            self.dtype = getattr(torch, config.dtype)
        torch.set_num_threads(config.torch_threads)

        source: str | Path = config.model
        local = is_local_path(config.model)
        if local:
            source = require_path(config.model, "LLM model directory")
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer at {source} has no chat_template; use a chat (instruct) model")
        # What the template accepts (system role, chats opening with the assistant), found once by rendering.
        self.template = TemplateTraits.probe(self._render)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype, local_files_only=local)
        self.model.to(self.device).eval()

        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self._eos_ids = self._collect_eos_ids()
        self._pad_id = self.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = min(self._eos_ids) if self._eos_ids else 0
        # One generation at a time: a single worker thread; requests queue in front of it.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-llm")
        self._jobs: set[_Job] = set()
        self.tokens_generated = 0  # all completion tokens computed by this engine, aborted ones included
        self._warm_up()

    def _warm_up(self) -> None:
        """One short generation outside the stats: the first forward pass sets up kernels and
        buffers, which must not happen inside the first caller's turn."""
        import torch

        ids = self.tokenizer.encode(self._render([{"role": "user", "content": "Hi"}]), add_special_tokens=False)
        with torch.inference_mode():
            self.model.generate(input_ids=torch.tensor([ids], device=self.device),
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                                max_new_tokens=2, do_sample=False, pad_token_id=self._pad_id)

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    # -- prompt -----------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)

    def render_prompt(self, request: ChatRequest) -> str:
        """The chat rendered by the model's chat template, ready for the assistant's reply."""
        return self._render(chat_messages(request, self.template), list(request.tools) or None)

    def encode_prompt(self, request: ChatRequest) -> list[int]:
        # The template already wrote any BOS/special tokens the model wants: add none here.
        return list(self.tokenizer.encode(self.render_prompt(request), add_special_tokens=False))

    # -- generation -------------------------------------------------------------------------------

    def generate(self, request: ChatRequest) -> AsyncIterator[Delta | ToolCall | Finished]:
        """With tools offered, the model's tool calls (in `config.tool_parser`'s format) come out as
        ToolCall items, never as text."""
        stream = self._generate(request)
        if request.tools and self.config.tool_parser is not None:
            return split_stream(stream, SPLITTERS[self.config.tool_parser]())
        return stream

    async def _generate(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        request_id = request.request_id or f"chat-{uuid.uuid4().hex[:16]}"
        job: _Job | None = None
        future: concurrent.futures.Future | None = None
        with self.stats.track(request_id) as tracked:
            try:
                prompt_ids = self.encode_prompt(request)
                max_new = request.sampling.max_tokens
                if self.max_context is not None:
                    room = self.max_context - len(prompt_ids)
                    if room <= 0:
                        raise context_exceeded(len(prompt_ids), self.max_context)
                    max_new = min(max_new, room)
                if max_new < 1:
                    raise ValueError(f"max_tokens must be >= 1, got {request.sampling.max_tokens}")

                loop = asyncio.get_running_loop()
                queue: asyncio.Queue = asyncio.Queue()

                def push(item: Any) -> None:
                    try:
                        loop.call_soon_threadsafe(queue.put_nowait, item)
                    except RuntimeError:  # the event loop is gone: nobody is listening any more
                        if job is not None:
                            job.abort.set()

                job = _Job(request_id, prompt_ids, request.sampling, max_new, push)
                self._jobs.add(job)
                future = self._executor.submit(self._run, job)
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, Finished):
                        tracked.finish()
                        yield item
                        return
                    yield item
            finally:
                # Runs on normal end, on error, on aclose() (GeneratorExit) and on task cancellation.
                if job is not None:
                    job.abort.set()  # the worker stops before computing another token
                    self._jobs.discard(job)
                if future is not None:
                    future.cancel()  # still queued behind another request: never starts

    def _run(self, job: _Job) -> None:
        """Worker thread: run one generation, pushing Delta items then Finished (or an exception)."""
        if job.abort.is_set():
            return
        job.started_at = time.monotonic()
        try:
            job.push(self._generate_blocking(job))
        except BaseException as exc:  # noqa: BLE001 - handed to the asyncio side
            job.push(exc)

    def _generate_blocking(self, job: _Job) -> Finished:
        import torch
        from transformers import StoppingCriteriaList

        sampling = job.sampling
        criterion = _build_stopping_criterion(self, job, self._eos_ids)
        input_ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.device)
        # The checkpoint's generation defaults, overridden by this request's sampling.
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = job.max_new_tokens
        config.pad_token_id = self._pad_id
        if sampling.temperature <= 0.0:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = float(sampling.temperature)
            config.top_p = float(sampling.top_p) if 0.0 < sampling.top_p < 1.0 else 1.0
            config.top_k = int(sampling.top_k) if sampling.top_k > 0 else 0
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([criterion]),
        )
        with self._seeded(sampling.seed), torch.inference_mode():
            self.model.generate(**kwargs)
        criterion.flush()
        if criterion.matcher.stopped or criterion.hit_eos:
            reason = "stop"
        elif criterion.completion_tokens >= job.max_new_tokens:
            reason = "length"
        else:  # only when aborted: nobody reads this
            reason = "stop"
        return Finished(reason, len(job.prompt_ids), criterion.completion_tokens,
                        queue_s=job.started_at - job.submitted_at if job.started_at is not None else None)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None):
        """Seed torch's RNG for one request and restore it afterwards (generations are serialized)."""
        if seed is None:
            yield
            return
        import torch

        devices = [torch.device(self.device).index or 0] if self.device == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    async def close(self) -> None:
        for job in list(self._jobs):
            job.abort.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
