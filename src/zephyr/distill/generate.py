"""`zephyr generate CONFIG`: completions for every prompt from a pool of teachers (UltraFeedback-style).

For each prompt, ``completions_per_prompt`` teachers are drawn from the pool (all different while the
pool is large enough) and each writes one completion under a principle drawn for it (see
``zephyr.distill.principles``). Every draw and every sampling seed derives from the global ``seed`` and
the prompt's id alone, so a resumed or repeated run asks each teacher the same thing.

Output: one JSONL row per prompt (``zephyr.distill.records``), written as soon as its completions are
in; rerunning continues an interrupted run. Unreadable prompt rows and prompts whose backend gave up are
listed in ``<output>.failures.jsonl``; the run completes for the rest.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zephyr.config import check_settings, on_error_setting, parse_config, setting
from zephyr.data import normalise_row, prompt_id_of, source_rows
from zephyr.data.schemas import extra_columns
from zephyr.distill.principles import (
    DEFAULT_PRINCIPLE_WEIGHTS,
    check_weights,
    draw_principle,
    principle_catalogue,
    stable_rng,
    stable_seed,
)
from zephyr.distill.records import SCHEMA_VERSION, Completion, PromptRecord
from zephyr.distill.runner import StageResult, run_stage
from zephyr.distill.shards import parse_shard, shard_setting
from zephyr.errors import ConfigError, DataError
from zephyr.generation.backends import BackendPool, parse_spec
from zephyr.generation.params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class SamplerConfig:
    """A model that writes text for a stage: a backend plus how to sample from it (the teachers here; the
    user simulator and the teachers of `zephyr dialogue`)."""

    backend: str | dict = setting(
        "Backend spec: a local model spec, or {type, model, base_url, ...} (see zephyr.generation.backends)."
    )
    name: str | None = setting(
        "Name recorded with each text it writes. Default: `<model>@t<temperature>`.", default=None
    )
    temperature: float = setting("Sampling temperature (0: greedy).", default=1.0)
    top_p: float = setting("Nucleus sampling mass.", default=1.0)
    max_tokens: int = setting("Longest reply in tokens.", default=512)
    stop: list[str] = setting("Extra stop strings (generation always stops at EOS).", default_factory=list)

    def __post_init__(self):
        self.spec = parse_spec(self.backend)
        self.params(0)  # validates the sampling settings now, not at the first prompt
        self.name = self.name or f"{self.spec.model_id}@t{self.temperature:g}"

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop),
            seed=seed,
        )


@dataclass
class TeacherConfig(SamplerConfig):
    """One member of the teacher pool: a backend plus how to sample from it."""

    principles: dict[str, float] | None = setting(
        "Principle weights for this teacher, overriding `principles_by_category` and `principles`.",
        default=None,
    )


@dataclass
class GenerateConfig:
    """Settings of `zephyr generate`."""

    prompts: str = setting(
        "Prompts: a .jsonl/.json/.parquet file, a saved dataset, a hub id, or zephyr:demo_prompts. "
        "Rows hold `prompt`, `messages`, `instruction` or `turns`.",
        default="",
    )
    output: str = setting("The JSONL file to write (and resume).", default="")
    teachers: list[dict] = setting(
        "The teacher pool: a list of {backend, name, temperature, top_p, max_tokens, stop, principles}.",
        default_factory=list,
    )
    completions_per_prompt: int = setting(
        "Completions per prompt, each from a different teacher while the pool has enough (UltraFeedback: 4).",
        default=4,
    )
    principles: dict[str, float] = setting(
        "Principle -> weight, for drawing each completion's principle (built in: helpfulness, honesty, "
        "truthfulness, verbalized_calibration; `none` means no system prompt).",
        default_factory=lambda: dict(DEFAULT_PRINCIPLE_WEIGHTS),
    )
    principles_by_category: dict[str, dict[str, float]] = setting(
        "Principle weights for prompts of a given `category` (or `source`), as UltraFeedback varies them by "
        "source.",
        default_factory=dict,
    )
    principle_prompts: dict[str, list[str]] = setting(
        "Extra or replacement principles: name -> list of system-prompt wordings.", default_factory=dict
    )
    prompts_split: str | None = setting("Split of the prompts source to read.", default=None)
    prompts_config: str | None = setting("Hub config of the prompts source.", default=None)
    max_prompts: int | None = setting(
        "Use only the first N readable prompts (raise it later to extend a run).", default=None
    )
    skip_prompts: int = setting(
        "Skip the first N readable prompts (before `max_prompts` counts): a window of the prompt file, as "
        "iterative rounds take a fresh one each.",
        default=0,
        ge=0,
    )
    seed: int = setting("Global seed for teacher/principle draws and sampling seeds.", default=42)
    concurrency: int = setting(
        "Prompts worked on at once (a local backend batches their requests together).", default=16
    )
    on_error: str = on_error_setting("skip")
    progress: bool = setting("Show a progress bar.", default=True)
    shard: str | None = shard_setting()

    def __post_init__(self):
        parse_shard(self.shard)
        if not self.prompts or not self.output:
            raise ConfigError(
                "`prompts` and `output` are required (e.g. prompts: zephyr:demo_prompts, "
                "output: runs/demo/completions.jsonl)"
            )
        if not isinstance(self.teachers, list):
            raise ConfigError(
                "`teachers` must be a list of teachers, e.g. teachers: [{backend: smollm2-135m-instruct}]; "
                f"got a {type(self.teachers).__name__}",
                key="teachers",
            )
        if not self.teachers:
            raise ConfigError(
                "`teachers` is empty; give at least one, e.g. teachers: [{backend: smollm2-135m-instruct}]"
            )
        self.pool = [_teacher(t, i) for i, t in enumerate(self.teachers)]
        names = [t.name for t in self.pool]
        if len(set(names)) != len(names):
            raise ConfigError(f"Teacher names must be unique; got {names}. Set `name` on each teacher")
        if self.completions_per_prompt < 1 or self.concurrency < 1:
            raise ConfigError(
                "`completions_per_prompt` and `concurrency` must be at least 1; got "
                f"{self.completions_per_prompt} and {self.concurrency}"
            )
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"`max_prompts` must be at least 1; got {self.max_prompts}")
        check_settings(self)
        self.catalogue = principle_catalogue(self.principle_prompts)
        check_weights(self.principles, self.catalogue, "principles")
        for key, weights in self.principles_by_category.items():
            check_weights(weights, self.catalogue, f"principles_by_category.{key}")
        for t in self.pool:
            if t.principles is not None:
                check_weights(t.principles, self.catalogue, f"teachers[{t.name}].principles")

    def settings(self) -> dict:
        """What decides the content of each row: a resumed run must agree on all of it."""
        return {
            "stage": "generate",
            "schema_version": SCHEMA_VERSION,
            "prompts": self.prompts,
            "prompts_split": self.prompts_split,
            "seed": self.seed,
            "completions_per_prompt": self.completions_per_prompt,
            "principles": self.principles,
            "principles_by_category": self.principles_by_category,
            "principle_prompts": self.principle_prompts,
            "teachers": [{**asdict(t), "backend": t.spec.identity()} for t in self.pool],
        }


def _teacher(raw: Any, i: int) -> TeacherConfig:
    return parse_sampler(TeacherConfig, raw, f"teachers[{i}]")


def parse_sampler(cls: type, raw: Any, where: str):
    """A SamplerConfig (sub)class from a backend spec string or a mapping; errors name ``where``."""
    if isinstance(raw, str):
        raw = {"backend": raw}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"`{where}` must be a mapping such as {{backend: MODEL, temperature: 0.7}}; got {raw!r}"
        )
    try:
        return parse_config([cls], None, dict(raw))[0]
    except ConfigError as exc:
        raise ConfigError(f"`{where}`: {exc}") from None


# ---- prompts ----------------------------------------------------------------------------------------


def read_prompts(
    spec: str,
    *,
    split: str | None = None,
    config: str | None = None,
    limit: int | None = None,
    skip: int = 0,
) -> tuple[list[dict], list[DataError]]:
    """Readable prompt rows (one per distinct prompt: the first ``skip`` left out, then at most ``limit``)
    and a DataError per unreadable row.

    ``prompt_id`` is always the stable hash of the prompt (``prompt_id_of``), so the same prompt has the
    same id in every file; an id the source gave is kept as ``source_prompt_id``.
    """
    rows: list[dict] = []
    bad: list[DataError] = []
    seen: set[str] = set()
    for loc, raw, columns in source_rows(spec, split=split, config=config):
        if limit is not None and len(rows) >= skip + limit:
            break
        try:
            if isinstance(raw, DataError):
                raise raw
            row = normalise_row("prompt", raw, loc, extra_columns("prompt", columns))
        except DataError as err:
            bad.append(err)
            continue
        prompt_id = prompt_id_of(row["messages"])
        if prompt_id in seen:
            continue
        seen.add(prompt_id)
        rows.append(_prompt_row(row, raw, prompt_id))
    if bad:
        log.warning("%d unreadable prompt row(s) in %s; the first: %s", len(bad), spec, bad[0])
    return rows[skip:], bad


def _prompt_row(row: dict, raw: dict, prompt_id: str) -> dict:
    extra = {
        "category": row.get("category"),
        "source": raw.get("source") or row.get("dataset"),
        "question_id": row.get("question_id"),
    }
    if row["prompt_id"] != prompt_id:
        extra["source_prompt_id"] = row["prompt_id"]
    last_user = next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    return {
        "prompt_id": prompt_id,
        "prompt": last_user,
        "messages": row["messages"],
        "extra": {k: v for k, v in extra.items() if isinstance(v, (str, int)) and not isinstance(v, bool)},
    }


# ---- the teacher pool -------------------------------------------------------------------------------


@dataclass
class Slot:
    """One completion to make: which teacher, under which principle, with which seed."""

    teacher: TeacherConfig
    principle: str
    system_prompt: str | None
    seed: int


def plan_slots(cfg: GenerateConfig, prompt_id: str, category: str | None) -> list[Slot]:
    """The teachers and principles for one prompt, drawn reproducibly from the seed and the prompt id."""
    rng = stable_rng("generate", cfg.seed, prompt_id)
    slots = []
    for k, teacher in enumerate(_draw_teachers(rng, cfg.pool, cfg.completions_per_prompt)):
        weights = teacher.principles or cfg.principles_by_category.get(category or "") or cfg.principles
        principle, system_prompt = draw_principle(rng, weights, cfg.catalogue)
        slots.append(Slot(teacher, principle, system_prompt, stable_seed("sample", cfg.seed, prompt_id, k)))
    return slots


def _draw_teachers(rng, pool: list[TeacherConfig], count: int) -> list[TeacherConfig]:
    """``count`` teachers, all different while the pool allows; beyond that each repeats evenly."""
    drawn = []
    while len(drawn) < count:
        drawn += rng.sample(pool, min(len(pool), count - len(drawn)))
    return drawn


def conversation_for(slot: Slot, messages: list[dict]) -> list[dict]:
    """The prompt as the teacher sees it: the principle as system prompt, ahead of any system turn of its own."""
    if slot.system_prompt is None:
        return messages
    if messages and messages[0]["role"] == "system":
        merged = f"{slot.system_prompt}\n\n{messages[0]['content']}".strip()
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": slot.system_prompt}, *messages]


def complete_prompt(cfg: GenerateConfig, backends: BackendPool, prompt: dict) -> tuple[dict, int]:
    """One output row: every slot's completion (one backend call per slot, so each has its own seed)."""
    completions = []
    for slot in plan_slots(
        cfg, prompt["prompt_id"], prompt["extra"].get("category") or prompt["extra"].get("source")
    ):
        backend = backends.get(slot.teacher.spec)
        (gen,) = backend.generate(
            [conversation_for(slot, prompt["messages"])], slot.teacher.params(slot.seed)
        )[0]
        completions.append(
            Completion(
                model=backend.name,
                teacher=slot.teacher.name,
                principle=slot.principle,
                custom_system_prompt=slot.system_prompt,
                temperature=slot.teacher.temperature,
                response=gen.text,
                finish_reason=gen.finish_reason,
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens,
            )
        )
    record = PromptRecord(
        prompt["prompt_id"], prompt["prompt"], prompt["messages"], completions, prompt["extra"]
    )
    return record.to_json(), sum(c.completion_tokens for c in completions)


def generate(cfg: GenerateConfig) -> StageResult:
    """Run `zephyr generate`: returns what was written, resumed, failed and skipped."""
    prompts, bad = read_prompts(
        cfg.prompts,
        split=cfg.prompts_split,
        config=cfg.prompts_config,
        limit=cfg.max_prompts,
        skip=cfg.skip_prompts,
    )
    if bad and cfg.on_error == "raise":
        raise bad[0]
    if not prompts:
        skipped = f" after skipping the first {cfg.skip_prompts}" if cfg.skip_prompts else ""
        raise DataError(f"holds no readable prompt{skipped}", source=cfg.prompts)
    log.info(
        "generate: %d prompts x %d completions from %d teacher(s) -> %s",
        len(prompts),
        cfg.completions_per_prompt,
        len(cfg.pool),
        cfg.output,
    )
    with BackendPool() as backends:
        for teacher in cfg.pool:  # load every model before the clock starts; a bad spec fails here
            backends.get(teacher.spec)
        return run_stage(
            "generate",
            [(p["prompt_id"], p) for p in prompts],
            lambda p: complete_prompt(cfg, backends, p),
            Path(cfg.output),
            concurrency=cfg.concurrency,
            settings=cfg.settings(),
            bad_input=bad,
            progress=cfg.progress,
            shard=cfg.shard,
        )
