"""The settings of each benchmark `zephyr eval` runs (MT-Bench, AlpacaEval, preference accuracy, rules).

One dataclass per benchmark; its fields are the recipe keys and `--key=value` options, documented and
range-checked through ``zephyr.config.setting``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from zephyr.config import check_settings, on_error_setting, setting
from zephyr.errors import ConfigError
from zephyr.generation.jobs import DEFAULT_CONCURRENCY
from zephyr.resources import _DIR as RESOURCES

MAX_NEW_TOKENS = 1024  # FastChat's answer length per turn
# The DPO losses prefs can score with; train.losses holds them, but importing it here would load torch
# for every `--help` (a test checks the two lists agree).
DPO_LOSS_NAMES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)

BUILTIN_QUESTIONS = RESOURCES / "mt_bench_mini.jsonl"
BUILTIN_REFERENCES = RESOURCES / "mt_bench_mini_reference.jsonl"
BUILTIN_INSTRUCTIONS = RESOURCES / "alpaca_mini.jsonl"
BUILTIN_REFERENCE_OUTPUTS = RESOURCES / "alpaca_mini_reference.json"
MODES = ("single", "pairwise-baseline", "pairwise-all")


@dataclass
class ModelSettings:
    """Where answers come from (every benchmark that generates them)."""

    model: str | dict | None = setting(
        "The model to evaluate: a model spec (hub id, checkpoint dir, .gguf file, smollm2-135m-instruct), the "
        "name a server serves (with --model-base-url), or a JSON backend spec such as "
        '\'{"model": "smollm2-135m-instruct", "threads": 1}\' (see zephyr.generation.backends.BackendSpec). '
        "Omit it to judge or score existing outputs.",
        default=None,
    )
    model_base_url: str | None = setting(
        "Generate through this OpenAI-compatible endpoint (ending in /v1).", default=None
    )
    model_name: str | None = setting(
        "Name recorded in output files. Default: the model spec's last path part.", default=None
    )

    def __post_init__(self):
        check_settings(self)

    def model_spec(self) -> dict:
        return backend_spec(self.model, self.model_base_url, None, self.model_name)


@dataclass
class BackendSettings(ModelSettings):
    """Where answers come from and who judges them (shared by mt-bench and alpaca)."""

    judge: str | None = setting(
        "The judge: a model spec for a local judge, or with --judge-base-url the model an OpenAI-compatible "
        "endpoint serves (e.g. gpt-4 at https://api.openai.com/v1), or a JSON backend spec. Omit it to only "
        "generate.",
        default=None,
    )
    judge_base_url: str | None = setting(
        "The judge's OpenAI-compatible endpoint (ending in /v1).", default=None
    )
    judge_api_key_env: str | None = setting(
        "Environment variable holding the judge endpoint's API key.", default=None
    )
    judge_prompts: str | None = setting(
        "Judge prompt file in FastChat's judge_prompts.jsonl format. Default: the project's own prompts.",
        default=None,
    )
    judge_max_tokens: int = setting("Longest judge reply in tokens.", default=2048, ge=1)
    concurrency: int = setting(
        "Generations and judgments kept in flight at once (fills a batching backend).",
        default=DEFAULT_CONCURRENCY,
        ge=1,
    )

    def judge_spec(self) -> dict:
        return backend_spec(self.judge, self.judge_base_url, self.judge_api_key_env, None)


def backend_spec(model: str | dict, base_url: str | None, api_key_env: str | None, name: str | None) -> dict:
    """A backend spec (see zephyr.generation.backends) from command-line values; ``model`` may be JSON."""
    if isinstance(model, dict):  # a backend spec written as a mapping in a recipe
        spec = dict(model)
    elif model.lstrip().startswith("{"):
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


def open_backend(spec: dict):
    from zephyr.generation.backends import make_backend

    return make_backend(spec)


# --- MT-Bench -----------------------------------------------------------------------------------------


@dataclass
class MTBenchSettings(BackendSettings):
    """`zephyr eval mt-bench`: answer, judge and score MT-Bench questions the way FastChat does."""

    questions: str | None = setting(
        "Question file in FastChat's format, e.g. ../shared/data/mt_bench/question.jsonl (the real 80). "
        "Default: the built-in 16-question set.",
        default=None,
    )
    reference_answers: str | None = setting(
        "Reference answers for math, reasoning and coding (FastChat's reference_answer format, e.g. "
        "reference_answer/gpt-4.jsonl). Default: the built-in set's own, with the built-in questions.",
        default=None,
    )
    no_reference: bool = setting(
        "Judge math, reasoning and coding without reference answers (not comparable with "
        "published MT-Bench scores).",
        default=False,
    )
    output_dir: str = setting(
        "Where question.jsonl, model_answer/ and model_judgment/ go (FastChat's layout).",
        default="runs/eval/mt_bench",
    )
    max_new_tokens: int = setting(
        "Longest answer per turn in tokens (FastChat: 1024).", default=MAX_NEW_TOKENS, ge=1
    )
    num_choices: int = setting(
        "Answers per question (choice i samples with seed i); judges read choice 0.", default=1, ge=1
    )
    mode: str = setting(
        "single: grade each answer 1-10; pairwise-baseline: compare each model with "
        "--baseline-model, positions swapped; pairwise-all: compare every pair of models.",
        default="single",
        choices=MODES,
    )
    baseline_model: str = setting(
        "The baseline's name (its answers in model_answer/NAME.jsonl or --answer-files).",
        default="gpt-3.5-turbo",
    )
    model_list: list[str] | None = setting(
        "Models to judge. Default: the model just answered, else every model in model_answer/.", default=None
    )
    answer_files: list[str] | None = setting(
        "More answer files to judge (FastChat format; the file name is the model name).", default=None
    )
    judgments: str | None = setting(
        "Only score this judgment file (single or pairwise, FastChat format), as FastChat's show_result does.",
        default=None,
    )


@dataclass
class AlpacaSettings(BackendSettings):
    """`zephyr eval alpaca`: AlpacaEval-format outputs, pairwise annotations and win rates."""

    instructions: str | None = setting(
        "Instructions (AlpacaEval's instructions.jsonl, or any JSON array with `instruction`), e.g. "
        "../shared/data/alpaca_eval/instructions.jsonl. Default: the built-in set of 24.",
        default=None,
    )
    reference_outputs: str | None = setting(
        "Reference outputs to compare against (model_outputs.json format), e.g. "
        "../shared/data/alpaca_eval/reference_text_davinci_003.json (AlpacaEval 1). Default, with the built-in "
        "instructions: the built-in reference answers written for this project.",
        default=None,
    )
    model_outputs: str | None = setting(
        "Judge this model_outputs.json instead of (or besides) generating.", default=None
    )
    annotations: str | None = setting(
        "Only recompute win rates from this AlpacaEval annotations file.", default=None
    )
    output_dir: str = setting(
        "Where MODEL/model_outputs.json and MODEL/ANNOTATOR/annotations.json go.",
        default="runs/eval/alpaca_eval",
    )
    max_new_tokens: int = setting("Longest output in tokens.", default=2048, ge=1)
    temperature: float = setting("Sampling temperature for the outputs (0 = greedy).", default=0.7)
    top_p: float = setting("Nucleus sampling mass for the outputs.", default=1.0)
    seed: int = setting(
        "Sampling seed for the outputs, and the seed of the judge's position order.", default=0
    )
    judge_verdict: str = setting(
        "text: the judge writes a comparison ending in [[A]] or [[B]]; logprobs: the judge answers one letter "
        "and the preference is 1 + P(second better) from its first-token probabilities (every verdict readable, "
        "graded like AlpacaEval 2.0's weighted annotators; a local judge, or an endpoint with `top_logprobs`).",
        default="text",
        choices=("text", "logprobs"),
    )


@dataclass
class PrefsSettings:
    """`zephyr eval prefs`: preference accuracy of a model (and implicit rewards against a reference)."""

    model: str = setting(
        "The model to evaluate: a model spec (checkpoint dir, hub id, .gguf, LoRA adapter dir)."
    )
    data: str = setting(
        "Held-out preference pairs: a file, saved dataset or hub id in a preference schema "
        "(ultrafeedback_binarized, zephyr:demo_prefs, ...)."
    )
    ref_model: str | None = setting(
        "The DPO reference (usually the SFT model). With it, the implicit-reward "
        "metrics rewards/accuracies and rewards/margins are computed too.",
        default=None,
    )
    split: str = setting(
        "Split to read from a source with splits (ignored for a single file).", default="test_prefs"
    )
    beta: float = setting("DPO beta for the implicit rewards (0.1 paper, 0.01 handbook).", default=0.1, gt=0)
    loss_type: str = setting(
        "DPO loss reported beside the rewards, over all the pairs at once (TRL's names; no label smoothing, so "
        "not exo_pair, and discopop at its default tau).",
        default="sigmoid",
        choices=DPO_LOSS_NAMES,
    )
    max_length: int = setting(
        "Longest prompt + reply in tokens (replies are cut from the right).", default=1024
    )
    max_prompt_length: int | None = setting("Longest prompt in tokens (cut from the left).", default=512)
    max_samples: int | None = setting("Score only the first N pairs.", default=None, ge=1)
    batch_size: int = setting("Pairs per forward pass.", default=8, ge=1)
    chat_template: str | None = setting(
        "zephyr, chatml or Jinja source. Default: the model's own.", default=None
    )
    dtype: str = setting("Weights dtype: auto, fp32, bf16 or fp16.", default="auto")
    on_error: str = on_error_setting("raise")
    output_dir: str = setting(
        "Where the metrics JSON is written (one file per model).", default="runs/eval/prefs"
    )

    def __post_init__(self):
        check_settings(self)
        if self.loss_type == "exo_pair":
            raise ConfigError(
                "`loss_type` exo_pair needs a `label_smoothing` above 0, which `zephyr eval prefs` does not "
                "take; report another loss",
                key="loss_type",
            )


@dataclass
class RulesSettings(ModelSettings):
    """`zephyr eval rules`: how often a model's replies to held-out prompts pass a rubric a program checks."""

    rules: dict | None = setting(
        "The rubric (zephyr.distill.rules.RuleSet), required: max_words, min_words, contains, excludes, "
        "starts_with, ends_with, pattern; e.g. {max_words: 40, contains: [example]}.",
        default=None,
    )
    model_outputs: str | None = setting(
        "Score this model_outputs.json (AlpacaEval format) instead of generating.", default=None
    )
    prompts: str = setting(
        "Held-out single-turn prompts: a .jsonl/.json/.parquet file or zephyr:NAME with `prompt`, "
        "`instruction` or one-user-turn `messages` rows (keep them apart from the prompts you train on).",
        default="zephyr:alpaca_mini",
    )
    skip_prompts: int = setting("Skip the first N readable prompts.", default=0, ge=0)
    max_prompts: int | None = setting("Then use at most N prompts.", default=None, ge=1)
    max_new_tokens: int = setting("Longest reply in tokens.", default=256, ge=1)
    temperature: float = setting(
        "Sampling temperature (0 = greedy: one reproducible reply).", default=0.0, ge=0
    )
    top_p: float = setting("Nucleus sampling mass.", default=1.0, gt=0, le=1)
    seed: int = setting("Sampling seed.", default=0)
    concurrency: int = setting("Replies generated at once.", default=DEFAULT_CONCURRENCY, ge=1)
    output_dir: str = setting(
        "Where MODEL/model_outputs.json, MODEL/verdicts.jsonl and MODEL/results.json go.",
        default="runs/eval/rules",
    )

    def __post_init__(self):
        from zephyr.distill.rules import RuleSet

        super().__post_init__()
        if self.rules is None:
            raise ConfigError("`rules` is required: the rubric to check, e.g. --rules '{max_words: 40}'")
        self.rule_set = RuleSet.parse(self.rules, "rules")
        if not (self.model or self.model_outputs):
            raise ConfigError("Nothing to score: give --model to generate replies, or --model-outputs FILE")
