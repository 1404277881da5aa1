"""`zephyr feedback CONFIG`: AI feedback on generated completions, UltraFeedback-style.

For every prompt and every aspect (instruction following, honesty, truthfulness, helpfulness) the
judge sees all the prompt's completions in one request, in an order shuffled reproducibly from the seed,
the prompt id and the aspect (so position bias averages out but reruns agree), at temperature 0, and
rates each from 1 to 5. A reply that cannot be read gets exactly one repair request; a rating still
unreadable after it is recorded as missing together with the judge's replies, never guessed.
Each completion's ``fine-grained_score`` is the mean of its aspect ratings; the optional 1-10 critique
score is kept beside it as ``overall_score``. Resumable like `generate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from zephyr.config import setting
from zephyr.distill.principles import stable_rng
from zephyr.distill.records import SCHEMA_VERSION, Judgment, PromptRecord, Rating
from zephyr.distill.rubrics import (
    ASPECTS,
    RUBRIC_VERSION,
    RUBRICS,
    aspect_messages,
    critique_messages,
    critique_repair_messages,
    instruction_text,
    repair_messages,
)
from zephyr.distill.rules import RULES_ASPECT, RuleSet, rule_judge
from zephyr.distill.runner import StageResult, run_stage
from zephyr.distill.shards import parse_shard, shard_setting
from zephyr.distill.verdicts import Verdict, parse_overall, parse_ratings, problems
from zephyr.errors import ConfigError, DataError
from zephyr.generation.backends import Backend, BackendPool, parse_spec
from zephyr.generation.params import SamplingParams
from zephyr.io import read_jsonl

log = logging.getLogger(__name__)


@dataclass
class FeedbackConfig:
    """Settings of `zephyr feedback`."""

    input: str = setting("The `zephyr generate` output (JSONL) to rate.", default="")
    output: str = setting("The JSONL file to write (and resume).", default="")
    judge: str | dict = setting(
        "Judge backend spec: a local model spec, or {type, model, base_url, ...}; or `{type: rules, ...}`, a "
        "rubric a program checks (zephyr.distill.rules: max_words, contains, ...): each completion is rated "
        "1 + 4 x the fraction of rules it passes, under the one aspect `rules`.",
        default="",
    )
    aspects: list[str] = setting(
        f"Aspects to rate, from: {', '.join(ASPECTS)}.", default_factory=lambda: list(ASPECTS)
    )
    rationale: bool = setting(
        "Ask for a rationale (and type) with each rating. Off: ratings only, which small "
        "judges manage far more often.",
        default=True,
    )
    critique: bool = setting(
        "Also ask for UltraFeedback's written critique with a 1-10 `overall_score`, one "
        "request per completion.",
        default=False,
    )
    max_tokens: int = setting("Longest judge reply per aspect request.", default=1024)
    critique_max_tokens: int = setting("Longest critique reply.", default=512)
    min_aspects: int | None = setting(
        "Aspects that must be read for a completion to get a `fine-grained_score` "
        "(their mean). Default: all of `aspects`.",
        default=None,
    )
    seed: int = setting(
        "Seed of the per-prompt, per-aspect shuffle of the completions shown to the judge.", default=42
    )
    concurrency: int = setting(
        "Prompts judged at once (a local judge batches their requests together).", default=8
    )
    retry_unreadable: bool = setting(
        "Ask the judge again about rows already in `output` where not one rating could be read (a judge "
        "that was down, overloaded or answering garbage when they were rated). The rows are replaced.",
        default=False,
    )
    progress: bool = setting("Show a progress bar.", default=True)
    shard: str | None = shard_setting()

    def __post_init__(self):
        parse_shard(self.shard)
        if not self.input or not self.output or not self.judge:
            raise ConfigError(
                "`input`, `output` and `judge` are required (e.g. input: runs/demo/completions.jsonl, "
                "output: runs/demo/rated.jsonl, judge: smollm2-135m-instruct)"
            )
        self.rules = rule_judge(self.judge)
        self.judge_spec = None if self.rules is not None else parse_spec(self.judge)
        unknown = [a for a in self.aspects if a not in RUBRICS]
        if unknown or not self.aspects or len(set(self.aspects)) != len(self.aspects):
            raise ConfigError(
                f"`aspects` must be distinct names from {', '.join(ASPECTS)}; got {self.aspects}"
            )
        self.min_aspects = len(self.aspects) if self.min_aspects is None else self.min_aspects
        if not 1 <= self.min_aspects <= len(self.aspects):
            raise ConfigError(
                f"`min_aspects` must be between 1 and {len(self.aspects)}; got {self.min_aspects}"
            )
        if min(self.max_tokens, self.critique_max_tokens, self.concurrency) < 1:
            raise ConfigError("`max_tokens`, `critique_max_tokens` and `concurrency` must be at least 1")

    def settings(self) -> dict:
        """What decides the content of each row: a resumed run must agree on all of it."""
        keys = (
            "input",
            "aspects",
            "rationale",
            "critique",
            "max_tokens",
            "critique_max_tokens",
            "min_aspects",
            "seed",
        )
        return {
            "stage": "feedback",
            "schema_version": SCHEMA_VERSION,
            "rubric_version": RUBRIC_VERSION,
            "judge": self.judge_identity(),
            **{k: getattr(self, k) for k in keys},
        }

    def judge_identity(self) -> dict:
        if self.rules is not None:
            return {"type": "rules", **self.rules.to_json()}
        return self.judge_spec.identity()


# ---- one prompt -------------------------------------------------------------------------------------


@dataclass
class _Request:
    """One judge request and what came of it."""

    aspect: str  # an aspect, or "critique"
    order: list[int]  # order[k]: the completion shown as text k+1
    messages: list[dict]
    reply: str = ""
    repair_reply: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None


def shown_order(seed: int, prompt_id: str, aspect: str, n: int) -> list[int]:
    """The reproducible shuffle of ``n`` completions for one prompt and aspect."""
    order = list(range(n))
    stable_rng("feedback", seed, prompt_id, aspect).shuffle(order)
    return order


def judge_prompt(cfg: FeedbackConfig, judge: Backend, record: PromptRecord) -> tuple[PromptRecord, int]:
    """Rate every completion of one prompt on every aspect (and critique it, if asked)."""
    n, instruction = len(record.completions), instruction_text(record.messages)
    requests = []
    for aspect in cfg.aspects:
        order = shown_order(cfg.seed, record.prompt_id, aspect, n)
        texts = [record.completions[i].response for i in order]
        requests.append(_Request(aspect, order, aspect_messages(aspect, instruction, texts, cfg.rationale)))
    tokens = _ask(judge, requests, cfg.max_tokens, cfg.seed, _read_aspect)
    critiques = []
    if cfg.critique:
        critiques = [
            _Request("critique", [i], critique_messages(instruction, c.response))
            for i, c in enumerate(record.completions)
        ]
        tokens += _ask(judge, critiques, cfg.critique_max_tokens, cfg.seed, _read_critique)
    _annotate(cfg, record, requests, critiques)
    record.judge = judge.name
    record.judgments = [
        Judgment(r.aspect, r.order, r.reply, r.repair_reply, r.error) for r in requests + critiques
    ]
    return record, tokens


def rate_by_rules(rules: RuleSet, record: PromptRecord) -> PromptRecord:
    """Rate every completion of one prompt by the rule set: no model, no judge calls."""
    for c in record.completions:
        verdict = rules.check(c.response)
        c.annotations = {RULES_ASPECT: Rating(verdict.rating, verdict.rationale())}
        c.fine_grained_score = verdict.rating
    record.judge = "rules"
    record.judgments = []
    return record


def _ask(judge: Backend, requests: list[_Request], max_tokens: int, seed: int, read) -> int:
    """Send the requests, then one repair round for the replies that could not be read."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed)
    generations = judge.generate([r.messages for r in requests], params)
    tokens = 0
    for request, (gen,) in zip(requests, generations, strict=True):
        request.reply, tokens = gen.text, tokens + gen.completion_tokens
        request.error = read(request, gen.text)
    broken = [r for r in requests if r.error]
    if broken:
        repairs = judge.generate([_repair(r) for r in broken], params)
        for request, (gen,) in zip(broken, repairs, strict=True):
            request.repair_reply, tokens = gen.text, tokens + gen.completion_tokens
            request.error = read(request, gen.text, repair=True)
    return tokens


def _repair(request: _Request) -> list[dict]:
    if request.aspect == "critique":
        return critique_repair_messages(request.messages, request.reply, request.error)
    return repair_messages(request.messages, request.reply, request.error, len(request.order))


def _read_aspect(request: _Request, reply: str, repair: bool = False) -> str | None:
    """Parse ratings into ``request.verdicts``; a repair fills only the ratings still missing."""
    n_types = len(RUBRICS[request.aspect].types)
    parsed = parse_ratings(reply, len(request.order), n_types)
    if repair:
        parsed = [
            old if old.rating is not None else new for old, new in zip(request.verdicts, parsed, strict=True)
        ]
    request.verdicts = parsed
    return problems(parsed)


def _read_critique(request: _Request, reply: str, repair: bool = False) -> str | None:
    score, critique, error = parse_overall(reply)
    if repair and score is not None:
        critique = request.reply.strip() or None  # the repair holds the score alone; the feedback came first
    request.verdicts = [Verdict(None if score is None else score, critique, None, error)]
    return error


def _annotate(
    cfg: FeedbackConfig, record: PromptRecord, requests: list[_Request], critiques: list[_Request]
) -> None:
    for request in requests:
        for shown, i in enumerate(request.order):
            v = request.verdicts[shown]
            raw = None if v.rating is not None else _raw(request)
            record.completions[i].annotations[request.aspect] = Rating(
                v.rating, v.rationale, v.type, v.error, raw
            )
    for c in record.completions:
        read = [r.rating for r in c.annotations.values() if r.rating is not None]
        c.fine_grained_score = round(sum(read) / len(read), 4) if len(read) >= cfg.min_aspects else None
    for request in critiques:
        completion = record.completions[request.order[0]]
        v = request.verdicts[0]
        completion.overall_score, completion.critique = (
            v.rating,
            v.rationale if v.rating is not None else _raw(request),
        )


def _raw(request: _Request) -> str:
    if request.repair_reply is None:
        return request.reply
    return f"{request.reply}\n\n[repair reply]\n{request.repair_reply}"


# ---- the stage --------------------------------------------------------------------------------------


def read_completions(path: str) -> tuple[list[PromptRecord], list[DataError]]:
    """The `generate` rows to rate, and a DataError per unreadable line (reported, not fatal)."""
    records, bad, seen = [], [], set()
    for loc, raw in read_jsonl(path, bad_lines="yield"):
        try:
            if isinstance(raw, DataError):
                raise raw
            record = PromptRecord.from_json(raw, loc)
            if not record.completions:
                raise DataError("has no completions to rate", field="completions", **loc)
        except DataError as err:
            bad.append(err)
            continue
        if record.prompt_id not in seen:
            seen.add(record.prompt_id)
            records.append(record)
    return records, bad


def feedback(cfg: FeedbackConfig) -> StageResult:
    """Run `zephyr feedback`: returns what was written, resumed, failed and skipped."""
    records, bad = read_completions(cfg.input)
    if not records:
        raise DataError("holds no readable completions row", source=cfg.input)
    if cfg.rules is not None:
        log.info("feedback: %d prompts, rule judge %s -> %s", len(records), cfg.rules.to_json(), cfg.output)
        return _run(cfg, records, bad, lambda r: (rate_by_rules(cfg.rules, r).to_json(), 0))
    with BackendPool() as backends:
        judge = backends.get(cfg.judge_spec)
        log.info(
            "feedback: %d prompts, %d aspect(s)%s, judge %s -> %s",
            len(records),
            len(cfg.aspects),
            " + critique" if cfg.critique else "",
            judge.name,
            cfg.output,
        )

        def work(record: PromptRecord) -> tuple[dict, int]:
            rated, tokens = judge_prompt(cfg, judge, record)
            return rated.to_json(), tokens

        return _run(cfg, records, bad, work)


def _run(cfg: FeedbackConfig, records: list[PromptRecord], bad: list[DataError], work) -> StageResult:
    result = run_stage(
        "feedback",
        [(r.prompt_id, r) for r in records],
        work,
        Path(cfg.output),
        concurrency=cfg.concurrency,
        settings=cfg.settings(),
        bad_input=bad,
        progress=cfg.progress,
        redo=nothing_read if cfg.retry_unreadable else None,
        shard=cfg.shard,
    )
    log.info("feedback: %s", parse_rates(result.output))
    return result


def nothing_read(row: dict) -> bool:
    """True for a rated row in which the judge's replies gave not a single readable rating."""
    ratings = [
        r.get("rating")
        for c in row.get("completions") or []
        for r in (c.get("annotations") or {}).values()
        if isinstance(r, dict)
    ]
    return bool(ratings) and all(r is None for r in ratings)


def parse_rates(path: str) -> str:
    """How many ratings of each aspect were read, over everything in the output so far."""
    counts: dict[str, list[int]] = {}
    for _, row in read_jsonl(path, bad_lines="yield"):
        for c in row.get("completions", []) if isinstance(row, dict) else []:
            for aspect, r in (c.get("annotations") or {}).items():
                read, total = counts.setdefault(aspect, [0, 0])
                counts[aspect] = [read + (r.get("rating") is not None), total + 1]
    return "ratings read: " + ", ".join(f"{a} {k}/{t}" for a, (k, t) in counts.items())
