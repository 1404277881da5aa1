"""DPO throughput and peak memory: `zephyr dpo`'s trainer against TRL 1.16's DPOTrainer, same run.

Both sides train the same policy (same weights; reference = a frozen copy of it) on the same pre-tokenized
pairs of the UltraFeedback sample in ../shared/data, cut with the handbook limits (prompt <= 512 tokens
from the left, prompt + completion <= 1024), with the same batch size, device, dtype, optimizer and
gradient-checkpointing setting, for the same number of steps, in sequential order, each side in its own
process. TRL keeps its defaults otherwise (pairs padded to the batch maximum, which is TRL 1.16's only
DPO layout, reference model in memory; FlashAttention 2 on CUDA where flash_attn is installed, else
SDPA). Sides:

- trl: TRL's DPOTrainer;
- zephyr: our defaults (padding-free, prefix sharing, live reference model), attention through the
  packed kernel of `--attention-kernel` (see zephyr.train.attention.choose_kernel; flash_varlen cannot
  express the shared prompt, so prefix-shared batches go through flex);
- cache: builds our precomputed reference log-probs for the rows the next side trains on (timed
  and reported separately);
- zephyr_precomputed: training with those cached log-probs; the reference is never loaded.
  (`--no-precomputed` skips these two.)

The first `--warmup` steps (default 1) of each training side are not timed. Measured per side: pairs/s,
real tokens/s, peak memory (peak RSS on CPU; torch.cuda.max_memory_allocated on CUDA), model FLOP/s and
MFU. Real tokens and FLOPs are those of the task and the same for every side: each pair is its two
sequences, prompt + chosen and prompt + rejected, unpadded (TRL's non-pad tokens; zephyr's prefix sharing
runs the prompt once, and that saving shows as speed, not as less work). FLOPs follow bench/common.py's
`train_flops` (6 * N * tokens + 6 * layers * attn_dim * sum(len_i^2) for the policy) plus one forward
(2 * N * tokens + 2 * layers * attn_dim * sum(len_i^2)) where the reference runs live.

    python bench/dpo_throughput.py                                 # SmolLM2-135M, fp32, CPU, batch 4
    python bench/dpo_throughput.py --model /path/to/tiny --steps 1  # quick check
    python bench/dpo_throughput.py --gpu --model-config llama-1b --batch 8 --steps 10 --warmup 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
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


def pairs(opts):
    """The first (warmup + steps) * batch usable pairs of the sample, tokenized with the handbook limits."""
    from zephyr.data import load_rows
    from zephyr.models import load_tokenizer
    from zephyr.train.dpo_data import tokenize_preferences

    tokenizer = load_tokenizer(tokenizer_spec(opts))
    n = opts.batch * (opts.warmup + opts.steps)
    rows = load_rows(str(DATA), "preference", on_error="skip").dataset
    rows = rows.select(range(min(len(rows), 4 * n)))
    ds, _, _ = tokenize_preferences(rows, tokenizer, opts.max_length, opts.max_prompt_length, on_error="skip")
    if len(ds) < n:
        raise SystemExit(f"only {len(ds)} usable pairs; {n} needed")
    return tokenizer, ds.select(range(n)).remove_columns(["row"])


def _args(cls, opts, **extra):
    return cls(
        output_dir=tempfile.mkdtemp(prefix="bench-dpo-"),
        per_device_train_batch_size=opts.batch,
        max_steps=opts.warmup + opts.steps,
        learning_rate=5e-7,
        lr_scheduler_type="constant",
        beta=0.1,
        gradient_checkpointing=opts.gradient_checkpointing,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        seed=opts.seed,
        train_sampling_strategy="sequential",
        **precision_args(opts),
        **extra,
    )


def side_trl(opts) -> dict:
    import trl

    start_side(opts)
    tokenizer, ds = pairs(opts)
    attn = trl_attention(opts)
    model = bench_model(opts, attn_implementation=attn)
    checksum, fm = weights_checksum(model), flop_model(model)
    ref = copy.deepcopy(model).eval()

    class PreTokenizedDPOTrainer(trl.DPOTrainer):
        # TRL 1.16 tokenizes text itself; our pairs are already tokens (identical for both sides).
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    timer = StepTimer()
    trainer = PreTokenizedDPOTrainer(
        model=model,
        ref_model=ref,
        args=_args(trl.DPOConfig, opts, max_length=opts.max_length),
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    trainer.train()
    return _summary(
        timer,
        opts,
        ds,
        fm,
        live_reference=True,
        trl_settings=f"padded, ref model in memory, attn_implementation={attn}",
        weights_checksum=checksum,
        losses=trainer.state.log_history,
    )


def side_zephyr(opts, precomputed: bool = False) -> dict:
    from zephyr.train.attention import choose_kernel, use_packed_attention
    from zephyr.train.collate import PairCollator
    from zephyr.train.config import DPOConfig
    from zephyr.train.reference import precompute_reference_logps
    from zephyr.train.trainer import DPOTrainer

    start_side(opts)
    kernel = choose_kernel(opts.attention_kernel, opts.device)
    tokenizer, ds = pairs(opts)
    model = bench_model(opts)
    checksum, fm = weights_checksum(model), flop_model(model)
    args = _args(
        DPOConfig,
        opts,
        max_length=opts.max_length,
        max_prompt_length=opts.max_prompt_length,
        precompute_ref_log_probs=precomputed,
        attention_kernel=opts.attention_kernel,
    )
    collator = PairCollator("shared")
    ref = None
    cache_s = None
    if precomputed or opts.side == "cache":
        from accelerate import PartialState

        t0 = time.perf_counter()
        ds = precompute_reference_logps(
            ds,
            model.to(args.device),
            collator,
            opts.batch,
            PartialState(),
            "train",
            opts.cache_dir,
            kernel=kernel,
        )
        cache_s = time.perf_counter() - t0
        if opts.side == "cache":
            return {
                "cache_s": cache_s,
                "pairs": len(ds),
                "kernel": kernel,
                "weights_checksum": checksum,
                **side_common(opts, None, cache_s),  # no FLOPs: cache_s includes hashing the weights
            }
    else:
        ref = copy.deepcopy(model).eval()
        use_packed_attention(ref, kernel)
    timer = StepTimer()
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    use_packed_attention(trainer.model, kernel)
    trainer.train()
    return _summary(
        timer,
        opts,
        ds,
        fm,
        live_reference=ref is not None,
        kernel=kernel,
        weights_checksum=checksum,
        losses=trainer.state.log_history,
        cache_load_s=cache_s,
    )


def _summary(timer, opts, ds, fm, live_reference: bool, **extra) -> dict:
    if len(timer.times) != opts.warmup + opts.steps:
        raise SystemExit(f"expected {opts.warmup + opts.steps} steps, timed {len(timer.times)}")
    seconds = sum(timer.times[opts.warmup :])
    timed = ds.select(range(opts.batch * opts.warmup, opts.batch * (opts.warmup + opts.steps)))
    lengths = []
    for p, c, r in zip(timed["prompt_ids"], timed["chosen_ids"], timed["rejected_ids"], strict=True):
        lengths += [len(p) + len(c), len(p) + len(r)]
    n_pairs = opts.batch * opts.steps
    flops = train_flops(fm, lengths, reference_forwards=1 if live_reference else 0)
    return {
        "pairs_per_s": n_pairs / seconds,
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["trl", "zephyr", "cache", "zephyr_precomputed"], help="internal")
    p.add_argument(
        "--steps", type=int, default=3, help="timed steps (--warmup untimed warm-up steps run first)"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--no-precomputed", action="store_true", help="skip the cache and zephyr_precomputed sides"
    )
    p.add_argument("--cache-dir", default=None, help="internal: where the cache side writes")
    add_training_options(p)
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = finish_training_options(p.parse_args())
    if opts.side:
        if opts.side == "trl":
            emit_side(side_trl(opts))
        else:
            emit_side(side_zephyr(opts, precomputed=opts.side == "zephyr_precomputed"))
        return
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found: {DATA}")
    args = [a for a in sys.argv[1:] if a != "--no-record"]
    trl = run_side(__file__, "trl", args)
    ours = run_side(__file__, "zephyr", args)
    results = {"trl": trl, "zephyr": ours}
    pre = built = None
    if not opts.no_precomputed:
        cache = ["--cache-dir", tempfile.mkdtemp(prefix="bench-dpo-cache-")]
        built = run_side(__file__, "cache", args + cache)
        pre = run_side(__file__, "zephyr_precomputed", args + cache)
        results.update(cache=built, precomputed=pre)

    def row(label, side):
        return (
            f"| {label} | {side['pairs_per_s']:.3f} | {side['tokens_per_s']:.0f} | {side['s_per_step']:.3f} | "
            f"{side['peak_mem_gb']:.2f} | {side['model_tflops_per_s']:.2f} | {fmt_mfu(side['mfu'])} |"
        )

    rows = [
        f"| side | pairs/s | real tokens/s | s/step | {mem_header(opts)} | model TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|",
        row(f"TRL 1.16 DPOTrainer ({trl['trl_settings']})", trl),
        row(
            f"zephyr dpo (padding-free + prefix sharing, ref model in memory, {ours['kernel']} kernel)", ours
        ),
    ]
    if pre:
        rows += [
            row("zephyr dpo, precomputed reference log-probs", pre),
            f"| (building that cache, {opts.batch * (opts.warmup + opts.steps)} pairs, separate process) | | "
            f"| {built['cache_s']:.1f} s total | {built['peak_mem_gb']:.2f} | | |",
        ]
    table = "\n".join(rows)
    kernel = ours["kernel"]
    kernel_note = " (prefix-shared batches run on flex)" if kernel == "flash_varlen" else ""
    settings = (
        f"model {model_label(opts)} ({trl['params'] / 1e6:.0f}M params), {precision_label(opts)} "
        f"({trl['device_name']}), batch {opts.batch} pairs, max_length {opts.max_length}, max_prompt_length "
        f"{opts.max_prompt_length}, gradient checkpointing {'on' if opts.gradient_checkpointing else 'off'}, "
        f"{opts.steps} timed steps after {opts.warmup} warm-up, attention kernel {kernel}{kernel_note} "
        f"(requested {opts.attention_kernel}), TRL: {trl['trl_settings']}, same initial weights: "
        f"{same_weights(*results.values())}, MFU peak: {trl['peak_source']}"
    )
    result = (
        f"RESULT speedup={ours['pairs_per_s'] / trl['pairs_per_s']:.2f} "
        + (f"speedup_precomputed={pre['pairs_per_s'] / trl['pairs_per_s']:.2f} " if pre else "")
        + f"peak_mem_ratio={ours['peak_mem_gb'] / trl['peak_mem_gb']:.2f}"
        + (f" peak_mem_ratio_precomputed={pre['peak_mem_gb'] / trl['peak_mem_gb']:.2f}" if pre else "")
    )
    for name, side in (("trl", trl), ("zephyr", ours), ("precomputed", pre)):
        if side and side["mfu"] is not None:
            result += f" mfu_{name}={side['mfu']:.3f}"
    print(settings, table, json.dumps(results), result, sep="\n")
    write_json_line(
        opts.json_out,
        {
            "bench": "dpo",
            "args": args,
            "settings": settings,
            "table": table,
            "sides": results,
            "result": result,
        },
    )
    if "--no-record" not in sys.argv:
        append_to_benchmarks(
            "DPO throughput vs TRL",
            "python bench/dpo_throughput.py " + " ".join(args),
            settings + "\n\n" + table,
            result,
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
