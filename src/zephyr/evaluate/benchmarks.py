"""The benchmarks behind `zephyr eval`: one function per benchmark, and the table the CLI and the
pipeline look them up in.

``mt_bench(settings)``, ``alpaca(settings)``, ``prefs(settings)`` (and ``rule_following.rules``) do the work and return the results
they also write to disk; ``zephyr.evaluate.summary`` turns a result into the text the CLI prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from zephyr.errors import ConfigError
from zephyr.evaluate import alpaca as ae
from zephyr.evaluate import mt_bench as mtb
from zephyr.evaluate import mt_bench_matches as matches
from zephyr.evaluate import rule_following, summary
from zephyr.evaluate.judges import LETTER_OPTIONS, LETTER_PROMPT, load_judge_prompts, run_tasks
from zephyr.evaluate.scoring import summarize_single
from zephyr.evaluate.settings import (
    BUILTIN_INSTRUCTIONS,
    BUILTIN_QUESTIONS,
    BUILTIN_REFERENCE_OUTPUTS,
    BUILTIN_REFERENCES,
    AlpacaSettings,
    MTBenchSettings,
    PrefsSettings,
    RulesSettings,
    open_backend,
)
from zephyr.io import append_jsonl, output_lock, read_jsonl, safe_name, write_json, write_jsonl

log = logging.getLogger(__name__)


def mt_bench(s: MTBenchSettings) -> dict:
    """Answer (with --model), judge (with --judge) and score; returns and writes results.json."""
    if s.judgments:
        return matches.score_judgments(
            s.judgments, s.questions, s.baseline_model if s.mode != "pairwise-all" else None
        )
    if not (s.model or s.judge):
        raise ConfigError(
            "Nothing to do: give --model to answer the questions, --judge to grade the answers in "
            "--output-dir, or --judgments FILE to score existing judgments"
        )
    out = Path(s.output_dir)
    with output_lock(out, "zephyr eval mt-bench"):  # two runs would each make (and append) every judgment
        return _mt_bench(s, out)


def _mt_bench(s: MTBenchSettings, out: Path) -> dict:
    questions = mtb.load_questions(s.questions or BUILTIN_QUESTIONS)
    references = _references(s, questions)
    _keep_question_file(out, questions)
    answered = None
    if s.model:
        with open_backend(s.model_spec()) as backend:
            answered = backend.name
            mtb.generate_answers(
                backend,
                questions,
                answered,
                out / "model_answer" / f"{safe_name(answered)}.jsonl",
                max_new_tokens=s.max_new_tokens,
                num_choices=s.num_choices,
                concurrency=s.concurrency,
            )
    if not s.judge:
        log.info("Answers are in %s; pass --judge to grade them", out / "model_answer")
        return {"answers": str(out / "model_answer"), "model": answered}
    answers, sources = _all_answers(out / "model_answer", s.answer_files)
    models = _models(s, answers, answered)
    for model in models + ([s.baseline_model] if s.mode == "pairwise-baseline" else []):
        if model not in answers:
            raise ConfigError(
                f"No answers for model `{model}` in {out / 'model_answer'} or --answer-files; "
                f"known models: {', '.join(sorted(answers)) or 'none'}"
            )
        mtb.check_answers(questions, answers[model], model, sources[model])
    prompts = load_judge_prompts(s.judge_prompts)
    with open_backend(s.judge_spec()) as judge:
        if s.mode == "single":
            results = _judge_single(s, judge, questions, answers, models, prompts, references, out)
        else:
            results = _judge_pairwise(s, judge, questions, answers, models, prompts, references, out)
    results |= {"questions": str(s.questions or BUILTIN_QUESTIONS), "judge_prompts": prompts.source}
    write_json(out / f"results_{results['judge_file_stem']}.json", results)
    return results


def _references(s: MTBenchSettings, questions: list) -> dict | None:
    if s.no_reference:
        return None
    path = s.reference_answers or (BUILTIN_REFERENCES if s.questions is None else None)
    references = mtb.load_answers(path) if path else None
    source = str(path) if path else f"{s.questions} (no --reference-answers given)"
    mtb.require_references(questions, references, source)
    return references


def _keep_question_file(out: Path, questions: list) -> None:
    """Write the questions beside the answers (FastChat's layout); refuse to mix two question sets."""
    path = out / "question.jsonl"
    rows = [q.as_dict() for q in questions]
    if path.is_file():
        old = [row for _, row in read_jsonl(path, objects=True)]
        if old == rows:
            return
        raise ConfigError(
            f"{out} holds answers to a different question set ({path}); use another --output-dir"
        )
    write_jsonl(path, rows)


def _all_answers(answer_dir: Path, extra: list[str] | None) -> tuple[dict, dict]:
    """model -> {question_id: answer}, and model -> file; the model is the file name, as in FastChat."""
    files = sorted(answer_dir.glob("*.jsonl")) if answer_dir.is_dir() else []
    answers, sources = {}, {}
    for path in files + [Path(p) for p in extra or ()]:
        answers[path.stem] = mtb.load_answers(path)
        sources[path.stem] = str(path)
    return answers, sources


def _models(s: MTBenchSettings, answers: dict, answered: str | None) -> list[str]:
    if s.model_list:
        return list(s.model_list)
    if answered:
        return [safe_name(answered)]
    models = [m for m in answers if not (s.mode == "pairwise-baseline" and m == s.baseline_model)]
    if not models:
        raise ConfigError("There are no answers to judge: pass --model to generate them, or --answer-files")
    return sorted(models)


def _judgments(s: MTBenchSettings, judge, tasks: list, path: Path, kind: str) -> list[dict]:
    """Every task's judgment record: those already in ``path`` are reused, the rest are made now and appended."""
    key = matches.single_key if kind == "single" else matches.pair_key
    existing = matches.load_judgments(path, kind) if path.is_file() else []
    done = {key(r) for r in existing}
    todo = [t for t in tasks if t.key not in done]
    if done and todo:
        log.info(
            "%s: %d judgment(s) already made; making the other %d", path, len(tasks) - len(todo), len(todo)
        )
    new = run_tasks(
        judge,
        todo,
        lambda r: append_jsonl(path, [r]),
        max_tokens=s.judge_max_tokens,
        concurrency=s.concurrency,
        desc=f"judge ({judge.name})",
    )
    wanted = {t.key for t in tasks}
    return list({key(r): r for r in existing + new if key(r) in wanted}.values())


def _judge_single(s, judge, questions, answers, models, prompts, references, out: Path) -> dict:
    path = out / "model_judgment" / f"{safe_name(judge.name)}_single.jsonl"
    tasks = matches.single_tasks(questions, {m: answers[m] for m in models}, prompts, references, judge.name)
    records = _judgments(s, judge, tasks, path, "single")
    summary = summarize_single(records, {q.question_id: q.category for q in questions})
    return {
        "mode": "single",
        "judge": judge.name,
        "judgment_file": str(path),
        "judge_file_stem": path.stem,
        "models": {m: summary[m].as_dict() for m in models if m in summary},
    }


def _judge_pairwise(s, judge, questions, answers, models, prompts, references, out: Path) -> dict:
    path = out / "model_judgment" / f"{safe_name(judge.name)}_pair.jsonl"
    baseline = s.baseline_model if s.mode == "pairwise-baseline" else None
    pairs = [(m, baseline) for m in models] if baseline else list(combinations(models, 2))
    if not pairs:
        raise ConfigError("pairwise-all needs answers from at least two models")
    tasks = matches.pair_tasks(questions, pairs, answers, prompts, references, judge.name)
    records = _judgments(s, judge, tasks, path, "pairwise")
    return {
        "mode": s.mode,
        "judge": judge.name,
        "baseline": baseline,
        "judgment_file": str(path),
        "judge_file_stem": path.stem,
        **matches.pair_summary(records, baseline),
    }


# --- AlpacaEval ---------------------------------------------------------------------------------------


def alpaca(s: AlpacaSettings) -> dict:
    """Generate outputs (with --model), annotate them (with --judge) and compute win rates."""
    if s.annotations:
        return alpaca_results(ae.load_annotations(s.annotations), s.annotations)
    out = Path(s.output_dir)
    with output_lock(out, "zephyr eval alpaca"):  # two runs would each annotate every output
        return _alpaca(s, out)


def _alpaca(s: AlpacaSettings, out: Path) -> dict:
    instructions = ae.load_instructions(s.instructions or BUILTIN_INSTRUCTIONS)
    outputs = _alpaca_outputs(s, instructions, out)
    if not s.judge:
        log.info("Outputs are in %s; pass --judge to annotate them", out)
        return {"outputs": sorted({str(out / safe_name(o["generator"])) for o in outputs})}
    if s.reference_outputs is None and s.instructions is not None:
        raise ConfigError(
            "With your own --instructions, give --reference-outputs for them (e.g. "
            "../shared/data/alpaca_eval/reference_text_davinci_003.json)"
        )
    reference_file = s.reference_outputs or BUILTIN_REFERENCE_OUTPUTS
    references = ae.load_outputs(reference_file)
    if s.judge_verdict == "logprobs":
        if s.judge_prompts:
            raise ConfigError(
                "`judge_prompts` and `judge_verdict: logprobs` do not go together: the letter "
                "verdict uses the project's one-letter prompt"
            )
        prompt = LETTER_PROMPT
    else:
        prompt = load_judge_prompts(s.judge_prompts).pick("pairwise", False, False)
    with open_backend(s.judge_spec()) as judge:
        annotations = _annotate(s, judge, prompt, outputs, references, str(reference_file), out)
    return alpaca_results(annotations, str(out))


def _alpaca_outputs(s: AlpacaSettings, instructions: list[dict], out: Path) -> list[dict]:
    from zephyr.generation.params import SamplingParams

    outputs = ae.load_outputs(s.model_outputs) if s.model_outputs else []
    if s.model:
        params = SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed
        )
        with open_backend(s.model_spec()) as backend:
            path = out / safe_name(backend.name) / "model_outputs.json"
            outputs += ae.generate_outputs(
                backend, instructions, backend.name, path, params, concurrency=s.concurrency
            )
    if not outputs:
        raise ConfigError(
            "Nothing to evaluate: give --model to generate outputs, --model-outputs to judge existing "
            "ones, or --annotations to recompute win rates"
        )
    return outputs


def _annotate(
    s: AlpacaSettings, judge, prompt, outputs, references, reference_source: str, out: Path
) -> list[dict]:
    """Annotate every output, reusing earlier annotations by the same judge, prompt and seed (a cache that is
    appended to as each judgment is made, so an interrupted run resumes)."""
    annotator = f"{judge.name}:{prompt.name}"
    cache = out / "annotations_cache" / f"{safe_name(annotator)}_seed{s.seed}.jsonl"
    done = (
        {ae.annotation_key(r): r for _, r in read_jsonl(cache, objects=True, torn_tail="skip")}
        if cache.is_file()
        else {}
    )

    def save(record: dict) -> None:
        append_jsonl(cache, [record])
        done[ae.annotation_key(record)] = record

    letter = s.judge_verdict == "logprobs"
    all_annotations = []
    for generator in dict.fromkeys(o["generator"] for o in outputs):
        mine = [o for o in outputs if o["generator"] == generator]
        pairs = ae.pair_with_references(mine, references, reference_source)
        tasks, free = ae.annotation_tasks(pairs, prompt, annotator, s.seed, done, letter=letter)
        for record in free:
            save(record)
        run_tasks(
            judge,
            tasks,
            save,
            max_tokens=s.judge_max_tokens,
            concurrency=s.concurrency,
            desc=f"annotate ({generator})",
            options=LETTER_OPTIONS if letter else None,
        )
        keys = [ae.annotation_key(ae.base_annotation(ref, o, annotator)) for ref, o in pairs]
        annotations = [done[k] for k in keys]
        write_json(out / safe_name(generator) / safe_name(annotator) / "annotations.json", annotations)
        all_annotations += annotations
    return all_annotations


def alpaca_results(annotations: list[dict], source: str) -> dict:
    """Win rate per model (generator_2), with the leaderboard's columns."""
    rates = ae.win_rates(annotations)
    models = {}
    for model, rate in rates.items():
        mine = [a for a in annotations if str(a.get("generator_2", "model")) == model]
        lengths = [len(a["output_2"]) for a in mine if isinstance(a.get("output_2"), str)]
        models[model] = rate.as_dict() | {
            "avg_length": int(sum(lengths) / len(lengths)) if lengths else None,  # the leaderboard truncates
            "reference": sorted({str(a.get("generator_1")) for a in mine}),
            "annotator": sorted({str(a.get("annotator")) for a in mine}),
        }
    return {"source": source, "models": models}


# --- preference accuracy ------------------------------------------------------------------------------


def _scoring_model(spec: str, dtype: str, tokenizer):
    import torch

    from zephyr.models import ModelArguments, fit_embeddings_to_tokenizer, load_model

    model = load_model(spec, ModelArguments(torch_dtype=dtype))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    fit_embeddings_to_tokenizer(model, tokenizer)
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


def prefs(s: PrefsSettings) -> dict:
    """Score held-out pairs with the model (and its reference); returns and writes the metrics."""
    with output_lock(s.output_dir, "zephyr eval prefs"):
        return _prefs(s)


def _prefs(s: PrefsSettings) -> dict:
    import gc

    from zephyr.data import load_rows
    from zephyr.evaluate.prefs import logp_metrics, reward_metrics, score_pairs
    from zephyr.models import load_tokenizer
    from zephyr.train.dpo_data import tokenize_preferences

    tokenizer = load_tokenizer(s.model, s.chat_template)
    rows = load_rows(s.data, "preference", split=s.split, on_error=s.on_error).dataset
    if s.max_samples:
        rows = rows.select(range(min(s.max_samples, len(rows))))
    pairs, skipped, truncated = tokenize_preferences(
        rows, tokenizer, s.max_length, s.max_prompt_length, s.on_error, split=s.split
    )
    scores = {}
    for role, spec in (("policy", s.model), ("reference", s.ref_model)):
        if spec is None:
            continue
        model = _scoring_model(spec, s.dtype, tokenizer)
        scores[role] = score_pairs(model, pairs, s.batch_size, desc=f"{role} log-probs")
        del model
        gc.collect()
    metrics = logp_metrics(scores["policy"])
    if "reference" in scores:
        metrics |= reward_metrics(scores["policy"], scores["reference"], s.beta, s.loss_type)
    result = {
        "model": s.model,
        "ref_model": s.ref_model,
        "data": s.data,
        "split": s.split,
        "n_skipped": skipped,
        "n_truncated": truncated,
        "metrics": metrics,
    }
    path = Path(s.output_dir) / f"{safe_name(Path(s.model.rstrip('/')).name)}.json"
    write_json(path, result)
    return result | {"output": str(path)}


@dataclass(frozen=True)
class Benchmark:
    settings: type
    run: Callable[..., dict]
    show: Callable[[dict], str]


BENCHMARKS = {
    "mt_bench": Benchmark(MTBenchSettings, mt_bench, summary.show_mt_bench),
    "alpaca": Benchmark(AlpacaSettings, alpaca, summary.show_alpaca),
    "prefs": Benchmark(PrefsSettings, prefs, summary.show_prefs),
    "rules": Benchmark(RulesSettings, rule_following.rules, summary.show_rules),
}
