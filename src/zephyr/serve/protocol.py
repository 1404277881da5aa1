"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

Limits live in the field declarations, so an out-of-range value is rejected before it reaches the
engine, with the field named in the error. Unknown fields are ignored, as OpenAI clients send
options (``user``, ``logit_bias``...) that a local server may safely not implement.

Every string a client sends is ``Text``: JSON may carry a lone surrogate (``"\\ud800"``) that Python
accepts but no tokenizer or UTF-8 encoder does, so it is refused here (a 400) instead of failing deep
in the engine (a 500). Integers are bounded too: a seed beyond int64 or a huge count is a 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from zephyr.chat import validate_messages
from zephyr.errors import DataError
from zephyr.generation.params import MAX_TOP_LOGPROBS, SamplingParams

MAX_N = 16
MAX_STOPS = 4
# Stop strings are matched against every generated token; their total length bounds that work.
MAX_STOP_CHARS = 400
MAX_TOKENS = 2**31 - 1  # far beyond any context; only keeps absurd numbers out of the engine
INT64 = 2**63


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode: a lone surrogate at character {exc.start}; send UTF-8 text"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class APIModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- requests ---------------------------------------------------------------------------------------


class TextPart(APIModel):
    type: Literal["text"]
    text: Text


class ChatMessage(APIModel):
    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(APIModel):
    include_usage: bool = False


class SamplingRequest(APIModel):
    """The sampling fields shared by chat and text completions."""

    model: Text | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-INT64, le=INT64 - 1)  # int64, as OpenAI and torch take it
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed, got {len(stops)}")
        if (total := sum(map(len, stops))) > MAX_STOP_CHARS:
            raise ValueError(
                f"the stop strings total {total} characters; at most {MAX_STOP_CHARS} are allowed"
            )
        return stop

    def sampling_params(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=tuple(stop),
            n=self.n,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    # Newer OpenAI clients send this name instead of max_tokens.
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _logprobs_options(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        if self.logprobs and self.stream:
            raise ValueError("`logprobs` is served without `stream` only; ask for the whole reply")
        return self

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def sampling_params(self) -> SamplingParams:
        params = super().sampling_params()
        if params.max_tokens is None:
            params.max_tokens = self.max_completion_tokens
        if self.logprobs:
            params.top_logprobs = self.top_logprobs or 0
        return params


class CompletionRequest(SamplingRequest):
    prompt: Text | list[Text] = Field(min_length=1)
    logprobs: int | None = None  # the legacy per-token format: refused rather than silently ignored

    @field_validator("logprobs")
    @classmethod
    def _no_legacy_logprobs(cls, value):
        if value is not None:
            raise ValueError("`logprobs` is served on /v1/chat/completions only (logprobs, top_logprobs)")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class CompareRequest(APIModel):
    """POST /v1/compare: two replies to one conversation, for a blind vote (zephyr's own route)."""

    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    seed: int | None = Field(None, ge=0, le=INT64 - 2)  # the second reply samples with seed + 1

    @model_validator(mode="after")
    def _ends_with_a_user_turn(self):
        try:
            validate_messages(self.conversation(), need_assistant=False)
        except DataError as exc:
            raise ValueError(f"{exc.reason} (at `{exc.field}`)") from None
        if self.messages[-1].role != "user":
            raise ValueError("the conversation must end with the user turn both replies answer")
        return self

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class VoteRequest(APIModel):
    """POST /v1/compare/{id}/vote: which reply was better."""

    choice: Literal["a", "b", "tie", "both_bad"]


# ---- responses --------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Usage(APIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(APIModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(APIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobs(APIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(APIModel):
    content: list[TokenLogprobs]

    @classmethod
    def of(cls, tokens, tokenizer) -> ChoiceLogprobs | None:
        """OpenAI's entries for the engine's ``TokenLogprob`` list; a token is shown as its text."""
        if tokens is None:
            return None

        def entry(token_id: int, logprob: float) -> dict:
            t = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            return {"token": t, "logprob": logprob, "bytes": list(t.encode("utf-8"))}

        return cls(
            content=[
                TokenLogprobs(
                    **entry(t.token_id, t.logprob),
                    top_logprobs=[TopLogprob(**entry(i, lp)) for i, lp in t.top],
                )
                for t in tokens
            ]
        )


class ChatChoice(APIModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(APIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(APIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(APIModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None

    @field_serializer("delta")
    def _compact_delta(self, delta: DeltaMessage) -> dict:
        return delta.model_dump(exclude_none=True)  # OpenAI sends only the delta's fields that changed


class ChatCompletionChunk(APIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextChoice(APIModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class TextCompletion(APIModel):
    """Both the whole reply and, when streaming, each chunk of /v1/completions (as OpenAI does)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(APIModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "zephyr"
    max_model_len: int | None = None


class ModelList(APIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompareReply(APIModel):
    label: Literal["a", "b"]
    content: str
    finish_reason: str


class Comparison(APIModel):
    """Two replies in the positions to show them; which model wrote which stays with the server until
    the vote is stored."""

    id: str
    object: Literal["compare"] = "compare"
    created: int = Field(default_factory=now)
    replies: list[CompareReply]


class VoteResult(APIModel):
    """A stored vote, with the models revealed. ``replayed``: this vote was stored by an earlier request
    (a double click or a retry), which this one did not change."""

    id: str
    object: Literal["compare.vote"] = "compare.vote"
    choice: str
    models: dict[str, str]  # "a" and "b" -> model id
    chosen_model: str | None
    rejected_model: str | None
    timestamp: float
    replayed: bool = False


class CompareInfo(APIModel):
    """GET /v1/compare: whether this server compares, how many models, how many votes it has stored."""

    object: Literal["compare.info"] = "compare.info"
    enabled: bool
    models: int = 0
    votes: int = 0


class ErrorInfo(APIModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(APIModel):
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo
