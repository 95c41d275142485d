"""Generation engines behind one small async interface: OpenAI-compatible servers, vLLM in-process, transformers.

The scheduler keeps many turns in flight; each engine turns that into its own batching: an
OpenAI-compatible server (vLLM / SGLang) batches the concurrent HTTP requests itself, vLLM's
in-process async engine batches its queue, and :class:`TransformersEngine` gathers the requests
waiting at each moment into one padded ``generate`` call. Every engine returns the agent's
:class:`~sage_fast.models.base.Generation`, so turns recorded here read like the agent loop's.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.models.openai_compatible import choice_logprobs, openai_content
from sage_fast.tools.retry import RetryPolicy, acall_with_retries, is_transient
from sage_fast.video.types import FrameBatch


@dataclass(frozen=True)
class GenerationRequest:
    """One turn to generate: chat messages (frame parts refer to ``frames``) and sampling."""

    messages: list[dict[str, Any]]
    frames: FrameBatch | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


class Engine(Protocol):
    name: str

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def aclose(self) -> None: ...


class EngineError(RuntimeError):
    """The engine failed for good (retries exhausted, or an error no retry can fix)."""


class OpenAIEngine:
    """``OpenAIEngine("http://host:8000/v1", "allenai/SAGE-MM-Qwen3-VL-8B-SFT_RL")``: many requests in
    flight over one async HTTP client; transient failures retried here with back-off (the
    client's own retries are off so that every attempt is counted and bounded by one policy)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 600.0,
                 retry: RetryPolicy | None = None, jpeg_quality: int = 90, max_connections: int = 256) -> None:
        import os

        import httpx
        from openai import AsyncOpenAI

        if not base_url:
            raise ValueError("base_url must be the server's OpenAI-compatible root, e.g. http://localhost:8000/v1")
        self.name = f"openai:{model}@{base_url}"
        self.model = model
        self.retry = retry or RetryPolicy()
        self.jpeg_quality = jpeg_quality
        self.attempts = 0  # every HTTP attempt, retries included
        self.retries = 0
        self._rng = random.Random(self.retry.seed)
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers ignore it
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0,
                                   http_client=httpx.AsyncClient(limits=limits, timeout=timeout_s))

    @staticmethod
    def _transient(exc: BaseException) -> bool:
        import openai

        if isinstance(exc, openai.APIConnectionError):  # refused, reset, dropped, timed out
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in (408, 409, 429) or exc.status_code >= 500
        return False

    async def generate(self, request: GenerationRequest) -> Generation:
        messages = [{"role": m["role"], "content": openai_content(m["content"], request.frames,
                                                                 jpeg_quality=self.jpeg_quality)}
                    for m in request.messages]
        s = request.sampling
        started = time.perf_counter()
        def count_retry(_attempt: int, _exc: BaseException) -> None:
            self.retries += 1

        async def attempt() -> Any:
            self.attempts += 1
            return await self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=s.temperature, top_p=s.top_p,
                max_tokens=s.max_tokens, seed=s.seed, **({"logprobs": True} if s.logprobs else {}))

        tries_before = self.attempts
        try:
            response = await acall_with_retries(attempt, self.retry, rng=self._rng, on_retry=count_retry)
        except Exception as exc:
            tries = self.attempts - tries_before
            detail = f"gave up after {tries} attempts; last error " if is_transient(exc) else ""
            raise EngineError(f"{self.name}: {detail}{type(exc).__name__}: {exc}") from exc
        usage = response.usage
        choice = response.choices[0]
        return Generation(text=choice.message.content or "",
                          tokens_in=usage.prompt_tokens if usage else 0,
                          tokens_out=usage.completion_tokens if usage else 0,
                          seconds=time.perf_counter() - started,
                          logprobs=choice_logprobs(choice) if s.logprobs else None)

    async def aclose(self) -> None:
        await self._client.close()


class TransformersEngine:
    """A local transformers Qwen-VL model (loaded by :class:`~sage_fast.models.transformers_backend.TransformersVLM`)
    batching the requests that wait at each moment into one left-padded ``generate`` (text-only
    turns; a turn with frames runs on its own, as Stage-1 prompts differ in their video inputs).
    Static batches: a batch runs to its longest output, which is why real servers batch
    continuously; this engine is for CPU runs and tests."""

    def __init__(self, model: str | Path | Any, *, device: str = "cpu", max_batch: int = 16,
                 gather_s: float = 0.005) -> None:
        from sage_fast.models.transformers_backend import TransformersVLM

        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.vlm = model if isinstance(model, TransformersVLM) else TransformersVLM(model, device=device)
        self.name = f"batched-{self.vlm.name}"
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.batches: list[int] = []  # size of every generate call, for tests and reports
        self._queue: asyncio.Queue[tuple[GenerationRequest, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None

    async def generate(self, request: GenerationRequest) -> Generation:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            await asyncio.sleep(self.gather_s)  # let the turns admitted together arrive
            batch = [first]
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            live = [(r, f) for r, f in batch if not f.cancelled()]
            framed = [(r, f) for r, f in live if r.frames is not None]
            text = [(r, f) for r, f in live if r.frames is None]
            groups: dict[SamplingConfig, list] = {}
            for r, f in text:
                groups.setdefault(r.sampling, []).append((r, f))
            jobs = [[item] for item in framed] + list(groups.values())
            for job in jobs:
                try:
                    results = await asyncio.to_thread(self._run, [r for r, _ in job])
                except Exception as exc:
                    for _, f in job:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), result in zip(job, results, strict=True):
                    if not f.done():
                        f.set_result(result)

    def _run(self, requests: list[GenerationRequest]) -> list[Generation]:
        import torch

        from sage_fast.models.qwen_inputs import mm_token_type_ids
        from sage_fast.models.transformers_backend import (
            chosen_logprobs,
            generate_settings,
            split_generate_output,
        )

        vlm = self.vlm
        self.batches.append(len(requests))
        if requests[0].frames is not None:
            return [vlm.generate(requests[0].messages, requests[0].frames, requests[0].sampling)]
        started = time.perf_counter()
        texts = [vlm.prompt(r.messages, None)[0] for r in requests]
        tok = vlm.tokenizer
        tok.padding_side = "left"  # generation appends on the right
        enc = tok(texts, return_tensors="pt", padding=True)
        input_ids = enc.input_ids.to(vlm.device)
        mask = enc.attention_mask.to(vlm.device)
        kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=mask,
                                      mm_token_type_ids=mm_token_type_ids(input_ids, image_token_id=vlm.image_token_id,
                                                                          video_token_id=vlm.video_token_id),
                                      **generate_settings(requests[0].sampling, tok.pad_token_id))
        with vlm.generate_lock, torch.inference_mode():  # tools may share this model
            output, steps = split_generate_output(vlm.model.generate(**kwargs))
        seconds = time.perf_counter() - started
        eos = tok.eos_token_id
        results = []
        for i in range(len(requests)):
            new = output[i, input_ids.shape[1]:].tolist()
            if eos in new:
                new = new[:new.index(eos) + 1]
            logprobs = chosen_logprobs(steps[i], new) if steps is not None else None
            results.append(Generation(text=tok.decode(new, skip_special_tokens=True), tokens_in=int(mask[i].sum()),
                                      tokens_out=len(new), seconds=seconds, token_ids=tuple(new), logprobs=logprobs))
        return results

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None


class ContinuousTransformersEngine:
    """transformers' own continuous batching (``model.init_continuous_batching``: paged KV cache,
    requests join and leave the running batch at every decode step, as in vLLM) over a local
    Qwen-VL loaded by :class:`~sage_fast.models.transformers_backend.TransformersVLM`. Text-only
    turns go through it; a turn with frames (Stage-1) runs alone through the model's ``generate``,
    since the paged path takes token ids only. One sampling mode per engine (``sampling``): the
    manager's generation config is global; each request keeps its own ``max_tokens``.

    The paged path and ``generate`` never run at the same time. They share one model, and
    transformers' forward writes ``is_causal`` into the shared config for the duration of a call
    (the paged path passes ``is_causal=False``) and restores it afterwards; two threads doing that
    at once can leave ``is_causal=False`` in the config for good, and every later forward of the
    model (generation, training) then attends bidirectionally. So the paged path holds the model's
    ``generate_lock`` while any of its requests are in flight, and a waiting ``generate`` (a
    Stage-1 turn here, or a tool sharing the model) stops new paged requests until it has run."""

    def __init__(self, model: str | Path | Any, *, device: str = "cpu", sampling: SamplingConfig | None = None,
                 kv_tokens: int = 65_536, max_batch_tokens: int = 2048, max_requests: int = 64) -> None:
        """``kv_tokens`` sizes the paged KV cache; the sizes are explicit because transformers infers
        them from free memory, which on a CPU host means most of the machine's RAM."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from sage_fast.models.transformers_backend import TransformersVLM

        self.vlm = model if isinstance(model, TransformersVLM) else TransformersVLM(model, device=device)
        self.name = f"continuous-{self.vlm.name}"
        self.sampling = sampling or SamplingConfig()
        tok = self.vlm.tokenizer
        s = self.sampling
        config = GenerationConfig(max_new_tokens=s.max_tokens, do_sample=s.temperature > 0,
                                  temperature=s.temperature if s.temperature > 0 else None,
                                  top_p=s.top_p if s.temperature > 0 else None,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        if min(kv_tokens, max_batch_tokens, max_requests) < 1:
            raise ValueError(f"kv_tokens, max_batch_tokens and max_requests must be >= 1, got {kv_tokens}, "
                             f"{max_batch_tokens}, {max_requests}")
        page = 256
        batching = ContinuousBatchingConfig(page_size=page, num_blocks=max(1, -(-kv_tokens // page)),
                                            max_batch_tokens=max_batch_tokens, max_requests_per_batch=max_requests)
        self._manager = self.vlm.model.init_continuous_batching(generation_config=config,
                                                                continuous_batching_config=batching)
        self._manager.start()
        self._gate: asyncio.Condition | None = None  # made in the running loop
        self._paged_in_flight = 0
        self._framed_waiting = 0

    def _condition(self) -> asyncio.Condition:
        if self._gate is None:
            self._gate = asyncio.Condition()
        return self._gate

    async def _paged_enter(self) -> None:
        gate = self._condition()
        async with gate:
            await gate.wait_for(lambda: self._framed_waiting == 0)
            if self._paged_in_flight == 0:  # the first paged request takes the model from generate()
                lock = self.vlm.generate_lock
                taking = asyncio.ensure_future(asyncio.to_thread(lock.acquire))
                try:
                    await asyncio.shield(taking)
                except asyncio.CancelledError:  # the thread still gets the lock: hand it back then
                    taking.add_done_callback(lambda _: lock.release())
                    raise
            self._paged_in_flight += 1

    async def _paged_exit(self) -> None:
        gate = self._condition()
        async with gate:
            self._paged_in_flight -= 1
            if self._paged_in_flight == 0:
                self.vlm.generate_lock.release()
                gate.notify_all()

    async def _generate_alone(self, request: GenerationRequest) -> Generation:
        """A turn with frames: ``generate`` takes the model's lock, so it waits until no paged request runs."""
        gate = self._condition()
        async with gate:
            self._framed_waiting += 1
        try:
            return await asyncio.to_thread(self.vlm.generate, request.messages, request.frames, request.sampling)
        finally:
            async with gate:
                self._framed_waiting -= 1
                gate.notify_all()

    async def generate(self, request: GenerationRequest) -> Generation:
        s = request.sampling
        if (s.temperature, s.top_p) != (self.sampling.temperature, self.sampling.top_p):
            raise ValueError(f"this engine samples with temperature={self.sampling.temperature}, "
                             f"top_p={self.sampling.top_p}; got {s.temperature}, {s.top_p} (build one engine "
                             "per sampling mode)")
        started = time.perf_counter()
        if request.frames is not None:
            return await self._generate_alone(request)
        text, _ = self.vlm.prompt(request.messages, None)
        ids = self.vlm.tokenizer(text).input_ids
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        rid = uuid.uuid4().hex

        def deliver(output: Any) -> None:
            if output.is_finished() and not done.done():
                done.set_result(output)

        await self._paged_enter()
        try:
            self._manager.register_result_handler(rid, deliver)
            self._manager.add_request(ids, request_id=rid, max_new_tokens=s.max_tokens)
            try:
                output = await done
            except asyncio.CancelledError:
                self._manager.cancel_request(rid)
                raise
        finally:
            await self._paged_exit()
        if output.error:
            raise EngineError(f"{self.name}: {output.error}")
        tokens = list(output.generated_tokens)
        # transformers' paged outputs carry no per-token scores, so logprobs stay None here
        return Generation(text=self.vlm.tokenizer.decode(tokens, skip_special_tokens=True), tokens_in=len(ids),
                          tokens_out=len(tokens), seconds=time.perf_counter() - started, token_ids=tuple(tokens))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._manager.stop, True)


class VLLMEngine:
    """vLLM's in-process ``AsyncLLMEngine`` (needs ``pip install vllm`` and a GPU; not testable on
    the project's CPU machines, so this adapter is unexercised by the test-suite). Prompts are
    Qwen ChatML; Stage-1 frames go as one video in ``multi_modal_data``."""

    def __init__(self, model: str, **engine_args: Any) -> None:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as exc:
            raise ImportError("VLLMEngine needs vLLM (`pip install vllm`, CUDA only); use OpenAIEngine against "
                              "a `vllm serve` server, or TransformersEngine on CPU") from exc
        self.name = f"vllm:{model}"
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=model, **engine_args))

    @staticmethod
    def _prompt(request: GenerationRequest) -> dict[str, Any]:
        chunks = []
        for message in request.messages:
            content = message["content"]
            if not isinstance(content, str):
                parts, video = [], False
                for part in content:
                    if part.get("type") == "frame" and not video:
                        parts.append("<|vision_start|><|video_pad|><|vision_end|>")
                        video = True
                    elif part.get("type") == "text":
                        parts.append(part["text"])
                content = "".join(parts)
            chunks.append(f"<|im_start|>{message['role']}\n{content}<|im_end|>\n")
        prompt: dict[str, Any] = {"prompt": "".join(chunks) + "<|im_start|>assistant\n"}
        if request.frames is not None:
            prompt["multi_modal_data"] = {"video": request.frames.data.permute(0, 2, 3, 1).cpu().numpy()}
        return prompt

    async def generate(self, request: GenerationRequest) -> Generation:
        from vllm import SamplingParams

        s = request.sampling
        # logprobs=0: vLLM returns the sampled token's own log-probability at each step
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed,
                                logprobs=0 if s.logprobs else None)
        started = time.perf_counter()
        final = None
        async for output in self._engine.generate(self._prompt(request), params, uuid.uuid4().hex):
            final = output
        if final is None:
            raise EngineError(f"{self.name}: the engine returned no output")
        completion = final.outputs[0]
        token_ids = tuple(completion.token_ids)
        logprobs = None
        if s.logprobs and completion.logprobs is not None:
            logprobs = tuple(float(step[token].logprob) for step, token in zip(completion.logprobs, token_ids,
                                                                              strict=True))
        return Generation(text=completion.text, tokens_in=len(final.prompt_token_ids or []),
                          tokens_out=len(token_ids), seconds=time.perf_counter() - started, token_ids=token_ids,
                          logprobs=logprobs)

    async def aclose(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


class BusyMeter:
    """Wraps an engine and measures the time it had at least one request in flight (engine-busy)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.in_flight = 0
        self.busy_s = 0.0
        self.requests = 0
        self._since = 0.0

    async def generate(self, request: GenerationRequest) -> Generation:
        if self.in_flight == 0:
            self._since = time.perf_counter()
        self.in_flight += 1
        self.requests += 1
        try:
            return await self.engine.generate(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.busy_s += time.perf_counter() - self._since

    async def aclose(self) -> None:
        await self.engine.aclose()
