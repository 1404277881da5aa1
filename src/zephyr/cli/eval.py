"""`zephyr eval BENCHMARK [RECIPE.yaml] [--key=value ...]` or `zephyr eval RECIPE.yaml` (several benchmarks)."""

from __future__ import annotations

from pathlib import Path

from zephyr.cli.common import describe
from zephyr.config import parse_config, parse_overrides, read_recipe
from zephyr.errors import ConfigError
from zephyr.evaluate.benchmarks import BENCHMARKS

DESCRIPTION = describe(
    [b.settings for b in BENCHMARKS.values()],
    "zephyr eval mt-bench --model runs/demo/dpo --judge gpt-4 --judge_base_url https://api.openai.com/v1",
    "BENCHMARK is mt-bench, alpaca, prefs or rules. A recipe with one section per benchmark "
    "(`mt_bench:`, `alpaca:`, `prefs:`, `rules:`) runs them in turn; `--alpaca.judge=J` overrides one section. "
    "Old `--kebab-case VALUE` flags still work.",
) + (
    "\n\nMore examples:"
    "\n  zephyr eval mt-bench --questions ../shared/data/mt_bench/question.jsonl \\"
    "\n      --reference_answers ../shared/data/mt_bench/reference_answer_gpt-4.jsonl \\"
    "\n      --judge_prompts ../shared/data/mt_bench/judge_prompts.jsonl --model M --judge J"
    "\n  zephyr eval alpaca --annotations annotations.json"
    "\n  zephyr eval prefs --model runs/demo/dpo --ref_model runs/demo/sft --data zephyr:demo_prefs"
    "\n  zephyr eval rules --model runs/demo/dpo/model --rules '{max_words: 40}' --prompts zephyr:alpaca_mini"
    "\n  zephyr eval runs/demo/eval/recipe.yaml"
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "benchmark",
        metavar="BENCHMARK|RECIPE",
        help="mt-bench, alpaca, prefs or rules; or a multi-benchmark recipe",
    )
    parser.add_argument("recipe", nargs="?", metavar="RECIPE", help="YAML settings for that benchmark")


def run(args, extra) -> int:
    name = args.benchmark.replace("-", "_")
    if name in BENCHMARKS:
        (settings,) = parse_config([BENCHMARKS[name].settings], args.recipe, extra)
        return _run_one(name, settings)
    if not Path(args.benchmark).is_file():
        raise ConfigError(
            f"`{args.benchmark}` is neither a benchmark ({', '.join(b.replace('_', '-') for b in BENCHMARKS)}) "
            "nor a recipe file"
        )
    sections = read_recipe(args.benchmark)
    for dotted, value in parse_overrides(extra).items():
        bench, _, key = dotted.partition(".")
        if not key or bench not in sections:
            raise ConfigError(
                f"Override `--{dotted}` must name a benchmark section of the recipe, as --alpaca.judge=J"
            )
        sections[bench] = {**(sections[bench] or {}), key: value}
    for bench, section in sections.items():
        if bench not in BENCHMARKS:
            raise ConfigError(
                f"Unknown benchmark `{bench}` in {args.benchmark}; expected some of {', '.join(BENCHMARKS)}"
            )
        (settings,) = parse_config([BENCHMARKS[bench].settings], None, dict(section or {}))
        _run_one(bench, settings)
    return 0


def _run_one(name: str, settings) -> int:
    benchmark = BENCHMARKS[name]
    print(benchmark.show(benchmark.run(settings)))
    return 0
