"""A generation engine that batches concurrent requests into shared forward passes.

One worker thread owns the model. Requests arrive through a thread-safe queue; at every iteration
the worker admits waiting requests (one prefill pass for all newcomers), merges their KV caches
into the running batch, and runs one decode step for every active row. A finished, stopped or
cancelled row leaves the batch at once, so its slot goes to the next request without waiting for
the rest of the batch (iteration-level, "continuous" batching).

Rows are left-padded: all rows share one KV cache of shape ``[rows, heads, T, head_dim]`` plus an
attention mask ``[rows, T]``; a row's position ids count only its real tokens, so padding never
shifts its rotary positions.

Three ways in, all feeding the same worker:

- ``engine.generate(conversations, params)``: blocking batch API, one ``Completion`` per conversation;
- ``engine.submit(prompt_ids, params)`` then ``for delta in handle``: blocking stream (terminal chat);
- ``engine.submit(prompt_ids, params, loop=loop)`` then ``async for delta in handle``: asyncio stream
  (the HTTP server). Leaving the loop early cancels the request and frees its slot.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from zephyr.errors import ZephyrError

log = logging.getLogger(__name__)


class InvalidRequest(ZephyrError):
    """A request the engine cannot serve as asked; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class EngineOverloaded(ZephyrError):
    """Too many requests are already waiting; the client should retry later."""


class EngineClosed(ZephyrError):
    """The engine was shut down before the request finished."""


@dataclass
class SamplingParams:
    """How to sample one request. ``temperature=0`` is greedy decoding.

    ``max_tokens=None`` means "up to the context", capped by the engine's ``default_max_tokens``.
    With ``n > 1`` and a ``seed``, choice ``i`` samples with seed ``seed + i``.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    n: int = 1
    # None: no log-probs. k >= 0: record each generated token's log-prob (under the model's own
    # distribution, before temperature and top-p) and its k most likely alternatives.
    top_logprobs: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
        checks = [
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "must be at least 1"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 means greedy)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("n", self.n >= 1, "must be at least 1"),
            (
                "top_logprobs",
                self.top_logprobs is None or 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
                f"must be between 0 and {MAX_TOP_LOGPROBS}",
            ),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidRequest(f"`{name}` {rule}; got {getattr(self, name)!r}", param=name)


@dataclass
class Delta:
    """A piece of one choice's text; ``finish_reason`` ("stop" or "length") is set on its last piece."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass
class TokenLogprob:
    """One generated token's log-prob and the most likely alternatives at its position, best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


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


MAX_TOP_LOGPROBS = 20  # as the OpenAI API

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
        self.rows: list[_Row] = []
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


@dataclass
class _Row:
    """One sequence in the batch: a choice of a request, with its sampling state and text so far."""

    handle: RequestHandle
    index: int
    prompt_ids: list[int]
    max_new_tokens: int
    generator: torch.Generator
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already sent to the client
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # filled only when the request asks
    pending_logprob: TokenLogprob | None = None  # the sampled token's, until accept() keeps or drops it

    @property
    def params(self) -> SamplingParams:
        return self.handle.params

    def accept(self, token: int, engine: Engine) -> None:
        """Take one sampled token: detokenize, look for stop strings, emit what is safe to show."""
        self.handle.completion_tokens += 1
        if token in engine.eos_ids:
            return self.finish("stop", len(self.text))
        self.token_ids.append(token)
        if self.pending_logprob is not None:
            self.logprobs.append(self.pending_logprob)
            self.pending_logprob = None
        # No clean-up of spaces: it can rewrite already-streamed text ("a ," -> "a,") as tokens arrive.
        self.text = engine.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        stop_at, hold = _scan_stops(self.text, self.params.stop, self.emitted)
        if stop_at is not None:
            return self.finish("stop", stop_at)
        if len(self.token_ids) >= self.max_new_tokens:
            return self.finish("length", len(self.text))
        if self.text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return None
        self.send(len(self.text) - hold)

    def send(self, upto: int, finish_reason: str | None = None) -> None:
        if upto > self.emitted or finish_reason:
            self.handle.emit(Delta(self.index, self.text[self.emitted : upto], finish_reason))
            self.emitted = max(self.emitted, upto)

    def finish(self, reason: str, upto: int) -> None:
        self.text = self.text[:upto].rstrip("\ufffd")
        self.finish_reason = reason
        self.send(len(self.text), reason)


def _scan_stops(text: str, stops: Sequence[str], emitted: int) -> tuple[int | None, int]:
    """Where the first stop string starts (or None), and how many trailing characters to hold back
    because they could be the beginning of a stop string that the next tokens complete."""
    if not stops:
        return None, 0
    start = max(0, emitted - max(map(len, stops)) + 1)
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    if hits:
        return min(hits), 0
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return None, hold


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, T]`` token ids and attention mask with each sequence right-aligned."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


class _Batch:
    """The running rows and their shared, left-padded KV cache."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.rows: list[_Row] = []
        self.cache = None  # a transformers DynamicCache
        self.mask: torch.Tensor | None = None  # [rows, T]
        self.next_ids: torch.Tensor | None = None  # [rows, 1]: sampled, not yet fed to the model

    def extend(self, rows: list[_Row], cache, mask: torch.Tensor, next_ids: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.next_ids = rows, cache, mask, next_ids
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_time(old.keys, width), _pad_time(new.keys, width)])
            old.values = torch.cat([_pad_time(old.values, width), _pad_time(new.values, width)])
        self.mask = torch.cat([_pad_time(self.mask, width), _pad_time(mask, width)])
        self.next_ids = torch.cat([self.next_ids, next_ids])
        self.rows = self.rows + rows

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep``, then drop cache columns that are padding in every remaining row."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        first = int(self.mask[index].any(0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = self.mask[index, first:]
        self.next_ids = self.next_ids[index]
        self.rows = [self.rows[i] for i in keep]


def _pad_time(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a mask ``[B, T]`` or cache tensor ``[B, H, T, D]`` with zeros to ``width`` time steps."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def record_logprobs(logits: torch.Tensor, rows: Sequence[_Row], tokens: Sequence[int]) -> None:
    """For rows that asked for log-probs, the sampled token's log-prob and the top alternatives."""
    wanted = [i for i, r in enumerate(rows) if r.params.top_logprobs is not None]
    if not wanted:
        return
    logprobs = torch.log_softmax(logits[wanted].float(), dim=-1)
    k = max(rows[i].params.top_logprobs for i in wanted)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
    for j, i in enumerate(wanted):
        keep = rows[i].params.top_logprobs
        top = list(zip(top_ids[j, :keep].tolist(), top_values[j, :keep].tolist(), strict=True))
        rows[i].pending_logprob = TokenLogprob(tokens[i], logprobs[j, tokens[i]].item(), top)


def sample(logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
    """One token per row from ``[rows, vocab]`` logits with each row's temperature, top-p and generator."""
    picked = logits.argmax(-1)
    temps = torch.tensor([r.params.temperature for r in rows], device=logits.device)
    sampled = (temps > 0).nonzero().flatten()
    if sampled.numel():
        probs = torch.softmax(logits[sampled].float() / temps[sampled, None], dim=-1)
        top_p = torch.tensor([rows[i].params.top_p for i in sampled.tolist()], device=logits.device)
        order = None
        if (top_p < 1).any():
            # Nucleus: keep the smallest set of top tokens whose mass reaches top_p (always >= 1 token).
            probs, order = probs.sort(dim=-1, descending=True)
            probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p[:, None], 0.0)
        for j, i in enumerate(sampled.tolist()):
            k = torch.multinomial(probs[j].cpu(), 1, generator=rows[i].generator).item()
            picked[i] = order[j, k] if order is not None else k
    return picked.tolist()


class Engine:
    """Serve generation requests for one model, batching whatever is in flight.

    ``max_batch_size`` bounds the rows decoded together; ``max_prefill_tokens`` bounds the prompt
    tokens admitted in one step (so a burst of long prompts does not stall running rows for long);
    ``max_pending`` bounds the queue of requests waiting for a slot.
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
        self.max_prefill_tokens = max_prefill_tokens
        self.max_pending = max_pending
        self.context_length = _context_length(model, max_model_len)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._vocab = len(tokenizer)
        # transformers 5.x renamed the forward's cache argument (past_key_values -> cache, the old
        # name deprecated from 5.2x); pass whichever this model's forward declares.
        forward_params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        self._incoming: queue.Queue[RequestHandle | None] = queue.Queue()
        self._waiting: deque[RequestHandle] = deque()
        self._batch = _Batch()
        self._thread: threading.Thread | None = None
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

        model = load_model(spec, ModelArguments(torch_dtype=dtype))
        if hasattr(model, "merge_and_unload"):  # a LoRA adapter: merged weights decode faster
            model = model.merge_and_unload()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model.to(device), load_tokenizer(spec, chat_template), **kwargs)

    # ---- requests -------------------------------------------------------------------------------

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

    def submit(
        self, prompt_ids: list[int], params: SamplingParams | None = None, *, loop=None
    ) -> RequestHandle:
        """Queue one prompt; raises InvalidRequest for a prompt or ``max_tokens`` that does not fit."""
        return self.submit_many([prompt_ids], params, loop=loop)

    def submit_many(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, *, loop=None
    ) -> RequestHandle:
        """Queue several prompts as one request (their rows are admitted together)."""
        params = params or SamplingParams()
        if not prompts:
            raise InvalidRequest("No prompt given", param="prompt")
        handle = RequestHandle([list(p) for p in prompts], params, loop=loop)
        if len(prompts) * params.n > self.max_batch_size:
            raise InvalidRequest(
                f"{len(prompts)} prompt(s) x `n`={params.n} choices exceed the {self.max_batch_size} rows this "
                "server batches; lower `n` or send fewer prompts per request",
                param="n",
            )
        limits = [self._max_new_tokens(p, params.max_tokens) for p in handle.prompts]
        handle.rows = [
            _Row(handle, i * params.n + j, prompt, limit, _generator(params, j))
            for i, (prompt, limit) in enumerate(zip(handle.prompts, limits, strict=True))
            for j in range(params.n)
        ]
        if self._incoming.qsize() + len(self._waiting) >= self.max_pending:
            raise EngineOverloaded(f"{self.max_pending} requests are already waiting; retry later")
        self.start()
        self._incoming.put(handle)
        return handle

    def _max_new_tokens(self, prompt: list[int], asked: int | None) -> int:
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
        if asked > room:
            raise InvalidRequest(
                f"`max_tokens` is {asked} but only {room} tokens fit after the {len(prompt)}-token "
                f"prompt (context {self.context_length}); lower `max_tokens`",
                param="max_tokens",
            )
        return asked

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
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="zephyr-engine", daemon=True)
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker; requests still in flight end with EngineClosed."""
        with self._lock:
            self._closing = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._incoming.put(None)  # wake the worker if it is waiting for work
            thread.join()
        self._fail_all(EngineClosed("The engine was shut down"))

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def active_rows(self) -> int:
        return len(self._batch.rows)

    # ---- the worker -----------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._closing:
                try:
                    self._step()
                except Exception as exc:  # a failed forward pass fails its requests, not the engine
                    log.exception("Generation step failed")
                    self._fail_all(exc)

    def _step(self) -> None:
        self._pull(block=not self._batch.rows and not self._waiting)
        newcomers = self._admit()
        if newcomers:
            self._prefill(newcomers)
        if self._batch.rows:
            self._decode()

    def _pull(self, block: bool) -> None:
        """Move submitted requests into the waiting line (waiting briefly for one when idle)."""
        try:
            item = self._incoming.get(timeout=0.5) if block else self._incoming.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass

    def _admit(self) -> list[_Row]:
        """Rows for the waiting requests that fit in the free slots and this step's prefill budget."""
        rows, budget = [], self.max_prefill_tokens
        free = self.max_batch_size - len(self._batch.rows)
        while self._waiting:
            handle = self._waiting[0]
            if handle.cancelled:
                self._waiting.popleft()
                continue
            cost = sum(len(r.prompt_ids) for r in handle.rows)
            if len(handle.rows) > free or (rows and cost > budget):
                break
            self._waiting.popleft()
            rows += handle.rows
            free, budget = free - len(handle.rows), budget - cost
        return rows

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of the last position; ``cache`` is extended in place."""
        device = self.model.device
        # A row's position is the count of its real tokens before this one, whatever the padding.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        logits = out.logits[:, -1]
        if logits.shape[-1] > self._vocab:  # rows past the tokenizer's vocabulary are padding
            logits[:, self._vocab :] = float("-inf")
        return logits

    def _prefill(self, rows: list[_Row]) -> None:
        from transformers import DynamicCache

        ids, mask = _left_pad([r.prompt_ids for r in rows], pad_id=self.eos_ids[0])
        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        tokens = sample(logits, rows)
        record_logprobs(logits, rows, tokens)
        next_ids = torch.tensor(tokens, device=self.model.device)[:, None]
        self._batch.extend(rows, cache, mask.to(self.model.device), next_ids)
        self._accept(rows, tokens)

    def _decode(self) -> None:
        batch = self._batch
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        logits = self._forward(batch.next_ids, mask, batch.cache)
        batch.mask = mask
        tokens = sample(logits, batch.rows)
        record_logprobs(logits, batch.rows, tokens)
        batch.next_ids = torch.tensor(tokens, device=self.model.device)[:, None]
        self._accept(batch.rows, tokens)

    def _accept(self, rows: list[_Row], tokens: list[int]) -> None:
        """Feed sampled tokens to their rows, then drop finished and cancelled rows from the batch."""
        for row, token in zip(rows, tokens, strict=True):
            if not row.handle.cancelled:
                row.accept(token, self)
        keep = []
        for i, row in enumerate(self._batch.rows):
            if row.finish_reason is None and not row.handle.cancelled:
                keep.append(i)
            else:
                row.handle.end_if_complete()
        self._batch.keep(keep)

    def _fail_all(self, exc: BaseException) -> None:
        handles = {id(r.handle): r.handle for r in self._batch.rows}
        handles.update({id(h): h for h in self._waiting})
        while True:
            try:
                h = self._incoming.get_nowait()
            except queue.Empty:
                break
            if h is not None:
                handles[id(h)] = h
        for h in handles.values():
            h.emit(exc)
        self._batch = _Batch()
        self._waiting.clear()


def _generator(params: SamplingParams, index: int) -> torch.Generator:
    g = torch.Generator()
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(params.seed + index)
    return g


def _context_length(model, override: int | None) -> int:
    native = getattr(model.config, "max_position_embeddings", None) or 2048
    return min(native, override) if override else native


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    """Every id that ends a reply: the tokenizer's EOS (the template's end of turn) and the model's own."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return tuple(dict.fromkeys(i for i in ids if i is not None))
