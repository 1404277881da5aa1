"""Generation backends: one interface over local transformers, OpenAI-compatible endpoints and vLLM.

Every stage that needs text from a model (teacher generation, AI feedback, evaluation) goes through
``Backend.generate(conversations, params)``: a list of chat conversations in, ``params.n``
generations per conversation out, in the same order. A row that still fails after the backend's
retries raises ``BackendError`` naming its index; the other rows' results ride along on the error, so
a caller that works row by row loses nothing.

- ``local``: transformers through the batching ``zephyr.generation.engine.Engine`` (this module);
  safe to call from many threads at once, which is how the engine sees enough requests to batch;
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (``zephyr.generation.openai``);
- ``vllm``: vLLM's offline engine, when it is installed (``zephyr.generation.vllm``).

A backend spec (a model spec string or a mapping, ``BackendSpec``) says which, and is what recipes
hold. With ``n > 1`` every backend makes ``n`` single generations, choice ``j`` seeded with
``seed + j``, so each generation has exact token counts and the backends agree on what a seed means.
A ``max_tokens`` longer than the context allows is clipped to the room left (a server would refuse).

Nothing heavy is imported here: torch, the engine, the openai SDK and vLLM load with the backend that
needs them, so parsing a recipe stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zephyr.config import check_settings, parse_config, setting
from zephyr.errors import ConfigError, ZephyrError
from zephyr.generation.params import BackendError, Generation, SamplingParams

log = logging.getLogger(__name__)

BACKEND_TYPES = ("local", "openai", "vllm")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def batch_results(results: list, failures: dict[int, BackendError]) -> list[list[Generation]]:
    """The batch's results, or the first failure carrying every row's outcome."""
    if not failures:
        return results
    first = failures[min(failures)]
    first.results, first.failures = results, failures
    if len(failures) > 1:
        log.warning("%d of %d rows failed; the first: %s", len(failures), len(results), first)
    raise first


class Backend:
    """The interface every backend implements; usable as a context manager (closes on exit)."""

    name: str = "backend"

    def generate(
        self, conversations: Sequence[Sequence[dict]], params: SamplingParams
    ) -> list[list[Generation]]:
        """``params.n`` generations for each conversation, in input order; raises BackendError for a
        row that failed (the other rows' results are on the error)."""
        raise NotImplementedError

    def option_logprobs(
        self, conversations: Sequence[Sequence[dict]], options: Sequence[str]
    ) -> list[dict[str, float]]:
        """For each conversation, the log-probability that the reply starts with each option (e.g. a judge's
        "A" or "B"), read from the first token's distribution: local models directly, OpenAI-compatible
        endpoints through `top_logprobs`."""
        raise BackendError(
            f"the {type(self).__name__} backend cannot score options by log-probability; "
            "use a local model for this judge, or text verdicts"
        )

    def close(self) -> None:
        """Release the model or connections; pending calls end with BackendError."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- specs ------------------------------------------------------------------------------------------


@dataclass
class BackendSpec:
    """Where generations come from. A plain string spec is ``{"type": "local", "model": SPEC}``."""

    model: str = setting("Model spec (local, vllm) or the model name the endpoint serves (openai).")
    type: str | None = setting(
        "local, openai or vllm. Default: openai when `base_url` is set, else local.", None
    )
    name: str | None = setting(
        "Model id recorded in outputs. Default: the model spec's last path part.", None
    )
    base_url: str | None = setting(f"openai: the API root, ending in /v1. Default: {DEFAULT_BASE_URL}.", None)
    api_key_env: str | None = setting(
        f"openai: environment variable holding the API key. Default: {DEFAULT_KEY_ENV}, optional (local "
        "servers need none); when named explicitly it must be set.",
        None,
    )
    concurrency: int = setting("openai: most requests in flight at once.", 8, ge=1)
    timeout: float = setting(
        "openai: seconds to wait for the server at each step (connect, send, each read).", 60.0, gt=0
    )
    request_timeout: float = setting(
        "openai: longest one attempt may take in all, however the server paces its reply (a server that "
        "trickles bytes never trips `timeout`); past it the attempt counts as timed out and is retried. "
        "Checked as bytes arrive, so it holds to within one `timeout`.",
        600.0,
        gt=0,
    )
    max_retries: int = setting(
        "openai: retries after the first attempt (408, 409, 425, 429, 5xx, timeouts, connection errors, "
        "unreadable replies).",
        4,
        ge=0,
    )
    backoff: float = setting(
        "openai: first retry delay in seconds; doubles each retry (with jitter). A server's Retry-After "
        "wins when longer (up to `max_backoff`).",
        1.0,
        ge=0,
    )
    max_backoff: float = setting("openai: longest delay between retries, in seconds.", 30.0, ge=0)
    dtype: str | None = setting("local, vllm: weights dtype (auto, fp32, bf16, fp16).", None)
    chat_template: str | None = setting(
        "local, vllm: zephyr, chatml or Jinja source. Default: the model's own.", None
    )
    max_batch_size: int | None = setting("local: most sequences decoded together (default 32).", None, ge=1)
    max_model_len: int | None = setting(
        "local, vllm: context length to allow (default: the model's).", None, ge=1
    )
    device: str = setting("local: auto (CUDA when present), cpu or cuda[:N].", "auto")
    threads: int | None = setting("local: CPU threads for torch (default: torch's choice).", None, ge=1)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(
                f"`model` must be a model spec or served model name; got {self.model!r}", key="model"
            )
        self.type = self.type or ("openai" if self.base_url else "local")
        if self.type not in BACKEND_TYPES:
            raise ConfigError(f"`type` must be one of local, openai or vllm; got {self.type!r}", key="type")
        # Before check_settings, which would say "greater than 0": the message recipes have always got.
        if isinstance(self.timeout, (int, float)) and self.timeout <= 0:
            raise ConfigError(f"`timeout` must be positive (seconds); got {self.timeout!r}", key="timeout")
        check_settings(self)

    @property
    def model_id(self) -> str:
        return self.name or Path(self.model.rstrip("/")).name or self.model

    def key(self) -> str:
        """Identity for sharing one loaded backend between teachers."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def identity(self) -> dict:
        """What decides the text a backend produces; connection and sizing settings (URL, timeouts,
        retries, concurrency, batch size, threads) do not, so a resumed run may change them."""
        return {
            "type": self.type,
            "model": self.model,
            "name": self.model_id,
            "dtype": self.dtype,
            "chat_template": self.chat_template,
        }


def parse_spec(spec: dict | str | BackendSpec) -> BackendSpec:
    """A BackendSpec from a model spec string or a mapping; unknown keys are an error naming the nearest key."""
    if isinstance(spec, BackendSpec):
        return spec
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"A backend spec must be a model spec string or a mapping; got {type(spec).__name__}"
        )
    if "model" not in spec:
        raise ConfigError(f"A backend spec needs `model`; got keys {', '.join(spec) or 'none'}")
    try:
        (parsed,) = parse_config([BackendSpec], None, dict(spec))
    except ConfigError as exc:
        raise ConfigError(f"Backend spec {spec!r}: {exc}", key=exc.key) from None
    return parsed


def make_backend(spec: dict | str | BackendSpec) -> Backend:
    """Open the backend a spec describes (loading the model for local and vllm)."""
    spec = parse_spec(spec)
    if spec.type == "openai":
        from zephyr.generation.openai import OpenAIBackend

        return OpenAIBackend(spec)
    if spec.type == "vllm":
        from zephyr.generation.vllm import VLLMBackend

        return VLLMBackend(spec)
    return LocalBackend(spec)


class BackendPool:
    """Backends opened on demand, one per distinct spec, so teachers on one model share its weights."""

    def __init__(self):
        self._open: dict[str, Backend] = {}

    def get(self, spec: dict | str | BackendSpec) -> Backend:
        spec = parse_spec(spec)
        if spec.key() not in self._open:
            self._open[spec.key()] = make_backend(spec)
        return self._open[spec.key()]

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()

    def __enter__(self) -> BackendPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- local ------------------------------------------------------------------------------------------


class LocalBackend(Backend):
    """transformers on this machine, through the continuous-batching Engine. A ``max_tokens`` beyond the
    context is clipped to the room the prompt leaves (``on_overflow="clip"``); a prompt that leaves no
    room fails its row."""

    def __init__(self, spec: BackendSpec):
        import torch

        from zephyr.generation.engine import Engine

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.name = spec.model_id
        self.engine = Engine.from_spec(
            spec.model,
            chat_template=spec.chat_template,
            dtype=spec.dtype or "auto",
            device=spec.device,
            max_batch_size=spec.max_batch_size or 32,
            max_model_len=spec.max_model_len,
        )
        self._encode_lock = threading.Lock()  # one tokenizer shared by every calling thread

    def generate(self, conversations, params: SamplingParams) -> list[list[Generation]]:
        handles, failures = {}, {}
        for i, conversation in enumerate(conversations):
            try:
                with self._encode_lock:
                    prompt = self.engine.encode_chat(conversation)
                # One request per choice (n=1 each, seed + j), as every backend does.
                handles[i] = [
                    self.engine.submit(
                        prompt, dataclasses.replace(params, n=1, seed=params.seed_of(j)), on_overflow="clip"
                    )
                    for j in range(params.n)
                ]
            except ZephyrError as exc:  # a conversation the template rejects, or one too long for the context
                failures[i] = BackendError(str(exc), index=i)
        results: list = [None] * len(conversations)
        for i, choices in handles.items():
            try:
                results[i] = [_local_generation(h.result()) for h in choices]
            except Exception as exc:  # noqa: BLE001 - the engine failed or was closed: this row fails, not the call
                failures[i] = BackendError(f"{type(exc).__name__}: {exc}", index=i)
        return batch_results(results, failures)

    def option_logprobs(self, conversations, options) -> list[dict[str, float]]:
        tokens = self._option_tokens(tuple(options))
        out = []
        for i, conversation in enumerate(conversations):
            try:
                with self._encode_lock:
                    prompt = self.engine.encode_chat(conversation)
                out.append(dict(zip(options, self.engine.next_token_logprobs(prompt, tokens), strict=True)))
            except ZephyrError as exc:
                raise BackendError(str(exc), index=i) from exc
        return out

    def _option_tokens(self, options: tuple[str, ...]) -> list[int]:
        """The first token of each option as the reply would start with it; the options must differ there."""
        with self._encode_lock:
            firsts = [self.engine.tokenizer.encode(o, add_special_tokens=False)[:1] for o in options]
        tokens = [f[0] for f in firsts if f]
        if len(tokens) != len(options) or len(set(tokens)) != len(tokens):
            raise BackendError(
                f"options {list(options)} do not start with distinct tokens of {self.name}'s tokenizer"
            )
        return tokens

    def close(self) -> None:
        self.engine.close()


def _local_generation(completion) -> Generation:
    choice = completion.choices[0]
    return Generation(
        choice.text, choice.finish_reason, completion.prompt_tokens, completion.completion_tokens
    )
