"""The ``vllm`` backend: vLLM's offline ``LLM`` engine, fed by many threads at once.

vLLM's offline engine wants one big batch, but the stages call backends row by row from many threads
(that is what keeps the other backends busy). ``Coalescer`` bridges the two: concurrent calls that
arrive while a batch runs are merged into the next one. Needs vLLM and, in practice, a CUDA GPU; the
error without it says how to get it or what to use instead.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from concurrent.futures import Future

from zephyr.generation.backends import Backend, BackendSpec, batch_results
from zephyr.generation.params import BackendError, Generation, SamplingParams


class Coalescer:
    """Merge concurrent calls into one batch call, so many threads working row by row still feed an
    offline engine (which wants everything at once) large batches.

    ``run_batch(items)`` gets the items of every call waiting when the worker wakes, concatenated, and
    returns one result per item (or raises, failing the whole batch).
    """

    def __init__(self, run_batch, name: str = "coalescer"):
        self._run_batch = run_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def __call__(self, items: list) -> list:
        future: Future = Future()
        self._queue.put((items, future))
        return future.result()

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            calls = [first]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                calls.append(more)
            self._serve(calls)

    def _serve(self, calls: list) -> None:
        items = [item for call_items, _ in calls for item in call_items]
        try:
            results = self._run_batch(items)
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            for _, future in calls:
                future.set_exception(exc)
            return
        start = 0
        for call_items, future in calls:
            future.set_result(results[start : start + len(call_items)])
            start += len(call_items)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)


class VLLMBackend(Backend):
    """vLLM's offline ``LLM`` engine (needs vLLM and, in practice, a CUDA GPU)."""

    def __init__(self, spec: BackendSpec):
        if importlib.util.find_spec("vllm") is None:
            raise BackendError(
                "Backend `type: vllm` needs vLLM, which is not installed here. Install it with `pip install vllm` "
                "or `pip install 'zephyr[vllm]'` (Linux with a CUDA GPU), or use `type: local` (transformers), "
                "or `type: openai` with the `base_url` of a running `vllm serve`."
            )
        from vllm import LLM

        from zephyr.chat import resolve_template
        from zephyr.models import resolve_model

        self.name = spec.model_id
        self._template = resolve_template(spec.chat_template)
        self.llm = LLM(
            model=resolve_model(spec.model), dtype=spec.dtype or "auto", max_model_len=spec.max_model_len
        )
        self._batches = Coalescer(self._run_batch, name="zephyr-vllm")

    def generate(self, conversations, params: SamplingParams) -> list[list[Generation]]:
        items = [(list(c), params, j) for c in conversations for j in range(params.n)]
        try:
            flat = self._batches(items)
        except Exception as exc:  # noqa: BLE001 - vLLM fails a whole batch at once: every row in it failed
            reason = f"vLLM failed: {type(exc).__name__}: {exc}"
            failures = {i: BackendError(reason, index=i) for i in range(len(conversations))}
            batch_results([None] * len(conversations), failures)  # raises the first, carrying the rest
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(conversations))]

    def _run_batch(self, items: list) -> list[Generation]:
        import vllm

        sampling = [
            vllm.SamplingParams(
                n=1,
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,  # None: up to the context
                stop=list(p.stop) or None,
                seed=p.seed_of(j),
            )
            for _, p, j in items
        ]
        outputs = self.llm.chat(
            [c for c, _, _ in items], sampling_params=sampling, use_tqdm=False, chat_template=self._template
        )
        return [
            Generation(
                o.outputs[0].text,
                o.outputs[0].finish_reason or "stop",
                len(o.prompt_token_ids or ()),
                len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]

    def close(self) -> None:
        self._batches.close()
