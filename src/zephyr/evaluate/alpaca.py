"""AlpacaEval, file-compatible: instructions, model_outputs.json, pairwise annotations and the win rate.

- instructions: JSON Lines ``{"instruction", "dataset"}`` (AlpacaEval's instructions.jsonl), or any JSON
  array of objects with an ``instruction``;
- model outputs (and reference outputs): a JSON array of ``{"instruction", "output", "generator", "dataset"}``;
- annotations: a JSON array of ``{"instruction", "output_1", "generator_1", "output_2", "generator_2",
  "dataset", "annotator", "preference", "raw_completion"}`` where output_1 is the reference and
  output_2 the model, and preference 1 / 2 / 1.5 means the reference / the model / neither is better.

The judge sees the two outputs in an order chosen by a seeded hash of the instruction, so the same
instruction is always shown the same way and about half of them with the model first; the verdict is
mapped back to output_1/output_2. Identical outputs are a tie without asking the judge (as AlpacaEval
does).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zephyr.errors import ConfigError, DataError
from zephyr.evaluate.judges import JudgePrompt, JudgeTask, parse_verdict
from zephyr.evaluate.scoring import WinRate, normalise_preference, win_rate
from zephyr.generation.jobs import DEFAULT_CONCURRENCY, run_jobs
from zephyr.io import append_jsonl, read_json, read_jsonl, write_json

if TYPE_CHECKING:
    from zephyr.generation.backends import Backend
    from zephyr.generation.params import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_DATASET = "zephyr_mini"


def _text(value, source: str, field: str, line: int | None = None, row: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"must be a non-empty string, got {value!r:.60}", source=source, line=line, row=row, field=field
        )
    return value


def load_instructions(path: str | Path) -> list[dict]:
    """``[{"instruction", "dataset"}]`` from a JSON Lines file or a JSON array; duplicates are an error
    because outputs and references are matched by instruction text."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        rows = [(loc["line"], None, row) for loc, row in read_jsonl(path, objects=True)]
    else:
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"must hold a JSON array of objects, got {type(data).__name__}", source=str(path))
        rows = [(None, i, row) for i, row in enumerate(data)]
    out, seen = [], set()
    for line, index, row in rows:
        if not isinstance(row, dict):
            raise DataError(
                f"must be an object, got {type(row).__name__}", source=str(path), line=line, row=index
            )
        instruction = _text(row.get("instruction"), str(path), "instruction", line, index)
        if instruction in seen:
            raise DataError(
                "duplicate instruction", source=str(path), line=line, row=index, field="instruction"
            )
        seen.add(instruction)
        out.append({"instruction": instruction, "dataset": str(row.get("dataset") or DEFAULT_DATASET)})
    if not out:
        raise DataError("holds no instructions", source=str(path))
    return out


def load_outputs(path: str | Path) -> list[dict]:
    """A model_outputs.json-style file, checked row by row."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"must hold a JSON array of outputs, got {type(data).__name__}", source=str(path))
    out, seen = [], {}
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"must be an object, got {type(row).__name__}", source=str(path), row=i)
        instruction = _text(row.get("instruction"), str(path), "instruction", row=i)
        if not isinstance(row.get("output"), str):
            raise DataError(
                f"must be a string, got {row.get('output')!r:.60}", source=str(path), row=i, field="output"
            )
        generator = _text(row.get("generator"), str(path), "generator", row=i)
        if (instruction, generator) in seen:
            raise DataError(
                f"a second output of `{generator}` for the same instruction (first in row {seen[instruction, generator]})",
                source=str(path),
                row=i,
                field="instruction",
            )
        seen[instruction, generator] = i
        out.append(
            {
                "instruction": instruction,
                "output": row["output"],
                "generator": generator,
                "dataset": str(row.get("dataset") or DEFAULT_DATASET),
            }
        )
    return out


def generate_outputs(
    backend: Backend,
    instructions: Sequence[dict],
    generator: str,
    out_file: str | Path,
    params: SamplingParams,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    save_every: int = 16,
) -> list[dict]:
    """Outputs for every instruction, in instruction order. Each new output is appended (and fsynced) to
    ``<out_file>.partial.jsonl`` the moment it arrives, so a kill loses none; ``out_file`` itself (the JSON
    array AlpacaEval reads) is rewritten every ``save_every`` outputs and at the end, when the partial log
    goes. A rerun resumes from both."""
    out_file = Path(out_file)
    partial = out_file.with_name(out_file.name + ".partial.jsonl")
    done = {}
    if out_file.is_file():
        done = {r["instruction"]: r for r in load_outputs(out_file) if r["generator"] == generator}
    if partial.is_file():
        for _, row in read_jsonl(partial, objects=True, torn_tail="skip"):
            if row.get("generator") == generator and isinstance(row.get("instruction"), str):
                done[row["instruction"]] = row
    todo = [x for x in instructions if x["instruction"] not in done]
    unsaved = 0

    def job(x: dict):
        return lambda: backend.generate([[{"role": "user", "content": x["instruction"]}]], params)[0][0].text

    def write() -> None:
        write_json(out_file, [done[x["instruction"]] for x in instructions if x["instruction"] in done])

    def keep(index: int, text: str) -> None:
        nonlocal unsaved
        x = todo[index]
        record = {"instruction": x["instruction"], "output": text.strip(), "generator": generator}
        done[x["instruction"]] = record | {"dataset": x["dataset"]}
        append_jsonl(partial, [done[x["instruction"]]])
        unsaved += 1
        if unsaved >= save_every:
            write()
            unsaved = 0

    try:
        run_jobs(
            [job(x) for x in todo],
            keep,
            concurrency=concurrency,
            desc=f"outputs ({generator})",
            unit="instruction",
        )
    finally:
        write()
    partial.unlink(missing_ok=True)  # everything is in out_file now
    return [done[x["instruction"]] for x in instructions]


def is_switched(instruction: str, seed: int = 0) -> bool:
    """Whether the judge sees the model's output first: a fixed coin flip per (instruction, seed)."""
    digest = hashlib.sha256(f"zephyr-alpaca-order|{seed}|{instruction}".encode()).digest()
    return bool(digest[0] & 1)


def pair_with_references(
    outputs: Sequence[dict], references: Sequence[dict], source: str
) -> list[tuple[dict, dict]]:
    """(reference, model output) for each model output; an instruction with no reference is an error."""
    by_instruction = {r["instruction"]: r for r in references}
    missing = [o["instruction"] for o in outputs if o["instruction"] not in by_instruction]
    if missing:
        shown = "; ".join(repr(m[:60]) for m in missing[:3])
        raise ConfigError(
            f"{source} has no reference output for {len(missing)} instruction(s), e.g. {shown}; "
            "pass reference outputs for the same instructions with `--reference-outputs`"
        )
    return [(by_instruction[o["instruction"]], o) for o in outputs]


def annotation_key(a: dict) -> tuple:
    return (a["instruction"], a["output_1"], a["output_2"], a["annotator"])


def base_annotation(ref: dict, out: dict, annotator: str) -> dict:
    """An annotation before the verdict: the reference is output_1, the model output_2."""
    return {
        "instruction": out["instruction"],
        "output_1": ref["output"],
        "generator_1": ref["generator"],
        "dataset": out["dataset"],
        "output_2": out["output"],
        "generator_2": out["generator"],
        "annotator": annotator,
    }


def annotation_tasks(
    pairs: Sequence[tuple[dict, dict]],
    prompt: JudgePrompt,
    annotator: str,
    seed: int,
    done: dict,
    letter: bool = False,
) -> tuple[list[JudgeTask], list[dict]]:
    """Judge tasks for the pairs not yet annotated, and the annotations that need no judge (identical outputs).
    With ``letter`` the verdicts are the judge's first-token log-probs of "A" and "B", not its text."""
    tasks, free = [], []
    for ref, out in pairs:
        base = base_annotation(ref, out, annotator)
        key = annotation_key(base)
        if key in done:
            continue
        if ref["output"] == out["output"]:
            free.append(base | {"preference": 1.5, "raw_completion": None})
            continue
        switched = is_switched(out["instruction"], seed)
        a, b = (out["output"], ref["output"]) if switched else (ref["output"], out["output"])
        user = prompt.render(question=out["instruction"], answer_a=a, answer_b=b)
        build = _letter_builder(base, switched) if letter else _annotation_builder(base, switched, prompt)
        tasks.append(JudgeTask(key, [prompt.conversation(user)], build))
    return tasks, free


def _annotation_builder(base: dict, switched: bool, prompt: JudgePrompt):
    def build(replies: list[str]) -> dict:
        verdict = parse_verdict(replies[0], prompt.output_format)
        first_wins = {"A": 1.0, "B": 2.0, "tie": 1.5}.get(verdict)  # 1 = the output shown first is better
        preference = None if first_wins is None else (3.0 - first_wins if switched else first_wins)
        return base | {"preference": preference, "raw_completion": replies[0]}

    return build


def _letter_builder(base: dict, switched: bool):
    """A graded preference from the judge's first-token log-probs of "A" and "B": 1 + P(second shown is
    better), renormalised over the two letters, then mapped back to output_1/output_2."""

    def build(replies: list[dict]) -> dict:
        lp_a, lp_b = replies[0]["A"], replies[0]["B"]
        top = max(lp_a, lp_b)
        p_b = math.exp(lp_b - top) / (math.exp(lp_a - top) + math.exp(lp_b - top))
        first_wins = 1.0 + p_b  # 1 = the output shown first is better
        preference = 3.0 - first_wins if switched else first_wins
        # A letter outside an endpoint's top_logprobs is -inf: stored as null, since JSON has no infinity.
        shown = {k: v if math.isfinite(v) else None for k, v in (("A", lp_a), ("B", lp_b))}
        return base | {"preference": preference, "raw_completion": {"logprobs": shown}}

    return build


def load_annotations(path: str | Path) -> list[dict]:
    """AlpacaEval annotations, checked for the fields the win rate needs."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"must hold a JSON array of annotations, got {type(data).__name__}", source=str(path))
    seen: dict[tuple, int] = {}
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"must be an object, got {type(row).__name__}", source=str(path), row=i)
        if "preference" not in row:
            raise DataError("is missing", source=str(path), row=i, field="preference")
        normalise_preference(row["preference"], f" ({path}, row {i})")
        if "generator_2" not in row:  # the model's name: without it the win rate belongs to nobody
            raise DataError("is missing", source=str(path), row=i, field="generator_2")
        key = tuple(str(row.get(k)) for k in ("instruction", "generator_1", "generator_2", "annotator"))
        if key in seen:
            raise DataError(
                f"annotates the same instruction and models as row {seen[key]}; each would count twice",
                source=str(path),
                row=i,
                field="instruction",
            )
        seen[key] = i
    if not data:
        raise DataError("holds no annotations", source=str(path))
    return data


def win_rates(annotations: Sequence[dict]) -> dict[str, WinRate]:
    """Win rate of each model (generator_2) against its reference, over that model's annotations."""
    by_model: dict[str, list] = {}
    for a in annotations:
        by_model.setdefault(str(a["generator_2"]), []).append(a["preference"])
    return {model: win_rate(prefs) for model, prefs in sorted(by_model.items())}
