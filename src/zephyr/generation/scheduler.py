"""The engine's worker: one thread that owns the model and decodes every request in flight together.

At each iteration the worker moves newly submitted requests into a waiting line, admits as many as fit
the free rows and this step's prefill budget (one prefill pass for all newcomers), merges their KV
caches into the running batch, and runs one decode step for every active row. A finished, stopped or
cancelled row leaves the batch at once, so its slot goes to the next request without waiting for the
rest of the batch (iteration-level, "continuous" batching).

Rows are left-padded: all rows share one KV cache of shape ``[rows, heads, T, head_dim]`` plus an
attention mask ``[rows, T]``; a row's position ids count only its real tokens, so padding never shifts
its rotary positions. Each row samples with its own ``torch.Generator``, so a seeded request gets the
same tokens alone or in a full batch.

This module knows requests only as handles (``zephyr.generation.engine.RequestHandle``) it reads
parameters from and writes ``Delta`` events to; admission rules and the public API are the engine's.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from zephyr.generation.params import SamplingParams
from zephyr.generation.stops import scan_stops, stable_length

if TYPE_CHECKING:
    from zephyr.generation.engine import RequestHandle

log = logging.getLogger(__name__)


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
class Row:
    """One sequence in the batch: a choice of a request, with its sampling state and text so far."""

    handle: RequestHandle
    index: int
    prompt_ids: list[int]
    max_new_tokens: int
    generator: torch.Generator
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already sent to the client
    scanned: int = 0  # characters of ``text`` already searched for stop strings (its stable part)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # filled only when the request asks
    pending_logprob: TokenLogprob | None = None  # the sampled token's, until accept() keeps or drops it

    @property
    def params(self) -> SamplingParams:
        return self.handle.params

    def accept(self, token: int, worker: Scheduler) -> None:
        """Take one sampled token: detokenize, look for stop strings, emit what is safe to show."""
        self.handle.completion_tokens += 1
        if token in worker.eos_ids:
            return self.finish("stop", len(self.text))
        self.token_ids.append(token)
        if self.pending_logprob is not None:
            self.logprobs.append(self.pending_logprob)
            self.pending_logprob = None
        # No clean-up of spaces: it can rewrite already-streamed text ("a ," -> "a,") as tokens arrive.
        self.text = worker.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        stop_at, hold = scan_stops(self.text, self.params.stop, self.scanned)
        self.scanned = stable_length(self.text)
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


def row_generator(params: SamplingParams, choice: int) -> torch.Generator:
    """Choice ``choice``'s own random stream: seeded with ``params.seed_of(choice)``, or from the OS."""
    g = torch.Generator()
    seed = params.seed_of(choice)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, T]`` token ids and attention mask with each sequence right-aligned."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def _pad_time(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a mask ``[B, T]`` or cache tensor ``[B, H, T, D]`` with zeros to ``width`` time steps."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Batch:
    """The running rows and their shared, left-padded KV cache."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.rows: list[Row] = []
        self.cache = None  # a transformers DynamicCache
        self.mask: torch.Tensor | None = None  # [rows, T]
        self.next_ids: torch.Tensor | None = None  # [rows, 1]: sampled, not yet fed to the model

    def extend(self, rows: list[Row], cache, mask: torch.Tensor, next_ids: torch.Tensor) -> None:
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


def record_logprobs(logits: torch.Tensor, rows: Sequence[Row], tokens: Sequence[int]) -> None:
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


def sample(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
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


class Scheduler:
    """The worker thread and its state: submitted requests, the waiting line, and the running batch.

    ``max_batch_size`` bounds the rows decoded together; ``max_prefill_tokens`` bounds the prompt tokens
    admitted in one step (so a burst of long prompts does not stall running rows for long).
    """

    def __init__(
        self, model, tokenizer, eos_ids: tuple[int, ...], *, max_batch_size: int, max_prefill_tokens: int
    ):
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, eos_ids
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._vocab = len(tokenizer)
        # transformers 5.x renamed the forward's cache argument (past_key_values -> cache, the old
        # name deprecated from 5.2x); pass whichever this model's forward declares.
        forward_params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        self._incoming: queue.Queue[RequestHandle | None] = queue.Queue()
        self._waiting: deque[RequestHandle] = deque()
        self._batch = Batch()
        self._thread: threading.Thread | None = None
        self._closing = False

    @property
    def active_rows(self) -> int:
        return len(self._batch.rows)

    @property
    def pending(self) -> int:
        """Requests submitted and not yet admitted to the batch."""
        return self._incoming.qsize() + len(self._waiting)

    def put(self, handle: RequestHandle) -> None:
        self._incoming.put(handle)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="zephyr-engine", daemon=True)
            self._thread.start()

    def stop(self, error: BaseException) -> None:
        """Stop the worker (after its current step) and end every request still in flight with ``error``."""
        self._closing = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._incoming.put(None)  # wake the worker if it is waiting for work
            thread.join()
        self._fail_all(error)

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

    def _admit(self) -> list[Row]:
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

    def _prefill(self, rows: list[Row]) -> None:
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

    def _accept(self, rows: list[Row], tokens: list[int]) -> None:
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
        self._batch = Batch()
        self._waiting.clear()
