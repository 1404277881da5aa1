"""`zephyr clean CONFIG`: clean SFT dialogues the way ultrachat_200k was cleaned from UltraChat, and more.

Filters, in the order they run (each conversation is counted by the first filter that removes it):

1. ``truecase``: capitalise sentence starts written in lower case ("Hello. how are you?" -> "Hello. How
   are you?"), leaving code, abbreviations, numbers, URLs and identifiers alone;
2. ``disclaimers``: assistant turns that disclaim having emotions or opinions or announce being an AI
   (a configurable list of patterns) are cut out with the rest of the dialogue after them
   (``disclaimer_action: truncate``) or drop the whole dialogue (``drop``);
3. ``length``: turn count, characters, shortest reply and (with a tokenizer) tokens;
4. ``decontaminate``: dialogues whose user turns share an n-gram with evaluation prompts (MT-Bench,
   AlpacaEval files, when given);
5. ``exact_duplicates`` and 6. ``near_duplicates`` (MinHash): the first of each group is kept.

Output (``output_dir``): a `datasets` DatasetDict and ``jsonl/<split>.jsonl`` with ultrachat_200k's row
shape (prompt, prompt_id, messages), plus ``clean_report.json`` saying what each filter changed or removed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from zephyr.config import setting
from zephyr.data import MESSAGES, load_rows, prompt_id_of, source_rows, write_dataset_dir
from zephyr.distill.overlap import Contamination, NearDuplicates, fingerprint
from zephyr.distill.truecase import truecase_messages
from zephyr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Patterns (case-insensitive regular expressions) for assistant turns that disclaim feelings, opinions or
# being a person. Our own list; replace it with `disclaimer_phrases`.
DEFAULT_DISCLAIMERS = [
    r"\bas an? (?:ai|artificial intelligence)\b",
    r"\bas an? (?:large )?language model\b",
    r"\bi(?:'m| am) (?:just |only |merely |simply )?an? (?:ai|artificial intelligence|language model|"
    r"computer program|machine learning model|virtual assistant|chatbot)\b",
    r"\bi (?:do not|don't|cannot|can't) (?:have|hold|experience|feel|form|possess) (?:any )?(?:personal |real |"
    r"genuine |human |my own )?(?:feelings|emotions|opinions?|beliefs|preferences|views|consciousness)\b",
    r"\bi(?:'m| am) (?:not capable|incapable) of (?:feeling|having|experiencing|forming)\b",
    r"\bi(?:'m| am) not able to (?:feel|have|experience|form) (?:emotions|feelings|opinions|preferences)\b",
    r"\bmy (?:training data|knowledge cut-?off)\b",
]


@dataclass
class CleanConfig:
    """Settings of `zephyr clean`."""

    # Old spellings (zephyr <= 0.1) -> the key used now: a length cap on a conversation is `max_length`.
    ALIASES: ClassVar[dict[str, str]] = {"max_tokens": "max_length"}

    input: str = setting(
        "Dialogues to clean: a file, saved dataset or hub id with `messages` rows.", default=""
    )
    output_dir: str = setting("Directory to write (replaced whole when done).", default="")
    splits: list[str] = setting(
        "Splits of the input to clean (each written under its name). Default: the input's "
        "single table, written as `train_sft`.",
        default_factory=list,
    )
    truecase: bool = setting("Capitalise lower-case sentence starts.", default=True)
    truecase_roles: list[str] = setting(
        "Roles whose turns are truecased.", default_factory=lambda: ["user", "assistant"]
    )
    remove_disclaimers: bool = setting(
        "Remove assistant turns disclaiming emotions, opinions or being an AI.", default=True
    )
    disclaimer_phrases: list[str] = setting(
        "Case-insensitive regular expressions marking a disclaimer.",
        default_factory=lambda: list(DEFAULT_DISCLAIMERS),
    )
    disclaimer_action: str = setting(
        "`truncate`: cut the dialogue before the user turn that led to the "
        "disclaimer (dropped if nothing is left); `drop`: drop the dialogue.",
        default="truncate",
    )
    min_turns: int = setting("Fewest messages (user + assistant) a dialogue keeps.", default=2)
    max_turns: int | None = setting("Most messages a dialogue may have.", default=None)
    min_chars: int = setting("Fewest characters in a dialogue.", default=1)
    max_chars: int | None = setting("Most characters in a dialogue.", default=None)
    min_response_chars: int = setting("Fewest characters in every assistant reply.", default=1)
    max_length: int | None = setting(
        "Most tokens in a dialogue rendered with `tokenizer`'s chat template.", default=None
    )
    tokenizer: str | None = setting(
        "Model spec whose tokenizer counts tokens for `max_length`.", default=None
    )
    decontaminate: list[str] = setting(
        "Evaluation prompt files to decontaminate against (e.g. MT-Bench "
        "question.jsonl, AlpacaEval instructions); their `turns`, `instruction` or "
        "`prompt` are read.",
        default_factory=list,
    )
    decontaminate_ngram: int = setting("Words per n-gram for decontamination.", default=10)
    dedupe: bool = setting("Remove exact duplicates (ignoring case, spacing and punctuation).", default=True)
    near_dedupe: bool = setting("Remove near-duplicates (MinHash over 5-word shingles).", default=True)
    near_dup_threshold: float = setting(
        "Estimated Jaccard similarity (of 5-word shingles) at which two dialogues are near-duplicates.",
        default=0.8,
    )
    dedupe_on: str = setting(
        "What duplicates are judged on: `conversation` or `prompt` (the first user turn).",
        default="conversation",
    )
    examples: int = setting("Examples per filter kept in the report.", default=5)

    def __post_init__(self):
        if not self.input or not self.output_dir:
            raise ConfigError("`input` and `output_dir` are required")
        if self.disclaimer_action not in ("truncate", "drop"):
            raise ConfigError(
                f"`disclaimer_action` must be `truncate` or `drop`; got {self.disclaimer_action!r}"
            )
        if self.dedupe_on not in ("conversation", "prompt"):
            raise ConfigError(f"`dedupe_on` must be `conversation` or `prompt`; got {self.dedupe_on!r}")
        if self.max_length is not None and not self.tokenizer:
            raise ConfigError("`max_length` needs `tokenizer` (a model spec) to count tokens")
        if not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(f"`near_dup_threshold` must be in (0, 1]; got {self.near_dup_threshold}")
        try:
            self.patterns = [re.compile(p, re.I) for p in self.disclaimer_phrases]
        except re.error as exc:
            raise ConfigError(f"`disclaimer_phrases` holds an invalid regular expression: {exc}") from None


# ---- disclaimers ------------------------------------------------------------------------------------


DISCLAIMER_PATTERNS = [re.compile(p, re.I) for p in DEFAULT_DISCLAIMERS]


def disclaims(text: str, patterns: list[re.Pattern] = DISCLAIMER_PATTERNS) -> str | None:
    """The disclaimer in ``text`` (the matched words), or None. `zephyr dialogue` uses it too: a user turn
    that disclaims being an AI is the user simulator speaking as the assistant."""
    text = text.replace("\u2019", "'")
    for p in patterns:
        if found := p.search(text):
            return found.group(0)
    return None


def find_disclaimer(messages: list[dict], patterns: list[re.Pattern]) -> tuple[int, str] | None:
    """``(index, matched text)`` of the first assistant turn that disclaims, or None."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and (found := disclaims(m["content"], patterns)):
            return i, found
    return None


def cut_before(messages: list[dict], index: int) -> list[dict]:
    """The dialogue up to the exchange whose reply is ``messages[index]`` (that user turn dropped too)."""
    user = max((i for i in range(index) if messages[i]["role"] == "user"), default=0)
    return messages[:user]


# ---- the pipeline -----------------------------------------------------------------------------------


class FilterReport:
    """Per-filter counts and a few examples (also the per-reason report of `zephyr dialogue`)."""

    def __init__(self, keep_examples: int):
        self.filters: dict[str, dict] = {}
        self.keep = keep_examples

    def add(self, name: str, counter: str, example: dict | None = None, amount: int = 1) -> None:
        entry = self.filters.setdefault(name, {"examples": []})
        entry[counter] = entry.get(counter, 0) + amount
        if example is not None and len(entry["examples"]) < self.keep:
            entry["examples"].append(example)


def _length_problem(cfg: CleanConfig, messages: list[dict], tokenizer) -> str | None:
    chars = sum(len(m["content"]) for m in messages)
    replies = [len(m["content"].strip()) for m in messages if m["role"] == "assistant"]
    checks = [
        ("too_few_turns", len(messages) < cfg.min_turns or not replies),
        ("too_many_turns", cfg.max_turns is not None and len(messages) > cfg.max_turns),
        ("too_few_chars", chars < cfg.min_chars),
        ("too_many_chars", cfg.max_chars is not None and chars > cfg.max_chars),
        ("reply_too_short", bool(replies) and min(replies) < cfg.min_response_chars),
    ]
    for reason, failed in checks:
        if failed:
            return reason
    if tokenizer is not None:
        from zephyr.chat import encode, render

        if len(encode(tokenizer, render(tokenizer, messages))) > cfg.max_length:
            return "too_many_tokens"
    return None


def _fix_row(cfg: CleanConfig, messages: list[dict], report: FilterReport, ident: str) -> list[dict] | None:
    """Truecasing and disclaimer removal on one dialogue; None when it is dropped."""
    if cfg.truecase:
        fixed, changed = truecase_messages(messages, cfg.truecase_roles)
        if changed:
            report.add("truecase", "modified", {"prompt_id": ident, "before": _diff(messages, fixed)})
            report.add("truecase", "turns_changed", amount=changed)
            messages = fixed
    if cfg.remove_disclaimers and (hit := find_disclaimer(messages, cfg.patterns)):
        index, phrase = hit
        example = {"prompt_id": ident, "turn": index, "matched": phrase}
        kept = [] if cfg.disclaimer_action == "drop" else cut_before(messages, index)
        if not any(m["role"] == "assistant" for m in kept):
            report.add("disclaimers", "removed", example)
            return None
        report.add("disclaimers", "truncated", example)
        report.add("disclaimers", "turns_removed", amount=len(messages) - len(kept))
        messages = kept
    return messages


def _diff(before: list[dict], after: list[dict]) -> str:
    for b, a in zip(before, after, strict=True):
        if b["content"] != a["content"]:
            pairs = zip(b["content"], a["content"], strict=False)
            i = next((k for k, (x, y) in enumerate(pairs) if x != y), 0)
            return f"...{b['content'][max(0, i - 30) : i + 30]}... -> ...{a['content'][max(0, i - 30) : i + 30]}..."
    return ""


class _Filters:
    """The stateful filters (duplicates are judged against what was kept before)."""

    def __init__(self, cfg: CleanConfig, contamination: Contamination | None, tokenizer):
        self.cfg, self.contamination, self.tokenizer = cfg, contamination, tokenizer
        self.seen: dict[str, str] = {}
        self.near = NearDuplicates(cfg.near_dup_threshold) if cfg.near_dedupe else None

    def removal(self, messages: list[dict], ident: str) -> tuple[str, dict] | None:
        """``(filter name, example)`` of the first filter that removes this dialogue, or None to keep it."""
        if reason := _length_problem(self.cfg, messages, self.tokenizer):
            return "length", {"prompt_id": ident, "reason": reason}
        if self.contamination is not None:
            users = "\n".join(m["content"] for m in messages if m["role"] == "user")
            if hit := self.contamination.match(users):
                return "decontaminate", {"prompt_id": ident, "matched": hit[0], "ngram": hit[1]}
        text = _dedupe_text(messages, self.cfg.dedupe_on)
        if self.cfg.dedupe:
            key = fingerprint(text)
            if key in self.seen:
                return "exact_duplicates", {"prompt_id": ident, "duplicate_of": self.seen[key]}
            self.seen[key] = ident
        if self.near is not None and (other := self.near.check_and_add(ident, text)):
            return "near_duplicates", {"prompt_id": ident, "duplicate_of": other}
        return None


def _dedupe_text(messages: list[dict], on: str) -> str:
    if on == "prompt":
        return next(m["content"] for m in messages if m["role"] == "user")
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def clean_split(
    cfg: CleanConfig, rows: list[list[dict]], contamination, tokenizer
) -> tuple[list[dict], dict]:
    """Clean one split's dialogues; returns the kept rows and the per-filter report."""
    report, filters, kept = FilterReport(cfg.examples), _Filters(cfg, contamination, tokenizer), []
    for messages in rows:
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        ident = prompt_id_of(first_user)
        fixed = _fix_row(cfg, messages, report, ident)
        if fixed is None:
            continue
        if removed := filters.removal(fixed, ident):
            report.add(removed[0], "removed", removed[1])
            continue
        prompt = next(m["content"] for m in fixed if m["role"] == "user")
        kept.append({"prompt": prompt, "prompt_id": ident, "messages": fixed})
    return kept, report.filters


def evaluation_prompts(specs: list[str]) -> list[tuple[str, str]]:
    """``(id, text)`` for every turn of every evaluation prompt in ``specs``."""
    prompts = []
    for spec in specs:
        name = Path(spec).stem if Path(spec).suffix else spec
        for loc, raw, _ in source_rows(spec):
            if isinstance(raw, DataError):
                raise raw
            ident = f"{name}:{raw.get('question_id', loc.get('line', loc.get('row')))}"
            prompts += [(ident, t) for t in _prompt_texts(raw)]
    return prompts


def _prompt_texts(raw: dict) -> list[str]:
    if isinstance(raw.get("turns"), list):
        return [t for t in raw["turns"] if isinstance(t, str)]
    for key in ("instruction", "prompt"):
        if isinstance(raw.get(key), str):
            return [raw[key]]
    messages = raw.get("messages") if isinstance(raw.get("messages"), list) else []
    return [m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user"]


def clean(cfg: CleanConfig) -> CleanResult:
    """Run `zephyr clean`."""
    contamination = None
    if cfg.decontaminate:
        contamination = Contamination(evaluation_prompts(cfg.decontaminate), cfg.decontaminate_ngram)
        log.info(
            "clean: decontaminating against %d evaluation prompts (%d-grams)",
            contamination.size,
            cfg.decontaminate_ngram,
        )
    tokenizer = None
    if cfg.max_length is not None:
        from zephyr.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    outputs, report = {}, {"input": cfg.input, "settings": asdict(cfg), "splits": {}}
    for split in cfg.splits or [None]:
        loaded = load_rows(cfg.input, "conversation", split=split, on_error="skip")
        kept, filters = clean_split(cfg, loaded.dataset["messages"], contamination, tokenizer)
        name = split or "train_sft"
        outputs[name] = kept
        report["splits"][name] = {
            "rows_in": len(loaded.dataset) + loaded.skipped,
            "unreadable": loaded.skipped,
            "unreadable_examples": loaded.skipped_examples,
            "rows_out": len(kept),
            "filters": filters,
        }
    _write(outputs, report, Path(cfg.output_dir))
    return CleanResult(Path(cfg.output_dir), report)


def _write(outputs: dict[str, list[dict]], report: dict, output_dir: Path) -> None:
    from datasets import Features, Value

    features = Features({"prompt": Value("string"), "prompt_id": Value("string"), "messages": MESSAGES})
    write_dataset_dir(output_dir, outputs, features, "clean_report.json", report)


@dataclass
class CleanResult:
    output_dir: Path
    report: dict

    def summary(self) -> str:
        lines = [f"clean: -> {self.output_dir} (report: {self.output_dir / 'clean_report.json'})"]
        for name, s in self.report["splits"].items():
            lines.append(f"  {name}: {s['rows_in']} in, {s['rows_out']} out, {s['unreadable']} unreadable")
            for f, entry in s["filters"].items():
                counts = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "examples")
                lines.append(f"    {f}: {counts}")
        return "\n".join(lines)
