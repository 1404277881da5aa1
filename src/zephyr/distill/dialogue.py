"""`zephyr dialogue CONFIG`: multi-turn conversations between a user simulator and teachers (UltraChat-style).

Each seed (a topic, a question or instruction, or a material with or without an instruction; from a
file or the built-in ``zephyr:dialogue_seeds``) starts a dialogue in one of UltraChat's three sectors:
``world`` (questions about the world), ``writing`` (writing and creation) and ``materials`` (assistance
on existing materials). The first user message is the seed's own text or, for a bare topic or material,
written by the simulator; after that the simulator (``zephyr.distill.simulator``) writes every user turn
from the transcript and a teacher from the pool answers, for a number of exchanges drawn per dialogue
from the sector's range, unless the simulator ends it early. Every turn is checked as it arrives
(``zephyr.distill.turns``), and each fix or stop is recorded in the row and counted in
``<output>.report.json``.

Work runs in rounds across the open dialogues (``concurrency`` of them): all their next user turns go
to the simulator as one batch, then all their answers to the teachers, one batch per teacher backend,
each request with its own seed. A dialogue is written the moment it ends, whole; a run killed at any
point keeps every finished dialogue, and the rerun starts the unfinished ones from scratch. Every draw
(turn count, teacher, style) and every sampling seed derives from ``seed`` and the dialogue's id alone,
so shards, reruns and batch sizes ask every model the same things.

Output rows have ultrachat_200k's shape (``prompt``, ``prompt_id``, ``messages`` alternating from user
to a final assistant turn) plus ``sector``, ``seed``, ``exchanges`` (who wrote each turn) and what was
filtered; they load as conversations, so `zephyr clean` and `zephyr sft` take the file as it is.
Dialogues left with no exchange at all go to ``<output>.rejected.jsonl`` (counted, not redone).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr.config import on_error_setting, setting
from zephyr.data import normalise_row, prompt_id_of, source_rows
from zephyr.distill.clean import FilterReport
from zephyr.distill.generate import SamplerConfig, parse_sampler
from zephyr.distill.principles import stable_rng, stable_seed
from zephyr.distill.records import SCHEMA_VERSION
from zephyr.distill.runner import StageResult, StageRun, open_stage, side_path
from zephyr.distill.shards import parse_shard, shard_setting
from zephyr.distill.simulator import PROMPT_VERSION, USER_STYLES, follow_up_prompt, opening_prompt
from zephyr.distill.turns import FIXES, TurnCheck, check_turn
from zephyr.errors import ConfigError, DataError, ZephyrError
from zephyr.generation.backends import Backend, BackendPool
from zephyr.generation.jobs import run_jobs
from zephyr.generation.params import Generation, SamplingParams
from zephyr.io import read_jsonl, write_json

log = logging.getLogger(__name__)

SECTORS = ("world", "writing", "materials")
# Exchanges (a user turn and its answer) per dialogue, as UltraChat drew them per sector.
DEFAULT_TURNS = {"world": [3, 7], "writing": [2, 4], "materials": [2, 4]}


@dataclass
class DialogueTeacher(SamplerConfig):
    """One assistant of the pool."""

    system_prompt: str | None = setting("System prompt this teacher answers under (default: none).", None)


@dataclass
class DialogueConfig:
    """Settings of `zephyr dialogue`."""

    output: str = setting("The JSONL file to write (and resume).", default="")
    seeds: str = setting(
        "Seeds: a .jsonl/.json/.parquet file, a saved dataset, a hub id, or the built-in "
        "zephyr:dialogue_seeds. A row holds a `topic`, a `question` (or `prompt`, `instruction`, "
        "`messages`, `turns`), or a `material` (or `passage`, `text`) with an optional `instruction`; "
        "`sector` optional.",
        default="zephyr:dialogue_seeds",
    )
    simulator: str | dict = setting(
        "The user simulator: a backend spec, or {backend, name, temperature, top_p, max_tokens, stop}.",
        default="",
    )
    teachers: list = setting(
        "The assistant pool: a list of backend specs or {backend, name, temperature, top_p, max_tokens, "
        "stop, system_prompt}.",
        default_factory=list,
    )
    turns: dict[str, list[int]] = setting(
        "Exchanges per dialogue (a user turn and its answer), drawn per dialogue from [lowest, highest] "
        "of its sector (UltraChat: world 3-7, writing 2-4, materials 2-4). The simulator may end sooner.",
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_TURNS.items()},
    )
    default_sector: str = setting(
        "Sector of a seed that names none (a material: `materials`).", "world", choices=SECTORS
    )
    dialogues_per_seed: int = setting(
        "Dialogues started from each seed (each with its own draws and seeds).", 1, ge=1
    )
    teacher_draw: str = setting(
        "`dialogue`: one teacher, drawn per dialogue, answers all its turns (as in UltraChat); `turn`: a "
        "teacher drawn for every turn.",
        "dialogue",
        choices=("dialogue", "turn"),
    )
    transcript_chars: int = setting(
        "Longest transcript shown to the simulator; past it the oldest turns are left out.", 12000, ge=500
    )
    seeds_split: str | None = setting("Split of the seeds source to read.", default=None)
    seeds_config: str | None = setting("Hub config of the seeds source.", default=None)
    max_dialogues: int | None = setting(
        "Make only the first N dialogues (raise it later to extend a run).", default=None, ge=1
    )
    seed: int = setting("Global seed of every draw and sampling seed.", default=42)
    concurrency: int = setting(
        "Dialogues open at once: each round sends all their user turns to the simulator as one batch, "
        "then all their answers to the teachers, one batch per teacher backend.",
        default=16,
        ge=1,
    )
    on_error: str = on_error_setting("skip")
    progress: bool = setting("Show a progress bar.", default=True)
    shard: str | None = shard_setting()

    def __post_init__(self):
        parse_shard(self.shard)
        if not self.output or not self.simulator:
            raise ConfigError(
                "`output` and `simulator` are required (e.g. output: runs/demo/dialogues.jsonl, "
                "simulator: smollm2-135m-instruct)"
            )
        if not isinstance(self.teachers, list) or not self.teachers:
            raise ConfigError(
                "`teachers` must be a non-empty list, e.g. teachers: [{backend: smollm2-135m-instruct}]",
                key="teachers",
            )
        self.user = parse_sampler(SamplerConfig, self.simulator, "simulator")
        self.pool = [parse_sampler(DialogueTeacher, t, f"teachers[{i}]") for i, t in enumerate(self.teachers)]
        names = [t.name for t in self.pool]
        if len(set(names)) != len(names):
            raise ConfigError(f"Teacher names must be unique; got {names}. Set `name` on each teacher")
        self.turns = _check_turns(self.turns)

    def settings(self) -> dict:
        """What decides the content of each row: a resumed run must agree on all of it."""
        keys = ("seeds", "seeds_split", "seed", "turns", "default_sector", "dialogues_per_seed")
        return {
            "stage": "dialogue",
            "schema_version": SCHEMA_VERSION,
            "prompt_version": PROMPT_VERSION,
            **{k: getattr(self, k) for k in keys},
            "teacher_draw": self.teacher_draw,
            "transcript_chars": self.transcript_chars,
            "simulator": {**asdict(self.user), "backend": self.user.spec.identity()},
            "teachers": [{**asdict(t), "backend": t.spec.identity()} for t in self.pool],
        }


def _check_turns(turns: Any) -> dict[str, list[int]]:
    if not isinstance(turns, dict):
        raise ConfigError(f"`turns` must map sectors to [lowest, highest]; got {turns!r}", key="turns")
    out = {k: list(v) for k, v in DEFAULT_TURNS.items()}
    for sector, span in turns.items():
        if sector not in SECTORS:
            raise ConfigError(f"`turns.{sector}`: unknown sector; the sectors are {', '.join(SECTORS)}")
        if isinstance(span, int) and not isinstance(span, bool):
            span = [span, span]
        ok = (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in span)
        )
        if not ok or not 1 <= span[0] <= span[1]:
            raise ConfigError(
                f"`turns.{sector}` must be [lowest, highest] with 1 <= lowest <= highest (or one number); "
                f"got {span!r}"
            )
        out[sector] = span
    return out


# ---- seeds ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """What a dialogue starts from, as the seed row gave it."""

    sector: str
    question: str | None = None  # a first user message given as it is (question, prompt, messages, turns)
    topic: str | None = None
    material: str | None = None
    instruction: str | None = None
    source_id: str | None = None

    @property
    def opening(self) -> str | None:
        """The first user message when the seed fixes it; None when the simulator writes it."""
        if self.material is not None:
            return f"{self.instruction}\n\n{self.material}" if self.instruction else None
        return self.question or self.instruction

    @property
    def key(self) -> str:
        """The seed's id: sha256 of the opening (ultrachat_200k's prompt_id), else of the seed itself."""
        if self.opening is not None:
            return prompt_id_of(self.opening)
        return prompt_id_of(json.dumps([self.sector, self.topic, self.material], ensure_ascii=False))

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "sector"}


_MATERIAL_KEYS = ("material", "passage", "text")


def seed_from_row(raw: Any, loc: dict, default_sector: str) -> Seed:
    """One seed from a raw row; a DataError names the field that is missing or wrong."""
    if not isinstance(raw, dict):
        raise DataError(f"must be an object, got {type(raw).__name__}", **loc)
    sector = raw.get("sector")
    if sector is not None and sector not in SECTORS:
        raise DataError(f"must be one of {', '.join(SECTORS)}; got {sector!r}", field="sector", **loc)
    text = {k: _text(raw, k, loc) for k in ("topic", "instruction", "question", *_MATERIAL_KEYS)}
    material = next((text[k] for k in _MATERIAL_KEYS if text[k]), None)
    source = raw.get("prompt_id") or raw.get("id") or raw.get("seed_id")
    source_id = str(source) if isinstance(source, (str, int)) and not isinstance(source, bool) else None
    common = {"topic": text["topic"], "instruction": text["instruction"], "source_id": source_id}
    if material is not None:
        return Seed(sector or "materials", material=material, **common)
    question = text["question"]
    if question is None and any(raw.get(k) is not None for k in ("prompt", "messages", "turns")):
        messages = normalise_row("prompt", raw, loc)["messages"]
        question = next(m["content"] for m in messages if m["role"] == "user")
    if question is None and not text["instruction"] and not text["topic"]:
        raise DataError(
            "has nothing to start a dialogue from: give `topic`, `question`, `prompt`, `instruction`, "
            "`messages`, `turns` or `material`",
            **loc,
        )
    return Seed(sector or default_sector, question, **common)


def _text(raw: dict, key: str, loc: dict) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError("must be a non-empty string", field=key, **loc)
    return value.strip()


def read_seeds(
    spec: str, *, split: str | None = None, config: str | None = None, default_sector: str = "world"
) -> tuple[list[Seed], list[DataError]]:
    """Readable seeds (one per distinct seed id, in file order) and a DataError per unreadable row."""
    seeds, bad, seen = [], [], set()
    for loc, raw, _ in source_rows(spec, split=split, config=config):
        try:
            if isinstance(raw, DataError):
                raise raw
            seed = seed_from_row(raw, loc, default_sector)
        except DataError as err:
            bad.append(err)
            continue
        if seed.key not in seen:
            seen.add(seed.key)
            seeds.append(seed)
    if bad:
        log.warning("%d unreadable seed row(s) in %s; the first: %s", len(bad), spec, bad[0])
    return seeds, bad


def dialogue_items(cfg: DialogueConfig, seeds: list[Seed]) -> list[tuple[str, tuple[Seed, int]]]:
    """``(dialogue id, (seed, index))`` for every dialogue to make, first ``max_dialogues`` of them."""
    items = [
        (seed.key if k == 0 else f"{seed.key}-{k}", (seed, k))
        for seed in seeds
        for k in range(cfg.dialogues_per_seed)
    ]
    return items[: cfg.max_dialogues]


# ---- one dialogue -----------------------------------------------------------------------------------


@dataclass
class Dialogue:
    """A dialogue in the making: the plan drawn from its id, the turns so far, and how it ended."""

    key: str
    seed: Seed
    index: int
    planned: int
    teachers: list[DialogueTeacher]  # one per planned exchange
    styles: list[str]  # the simulator's style for each follow-up (exchange 1 on)
    messages: list[dict] = field(default_factory=list)
    exchanges: list[dict] = field(default_factory=list)
    filtered: list[dict] = field(default_factory=list)
    user: str | None = None  # the user turn waiting for its answer
    user_meta: dict = field(default_factory=dict)
    ended: str | None = None
    tokens: int = 0
    error: ZephyrError | None = None

    @property
    def finished(self) -> bool:
        return self.ended is not None or self.error is not None

    def take(self, role: str, check: TurnCheck, raw: str) -> bool:
        """Record a checked turn's fixes; on a stop, end the dialogue here. True when the turn is kept."""
        at = len(self.exchanges)
        self.filtered += [{"exchange": at, "role": role, **fix} for fix in check.fixes]
        if check.stop is not None:
            if check.stop != "simulator_end":
                self.filtered.append({"exchange": at, "role": role, "filter": check.stop, "text": raw[:300]})
            self.ended = check.stop
            return False
        return True

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "prompt_id": self.key,
            "prompt": self.messages[0]["content"] if self.messages else (self.seed.opening or ""),
            "messages": self.messages,
            "sector": self.seed.sector,
            "seed": self.seed.to_json(),
            "seed_id": self.seed.key,
            "seed_index": self.index,
            "planned_turns": self.planned,
            "ended": self.ended,
            "exchanges": self.exchanges,
            "filtered": self.filtered,
        }


def plan_dialogue(cfg: DialogueConfig, key: str, seed: Seed, index: int) -> Dialogue:
    """Turn count, teachers and styles, drawn from the global seed and the dialogue id alone."""
    rng = stable_rng("dialogue", cfg.seed, key)
    low, high = cfg.turns[seed.sector]
    planned = rng.randint(low, high)
    if cfg.teacher_draw == "dialogue":
        teachers = [rng.choice(cfg.pool)] * planned
    else:
        teachers = [rng.choice(cfg.pool) for _ in range(planned)]
    styles = [rng.choice(USER_STYLES) for _ in range(planned)]
    return Dialogue(key, seed, index, planned, teachers, styles)


@dataclass
class Request:
    dialogue: Dialogue
    role: str
    backend: Backend
    conversation: list[dict]
    params: SamplingParams


def user_request(cfg: DialogueConfig, d: Dialogue, backend: Backend) -> Request | None:
    """The simulator request for ``d``'s next user turn (None when the seed gives the opening)."""
    at = len(d.exchanges)
    if at == 0 and d.seed.opening is not None:
        return None
    if at == 0:
        prompt = opening_prompt(d.seed.sector, d.seed.topic, d.seed.material)
    else:
        prompt = follow_up_prompt(d.seed.sector, d.messages, d.styles[at], cfg.transcript_chars)
    return Request(
        d, "user", backend, prompt, cfg.user.params(stable_seed("dialogue-user", cfg.seed, d.key, at))
    )


def take_user(cfg: DialogueConfig, d: Dialogue, result: Generation | ZephyrError | None) -> None:
    at = len(d.exchanges)
    if result is None:  # the seed's own opening
        d.user, d.user_meta = d.seed.opening, {"simulator": None, "style": None}
        return
    if isinstance(result, ZephyrError):
        d.error = result
        return
    d.tokens += result.completion_tokens
    check = check_turn("user", result.text, d.messages)
    if d.take("user", check, result.text):
        text = check.text
        if at == 0 and d.seed.material is not None:  # the simulator wrote the request; the material follows
            text = f"{text}\n\n{d.seed.material}"
        d.user = text
        d.user_meta = {"simulator": cfg.user.name, "style": d.styles[at] if at else None}


def answer_request(cfg: DialogueConfig, d: Dialogue, backends: BackendPool) -> Request:
    at = len(d.exchanges)
    teacher = d.teachers[at]
    system = [{"role": "system", "content": teacher.system_prompt}] if teacher.system_prompt else []
    conversation = [*system, *d.messages, {"role": "user", "content": d.user}]
    params = teacher.params(stable_seed("dialogue-assistant", cfg.seed, d.key, at))
    return Request(d, "assistant", backends.get(teacher.spec), conversation, params)


def take_answer(d: Dialogue, request: Request, result: Generation | ZephyrError) -> None:
    if isinstance(result, ZephyrError):
        d.error = result
        return
    d.tokens += result.completion_tokens
    user = {"role": "user", "content": d.user}
    check = check_turn("assistant", result.text, [*d.messages, user])
    if not d.take("assistant", check, result.text):
        return
    teacher = d.teachers[len(d.exchanges)]
    d.messages += [user, {"role": "assistant", "content": check.text}]
    d.exchanges.append(
        {
            **d.user_meta,
            "teacher": teacher.name,
            "teacher_model": request.backend.name,
            "finish_reason": result.finish_reason,
        }
    )
    d.user = None
    if len(d.exchanges) == d.planned:
        d.ended = "planned"


# ---- rounds -----------------------------------------------------------------------------------------


def ask_all(requests: list[Request]) -> list[Generation | ZephyrError]:
    """Every request at once, each on its own thread: a backend sees all of its requests of the round
    together (the local engine decodes them as one batch, vLLM coalesces them, an endpoint gets them
    concurrently). A request that failed for good comes back as its error; the others are unaffected."""
    out: list = [None] * len(requests)
    if not requests:
        return out

    def done(i: int, generations: list) -> None:
        out[i] = generations[0][0]

    def failed(i: int, error: ZephyrError) -> None:
        out[i] = error

    run_jobs(
        [functools.partial(r.backend.generate, [r.conversation], r.params) for r in requests],
        done,
        concurrency=len(requests),
        on_error="continue",
        on_failed=failed,
        progress=False,
    )
    return out


def run_round(cfg: DialogueConfig, open_dialogues: list[Dialogue], backends: BackendPool) -> int:
    """One round: the user turns of every open dialogue (one simulator batch), then their answers (one
    batch per teacher backend, sent together). Returns the exchanges completed."""
    simulator = backends.get(cfg.user.spec)
    asks = [(d, user_request(cfg, d, simulator)) for d in open_dialogues if d.user is None]
    sent = [r for _, r in asks if r is not None]
    results = iter(ask_all(sent))
    for d, request in asks:
        take_user(cfg, d, None if request is None else next(results))
    answers = [
        answer_request(cfg, d, backends) for d in open_dialogues if d.user is not None and not d.finished
    ]
    before = sum(len(d.exchanges) for d in open_dialogues)
    for request, result in zip(answers, ask_all(answers), strict=True):
        take_answer(request.dialogue, request, result)
    return sum(len(d.exchanges) for d in open_dialogues) - before


def converse(cfg: DialogueConfig, run: StageRun, backends: BackendPool) -> None:
    """Work ``run.pending`` in rounds, keeping up to ``concurrency`` dialogues open and writing each one
    as soon as it ends (a dialogue that failed is reported and redone by the next run)."""
    queue = deque(run.pending)
    open_dialogues: list[Dialogue] = []
    exchanges, started = 0, time.monotonic()
    bar = tqdm(
        total=run.total,
        initial=run.resumed,
        desc="dialogue",
        unit="dialogue",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )

    def refill() -> None:
        while queue and len(open_dialogues) < cfg.concurrency:
            key, (seed, index) = queue.popleft()
            open_dialogues.append(plan_dialogue(cfg, key, seed, index))

    refill()
    try:
        while open_dialogues:
            exchanges += run_round(cfg, open_dialogues, backends)
            for d in [d for d in open_dialogues if d.finished]:
                if d.error is not None:
                    run.fail(d.key, d.error)
                elif d.exchanges:
                    run.write(d.to_json(), d.tokens)
                else:
                    run.reject(d.to_json(), d.tokens)
                bar.update()
            open_dialogues[:] = [d for d in open_dialogues if not d.finished]
            refill()
            seconds = max(time.monotonic() - started, 1e-9)
            bar.set_postfix_str(
                f"{len(open_dialogues)} open, {exchanges / seconds:.2f} turns/s, "
                f"{run.tokens / seconds:.1f} tok/s, {run.failed} failed"
            )
    finally:
        bar.close()


# ---- the stage --------------------------------------------------------------------------------------


@dataclass
class DialogueResult:
    stage: StageResult
    report: dict
    report_path: Path

    @property
    def complete(self) -> bool:
        return self.stage.complete

    def summary(self) -> str:
        r = self.report
        lines = [
            self.stage.summary(),
            f"  {r['dialogues']} dialogues ({r['exchanges']} exchanges) in {self.stage.output}, "
            f"{r['rejected']} rejected; report: {self.report_path}",
            "  ended: " + ", ".join(f"{k} {v}" for k, v in sorted(r["ended"].items())),
        ]
        for name, entry in r["filters"].items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in entry.items() if k != "examples"))
        return "\n".join(lines)


def dialogue_report(output: Path, examples: int = 3) -> dict:
    """Counts over everything in ``output`` and its rejected file so far: dialogues, exchanges per
    sector, how dialogues ended, and every filter with its count and a few examples."""
    rows = _rows(output)
    rejected = _rows(side_path(output, "rejected.jsonl"))
    filters = FilterReport(examples)
    for row in rows + rejected:
        for event in row.get("filtered") or []:
            counter = "fixed" if event.get("filter") in FIXES else "stopped"
            filters.add(str(event.get("filter")), counter, {"prompt_id": row.get("prompt_id"), **event})
    sectors: dict[str, dict] = {}
    for row in rows:
        entry = sectors.setdefault(str(row.get("sector")), {"dialogues": 0, "exchanges": 0})
        entry["dialogues"] += 1
        entry["exchanges"] += len(row.get("exchanges") or [])
    return {
        "dialogues": len(rows),
        "rejected": len(rejected),
        "exchanges": sum(e["exchanges"] for e in sectors.values()),
        "exchanges_per_dialogue": dict(
            sorted(Counter(str(len(r.get("exchanges") or [])) for r in rows).items())
        ),
        "sectors": sectors,
        "ended": dict(Counter(str(r.get("ended")) for r in rows + rejected)),
        "filters": filters.filters,
    }


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [row for _, row in read_jsonl(path, bad_lines="yield", torn_tail="skip") if isinstance(row, dict)]


def write_report(output: str | Path) -> tuple[dict, Path]:
    """Write ``<output>.report.json`` from what the output holds; returns it and its path."""
    output = Path(output)
    report = dialogue_report(output)
    path = side_path(output, "report.json")
    write_json(path, report)
    return report, path


def dialogue(cfg: DialogueConfig) -> DialogueResult:
    """Run `zephyr dialogue`: returns what was written, resumed, rejected and failed, and the report."""
    seeds, bad = read_seeds(
        cfg.seeds, split=cfg.seeds_split, config=cfg.seeds_config, default_sector=cfg.default_sector
    )
    if bad and cfg.on_error == "raise":
        raise bad[0]
    if not seeds:
        raise DataError("holds no readable seed", source=cfg.seeds)
    items = dialogue_items(cfg, seeds)
    log.info(
        "dialogue: %d dialogues from %d seeds, simulator %s, %d teacher(s) -> %s",
        len(items),
        len(seeds),
        cfg.user.name,
        len(cfg.pool),
        cfg.output,
    )
    with BackendPool() as backends:
        for sampler in (cfg.user, *cfg.pool):  # load every model before the clock starts
            backends.get(sampler.spec)
        with open_stage(
            "dialogue",
            items,
            cfg.output,
            settings=cfg.settings(),
            bad_input=bad,
            shard=cfg.shard,
            rejects=True,
        ) as run:
            converse(cfg, run, backends)
    report, path = write_report(run.output)
    return DialogueResult(run.result(), report, path)
