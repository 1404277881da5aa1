"""The batching generation engine's public face: load a model, turn requests into rows, hand back results.

Everything that runs a model on this machine goes through one ``Engine``: the HTTP server, the terminal
chat and the ``local`` backend of generation, feedback and evaluation. Many threads (or one asyncio
loop) submit requests; the worker of ``zephyr.generation.scheduler`` batches whatever is in flight into
shared forward passes. Three ways in, all feeding the same worker:

- ``engine.generate(conversations, params)``: blocking batch API, one ``Completion`` per conversation;
- ``engine.submit(prompt_ids, params)`` then ``for delta in handle``: blocking stream (terminal chat);
- ``engine.submit(prompt_ids, params, loop=loop)`` then ``async for delta in handle``: asyncio stream
  (the HTTP server). Leaving the loop early cancels the request and frees its slot.

A ``max_tokens`` longer than the room the prompt leaves in the context is handled by one explicit
policy, ``submit(..., on_overflow=)``: ``"refuse"`` (the default, and OpenAI's behaviour: the server
answers 400 naming ``max_tokens``) or ``"clip"`` (generate up to the end of the context: what batch
callers such as the local backend want). A prompt that leaves no room at all is always refused.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from zephyr.errors import ZephyrError
from zephyr.generation.params import InvalidRequest, SamplingParams
from zephyr.generation.scheduler import Delta, Row, Scheduler, TokenLogprob, row_generator

__all__ = [
    "Choice",
    "Completion",
    "Delta",
    "Engine",
    "EngineClosed",
    "EngineOverloaded",
    "RequestHandle",
    "TokenLogprob",
]

Overflow = Literal["refuse", "clip"]


class EngineOverloaded(ZephyrError):
    """Too many requests are already waiting; the client should retry later."""


class EngineClosed(ZephyrError):
    """The engine was shut down before the request finished."""


@dataclass
class Choice:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None  # one per token of token_ids, when asked for


@dataclass
class Completion:
    """The result of one request: ``n`` choices and the token counts the OpenAI API reports as usage."""

    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int


_DONE = object()  # end-of-request marker on a handle's event queue


class RequestHandle:
    """One submitted request: a stream of ``Delta`` events, ending when all its choices have finished.

    A request holds one or more prompts; each gets ``params.n`` choices, and choice ``j`` of prompt
    ``i`` has index ``i * n + j`` (OpenAI's numbering for /v1/completions with a list of prompts).
    The worker thread writes; one consumer reads, either blocking (``for``) or from asyncio
    (``async for``, when submitted with a ``loop``). Breaking out of either loop cancels the request.
    """

    def __init__(self, prompts: list[list[int]], params: SamplingParams, loop=None):
        self.prompts = prompts
        self.params = params
        self.prompt_tokens = sum(map(len, prompts))
        self.completion_tokens = 0
        self.cancelled = False
        self.rows: list[Row] = []
        self._ended = False
        self._loop = loop
        self._events = asyncio.Queue() if loop is not None else queue.Queue()

    def cancel(self) -> None:
        """Stop generating; the worker drops this request's rows at its next step."""
        self.cancelled = True

    def emit(self, item) -> None:
        """Called by the worker thread: a Delta, an exception, or the end marker."""
        if self._loop is None:
            self._events.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening any more
            self.cancelled = True

    def end_if_complete(self) -> None:
        """Called by the worker: send the end marker once every choice has finished (or on cancel)."""
        if not self._ended and (self.cancelled or all(r.finish_reason for r in self.rows)):
            self._ended = True
            self.emit(_DONE)

    def __iter__(self):
        try:
            while (item := self._events.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    async def __aiter__(self):
        try:
            while (item := await self._events.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def result(self) -> Completion:
        """Block until the request finishes and return it whole."""
        for _ in self:
            pass
        return self.completion()

    async def aresult(self) -> Completion:
        async for _ in self:
            pass
        return self.completion()

    def completion(self) -> Completion:
        choices = [
            Choice(
                r.index,
                r.text,
                r.token_ids,
                r.finish_reason or "length",
                r.logprobs if r.params.top_logprobs is not None else None,
            )
            for r in self.rows
        ]
        return Completion(choices, self.prompt_tokens, self.completion_tokens)


class Engine:
    """Serve generation requests for one model, batching whatever is in flight.

    ``max_batch_size`` bounds the rows decoded together; ``max_prefill_tokens`` bounds the prompt
    tokens admitted in one step; ``max_pending`` bounds the queue of requests waiting for a slot;
    ``default_max_tokens`` caps a request that sets no ``max_tokens``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        default_max_tokens: int = 1024,
        max_prefill_tokens: int = 8192,
        max_pending: int = 4096,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.default_max_tokens = default_max_tokens
        self.max_pending = max_pending
        self.context_length = _context_length(model, max_model_len)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._vocab = len(tokenizer)
        self._worker = Scheduler(
            self.model,
            tokenizer,
            self.eos_ids,
            max_batch_size=max_batch_size,
            max_prefill_tokens=max_prefill_tokens,
        )
        self._closing = False
        self._lock = threading.Lock()
        self._score_lock = threading.Lock()

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        chat_template: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        **kwargs,
    ) -> Engine:
        """Load a model spec (hub id, directory, .gguf, embedded alias, LoRA adapter) and build an engine."""
        from zephyr.models import ModelArguments, load_model, load_tokenizer

        model = load_model(spec, ModelArguments(model_name_or_path=spec, torch_dtype=dtype))
        if hasattr(model, "merge_and_unload"):  # a LoRA adapter: merged weights decode faster
            model = model.merge_and_unload()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model.to(device), load_tokenizer(spec, chat_template), **kwargs)

    # ---- prompts and scores ---------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """Prompt ids exactly as training renders them: the chat template plus the generation prompt."""
        from jinja2 import TemplateError

        from zephyr.chat import encode_prompt

        try:
            return encode_prompt(self.tokenizer, messages)
        except TemplateError as exc:  # templates may refuse a conversation (e.g. roles that do not alternate)
            raise InvalidRequest(
                f"The chat template rejected the conversation: {exc}", param="messages"
            ) from exc

    def encode_text(self, text: str) -> list[int]:
        from zephyr.chat import encode

        return encode(self.tokenizer, text)

    def next_token_logprobs(self, prompt_ids: Sequence[int], candidates: Sequence[int]) -> list[float]:
        """Log-probabilities of ``candidates`` as the very next token after ``prompt_ids`` (one forward pass,
        fp32 log-softmax over the tokenizer's vocabulary). Used to read a judge's verdict from its first
        token's distribution instead of from sampled text. Calls are serialised so that many caller threads
        do not oversubscribe the cores; they run beside the generation worker, which they do not disturb."""
        if len(prompt_ids) > self.context_length:
            raise InvalidRequest(
                f"The prompt has {len(prompt_ids)} tokens; the context holds {self.context_length}",
                param="messages",
            )
        ids = torch.tensor([list(prompt_ids)], device=self.model.device)
        with self._score_lock, torch.inference_mode():
            logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1, : self._vocab]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return [logprobs[c].item() for c in candidates]

    # ---- requests -------------------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        *,
        loop=None,
        on_overflow: Overflow = "refuse",
    ) -> RequestHandle:
        """Queue one prompt. Raises InvalidRequest for a prompt that does not fit the context, and for a
        ``max_tokens`` that does not fit after it unless ``on_overflow="clip"`` (then: up to the context)."""
        return self.submit_many([prompt_ids], params, loop=loop, on_overflow=on_overflow)

    def submit_many(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | None = None,
        *,
        loop=None,
        on_overflow: Overflow = "refuse",
    ) -> RequestHandle:
        """Queue several prompts as one request (their rows are admitted together)."""
        params = params or SamplingParams()
        if not prompts:
            raise InvalidRequest("No prompt given", param="prompt")
        if on_overflow not in ("refuse", "clip"):
            raise ValueError(f"on_overflow must be 'refuse' or 'clip'; got {on_overflow!r}")
        handle = RequestHandle([list(p) for p in prompts], params, loop=loop)
        if len(prompts) * params.n > self.max_batch_size:
            raise InvalidRequest(
                f"{len(prompts)} prompt(s) x `n`={params.n} choices exceed the {self.max_batch_size} rows this "
                "server batches; lower `n` or send fewer prompts per request",
                param="n",
            )
        limits = [self._max_new_tokens(p, params.max_tokens, on_overflow) for p in handle.prompts]
        handle.rows = [
            Row(handle, i * params.n + j, prompt, limit, row_generator(params, j))
            for i, (prompt, limit) in enumerate(zip(handle.prompts, limits, strict=True))
            for j in range(params.n)
        ]
        if self._worker.pending >= self.max_pending:
            raise EngineOverloaded(f"{self.max_pending} requests are already waiting; retry later")
        self.start()
        self._worker.put(handle)
        return handle

    def _max_new_tokens(self, prompt: list[int], asked: int | None, on_overflow: Overflow) -> int:
        if not prompt:
            raise InvalidRequest("The prompt is empty; send some text", param="prompt")
        room = self.context_length - len(prompt)
        if room < 1:
            raise InvalidRequest(
                f"The prompt has {len(prompt)} tokens but the context holds {self.context_length}; "
                "shorten the conversation",
                param="messages",
            )
        if asked is None:
            return min(room, self.default_max_tokens)
        if asked > room and on_overflow == "refuse":
            raise InvalidRequest(
                f"`max_tokens` is {asked} but only {room} tokens fit after the {len(prompt)}-token "
                f"prompt (context {self.context_length}); lower `max_tokens`",
                param="max_tokens",
            )
        return min(asked, room)

    def generate(
        self,
        conversations: Sequence[Sequence[dict]],
        params: SamplingParams | None = None,
        *,
        progress: bool = False,
    ) -> list[Completion]:
        """Replies to many conversations, batched, in input order. ``progress`` shows a tqdm bar."""
        prompts = [self.encode_chat(m) for m in conversations]  # a bad conversation fails before any work
        return self._run_all(prompts, params, progress, "generate")

    def complete(
        self, prompts: Sequence[str], params: SamplingParams | None = None, *, progress: bool = False
    ) -> list[Completion]:
        """Continuations of raw text prompts (no chat template), batched, in input order."""
        return self._run_all([self.encode_text(p) for p in prompts], params, progress, "complete")

    def _run_all(self, prompts: list[list[int]], params, progress: bool, desc: str) -> list[Completion]:
        """Keep a couple of batches' worth of requests queued (not all of them: memory, and the pending cap)."""
        from tqdm.auto import tqdm

        window, pending, results = 2 * self.max_batch_size, deque(), []
        with tqdm(total=len(prompts), desc=desc, unit="req", disable=not progress) as bar:
            for prompt in prompts:
                if len(pending) >= window:
                    results.append(pending.popleft().result())
                    bar.update()
                pending.append(self.submit(prompt, params))
            while pending:
                results.append(pending.popleft().result())
                bar.update()
        return results

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Engine:
        with self._lock:
            if self._closing:
                raise EngineClosed("The engine has been closed")
            self._worker.start()
        return self

    def close(self) -> None:
        """Stop the worker; requests still in flight end with EngineClosed."""
        with self._lock:
            self._closing = True
        self._worker.stop(EngineClosed("The engine was shut down"))

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def active_rows(self) -> int:
        return self._worker.active_rows


def _context_length(model, override: int | None) -> int:
    native = getattr(model.config, "max_position_embeddings", None) or 2048
    return min(native, override) if override else native


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    """Every id that ends a reply: the tokenizer's EOS (the template's end of turn) and the model's own."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return tuple(dict.fromkeys(i for i in ids if i is not None))
