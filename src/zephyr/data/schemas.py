"""The three row shapes the toolkit reads, checked and rewritten into one schema each.

- ``conversation``: ``{"messages": [...]}`` with at least one assistant turn (ultrachat_200k, SFT).
- ``preference``: ``{"prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected"}``
  where the prompt ends with a user turn and chosen/rejected hold only what follows it (DPO).
- ``prompt``: ``{"prompt_id", "messages"}`` ending with a user turn, for generation and evaluation.
- ``unpaired``: ``{"prompt", "completion", "label", "prompt_id", "score"}``, one completion judged desirable
  (``label`` true) or undesirable on its own (KTO). Read from TRL's unpaired rows, from preference pairs (one
  row each side) and from rated completions (the `zephyr feedback` output: one row per scored completion,
  labelled by ``UnpairedRules``).

Each ``*_row`` function takes one raw row and ``loc`` (``source`` plus ``line`` or ``row``, passed on to
every DataError) and returns the normalised row, or raises a DataError naming the field; ``normalise_rows``
returns the list of rows one raw row becomes (several for the ``unpaired`` kind).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from datasets import Features, List, Value

from zephyr.chat import validate_messages
from zephyr.data.ratings import check_rated_version, completion_score, is_rated_row, prompt_of
from zephyr.errors import ConfigError, DataError

KINDS = ("conversation", "preference", "prompt", "unpaired")
MESSAGES = List({"role": Value("string"), "content": Value("string")})
FEATURES = {
    "conversation": Features({"messages": MESSAGES}),
    "preference": Features(
        {
            "prompt": MESSAGES,
            "chosen": MESSAGES,
            "rejected": MESSAGES,
            "prompt_id": Value("string"),
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
        }
    ),
    "prompt": Features({"prompt_id": Value("string"), "messages": MESSAGES}),
    "unpaired": Features(
        {
            "prompt": MESSAGES,
            "completion": MESSAGES,
            "label": Value("bool"),
            "prompt_id": Value("string"),
            "score": Value("float64"),
        }
    ),
}
# Columns a prompt row carries along when the source has them (MT-Bench and AlpacaEval bookkeeping),
# with the Python types they may hold.
PASS_THROUGH = {
    "prompt": {"category": (str,), "question_id": (int, str), "dataset": (str,), "turns": (list,)},
}

EXTRA_FEATURES = {
    "category": Value("string"),
    "question_id": Value("int64"),
    "dataset": Value("string"),
    "turns": List(Value("string")),
}


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"Unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")


def extra_columns(kind: str, names) -> tuple[str, ...]:
    """The pass-through columns of ``kind`` that appear among ``names``, in a fixed order."""
    return tuple(k for k in PASS_THROUGH.get(kind, {}) if k in set(names))


def settle_types(kind: str, extras: tuple[str, ...], rows: list[dict]) -> Features:
    """The features of normalised rows; question ids that mix numbers and strings all become strings."""
    extra = {k: EXTRA_FEATURES[k] for k in extras}
    if "question_id" in extra and any(isinstance(r["question_id"], str) for r in rows):
        extra["question_id"] = Value("string")
        for r in rows:
            if r["question_id"] is not None:
                r["question_id"] = str(r["question_id"])
    return Features({**FEATURES[kind], **extra})


def normalise_row(kind: str, row: Any, loc: dict, extras: tuple[str, ...] = ()) -> dict:
    """One raw row of ``kind`` in its normal form; ``extras`` are pass-through columns (None when absent)."""
    if not isinstance(row, dict):
        raise DataError(f"must be an object (a mapping of column to value), got {type(row).__name__}", **loc)
    if kind == "conversation":
        return conversation_row(row, loc)
    if kind == "preference":
        return preference_row(row, loc)
    if kind == "prompt":
        return {**prompt_row(row, loc), **_pass_through(row, extras, loc)}
    if kind == "unpaired":
        return unpaired_row(row, loc)
    check_kind(kind)
    raise AssertionError("unreachable")


def normalise_rows(
    kind: str, row: Any, loc: dict, extras: tuple[str, ...] = (), rules: UnpairedRules | None = None
) -> list[dict]:
    """The normal rows one raw row becomes: one, except for the ``unpaired`` kind, where a preference pair gives
    two and a rated prompt one per scored completion (``rules`` say how scores become labels)."""
    if kind != "unpaired":
        return [normalise_row(kind, row, loc, extras)]
    if not isinstance(row, dict):
        raise DataError(f"must be an object (a mapping of column to value), got {type(row).__name__}", **loc)
    return unpaired_rows(row, loc, rules or UnpairedRules())


def _fail(loc: dict, field: str | None, reason: str):
    raise DataError(reason, field=field, **loc)


def _clean(messages: list[dict]) -> list[dict]:
    """Only role and content, in that order (other keys, e.g. `name`, would split the Arrow schema)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _require(row: dict, key: str, loc: dict) -> Any:
    if row.get(key) is None:
        _fail(loc, key, "is missing")
    return row[key]


def _text(value: Any, field: str, loc: dict) -> str:
    if not isinstance(value, str):
        _fail(loc, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        _fail(loc, field, "is empty")
    return value


def conversation_row(row: dict, loc: dict) -> dict:
    messages = _require(row, "messages", loc)
    validate_messages(messages, field="messages", need_assistant=True, **loc)
    return {"messages": _clean(messages)}


# --- preferences -----------------------------------------------------------------------------------


def preference_row(row: dict, loc: dict) -> dict:
    raw_chosen, raw_rejected = _require(row, "chosen", loc), _require(row, "rejected", loc)
    raw_prompt = row.get("prompt")
    prompt = None if raw_prompt is None else _prompt_messages(raw_prompt, "prompt", loc)
    chosen = _side(raw_chosen, "chosen", loc)
    rejected = _side(raw_rejected, "rejected", loc)
    prefix, start = _split_prompt(prompt, raw_prompt, chosen, rejected, loc)
    completions = {}
    for field, messages in (("chosen", chosen), ("rejected", rejected)):
        completions[field] = _completion(messages, start, field, loc)
    if completions["chosen"] == completions["rejected"]:
        _fail(loc, "rejected", "is identical to `chosen`; a preference pair needs two different replies")
    return {
        "prompt": prefix,
        **completions,
        "prompt_id": _prompt_id(row, prefix, loc),
        "score_chosen": _score(row, "score_chosen", loc),
        "score_rejected": _score(row, "score_rejected", loc),
    }


def _side(value: Any, field: str, loc: dict) -> list[dict]:
    """chosen/rejected as messages: a string is one assistant reply; a list is either the reply turns
    alone (it starts with an assistant turn) or the whole conversation."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, field, loc)}]
    if not isinstance(value, list):
        _fail(loc, field, f"must be a string or a list of messages, got {type(value).__name__}")
    if not value:
        _fail(loc, field, "is empty")
    first = "assistant" if _role(value[0]) == "assistant" else "user"
    validate_messages(value, field=field, need_assistant=True, first=first, **loc)
    return _clean(value)


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def _prompt_messages(value: Any, field: str, loc: dict, *, cut: bool = False) -> list[dict]:
    """A prompt as messages ending with a user turn. With ``cut``, turns after the last user turn (the
    reply of a *_gen row) are dropped instead of being an error."""
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, field, loc)}]
    if not isinstance(value, list):
        _fail(loc, field, f"must be a string or a list of messages, got {type(value).__name__}")
    validate_messages(value, field=field, need_assistant=False, **loc)
    last_user = max((i for i, m in enumerate(value) if m["role"] == "user"), default=-1)
    if last_user < 0:
        _fail(loc, field, "has no user turn")
    if not cut and last_user != len(value) - 1:
        _fail(loc, f"{field}[{len(value) - 1}].role", "a prompt must end with a user turn")
    return _clean(value[: last_user + 1])


def _split_prompt(prompt, raw_prompt, chosen, rejected, loc) -> tuple[list[dict], int]:
    """The prompt that chosen and rejected continue, and how many of their opening turns it covers."""
    full = [messages[0]["role"] != "assistant" for messages in (chosen, rejected)]
    if not any(full):
        if prompt is None:
            _fail(loc, "prompt", "is missing, and `chosen`/`rejected` hold only the reply to take it from")
        return prompt, 0
    if not all(full):
        bad = "chosen" if not full[0] else "rejected"
        _fail(
            loc,
            bad,
            "holds only the reply while the other side is a whole conversation; give both the same way",
        )
    # Everything both sides share is prompt, even past an explicit one: the shared turns would cancel out
    # of the DPO loss anyway, so keeping them in the replies only costs compute.
    shared = _shared_prompt(chosen, rejected)
    if not shared:
        _fail(loc, "rejected", "shares no opening user turn with `chosen`, so there is no common prompt")
    if prompt is not None and not _prompt_agrees(prompt, raw_prompt, shared):
        _fail(loc, "prompt", "does not match the turns that `chosen` and `rejected` start with")
    return shared, len(shared)


def _shared_prompt(a: list[dict], b: list[dict]) -> list[dict]:
    """The longest common opening of two conversations, cut back to end with a user turn."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n and a[n - 1]["role"] != "user":
        n -= 1
    return a[:n]


def _prompt_agrees(prompt: list[dict], raw_prompt: Any, shared: list[dict]) -> bool:
    if shared[: len(prompt)] == prompt:
        return True
    # A string prompt may name a user turn behind a system turn (ultrafeedback: the only user turn).
    return isinstance(raw_prompt, str) and any(
        m["role"] == "user" and m["content"].strip() == raw_prompt.strip() for m in shared
    )


def _completion(messages: list[dict], start: int, field: str, loc: dict) -> list[dict]:
    reply = messages[start:]
    if not reply:
        _fail(loc, field, "has no reply after the prompt")
    if reply[-1]["role"] != "assistant":
        _fail(loc, f"{field}[{len(messages) - 1}].role", "must end with an assistant turn")
    return reply


def prompt_id_of(prompt: str | list[dict]) -> str:
    """UltraFeedback's id: sha256 of the prompt string. A prompt of one user turn hashes its text, so
    the id does not depend on how the prompt was written down; longer prompts hash compact JSON."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]["content"]
    if not isinstance(prompt, str):
        prompt = json.dumps(prompt, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _prompt_id(row: dict, prompt: list[dict], loc: dict) -> str:
    value = row.get("prompt_id")
    if value is None or value == "":
        raw = row.get("prompt")
        return prompt_id_of(raw if isinstance(raw, str) and raw.strip() else prompt)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        _fail(loc, "prompt_id", f"must be a string, got {type(value).__name__}")
    return str(value)


def _score(row: dict, key: str, loc: dict) -> float | None:
    """A score at the top level (ultrafeedback_binarized) or under `metadata` (some exports)."""
    value, field = row.get(key), key
    metadata = row.get("metadata")
    if value is None and isinstance(metadata, dict):
        value, field = metadata.get(key), f"metadata.{key}"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(loc, field, f"must be a number, got {type(value).__name__}")
    return float(value)


# --- prompts ---------------------------------------------------------------------------------------


def prompt_row(row: dict, loc: dict) -> dict:
    """A prompt from `messages` (the reply of a *_gen row dropped), `prompt`, `instruction` (AlpacaEval)
    or `turns` (MT-Bench: the first turn; later turns need the model's earlier answers)."""
    if row.get("messages") is not None:
        messages = _prompt_messages(row["messages"], "messages", loc, cut=True)
    elif row.get("prompt") is not None:
        messages = _prompt_messages(row["prompt"], "prompt", loc, cut=True)
    elif row.get("instruction") is not None:
        messages = [{"role": "user", "content": _text(row["instruction"], "instruction", loc)}]
    elif row.get("turns") is not None:
        messages = [{"role": "user", "content": _first_turn(row["turns"], loc)}]
    else:
        _fail(loc, "prompt", "is missing: a prompt row needs `messages`, `prompt`, `instruction` or `turns`")
    return {"prompt_id": _prompt_id(row, messages, loc), "messages": messages}


def _first_turn(turns: Any, loc: dict) -> str:
    if not isinstance(turns, list) or not turns:
        _fail(loc, "turns", f"must be a non-empty list of strings, got {type(turns).__name__}")
    for i, turn in enumerate(turns):
        _text(turn, f"turns[{i}]", loc)
    return turns[0]


def _pass_through(row: dict, extras: tuple[str, ...], loc: dict) -> dict:
    out = {}
    types = PASS_THROUGH["prompt"]
    for key in extras:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types[key])):
            _fail(
                loc, key, f"must be {' or '.join(t.__name__ for t in types[key])}, got {type(value).__name__}"
            )
        if key == "turns" and value is not None:
            _first_turn(value, loc)  # checks every turn is text
        out[key] = value
    return out


# --- unpaired (KTO) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnpairedRules:
    """How a rated completion becomes an unpaired row: desirable when its ``score_field`` score is at least
    ``threshold``, undesirable below it; a completion without that score is left out.

    ``threshold`` None is the scale's default: 7 for the 1-10 ``overall_score``, 4 for the 1-5 scales
    (``fine-grained_score``, the mean of the aspect ratings, and each aspect's own rating). On UltraFeedback's
    rubrics a 4 reads "mostly meets the goal with minor issues" and a 7 of 10 the same: replies at least that
    good are the ones to reinforce, the rest the ones to move away from.
    """

    score_field: str = "fine-grained_score"
    threshold: float | None = None

    def cut(self) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        return 7.0 if self.score_field == "overall_score" else 4.0


def unpaired_rows(row: dict, loc: dict, rules: UnpairedRules) -> list[dict]:
    """TRL's unpaired row as it is; a preference pair as its chosen (desirable) and rejected (undesirable)
    rows; a rated prompt as one row per completion that has a ``rules.score_field`` score."""
    if is_rated_row(row) and row.get("completion") is None:
        return rated_rows(row, loc, rules)
    if row.get("completion") is None and (row.get("chosen") is not None or row.get("rejected") is not None):
        pair = preference_row(row, loc)
        return [
            {
                "prompt": pair["prompt"],
                "completion": pair[side],
                "label": side == "chosen",
                "prompt_id": pair["prompt_id"],
                "score": pair[f"score_{side}"],
            }
            for side in ("chosen", "rejected")
        ]
    return [unpaired_row(row, loc)]


def unpaired_row(row: dict, loc: dict) -> dict:
    """TRL's unpaired row: ``prompt`` (text or messages ending with a user turn), ``completion`` (text, or the
    assistant turns that follow the prompt) and ``label`` (true: desirable)."""
    if row.get("completion") is None:
        _fail(
            loc,
            "completion",
            "is missing: an unpaired row needs `prompt`, `completion` and `label` (TRL's unpaired form); "
            "preference pairs (`chosen`/`rejected`) and rated prompts (`completions`) are read too",
        )
    prompt = _prompt_messages(_require(row, "prompt", loc), "prompt", loc)
    completion = _reply(row["completion"], "completion", loc)
    label = _require(row, "label", loc)
    if not isinstance(label, bool):
        _fail(loc, "label", f"must be true (desirable) or false (undesirable), got {type(label).__name__}")
    return {
        "prompt": prompt,
        "completion": completion,
        "label": label,
        "prompt_id": _prompt_id(row, prompt, loc),
        "score": _score(row, "score", loc),
    }


def _reply(value: Any, field: str, loc: dict) -> list[dict]:
    """A completion as messages: a string is one assistant reply; a list holds the turns after the prompt,
    from an assistant turn to an assistant turn."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, field, loc)}]
    if not isinstance(value, list):
        _fail(loc, field, f"must be a string or a list of messages, got {type(value).__name__}")
    if not value:
        _fail(loc, field, "is empty")
    validate_messages(value, field=field, need_assistant=True, first="assistant", **loc)
    if value[-1]["role"] != "assistant":
        _fail(loc, f"{field}[{len(value) - 1}].role", "must end with an assistant turn")
    return _clean(value)


def rated_rows(row: dict, loc: dict, rules: UnpairedRules) -> list[dict]:
    """One unpaired row per completion of a rated prompt that has a score (unrated ones are left out, as
    `binarize` leaves them out of its pairs), labelled desirable when the score reaches ``rules.cut()``."""
    check_rated_version(row, loc)
    try:
        prompt = prompt_of(row)
    except DataError as err:
        raise DataError(err.reason, field=err.field, **loc) from None
    field = "messages" if isinstance(row.get("messages"), list) else "prompt"
    prompt = _prompt_messages(prompt, field, loc)
    prompt_id = _prompt_id(row, prompt, loc)
    cut, out = rules.cut(), []
    for completion in row["completions"]:
        score = completion_score(completion, rules.score_field)
        response = completion.get("response") if isinstance(completion, dict) else None
        if score is None or not isinstance(response, str) or not response.strip():
            continue
        out.append(
            {
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": response}],
                "label": score >= cut,
                "prompt_id": prompt_id,
                "score": score,
            }
        )
    return out
