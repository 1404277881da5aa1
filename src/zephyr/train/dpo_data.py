"""Preference pairs as tokens: prompt, chosen and rejected completions, cut to the handbook's limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zephyr.chat import encode_prompt, tokenize_conversation, with_empty_system
from zephyr.errors import DataError

log = logging.getLogger(__name__)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False


def _completion(tokenizer, prompt: list[dict], completion: list[dict]) -> list[int]:
    """All tokens of prompt + completion, up to the end of the last trained (assistant) token.

    The template glue after the final end-of-turn token (Zephyr's trailing newline) is not part of
    what the model should learn to produce, so it is left out, like the SFT mask leaves it out.
    """
    tok = tokenize_conversation(tokenizer, prompt + completion)
    last = max((i for i, m in enumerate(tok.assistant_mask) if m), default=-1)
    return tok.input_ids[: last + 1]


def _prompt_and_completions(tokenizer, row: dict, sides: tuple[str, ...], empty_system: bool):
    """The prompt tokens and each side's completion tokens of one normalised row.

    The prompt/completion boundary is found on tokens: it is where the tokenized prompt (with the
    generation prompt) stops agreeing with the tokenized prompt + completion, so a BPE merge across
    the boundary shortens the prompt instead of shifting the completion (with several sides, the prompt
    is the part all of them agree on).
    """
    prompt = with_empty_system(row["prompt"]) if empty_system else list(row["prompt"])
    prompt_ids = encode_prompt(tokenizer, prompt)
    full = [_completion(tokenizer, prompt, list(row[side])) for side in sides]
    p = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return prompt_ids[:p], [ids[p:] for ids in full]


def _fit(
    tokenizer,
    prompt_ids: list[int],
    completions: list[list[int]],
    max_length: int,
    max_prompt_length: int | None,
    row_index: int | None,
) -> tuple[list[int], list[list[int]], bool]:
    """The handbook's limits: a prompt over ``max_prompt_length`` loses its start (BOS is kept), then the
    completions are cut from the right so that prompt + completion fits ``max_length``."""
    truncated = False
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        keep_bos = prompt_ids[:1] if prompt_ids[0] == tokenizer.bos_token_id else []
        prompt_ids = keep_bos + prompt_ids[len(prompt_ids) - (max_prompt_length - len(keep_bos)) :]
        truncated = True
    room = max_length - len(prompt_ids)
    if room <= 0:
        raise DataError(
            f"the prompt has {len(prompt_ids)} tokens, which leaves no room for a completion within "
            f"max_length={max_length}; set `max_prompt_length` to cut prompts, or raise `max_length`",
            row=row_index,
            field="prompt",
        )
    if any(len(ids) > room for ids in completions):
        completions, truncated = [ids[:room] for ids in completions], True
    return prompt_ids, completions, truncated


def tokenize_pair(
    tokenizer,
    row: dict,
    max_length: int,
    max_prompt_length: int | None,
    empty_system: bool = False,
    row_index: int | None = None,
) -> TokenizedPair:
    """Tokenize one normalised preference row (see zephyr.data.schemas), cut to the length limits."""
    prompt_ids, (chosen, rejected) = _prompt_and_completions(
        tokenizer, row, ("chosen", "rejected"), empty_system
    )
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        if not ids:
            raise DataError("the completion is empty after tokenization", row=row_index, field=name)
    if chosen == rejected:
        raise DataError("chosen and rejected completions are identical", row=row_index, field="rejected")
    prompt_ids, (chosen, rejected), truncated = _fit(
        tokenizer, prompt_ids, [chosen, rejected], max_length, max_prompt_length, row_index
    )
    if truncated and chosen == rejected:
        raise DataError(
            f"chosen and rejected are identical within the first {len(chosen)} completion tokens (max_length cut)",
            row=row_index,
            field="rejected",
        )
    return TokenizedPair(prompt_ids, chosen, rejected, truncated)


def tokenize_unpaired(
    tokenizer,
    row: dict,
    max_length: int,
    max_prompt_length: int | None,
    empty_system: bool = False,
    row_index: int | None = None,
) -> tuple[dict, bool]:
    """One normalised unpaired row (KTO) as ``{prompt_ids, completion_ids, label}``, cut to the limits; and
    whether it was cut."""
    prompt_ids, (completion,) = _prompt_and_completions(tokenizer, row, ("completion",), empty_system)
    if not completion:
        raise DataError("the completion is empty after tokenization", row=row_index, field="completion")
    prompt_ids, (completion,), truncated = _fit(
        tokenizer, prompt_ids, [completion], max_length, max_prompt_length, row_index
    )
    return {"prompt_ids": prompt_ids, "completion_ids": completion, "label": bool(row["label"])}, truncated


def _pair_columns(tokenizer, row, max_length, max_prompt_length, empty_system, row_index):
    pair = tokenize_pair(tokenizer, row, max_length, max_prompt_length, empty_system, row_index)
    return {k: getattr(pair, k) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}, pair.truncated


def tokenize_preferences(
    dataset,
    tokenizer,
    max_length: int,
    max_prompt_length: int | None,
    on_error: str = "raise",
    empty_system: bool = False,
    split: str = "train",
    unpaired: bool = False,
):
    """Tokenize a dataset of normalised preference rows (``unpaired``: unpaired rows, see
    ``tokenize_unpaired``); bad rows raise, or are skipped and counted. Returns the token rows (each with its
    input ``row`` index), the number skipped and the number cut to the limits."""
    from datasets import Dataset

    one, unit = (tokenize_unpaired, "rows") if unpaired else (_pair_columns, "pairs")
    rows, skipped, truncated = [], [], 0
    prompts_by_id: dict = {}
    for i, row in enumerate(dataset):
        try:
            _check_prompt_id(row, i, prompts_by_id)
            columns, cut = one(tokenizer, row, max_length, max_prompt_length, empty_system, row_index=i)
        except DataError as err:
            err = DataError(
                err.reason, source=f"{split} split (prompt_id {row.get('prompt_id')})", row=i, field=err.field
            )
            if on_error == "raise":
                raise err from None
            skipped.append(str(err))
            continue
        truncated += cut
        rows.append({**columns, "row": i})
    if truncated:
        log.warning(
            "%s: %d of %d %s were cut to max_prompt_length / max_length", split, truncated, len(dataset), unit
        )
    if skipped:
        log.warning("%s: skipped %d bad %s; the first: %s", split, len(skipped), unit, skipped[0])
    if not rows:
        raise DataError(f"no usable preference {unit} left in the {split} split", source=split)
    return Dataset.from_list(rows), len(skipped), truncated


def _check_prompt_id(row: dict, index: int, seen: dict) -> None:
    """One prompt_id must mean one prompt: two different prompts under one id is mislabelled data (a
    merge of sources, a bad hash), and every later step that keys on the id (splits, decontamination,
    the reference cache) would mix them up."""
    prompt_id = row.get("prompt_id")
    if not prompt_id:
        return
    prompt = repr(row.get("prompt"))
    first = seen.setdefault(prompt_id, (index, prompt))
    if first[1] != prompt:
        raise DataError(
            f"shares prompt_id {prompt_id!r} with row {first[0]}, which has a different prompt",
            field="prompt_id",
        )
