"""`zephyr eval rules`: the share of held-out prompts whose reply passes a rubric a program checks.

The replies are generated once per prompt (greedy by default) into an AlpacaEval-format
``model_outputs.json`` (resumable, like `eval alpaca`), then every reply is checked against the rule set
(``zephyr.distill.rules``). The headline is the satisfaction rate (every rule passed) with its binomial
standard error over the prompts; beside it the mean fraction of rules passed and each rule's pass rate.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from zephyr.distill.generate import read_prompts
from zephyr.distill.rules import RuleSet
from zephyr.errors import ConfigError, DataError
from zephyr.evaluate import alpaca as ae
from zephyr.evaluate.settings import RulesSettings, open_backend
from zephyr.io import output_lock, safe_name, write_json, write_jsonl

log = logging.getLogger(__name__)


def rules(s: RulesSettings) -> dict:
    """Generate (with --model) and score replies; returns and writes MODEL/results.json."""
    out = Path(s.output_dir)
    with output_lock(out, "zephyr eval rules"):
        outputs = ae.load_outputs(s.model_outputs) if s.model_outputs else _generate(s, out)
        results = {}
        for generator in dict.fromkeys(o["generator"] for o in outputs):
            mine = [o for o in outputs if o["generator"] == generator]
            result = score_outputs(mine, s.rule_set, out / safe_name(generator))
            results[generator] = result
        return {"rules": s.rule_set.to_json(), "prompts": s.prompts, "models": results}


def held_out_instructions(s: RulesSettings) -> list[dict]:
    """The prompts as AlpacaEval instructions; a multi-turn or system-prompted row is refused, by id."""
    rows, bad = read_prompts(s.prompts, limit=s.max_prompts, skip=s.skip_prompts)
    if bad:
        raise bad[0]
    if not rows:
        raise DataError(f"holds no prompt after skipping the first {s.skip_prompts}", source=s.prompts)
    for row in rows:
        if len(row["messages"]) != 1:
            raise DataError(
                f"prompt {row['prompt_id'][:12]} has {len(row['messages'])} turns; `zephyr eval rules` asks "
                "single-turn prompts",
                source=s.prompts,
                field="messages",
            )
    return [{"instruction": r["prompt"], "dataset": str(r["extra"].get("source") or "rules")} for r in rows]


def _generate(s: RulesSettings, out: Path) -> list[dict]:
    from zephyr.generation.params import SamplingParams

    instructions = held_out_instructions(s)
    params = SamplingParams(
        temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed
    )
    with open_backend(s.model_spec()) as backend:
        path = out / safe_name(backend.name) / "model_outputs.json"
        return ae.generate_outputs(
            backend, instructions, backend.name, path, params, concurrency=s.concurrency
        )


def score_outputs(outputs: list[dict], rule_set: RuleSet, out: Path | None = None) -> dict:
    """The satisfaction rate of one generator's outputs (with its standard error), the mean score and each
    rule's pass rate; with ``out``, the per-reply verdicts and the results are written there."""
    if not outputs:
        raise ConfigError("No outputs to score")
    verdicts = [rule_set.check(o["output"]) for o in outputs]
    n = len(verdicts)
    rate = sum(v.satisfied for v in verdicts) / n
    per_rule = {}
    for name in dict.fromkeys(rule_set.names()):  # a keyword rule counts once per keyword
        passes = [not problem for v in verdicts for rule, problem in v.outcomes if rule == name]
        per_rule[name] = round(sum(passes) / len(passes), 4)
    words = [len(o["output"].split()) for o in outputs]
    result = {
        "generator": outputs[0]["generator"],
        "n": n,
        "satisfied": round(rate, 4),
        "satisfied_se": round(math.sqrt(rate * (1 - rate) / n), 4),
        "mean_score": round(sum(v.score for v in verdicts) / n, 4),
        "per_rule": per_rule,
        "mean_words": round(sum(words) / n, 1),
    }
    if out is not None:
        write_jsonl(
            out / "verdicts.jsonl",
            [
                {
                    "instruction": o["instruction"],
                    "output": o["output"],
                    "satisfied": v.satisfied,
                    "score": v.score,
                    "failed": v.failed,
                }
                for o, v in zip(outputs, verdicts, strict=True)
            ],
        )
        write_json(out / "results.json", result)
        result["output"] = str(out / "results.json")
    log.info("rules: %s satisfied %.3f +- %.3f (n=%d)", result["generator"], rate, result["satisfied_se"], n)
    return result
