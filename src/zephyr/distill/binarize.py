"""`zephyr binarize CONFIG`: rated completions -> preference pairs and SFT/generation splits.

Per prompt, as HuggingFaceH4/ultrafeedback_binarized: ``chosen`` is the completion with the highest
score (the first of equals), ``rejected`` a random other one, not the worst, so the pairs stay hard.
Unlike the original, the draw is seeded on the prompt id and a global seed only, so it is identical
across runs, input orders and process counts. The train/test split is likewise a seeded hash of the
prompt id.

Filters: prompts with fewer than 2 rated completions are dropped; ``ties: drop`` draws the rejected
reply only among strictly lower scores; ``min_score_gap`` draws it only among replies at least that far
below. A prompt left with no candidate is dropped. Every drop is counted by reason in the report.

Human votes (``votes``: the votes file of `zephyr serve --votes`) are binarized instead of ``input``:
each vote for A or B is one pair (see ``zephyr.distill.votes``); tie and both-bad votes, identical and
empty replies are dropped and counted; ``test_size``, ``test_sft_size`` and ``seed`` split them as below
(all votes on one conversation fall on the same side).

Output (``output_dir``): a `datasets` DatasetDict with train_prefs/test_prefs/train_sft/test_sft/
train_gen/test_gen, the same splits as ``jsonl/<split>.jsonl``, and ``binarize_report.json``; rows have
the ultrafeedback_binarized shape (prompt, prompt_id, chosen, rejected, messages, score_chosen,
score_rejected); the gen splits' ``messages`` stop before the final assistant turn. The directory is
built beside the target and swapped in whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zephyr.config import setting
from zephyr.data import MESSAGES, source_rows, write_dataset_dir
from zephyr.distill.pairing import SCORE_FIELDS, PairRules, pair_rows
from zephyr.distill.votes import models_of, read_votes, vote_pairs
from zephyr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")


@dataclass
class BinarizeConfig:
    """Settings of `zephyr binarize`."""

    input: str = setting(
        "Rated completions: the `zephyr feedback` output, or UltraFeedback-shaped rows "
        "(file, saved dataset or hub id).",
        default="",
    )
    output_dir: str = setting("Directory to write (replaced whole when done).", default="")
    votes: str = setting(
        "A votes file of `zephyr serve --votes` to binarize instead of `input`: one pair per vote for A "
        "or B; tie and both-bad votes are dropped (counted in the report).",
        default="",
    )
    score_field: str = setting(
        f"The score that ranks completions: {', '.join(SCORE_FIELDS)} (an aspect name "
        "means that aspect's rating).",
        default="fine-grained_score",
    )
    ties: str = setting(
        "`keep`: the rejected reply may score the same as the chosen one (as UltraFeedback); "
        "`drop`: only strictly lower replies may be rejected.",
        default="keep",
    )
    min_score_gap: float = setting(
        "Smallest score difference allowed between chosen and rejected.", default=0.0
    )
    test_size: float = setting(
        "Prompts held out for the test splits: a count (>= 1) or a fraction (< 1).", default=0.05
    )
    test_sft_size: float | None = setting(
        "Rows of test_sft/test_gen, taken from the test prompts: a count or a "
        "fraction of them. Default: all.",
        default=None,
    )
    exclude_sources: list[str] = setting(
        "Drop prompts whose `source` is one of these (UltraFeedback dropped truthful_qa).",
        default_factory=list,
    )
    input_split: str | None = setting("Split of the input source to read.", default=None)
    seed: int = setting("Global seed of the rejected draw and the train/test split.", default=42)
    num_proc: int = setting("Processes for pairing (the result does not depend on it).", default=1)

    def __post_init__(self):
        if self.input and self.votes:
            raise ConfigError("Give `input` (rated completions) or `votes` (a votes file), not both")
        if not (self.input or self.votes) or not self.output_dir:
            raise ConfigError(
                "`input` (or `votes`) and `output_dir` are required (e.g. input: runs/demo/rated.jsonl, "
                "output_dir: runs/demo/prefs)"
            )
        if self.score_field not in SCORE_FIELDS:
            raise ConfigError(
                f"`score_field` must be one of {', '.join(SCORE_FIELDS)}; got {self.score_field!r}"
            )
        if self.ties not in ("keep", "drop"):
            raise ConfigError(f"`ties` must be `keep` or `drop`; got {self.ties!r}")
        if self.min_score_gap < 0 or self.num_proc < 1:
            raise ConfigError(
                f"`min_score_gap` must be >= 0 and `num_proc` >= 1; got {self.min_score_gap}, {self.num_proc}"
            )
        for key in ("test_size", "test_sft_size"):
            value = getattr(self, key)
            if value is not None and (value < 0 or (value >= 1 and not float(value).is_integer())):
                raise ConfigError(f"`{key}` must be a fraction below 1 or a whole count; got {value}")

    def rules(self) -> PairRules:
        return PairRules(
            self.score_field, self.ties, self.min_score_gap, tuple(self.exclude_sources), self.seed
        )


# ---- the stage --------------------------------------------------------------------------------------


def _read(cfg: BinarizeConfig) -> tuple[list[tuple[dict, Any]], list[str]]:
    rows, bad = [], []
    for loc, raw, _ in source_rows(cfg.input, split=cfg.input_split):
        if isinstance(raw, DataError):
            bad.append(str(raw))
        else:
            rows.append((loc, raw))
    return rows, bad


def make_pairs(rows: list[tuple[dict, Any]], cfg: BinarizeConfig) -> list[tuple[dict | None, str]]:
    """pair_row over every row, in input order, on ``num_proc`` processes."""
    rules = cfg.rules()
    if cfg.num_proc == 1 or len(rows) < 2:
        return pair_rows((rows, rules))
    size = math.ceil(len(rows) / cfg.num_proc)
    chunks = [(rows[i : i + size], rules) for i in range(0, len(rows), size)]
    with multiprocessing.get_context("spawn").Pool(cfg.num_proc) as pool:
        return [result for part in pool.map(pair_rows, chunks) for result in part]


def _split_key(seed: int, prompt_id: str) -> str:
    return hashlib.sha256(f"split\x1f{seed}\x1f{prompt_id}".encode()).hexdigest()


def _count(size: float | None, total: int) -> int:
    if size is None:
        return total
    return min(total, int(size) if size >= 1 else int(round(size * total)))


def build_splits(pairs: list[dict], cfg: BinarizeConfig) -> dict[str, list[dict]]:
    """The six splits: prompts ordered by a seeded hash of their id; the first `test_size` are test."""
    ordered = sorted(pairs, key=lambda p: _split_key(cfg.seed, p["prompt_id"]))
    n_test = _count(cfg.test_size, len(ordered))
    train, test = ordered[n_test:], ordered[:n_test]
    test_small = test[: _count(cfg.test_sft_size, len(test))]

    def gen(rows: list[dict]) -> list[dict]:
        return [{**r, "messages": r["chosen"][:-1]} for r in rows]  # the prompt turns only

    return {
        "train_prefs": train,
        "test_prefs": test,
        "train_sft": train,
        "test_sft": test_small,
        "train_gen": gen(train),
        "test_gen": gen(test_small),
    }


def write_splits(splits: dict[str, list[dict]], report: dict, output_dir: Path) -> None:
    from datasets import Features, Value

    features = Features(
        {
            "prompt": Value("string"),
            "prompt_id": Value("string"),
            "chosen": MESSAGES,
            "rejected": MESSAGES,
            "messages": MESSAGES,
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
        }
    )
    write_dataset_dir(output_dir, splits, features, "binarize_report.json", report)


def binarize(cfg: BinarizeConfig) -> BinarizeResult:
    """Run `zephyr binarize`."""
    if cfg.votes:
        return binarize_votes(cfg)
    rows, bad_lines = _read(cfg)
    results = make_pairs(rows, cfg)
    reasons = Counter(reason.split(":")[0] for _, reason in results)
    pairs, seen, duplicates = [], set(), 0
    for pair, _ in results:
        if pair is not None:
            duplicates += pair["prompt_id"] in seen
            if pair["prompt_id"] not in seen:
                seen.add(pair["prompt_id"])
                pairs.append(pair)
    splits = build_splits(pairs, cfg)
    bad_rows = [reason[len("bad_row: ") :] for _, reason in results if reason.startswith("bad_row")]
    report = {
        "input": cfg.input,
        "settings": asdict(cfg),
        "rows_read": len(rows),
        "pairs": len(pairs),
        "ties_kept": reasons["tie"],
        "duplicate_prompts": duplicates,
        "dropped": {
            k: reasons[k] for k in ("too_few_ratings", "only_ties", "below_min_score_gap", "excluded_source")
        },
        "unreadable": {
            "lines": len(bad_lines),
            "rows": len(bad_rows),
            "examples": (bad_lines + bad_rows)[:20],
        },
        "splits": {name: len(r) for name, r in splits.items()},
        "mean_score_gap": round(sum(p["score_chosen"] - p["score_rejected"] for p in pairs) / len(pairs), 4)
        if pairs
        else None,
    }
    write_splits(splits, report, Path(cfg.output_dir))
    return BinarizeResult(Path(cfg.output_dir), report)


def binarize_votes(cfg: BinarizeConfig) -> BinarizeResult:
    """`zephyr binarize --votes FILE`: the pairs of a votes file, split and written as for rated input."""
    votes, problems = read_votes(cfg.votes)
    pairs, dropped = vote_pairs(votes)
    splits = build_splits(pairs, cfg)
    report = {
        "input": cfg.votes,
        "source": "votes",
        "settings": asdict(cfg),
        "rows_read": len(votes),
        "pairs": len(pairs),
        "ties_kept": 0,
        "dropped": dict(dropped),
        "unreadable": {"lines": len(problems), "rows": 0, "examples": problems[:20]},
        "splits": {name: len(r) for name, r in splits.items()},
        "models": models_of(votes),
        "mean_score_gap": 1.0 if pairs else None,
    }
    write_splits(splits, report, Path(cfg.output_dir))
    return BinarizeResult(Path(cfg.output_dir), report)


@dataclass
class BinarizeResult:
    output_dir: Path
    report: dict

    @property
    def complete(self) -> bool:
        return not (self.report["unreadable"]["lines"] or self.report["unreadable"]["rows"])

    def summary(self) -> str:
        r = self.report
        dropped = ", ".join(f"{k} {v}" for k, v in r["dropped"].items() if v) or "none"
        splits = ", ".join(f"{k} {v}" for k, v in r["splits"].items())
        unreadable = r["unreadable"]["lines"] + r["unreadable"]["rows"]
        unit = "votes" if r.get("source") == "votes" else "rows"
        return (
            f"binarize: {r['pairs']} pairs from {r['rows_read']} {unit} ({r['ties_kept']} ties kept; dropped: "
            f"{dropped}; {unreadable} unreadable) -> {self.output_dir} [{splits}]; "
            f"report: {self.output_dir / 'binarize_report.json'}"
        )


def load_report(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / "binarize_report.json").read_text(encoding="utf-8"))
