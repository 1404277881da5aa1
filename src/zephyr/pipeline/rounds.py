"""Iterative rounds: sample from the last model, judge, binarize, align from it, evaluate; K times.

A pipeline recipe's ``rounds`` section holds its own settings and one section per round stage::

    rounds:
      count: 3                      # K
      model: smollm2-135m-instruct  # round 0's model (default: the top-level sft/alignment stage's)
      prompts_per_round: 64         # round k samples prompts (k-1)*N .. k*N-1 of generate.prompts
      rules: {max_words: 40}        # a rubric: the feedback judge and eval.rules' rules, when they give none
      generate: {...}               # a teacher without `backend.model` samples from the round k-1 model
      feedback: {...}               # `judge: policy` is the round k-1 model (self-rewarding)
      binarize: {...}
      dpo: {...}                    # or kto/orpo/cpo/simpo: trains from the round k-1 model, which is
                                    # also the DPO/KTO reference (the round k-1 model, frozen)
      eval: {...}                   # evaluates round k's model; round 0's model too, as round0/eval

Round k's stages run in ``RUN_DIR/round<k>/<stage>``, one stage of the pipeline each, so they are skipped
when up to date and resumed when interrupted like any other; a round's keys include the previous round's
model, so changing round 1 redoes every later round. Each round's generate seed is ``seed + k - 1``, so
rounds sampling the same prompts still draw fresh samples. Top-level stages before eval (dialogue ...
sft, an alignment stage) run before the rounds; top-level eval, report and export after them, on the last
round's model and data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from zephyr.config import check_keys
from zephyr.errors import ConfigError
from zephyr.pipeline.stages import ALIGNMENT_STAGES, STAGES, PipelineContext, StageSpec

ROUND_STAGES = ("generate", "feedback", "binarize", *ALIGNMENT_STAGES, "eval")
ROUND_SETTINGS = ("count", "model", "prompts_per_round", "rules")
# The top-level stages that run after the rounds, on the last round's model.
AFTER_ROUNDS = ("eval", "report", "export")
# The eval benchmarks that need nothing but a model, so they can score round 0's model as a baseline.
BASELINE_BENCHMARKS = ("rules", "alpaca", "mt_bench")
POLICY = "policy"  # feedback's `judge: policy`: the round k-1 model judges its own samples


@dataclass
class Rounds:
    count: int
    model: str | None
    prompts_per_round: int | None
    rules: dict | None
    stages: list[tuple[StageSpec, dict]] = field(default_factory=list)


def parse_rounds(raw: dict, where: str) -> Rounds:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: `rounds` must be a mapping (count, model, and one section per stage)")
    check_keys(raw, [*ROUND_SETTINGS, *ROUND_STAGES], f"{where}: rounds")
    count = raw.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}: `rounds.count` must be a whole number >= 1; got {count!r}")
    per_round = raw.get("prompts_per_round")
    if per_round is not None and (
        isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1
    ):
        raise ConfigError(
            f"{where}: `rounds.prompts_per_round` must be a whole number >= 1; got {per_round!r}"
        )
    rules = raw.get("rules")
    if rules is not None:
        from zephyr.distill.rules import RuleSet

        RuleSet.parse(rules, "rounds.rules")
    for name in ROUND_STAGES:
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(f"{where}: `rounds.{name}` must be a mapping of its keys; got {raw[name]!r}")
    aligned = [name for name in ALIGNMENT_STAGES if name in raw]
    missing = [name for name in ("generate", "feedback") if name not in raw]
    if missing or len(aligned) != 1:
        raise ConfigError(
            f"{where}: each round needs `generate`, `feedback` and one alignment stage "
            f"({', '.join(ALIGNMENT_STAGES)}); missing {', '.join(missing) or 'none'}, alignment stages "
            f"{', '.join(aligned) or 'none'}"
        )
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{where}: `rounds.model` must be a model spec; got {model!r}")
    stages = [(STAGES[name], raw[name] or {}) for name in ROUND_STAGES if name in raw]
    return Rounds(count, model, per_round, rules, stages)


def round_name(k: int, stage: str) -> str:
    return f"round{k}/{stage}"


def starting_model(rounds: Rounds, ctx: PipelineContext) -> tuple[str, str]:
    """Round 0's model and the key standing for it: ``rounds.model``, else the last top-level trained one."""
    if rounds.model is not None:
        return rounds.model, f"model:{rounds.model}"
    for stage in (*ALIGNMENT_STAGES, "sft"):
        if stage in ctx.outputs:
            return ctx.outputs[stage]["model"], ctx.keys[stage]
    raise ConfigError(
        "`rounds` needs a starting model: set `rounds.model`, or add an `sft` stage before them"
    )


def round_context(ctx: PipelineContext, k: int, model: str, key: str) -> PipelineContext:
    """Round k's view: its stages live under RUN_DIR/round<k>, and the round k-1 model stands where the sft
    stage's would, so the alignment stage trains from it (and takes it as reference) and eval.prefs
    compares with it."""
    scoped = PipelineContext(ctx.run_dir / f"round{k}")
    scoped.outputs["sft"] = {"model": model}
    scoped.keys["sft"] = key
    scoped.elsewhere = ctx.produced()
    return scoped


def round_section(rounds: Rounds, name: str, section: dict, k: int, model: str) -> dict:
    """Round k's copy of a round stage's section, with the round k-1 model and the round's prompts in."""
    section = copy.deepcopy(section)
    if name == "generate":
        section["teachers"] = [_policy_teacher(t, model) for t in section.get("teachers") or [{}]]
        section["seed"] = section.get("seed", 42) + k - 1
        if rounds.prompts_per_round is not None:
            section["skip_prompts"] = section.get("skip_prompts", 0) + (k - 1) * rounds.prompts_per_round
            section["max_prompts"] = rounds.prompts_per_round
    elif name == "feedback":
        judge = section.get("judge")
        if judge is None and rounds.rules is not None:
            section["judge"] = {"type": "rules", **rounds.rules}
        elif judge == POLICY:
            section["judge"] = model
        elif isinstance(judge, dict) and judge.get("model") == POLICY:
            section["judge"] = {**judge, "model": model}
    elif name == "eval":
        for bench, settings in list(section.items()):
            settings = dict(settings or {})
            if bench == "rules" and rounds.rules is not None:
                settings.setdefault("rules", rounds.rules)
            section[bench] = settings
    return section


def baseline_benchmarks(rounds: Rounds) -> dict:
    """The round eval's sections that need only a model, which round 0 runs on the starting model
    (empty: there is no round0/eval)."""
    evals = next((s for spec, s in rounds.stages if spec.name == "eval"), None) or {}
    return {b: dict(s or {}) for b, s in evals.items() if b in BASELINE_BENCHMARKS}


def baseline_eval(rounds: Rounds, model: str) -> dict | None:
    """Round 0's eval section (the starting model on the benchmarks that need only a model), or None."""
    baseline = baseline_benchmarks(rounds)
    if not baseline:
        return None
    out = round_section(rounds, "eval", baseline, 0, model)
    for settings in out.values():
        settings.setdefault("model", model)
    return out


def _policy_teacher(teacher, model: str) -> dict:
    """A teacher sampling from the round's model unless it names a model of its own."""
    if isinstance(teacher, str):
        teacher = {"backend": teacher}
    if not isinstance(teacher, dict):
        raise ConfigError(f"`rounds.generate.teachers` entries must be mappings; got {teacher!r}")
    teacher = dict(teacher)
    backend = teacher.get("backend")
    if backend is None or backend == POLICY:
        backend = {}
    if isinstance(backend, dict) and backend.get("model") in (None, POLICY):
        teacher["backend"] = {**backend, "model": model}
        teacher.setdefault("name", f"policy@t{float(teacher.get('temperature', 1.0)):g}")
    return teacher
