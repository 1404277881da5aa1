"""The evaluation stages behind `zephyr eval`: their settings, and one function per stage.

``mt_bench(settings)``, ``alpaca(settings)`` and ``prefs(settings)`` do the work and return the results
they also write to disk; the CLI only parses settings and prints what comes back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from zephyr.errors import ConfigError, DataError
from zephyr.evaluate import alpaca as ae
from zephyr.evaluate import mt_bench as mtb
from zephyr.evaluate.judges import LETTER_OPTIONS, LETTER_PROMPT, load_judge_prompts, run_tasks
from zephyr.evaluate.records import append_jsonl, read_jsonl, safe_name, write_json, write_jsonl
from zephyr.evaluate.runner import DEFAULT_CONCURRENCY
from zephyr.evaluate.scoring import summarize_pairwise, summarize_single
from zephyr.resources import _DIR as RESOURCES

log = logging.getLogger(__name__)

BUILTIN_QUESTIONS = RESOURCES / "mt_bench_mini.jsonl"
BUILTIN_REFERENCES = RESOURCES / "mt_bench_mini_reference.jsonl"
BUILTIN_INSTRUCTIONS = RESOURCES / "alpaca_mini.jsonl"
BUILTIN_REFERENCE_OUTPUTS = RESOURCES / "alpaca_mini_reference.json"
MODES = ("single", "pairwise-baseline", "pairwise-all")


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


def _choices(text: str, choices: tuple, **kw) -> Any:
    return field(metadata={"help": text, "choices": choices}, **kw)


@dataclass
class BackendSettings:
    """Where answers come from and who judges them (shared by mt-bench and alpaca)."""

    model: str | None = _help(
        "The model to evaluate: a model spec (hub id, checkpoint dir, .gguf file, smollm2-135m-instruct), the "
        "name a server serves (with --model-base-url), or a JSON backend spec such as "
        '\'{"model": "smollm2-135m-instruct", "threads": 1}\' (see zephyr.distill.backends.BackendSpec). '
        "Omit it to judge or score existing outputs.",
        default=None,
    )
    model_base_url: str | None = _help(
        "Generate through this OpenAI-compatible endpoint (ending in /v1).", default=None
    )
    model_name: str | None = _help(
        "Name recorded in output files. Default: the model spec's last path part.", default=None
    )
    judge: str | None = _help(
        "The judge: a model spec for a local judge, or with --judge-base-url the model an OpenAI-compatible "
        "endpoint serves (e.g. gpt-4 at https://api.openai.com/v1), or a JSON backend spec. Omit it to only "
        "generate.",
        default=None,
    )
    judge_base_url: str | None = _help(
        "The judge's OpenAI-compatible endpoint (ending in /v1).", default=None
    )
    judge_api_key_env: str | None = _help(
        "Environment variable holding the judge endpoint's API key.", default=None
    )
    judge_prompts: str | None = _help(
        "Judge prompt file in FastChat's judge_prompts.jsonl format. Default: the project's own prompts.",
        default=None,
    )
    judge_max_tokens: int = _help("Longest judge reply in tokens.", default=2048)
    concurrency: int = _help(
        "Generations and judgments kept in flight at once (fills a batching backend).",
        default=DEFAULT_CONCURRENCY,
    )

    def __post_init__(self):
        for key in ("judge_max_tokens", "concurrency"):
            if getattr(self, key) < 1:
                raise ConfigError(f"`{key}` must be at least 1; got {getattr(self, key)}")

    def model_spec(self) -> dict:
        return backend_spec(self.model, self.model_base_url, None, self.model_name)

    def judge_spec(self) -> dict:
        return backend_spec(self.judge, self.judge_base_url, self.judge_api_key_env, None)


def backend_spec(model: str, base_url: str | None, api_key_env: str | None, name: str | None) -> dict:
    """A backend spec (see zephyr.distill.backends) from command-line values; ``model`` may be JSON."""
    if model.lstrip().startswith("{"):
        try:
            spec = json.loads(model)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"The backend spec {model!r} is not valid JSON: {exc.msg}") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"A JSON backend spec must be an object; got {model!r}")
    else:
        spec = {"model": model}
    extra = {"type": "openai", "base_url": base_url} if base_url else {}
    extra |= {"api_key_env": api_key_env} if api_key_env else {}
    extra |= {"name": name} if name else {}
    return spec | extra


def _open(spec: dict):
    from zephyr.distill.backends import make_backend

    return make_backend(spec)


# --- MT-Bench -----------------------------------------------------------------------------------------


@dataclass
class MTBenchSettings(BackendSettings):
    """`zephyr eval mt-bench`: answer, judge and score MT-Bench questions the way FastChat does."""

    questions: str | None = _help(
        "Question file in FastChat's format, e.g. ../shared/data/mt_bench/question.jsonl (the real 80). "
        "Default: the built-in 16-question set.",
        default=None,
    )
    reference_answers: str | None = _help(
        "Reference answers for math, reasoning and coding (FastChat's reference_answer format, e.g. "
        "reference_answer/gpt-4.jsonl). Default: the built-in set's own, with the built-in questions.",
        default=None,
    )
    no_reference: bool = _help(
        "Judge math, reasoning and coding without reference answers (not comparable with "
        "published MT-Bench scores).",
        default=False,
    )
    output_dir: str = _help(
        "Where question.jsonl, model_answer/ and model_judgment/ go (FastChat's layout).",
        default="runs/eval/mt_bench",
    )
    max_new_tokens: int = _help(
        "Longest answer per turn in tokens (FastChat: 1024).", default=mtb.MAX_NEW_TOKENS
    )
    num_choices: int = _help(
        "Answers per question (choice i samples with seed i); judges read choice 0.", default=1
    )
    mode: str = _choices(
        "single: grade each answer 1-10; pairwise-baseline: compare each model with "
        "--baseline-model, positions swapped; pairwise-all: compare every pair of models.",
        MODES,
        default="single",
    )
    baseline_model: str = _help(
        "The baseline's name (its answers in model_answer/NAME.jsonl or --answer-files).",
        default="gpt-3.5-turbo",
    )
    model_list: list[str] | None = _help(
        "Models to judge. Default: the model just answered, else every model in model_answer/.", default=None
    )
    answer_files: list[str] | None = _help(
        "More answer files to judge (FastChat format; the file name is the model name).", default=None
    )
    judgments: str | None = _help(
        "Only score this judgment file (single or pairwise, FastChat format), as FastChat's show_result does.",
        default=None,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in MODES:
            raise ConfigError(f"`mode` must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.max_new_tokens < 1 or self.num_choices < 1:
            raise ConfigError(
                f"`max_new_tokens` and `num_choices` must be at least 1; got {self.max_new_tokens}, "
                f"{self.num_choices}"
            )


def mt_bench(s: MTBenchSettings) -> dict:
    """Answer (with --model), judge (with --judge) and score; returns and writes results.json."""
    if s.judgments:
        return score_judgments(
            s.judgments, s.questions, s.baseline_model if s.mode != "pairwise-all" else None
        )
    if not (s.model or s.judge):
        raise ConfigError(
            "Nothing to do: give --model to answer the questions, --judge to grade the answers in "
            "--output-dir, or --judgments FILE to score existing judgments"
        )
    out = Path(s.output_dir)
    questions = mtb.load_questions(s.questions or BUILTIN_QUESTIONS)
    references = _references(s, questions)
    _keep_question_file(out, questions)
    answered = None
    if s.model:
        with _open(s.model_spec()) as backend:
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
    with _open(s.judge_spec()) as judge:
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
        old = [row for _, row in read_jsonl(path)]
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
    key = mtb.single_key if kind == "single" else mtb.pair_key
    existing = mtb.load_judgments(path, kind) if path.is_file() else []
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
    tasks = mtb.single_tasks(questions, {m: answers[m] for m in models}, prompts, references, judge.name)
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
    tasks = mtb.pair_tasks(questions, pairs, answers, prompts, references, judge.name)
    records = _judgments(s, judge, tasks, path, "pairwise")
    return {
        "mode": s.mode,
        "judge": judge.name,
        "baseline": baseline,
        "judgment_file": str(path),
        "judge_file_stem": path.stem,
        **_pair_summary(records, baseline),
    }


def _pair_summary(records: list[dict], baseline: str | None) -> dict:
    errors = sum("error" in (r["g1_winner"], r["g2_winner"]) for r in records)
    return {
        "n_errors": errors,
        "models": {m: p.as_dict() for m, p in summarize_pairwise(records, baseline).items()},
    }


def score_judgments(path: str, questions: str | None, baseline: str | None) -> dict:
    """Scores from an existing judgment file, exactly as FastChat's show_result computes them."""
    path = Path(path)
    first = next((row for _, row in read_jsonl(path)), None)
    if first is None:
        raise DataError("holds no judgments", source=str(path))
    if "g1_winner" in first:
        records = mtb.load_judgments(path, "pairwise")
        involved = {m for r in records for m in (r["model_1"], r["model_2"])}
        baseline = baseline if baseline in involved else None
        return {
            "mode": "pairwise",
            "baseline": baseline,
            "judgment_file": str(path),
            **_pair_summary(records, baseline),
        }
    question_file = Path(questions) if questions else path.parent.parent / "question.jsonl"
    categories = None
    if question_file.is_file():
        categories = {q.question_id: q.category for q in mtb.load_questions(question_file)}
    summary = summarize_single(mtb.load_judgments(path, "single"), categories)
    return {
        "mode": "single",
        "judgment_file": str(path),
        "models": {m: v.as_dict() for m, v in summary.items()},
    }


# --- AlpacaEval ---------------------------------------------------------------------------------------


@dataclass
class AlpacaSettings(BackendSettings):
    """`zephyr eval alpaca`: AlpacaEval-format outputs, pairwise annotations and win rates."""

    instructions: str | None = _help(
        "Instructions (AlpacaEval's instructions.jsonl, or any JSON array with `instruction`), e.g. "
        "../shared/data/alpaca_eval/instructions.jsonl. Default: the built-in set of 24.",
        default=None,
    )
    reference_outputs: str | None = _help(
        "Reference outputs to compare against (model_outputs.json format), e.g. "
        "../shared/data/alpaca_eval/reference_text_davinci_003.json (AlpacaEval 1). Default, with the built-in "
        "instructions: the built-in reference answers written for this project.",
        default=None,
    )
    model_outputs: str | None = _help(
        "Judge this model_outputs.json instead of (or besides) generating.", default=None
    )
    annotations: str | None = _help(
        "Only recompute win rates from this AlpacaEval annotations file.", default=None
    )
    output_dir: str = _help(
        "Where MODEL/model_outputs.json and MODEL/ANNOTATOR/annotations.json go.",
        default="runs/eval/alpaca_eval",
    )
    max_new_tokens: int = _help("Longest output in tokens.", default=2048)
    temperature: float = _help("Sampling temperature for the outputs (0 = greedy).", default=0.7)
    top_p: float = _help("Nucleus sampling mass for the outputs.", default=1.0)
    seed: int = _help("Sampling seed for the outputs, and the seed of the judge's position order.", default=0)
    judge_verdict: str = _choices(
        "text: the judge writes a comparison ending in [[A]] or [[B]]; logprobs: the judge answers one letter "
        "and the preference is 1 + P(second better) from its first-token probabilities (every verdict readable, "
        "graded like AlpacaEval 2.0's weighted annotators; a local judge, or an endpoint with `top_logprobs`).",
        ("text", "logprobs"),
        default="text",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.judge_verdict not in ("text", "logprobs"):
            raise ConfigError(f"`judge_verdict` must be text or logprobs; got {self.judge_verdict!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"`max_new_tokens` must be at least 1; got {self.max_new_tokens}")


def alpaca(s: AlpacaSettings) -> dict:
    """Generate outputs (with --model), annotate them (with --judge) and compute win rates."""
    if s.annotations:
        return alpaca_results(ae.load_annotations(s.annotations), s.annotations)
    out = Path(s.output_dir)
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
    with _open(s.judge_spec()) as judge:
        annotations = _annotate(s, judge, prompt, outputs, references, str(reference_file), out)
    return alpaca_results(annotations, str(out))


def _alpaca_outputs(s: AlpacaSettings, instructions: list[dict], out: Path) -> list[dict]:
    from zephyr.distill.backends import GenerationParams

    outputs = ae.load_outputs(s.model_outputs) if s.model_outputs else []
    if s.model:
        params = GenerationParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed
        )
        with _open(s.model_spec()) as backend:
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
        {ae.annotation_key(r): r for _, r in read_jsonl(cache, tolerate_torn_tail=True)}
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


@dataclass
class PrefsSettings:
    """`zephyr eval prefs`: preference accuracy of a model (and implicit rewards against a reference)."""

    model: str = _help(
        "The model to evaluate: a model spec (checkpoint dir, hub id, .gguf, LoRA adapter dir)."
    )
    data: str = _help(
        "Held-out preference pairs: a file, saved dataset or hub id in a preference schema "
        "(ultrafeedback_binarized, zephyr:demo_prefs, ...)."
    )
    ref_model: str | None = _help(
        "The DPO reference (usually the SFT model). With it, the implicit-reward "
        "metrics rewards/accuracies and rewards/margins are computed too.",
        default=None,
    )
    split: str = _help(
        "Split to read from a source with splits (ignored for a single file).", default="test_prefs"
    )
    beta: float = _help("DPO beta for the implicit rewards (0.1 paper, 0.01 handbook).", default=0.1)
    loss_type: str = _help(
        "DPO loss reported beside the rewards: sigmoid, robust, ipo or hinge.", default="sigmoid"
    )
    max_length: int = _help(
        "Longest prompt + reply in tokens (replies are cut from the right).", default=1024
    )
    max_prompt_length: int | None = _help("Longest prompt in tokens (cut from the left).", default=512)
    max_samples: int | None = _help("Score only the first N pairs.", default=None)
    batch_size: int = _help("Pairs per forward pass.", default=8)
    chat_template: str | None = _help(
        "zephyr, chatml or Jinja source. Default: the model's own.", default=None
    )
    dtype: str = _help("Weights dtype: auto, fp32, bf16 or fp16.", default="auto")
    on_error: str = _choices(
        "A malformed pair: raise, or skip and count it.", ("raise", "skip"), default="raise"
    )
    output_dir: str = _help(
        "Where the metrics JSON is written (one file per model).", default="runs/eval/prefs"
    )

    def __post_init__(self):
        from zephyr.train.losses import DPO_LOSSES

        if self.beta <= 0 or self.batch_size < 1:
            raise ConfigError(
                f"`beta` must be positive and `batch_size` at least 1; got {self.beta}, {self.batch_size}"
            )
        if self.loss_type not in DPO_LOSSES:
            raise ConfigError(f"`loss_type` must be one of {', '.join(DPO_LOSSES)}; got {self.loss_type!r}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"`max_samples` must be at least 1; got {self.max_samples}")


def _scoring_model(spec: str, dtype: str, tokenizer):
    import torch

    from zephyr.models import LoadSettings, fit_embeddings_to_tokenizer, load_model

    model = load_model(spec, LoadSettings(dtype=dtype))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    fit_embeddings_to_tokenizer(model, tokenizer)
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


def prefs(s: PrefsSettings) -> dict:
    """Score held-out pairs with the model (and its reference); returns and writes the metrics."""
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
