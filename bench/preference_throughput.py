"""KTO, ORPO and SimPO throughput and peak memory: zephyr's trainers against TRL 1.16's own, same run.

For each method, TRL's trainer for it and ours train the same policy (same weights) on the same pairs of
the UltraFeedback sample in ../shared/data (the first usable ones), cut with the handbook limits (prompt
<= 512 tokens from the left, prompt + completion <= 1024), with the same batch size, device, dtype,
optimizer, learning rate (constant), gradient-checkpointing setting and sequential order, for the same
number of steps, each side in its own process, TRL's side first then ours, `--repeats` times (the best
of each side kept: its fastest run, and its lowest peak). Sides:

- trl_orpo: `trl.experimental.orpo.ORPOTrainer` (beta 0.1); zephyr_orpo: our `ORPOConfig` +
  `ReferenceFreeTrainer`, as `zephyr orpo` builds them;
- trl_simpo: `trl.experimental.cpo.CPOTrainer` with loss_type simpo, cpo_alpha 0, beta 2.0, simpo_gamma 0.5;
  zephyr_simpo: our `SimPOConfig` (the same numbers) + `ReferenceFreeTrainer`, as `zephyr simpo` builds them;
- trl_kto: `trl.KTOTrainer` (loss_type kto, beta 0.1, weights 1.0, reference = a frozen copy of the
  policy in memory, as TRL makes by default); zephyr_kto: our `KTOConfig` + `KTOTrainer`, as `zephyr kto`
  builds them (frozen copy as reference, KL completions fixed in the data, `kto_collator`).

Same inputs. Our side tokenizes the rows as `zephyr kto/orpo/simpo` do (the chat template, the prompt cut
from the left to max_prompt_length, then completions from the right to fit max_length). TRL's experimental
ORPO/CPO trainers and its KTOTrainer tokenize text themselves, and none of them (1.16) cuts prompts
(ORPO/CPO have max_length, which cuts the completion to fit after the prompt; KTO's collator cuts the whole
sequence at max_length); so TRL gets each row as plain strings of the chat template's rendering (decoded from
our token ids): the prompt as we cut it and the whole completions, which TRL then cuts itself, as we do.
TRL's own tokenization then yields our tokens: the TRL side checks that per sequence and reports how many
match (`same_tokens`; a prompt cut inside a multi-byte character may re-tokenize differently). Both sides
count the real tokens they trained from their own tokens (TRL's after its own cutting; ours: each pair's
two sequences, prompt + chosen and prompt + rejected, unpadded, although prefix sharing runs the prompt
once), so tokens/s compare. KTO: the unpaired rows are each pair's chosen (desirable) and rejected
(undesirable) replies, shuffled once with `--seed` as `zephyr kto` does; TRL gets them in that same order, so
both sides' batches (and TRL's rotated KL completions and ours) hold the same rows. A "pair" there is two
rows: pairs/s = rows/s / 2 on both sides, and `--kto-batch` (default 2 x `--batch`) is the per-device batch
in rows on both sides. KTO's real tokens are the rows' sequences; the KL sequences (forward only, no
gradient) count in the FLOPs, not in the tokens.

Measured per side over the timed steps (the first `--warmup` are not timed): pairs/s, s/step, real tokens/s,
peak memory (peak RSS on CPU; torch.cuda.max_memory_allocated on CUDA), model FLOP/s and MFU (bench/common.py's
`train_flops`; KTO adds the reference's forward of the rows and a policy and a reference forward of the KL
sequences). Floors: each zephyr side at least 1.5x its TRL side's pairs/s, at no more peak memory; a missed
floor exits 1 (the result is still recorded).

    python bench/preference_throughput.py                     # all three, SmolLM2-135M, fp32, CPU, batch 4
    python bench/preference_throughput.py --methods orpo --steps 1 --batch 2 --max-length 128 \\
        --max-prompt-length 64 --no-record                     # quick check
    python bench/preference_throughput.py --gpu --model-config llama-1b --batch 8 --steps 10 --warmup 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    SHARED_DATA,
    add_training_options,
    append_to_benchmarks,
    bench_model,
    emit_side,
    finish_training_options,
    flop_model,
    fmt_mfu,
    forward_flops,
    mem_header,
    model_label,
    precision_args,
    precision_label,
    run_side,
    same_weights,
    side_common,
    start_side,
    tokenizer_spec,
    train_flops,
    trl_attention,
    weights_checksum,
    write_json_line,
)
from sft_throughput import StepTimer

DATA = SHARED_DATA / "ultrafeedback" / "binarized_sample_train1000.jsonl"
METHODS = ("kto", "orpo", "simpo")
SIDES = tuple(f"{who}_{method}" for method in METHODS for who in ("trl", "zephyr"))
SPEEDUP_FLOOR = 1.5
MEMORY_FLOOR = 1.0  # zephyr's peak / TRL's peak, at most
LEARNING_RATE = 5e-7
# The methods' numbers, the same on both sides (TRL's names).
ORPO_SETTINGS = {"beta": 0.1}
SIMPO_SETTINGS = {"loss_type": "simpo", "cpo_alpha": 0.0, "beta": 2.0, "simpo_gamma": 0.5}
KTO_SETTINGS = {"loss_type": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}


# --- the data, the same for both sides of a method ---------------------------------------------------------


def _tokenizer(opts):
    from zephyr.models import load_tokenizer

    return load_tokenizer(tokenizer_spec(opts))


def usable_pairs(opts, tokenizer, n: int):
    """The preference rows of the sample and the first ``n`` usable pairs, tokenized with the handbook limits
    (each with its ``row`` index into those rows)."""
    from zephyr.data import load_rows
    from zephyr.train.dpo_data import tokenize_preferences

    rows = load_rows(str(DATA), "preference", on_error="skip").dataset
    head = rows.select(range(min(len(rows), 4 * n + 16)))
    ds, _, _ = tokenize_preferences(head, tokenizer, opts.max_length, opts.max_prompt_length, on_error="skip")
    if len(ds) < n:
        raise SystemExit(f"only {len(ds)} usable pairs in the first {len(head)} rows; {n} needed")
    return rows, ds.select(range(n))


def _uncut(tokenizer, rows, unpaired: bool = False):
    """``rows`` tokenized as ``tokenize_preferences`` does but with no length limits: the whole completions,
    for TRL to cut itself (its completion cut is ours once the prompt is cut)."""
    from zephyr.train.dpo_data import tokenize_preferences

    ds, _, _ = tokenize_preferences(rows, tokenizer, 2**62, None, on_error="raise", unpaired=unpaired)
    return ds


def pair_data(opts, uncut: bool = False):
    """The pairs ORPO and SimPO train on: ``batch * (warmup + steps)`` token pairs; with ``uncut``, also the
    same pairs' whole completions (``{chosen_ids, rejected_ids}``, for TRL)."""
    tokenizer = _tokenizer(opts)
    rows, ds = usable_pairs(opts, tokenizer, opts.batch * (opts.warmup + opts.steps))
    whole = _uncut(tokenizer, rows.select(ds["row"])) if uncut else None
    return tokenizer, ds.remove_columns(["row"]), whole


def kto_data(opts, uncut: bool = False):
    """The unpaired rows KTO trains on, as `zephyr kto` prepares them: the unpaired rows of the first usable pairs
    (chosen desirable, rejected undesirable; read by the ``unpaired`` row kind), tokenized, shuffled once with
    the seed, each with its KL completion (rotation within each batch of ``kto_batch`` rows). With ``uncut``,
    also each row's whole completion, in the same order (for TRL)."""
    from zephyr.data import load_rows
    from zephyr.train.dpo_data import tokenize_preferences
    from zephyr.train.kto import add_kl_completions

    tokenizer = _tokenizer(opts)
    n_rows = opts.kto_batch * (opts.warmup + opts.steps)
    rows, pairs = usable_pairs(opts, tokenizer, -(-n_rows // 2))
    unpaired = load_rows(str(DATA), "unpaired", on_error="skip").dataset
    picked = []
    for k in pairs["row"]:
        for j, label in ((2 * k, True), (2 * k + 1, False)):
            if unpaired[j]["prompt_id"] != rows[k]["prompt_id"] or unpaired[j]["label"] is not label:
                raise SystemExit(
                    f"unpaired row {j} is not pair {k}'s {'chosen' if label else 'rejected'} reply"
                )
            picked.append(j)
    selected = unpaired.select(picked[:n_rows])
    ds, _, _ = tokenize_preferences(
        selected, tokenizer, opts.max_length, opts.max_prompt_length, on_error="raise", unpaired=True
    )
    ds = ds.remove_columns(["row"]).add_column("source", list(range(len(ds))))
    ds = ds.shuffle(seed=opts.seed).flatten_indices()
    order = ds["source"]
    ds = add_kl_completions(ds.remove_columns(["source"]), opts.kto_batch, opts.max_length)
    whole = None
    if uncut:
        full = _uncut(tokenizer, selected, unpaired=True)["completion_ids"]
        whole = [full[i] for i in order]
    return tokenizer, ds, whole


def _text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _args(cls, opts, batch: int, **extra):
    return cls(
        output_dir=tempfile.mkdtemp(prefix="bench-pref-"),
        per_device_train_batch_size=batch,
        max_steps=opts.warmup + opts.steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        gradient_checkpointing=opts.gradient_checkpointing,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        seed=opts.seed,
        train_sampling_strategy="sequential",
        max_length=opts.max_length,
        **precision_args(opts),
        **extra,
    )


# --- the sides ---------------------------------------------------------------------------------------------


def side_trl_pairs(opts, method: str) -> dict:
    from datasets import Dataset

    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        settings = ORPO_SETTINGS
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        settings = SIMPO_SETTINGS

    start_side(opts)
    tokenizer, ours, whole = pair_data(opts, uncut=True)
    # The prompt as we cut it (TRL cuts none), the completions whole: TRL cuts them to fit max_length itself.
    text = Dataset.from_list(
        [
            {"prompt": _text(tokenizer, p), "chosen": _text(tokenizer, c), "rejected": _text(tokenizer, r)}
            for p, c, r in zip(ours["prompt_ids"], whole["chosen_ids"], whole["rejected_ids"], strict=True)
        ]
    )
    attn = trl_attention(opts)
    model = bench_model(opts, attn_implementation=attn)
    checksum, fm = weights_checksum(model), flop_model(model)
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=_args(Config, opts, opts.batch, **settings),
        train_dataset=text,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    ds = trainer.train_dataset
    if len(ds) != len(ours):
        raise SystemExit(f"TRL kept {len(ds)} of the {len(ours)} pairs")
    examples, same = [], 0
    for i in range(len(ds)):
        row, p = ds[i], ours[i]["prompt_ids"]
        examples.append([len(row["chosen_input_ids"]), len(row["rejected_input_ids"])])
        for side in ("chosen", "rejected"):
            prompt_len = sum(1 for t in row[f"{side}_labels"] if t == -100)
            same += row[f"{side}_input_ids"] == p + ours[i][f"{side}_ids"] and prompt_len == len(p)
    trainer.train()
    name = "ORPOTrainer" if method == "orpo" else "CPOTrainer"
    numbers = ", ".join(f"{k}={v}" for k, v in settings.items())
    return _summary(
        timer,
        opts,
        opts.batch,
        examples,
        fm,
        pairs_per_example=1.0,
        trl_settings=f"trl.experimental.{method if method == 'orpo' else 'cpo'}.{name}({numbers}), chosen and "
        f"rejected padded to the batch's longest, full-vocabulary logits, attn_implementation={attn}",
        same_tokens=f"{same}/{2 * len(ds)}",
        weights_checksum=checksum,
        losses=trainer.state.log_history,
    )


def side_zephyr_pairs(opts, method: str) -> dict:
    from zephyr.train.attention import use_packed_attention
    from zephyr.train.config import ORPOConfig, SimPOConfig
    from zephyr.train.preference import disable_dropout, pair_collator
    from zephyr.train.setup import packed_kernel
    from zephyr.train.trainer import ReferenceFreeTrainer

    start_side(opts)
    tokenizer, ds, _ = pair_data(opts)
    model = bench_model(opts)
    checksum, fm = weights_checksum(model), flop_model(model)
    cls, settings = (ORPOConfig, ORPO_SETTINGS) if method == "orpo" else (SimPOConfig, SIMPO_SETTINGS)
    args = _args(
        cls,
        opts,
        opts.batch,
        max_prompt_length=opts.max_prompt_length,
        attention_kernel=opts.attention_kernel,
        **settings,
    )
    # As zephyr.train.reference_free._reference_free builds the run.
    if args.disable_dropout:
        disable_dropout(model)
    collator = pair_collator(args, tokenizer.pad_token_id, score_context=True)
    timer = StepTimer()
    trainer = ReferenceFreeTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    kernel = packed_kernel(args)
    if kernel is not None:
        use_packed_attention(trainer.model, kernel)
    trainer.train()
    examples = [
        [len(p) + len(c), len(p) + len(r)]
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    ]
    return _summary(
        timer,
        opts,
        opts.batch,
        examples,
        fm,
        pairs_per_example=1.0,
        kernel=kernel or "model's own (padded)",
        layout=args.pair_layout,
        weights_checksum=checksum,
        losses=trainer.state.log_history,
    )


def side_trl_kto(opts) -> dict:
    import trl
    from datasets import Dataset

    start_side(opts)
    tokenizer, ours, whole = kto_data(opts, uncut=True)
    # The prompt as we cut it (TRL cuts none), the completion whole: TRL's collator cuts the sequence at max_length.
    text = Dataset.from_list(
        [
            {"prompt": _text(tokenizer, p), "completion": _text(tokenizer, c), "label": bool(label)}
            for p, c, label in zip(ours["prompt_ids"], whole, ours["label"], strict=True)
        ]
    )
    attn = trl_attention(opts)
    model = bench_model(opts, attn_implementation=attn)
    checksum, fm = weights_checksum(model), flop_model(model)
    ref = copy.deepcopy(model).eval()  # what TRL builds without a ref_model: the same weights, frozen
    timer = StepTimer()
    trainer = trl.KTOTrainer(
        model=model,
        ref_model=ref,
        args=_args(trl.KTOConfig, opts, opts.kto_batch, **KTO_SETTINGS),
        train_dataset=text,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    ds = trainer.train_dataset
    if len(ds) != len(ours):
        raise SystemExit(f"TRL kept {len(ds)} of the {len(ours)} rows")
    cap = opts.max_length  # TRL's collator cuts each sequence (and each KL sequence) there
    examples, kl, same, same_kl = [], [], 0, 0
    for i in range(len(ds)):
        row, mine = ds[i], ours[i]
        seq = (row["prompt_ids"] + row["completion_ids"])[:cap]
        kl_seq = (row["prompt_ids"] + row["KL_completion_ids"])[:cap]
        examples.append([len(seq)])
        kl.append([len(kl_seq)])
        same += (
            seq == mine["prompt_ids"] + mine["completion_ids"]
            and len(row["prompt_ids"]) == len(mine["prompt_ids"])
            and bool(row["label"]) == bool(mine["label"])
        )
        same_kl += kl_seq == mine["prompt_ids"] + mine["kl_completion_ids"]
    trainer.train()
    numbers = ", ".join(f"{k}={v}" for k, v in KTO_SETTINGS.items())
    return _summary(
        timer,
        opts,
        opts.kto_batch,
        examples,
        fm,
        pairs_per_example=0.5,
        kl_examples=kl,
        trl_settings=f"trl.KTOTrainer({numbers}), reference = frozen copy in memory, rows padded to the batch's "
        f"longest, separate KL forwards, TRL's fused LM head, attn_implementation={attn}",
        same_tokens=f"{same}/{len(ds)}",
        same_kl_tokens=f"{same_kl}/{len(ds)}",
        weights_checksum=checksum,
        losses=trainer.state.log_history,
    )


def side_zephyr_kto(opts) -> dict:
    from zephyr.train.attention import use_packed_attention
    from zephyr.train.config import KTOConfig
    from zephyr.train.kto import kto_collator
    from zephyr.train.preference import disable_dropout
    from zephyr.train.setup import packed_kernel
    from zephyr.train.trainer import KTOTrainer

    start_side(opts)
    tokenizer, ds, _ = kto_data(opts)
    args = _args(
        KTOConfig,
        opts,
        opts.kto_batch,
        max_prompt_length=opts.max_prompt_length,
        attention_kernel=opts.attention_kernel,
        **KTO_SETTINGS,
    )
    collator = kto_collator(args, tokenizer.pad_token_id)
    model = bench_model(opts)
    checksum, fm = weights_checksum(model), flop_model(model)
    # As zephyr.train.kto.kto builds the run (zephyr.train.dpo.with_reference: a separate frozen reference, on
    # the packed kernel when the rows are packed; dropout off in both).
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    kernel = packed_kernel(args)
    if kernel is not None:
        use_packed_attention(ref, kernel)
    if args.disable_dropout:
        disable_dropout(model)
        disable_dropout(ref)
    timer = StepTimer()
    trainer = KTOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    if kernel is not None:
        use_packed_attention(trainer.model, kernel)
    trainer.train()
    examples = [[len(p) + len(c)] for p, c in zip(ds["prompt_ids"], ds["completion_ids"], strict=True)]
    kl = [[len(p) + len(c)] for p, c in zip(ds["prompt_ids"], ds["kl_completion_ids"], strict=True)]
    return _summary(
        timer,
        opts,
        opts.kto_batch,
        examples,
        fm,
        pairs_per_example=0.5,
        kl_examples=kl,
        kernel=kernel or "model's own (padded)",
        layout=args.pair_layout,
        weights_checksum=checksum,
        losses=trainer.state.log_history,
    )


def _summary(
    timer, opts, batch: int, examples, fm, pairs_per_example: float, kl_examples=None, **extra
) -> dict:
    """The measures of one side. ``examples``: per batch example (a pair, or a KTO row), the real lengths of
    the sequences it trains; ``kl_examples``: KTO's KL sequences (a policy and a reference forward each, no
    gradient)."""
    if len(timer.times) != opts.warmup + opts.steps:
        raise SystemExit(f"expected {opts.warmup + opts.steps} steps, timed {len(timer.times)}")
    seconds = sum(timer.times[opts.warmup :])
    timed = slice(batch * opts.warmup, batch * (opts.warmup + opts.steps))
    lengths = [n for ex in examples[timed] for n in ex]
    if kl_examples is None:
        flops = train_flops(fm, lengths)
    else:
        kl_lengths = [n for ex in kl_examples[timed] for n in ex]
        flops = train_flops(fm, lengths, reference_forwards=1) + 2 * forward_flops(fm, kl_lengths)
        extra["kl_tokens"] = sum(kl_lengths)
    n_pairs = batch * opts.steps * pairs_per_example
    return {
        "pairs_per_s": n_pairs / seconds,
        "pairs": n_pairs,
        "batch": batch,
        "tokens": sum(lengths),
        "tokens_per_s": sum(lengths) / seconds,
        "seconds": seconds,
        "s_per_step": seconds / opts.steps,
        "median_s_per_step": statistics.median(timer.times[opts.warmup :]),
        "step_times": timer.times,
        "params": fm.total_params,
        "flops_params": fm.matmul_params,
        **side_common(opts, flops, seconds),
        **extra,
    }


def run_one(opts) -> dict:
    who, method = opts.side.split("_", 1)
    if method == "kto":
        return side_trl_kto(opts) if who == "trl" else side_zephyr_kto(opts)
    return side_trl_pairs(opts, method) if who == "trl" else side_zephyr_pairs(opts, method)


# --- the run -----------------------------------------------------------------------------------------------


def best_of(runs: list[dict]) -> dict:
    """The fastest run of a side, with the lowest peak memory of all its runs and every run's numbers."""
    best = dict(max(runs, key=lambda r: r["pairs_per_s"]))
    best["peak_mem_gb"] = min(r["peak_mem_gb"] for r in runs)
    best["repeats"] = [
        {k: r[k] for k in ("pairs_per_s", "s_per_step", "tokens_per_s", "peak_mem_gb", "wall_s")}
        for r in runs
    ]
    return best


LABELS = {
    "trl_orpo": "TRL 1.16 experimental ORPOTrainer",
    "zephyr_orpo": "zephyr orpo (ORPOConfig + ReferenceFreeTrainer",
    "trl_simpo": "TRL 1.16 experimental CPOTrainer, loss_type simpo",
    "zephyr_simpo": "zephyr simpo (SimPOConfig + ReferenceFreeTrainer",
    "trl_kto": "TRL 1.16 KTOTrainer (ref model in memory)",
    "zephyr_kto": "zephyr kto (KTOConfig + KTOTrainer, ref model in memory",
}


def label(name: str, side: dict) -> str:
    if name.startswith("zephyr"):
        return f"{LABELS[name]}, {side['layout']} layout, {side['kernel']} kernel)"
    return LABELS[name]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=SIDES, help="internal: run one side")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of kto, orpo, simpo (default: all)",
    )
    p.add_argument(
        "--steps", type=int, default=3, help="timed steps (--warmup untimed warm-up steps run first)"
    )
    p.add_argument("--batch", type=int, default=4, help="per-device batch in pairs (ORPO, SimPO)")
    p.add_argument(
        "--kto-batch", type=int, default=None, help="KTO's per-device batch in rows (default: 2 x --batch)"
    )
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--repeats", type=int, default=1, help="run each method's two sides this many times, alternating"
    )
    p.add_argument("--side-timeout", type=int, default=7200, help="seconds one side may run")
    add_training_options(p)
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = finish_training_options(p.parse_args())
    opts.kto_batch = opts.kto_batch or 2 * opts.batch
    if opts.batch < 1 or opts.kto_batch < 2 or opts.repeats < 1:
        raise SystemExit(
            "--batch must be at least 1, --kto-batch at least 2 (KTO's KL term) and --repeats at least 1"
        )
    if opts.side:
        emit_side(run_one(opts))
        return
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS) or len(set(methods)) != len(methods):
        raise SystemExit(f"--methods takes a subset of {', '.join(METHODS)}; got {opts.methods!r}")
    methods = [m for m in METHODS if m in methods]
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found: {DATA}")
    args = [a for a in sys.argv[1:] if a != "--no-record"]
    results: dict[str, dict] = {}
    for method in methods:
        runs: dict[str, list[dict]] = {"trl": [], "zephyr": []}
        for _ in range(opts.repeats):
            for who in ("trl", "zephyr"):
                runs[who].append(run_side(__file__, f"{who}_{method}", args, timeout=opts.side_timeout))
        for who in ("trl", "zephyr"):
            results[f"{who}_{method}"] = best_of(runs[who])

    def row(name):
        side = results[name]
        return (
            f"| {label(name, side)} | {side['pairs_per_s']:.3f} | {side['s_per_step']:.3f} | "
            f"{side['tokens_per_s']:.0f} | {side['peak_mem_gb']:.2f} | {side['model_tflops_per_s']:.3f} | "
            f"{fmt_mfu(side['mfu'])} |"
        )

    rows = [
        f"| side | pairs/s | s/step | real tokens/s | {mem_header(opts)} | model TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [row(f"{who}_{m}") for m in methods for who in ("trl", "zephyr")]
    table = "\n".join(rows)
    any_side = next(iter(results.values()))
    kernels = sorted({results[f"zephyr_{m}"]["kernel"] for m in methods})
    notes = []
    for m in methods:
        trl, ours = results[f"trl_{m}"], results[f"zephyr_{m}"]
        tokens = (
            f"TRL's tokenization gave our token ids for {trl['same_tokens']} sequences; real tokens trained "
            f"(timed steps) TRL {trl['tokens']}, zephyr {ours['tokens']}"
        )
        if "kl_tokens" in trl:
            tokens += (
                f"; KL sequences: {trl['same_kl_tokens']} the same, tokens TRL {trl['kl_tokens']}, zephyr "
                f"{ours['kl_tokens']} (TRL rotates whole completions and cuts at max_length after the row's "
                "prompt; zephyr rotates the completions as cut for their own rows)"
            )
        notes.append(f"{m}: TRL ran {trl['trl_settings']}; {tokens}")
    settings = (
        f"model {model_label(opts)} ({any_side['params'] / 1e6:.0f}M params), {precision_label(opts)} "
        f"({any_side['device_name']}), batch {opts.batch} pairs (KTO: {opts.kto_batch} rows = "
        f"{opts.kto_batch / 2:g} pairs), max_length {opts.max_length}, max_prompt_length {opts.max_prompt_length} "
        f"(TRL gets each prompt as text already cut to max_prompt_length, since TRL 1.16's ORPO/CPO/KTO trainers cut "
        f"no prompt, and whole completions, which it cuts to max_length itself), "
        f"gradient checkpointing {'on' if opts.gradient_checkpointing else 'off'}, AdamW at a constant lr "
        f"{LEARNING_RATE:g}, sequential sampling, {opts.steps} timed steps after {opts.warmup} warm-up, best of "
        f"{opts.repeats} alternating run(s) per side, attention kernel {', '.join(kernels)} (requested "
        f"{opts.attention_kernel}), same initial weights: {same_weights(*results.values())}, MFU peak: "
        f"{any_side['peak_source']}. " + ". ".join(notes)
    )
    speed = {m: results[f"zephyr_{m}"]["pairs_per_s"] / results[f"trl_{m}"]["pairs_per_s"] for m in methods}
    memory = {m: results[f"zephyr_{m}"]["peak_mem_gb"] / results[f"trl_{m}"]["peak_mem_gb"] for m in methods}
    result = "RESULT " + " ".join(
        [f"speedup_{m}={speed[m]:.2f}" for m in methods]
        + [f"peak_mem_ratio_{m}={memory[m]:.2f}" for m in methods]
    )
    missed = [f"{m} speedup {speed[m]:.2f} < {SPEEDUP_FLOOR}" for m in methods if speed[m] < SPEEDUP_FLOOR]
    missed += [
        f"{m} peak memory ratio {memory[m]:.2f} > {MEMORY_FLOOR}" for m in methods if memory[m] > MEMORY_FLOOR
    ]
    print(settings, table, json.dumps(results), sep="\n")
    if missed:
        print("FLOORS MISSED: " + "; ".join(missed))
    print(result, flush=True)
    write_json_line(
        opts.json_out,
        {
            "bench": "preference",
            "args": args,
            "settings": settings,
            "table": table,
            "sides": results,
            "missed": missed,
            "result": result,
        },
    )
    if not opts.no_record:
        append_to_benchmarks(
            "KTO, ORPO and SimPO throughput vs TRL",
            "python bench/preference_throughput.py " + " ".join(args),
            settings + "\n\n" + table + ("\n\nFloors missed: " + "; ".join(missed) if missed else ""),
            result,
        )
    if missed:
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    main()
