"""DPO throughput and peak memory: `zephyr dpo`'s trainer against TRL 1.16's DPOTrainer, same run.

Both sides train the same policy (reference = a frozen copy of it) on the same pre-tokenized pairs
of the UltraFeedback sample in ../shared/data, cut with the handbook limits (prompt <= 512 tokens
from the left, prompt + completion <= 1024), with the same batch size, dtype, optimizer and
gradient-checkpointing setting, for the same number of steps, in sequential order, each side in
its own process. TRL keeps its defaults otherwise (pairs padded to the batch maximum, reference
model in memory). Sides:

- trl: TRL's DPOTrainer;
- zephyr: our defaults (padding-free, prefix sharing, live reference model);
- cache: builds our precomputed reference log-probs for the rows the next side trains on (timed
  and reported separately);
- zephyr_precomputed: training with those cached log-probs; the reference is never loaded.

The first step of each training side is a warm-up and is not timed.

    python bench/dpo_throughput.py                                 # SmolLM2-135M, fp32, CPU, batch 4
    python bench/dpo_throughput.py --model /path/to/tiny --steps 1  # quick check
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, append_to_benchmarks, emit_side, peak_rss_gb, run_side
from sft_throughput import StepTimer

DATA = SHARED_DATA / "ultrafeedback" / "binarized_sample_train1000.jsonl"


def pairs(opts):
    """The first (steps + 1) * batch usable pairs of the sample, tokenized with the handbook limits."""
    from zephyr.data import load_rows
    from zephyr.models import load_tokenizer
    from zephyr.train.dpo_data import tokenize_preferences

    tokenizer = load_tokenizer(opts.model)
    rows = load_rows(str(DATA), "preference", on_error="skip").dataset
    rows = rows.select(range(min(len(rows), 4 * opts.batch * (opts.steps + 1))))
    ds, _, _ = tokenize_preferences(rows, tokenizer, opts.max_length, opts.max_prompt_length, on_error="skip")
    return tokenizer, ds.select(range(opts.batch * (opts.steps + 1))).remove_columns(["row"])


def _args(cls, opts, **extra):
    return cls(
        output_dir=tempfile.mkdtemp(prefix="bench-dpo-"),
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps + 1,
        learning_rate=5e-7,
        lr_scheduler_type="constant",
        beta=0.1,
        gradient_checkpointing=opts.gradient_checkpointing,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=not opts.gpu,
        bf16=opts.gpu,
        seed=42,
        train_sampling_strategy="sequential",
        **extra,
    )


def _policy(opts):
    from zephyr.models import ModelArguments, load_model

    return load_model(
        opts.model, ModelArguments(torch_dtype="bf16" if opts.gpu else "fp32"), for_training=True
    )


def side_trl(opts) -> dict:
    import trl

    tokenizer, ds = pairs(opts)
    model = _policy(opts)
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
    return _summary(timer, opts, losses=trainer.state.log_history)


def side_zephyr(opts, precomputed: bool = False) -> dict:
    from zephyr.train.attention import use_packed_attention
    from zephyr.train.collate import PairCollator
    from zephyr.train.config import DPOConfig
    from zephyr.train.reference import precompute_reference_logps
    from zephyr.train.trainer import DPOTrainer

    tokenizer, ds = pairs(opts)
    model = _policy(opts)
    args = _args(
        DPOConfig,
        opts,
        max_length=opts.max_length,
        max_prompt_length=opts.max_prompt_length,
        precompute_ref_log_probs=precomputed,
    )
    collator = PairCollator("shared")
    ref = None
    cache_s = None
    if precomputed or opts.side == "cache":
        from accelerate import PartialState

        t0 = time.perf_counter()
        ds = precompute_reference_logps(
            ds, model, collator, opts.batch, PartialState(), "train", opts.cache_dir
        )
        cache_s = time.perf_counter() - t0
        if opts.side == "cache":
            return {"cache_s": cache_s, "peak_rss_gb": peak_rss_gb()}
    else:
        ref = copy.deepcopy(model).eval()
        use_packed_attention(ref)
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
    use_packed_attention(trainer.model)
    trainer.train()
    return _summary(timer, opts, losses=trainer.state.log_history, cache_load_s=cache_s)


def _summary(timer, opts, **extra) -> dict:
    seconds = sum(timer.times[1:])
    n_pairs = opts.batch * opts.steps
    return {
        "pairs_per_s": n_pairs / seconds,
        "s_per_step": seconds / opts.steps,
        "peak_rss_gb": peak_rss_gb(),
        "step_times": timer.times,
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["trl", "zephyr", "cache", "zephyr_precomputed"], help="internal")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument(
        "--steps", type=int, default=3, help="timed steps (one more untimed warm-up step runs first)"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--gpu", action="store_true", help="bf16 on CUDA instead of fp32 on CPU")
    p.add_argument("--cache-dir", default=None, help="internal: where the cache side writes")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = p.parse_args()
    if opts.side:
        if opts.side == "trl":
            emit_side(side_trl(opts))
        else:
            emit_side(side_zephyr(opts, precomputed=opts.side == "zephyr_precomputed"))
        return
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found: {DATA}")
    args = [a for a in sys.argv[1:] if a != "--no-record"]
    cache = ["--cache-dir", tempfile.mkdtemp(prefix="bench-dpo-cache-")]
    trl = run_side(__file__, "trl", args)
    ours = run_side(__file__, "zephyr", args)
    built = run_side(__file__, "cache", args + cache)
    pre = run_side(__file__, "zephyr_precomputed", args + cache)
    speedup = ours["pairs_per_s"] / trl["pairs_per_s"]
    speedup_pre = pre["pairs_per_s"] / trl["pairs_per_s"]
    mem = ours["peak_rss_gb"] / trl["peak_rss_gb"]
    mem_pre = pre["peak_rss_gb"] / trl["peak_rss_gb"]
    table = "\n".join(
        [
            "| side | pairs/s | s/step | peak RSS (GB) |",
            "|---|---|---|---|",
            f"| TRL 1.16 DPOTrainer (padded, ref model in memory) | {trl['pairs_per_s']:.3f} | {trl['s_per_step']:.1f} | {trl['peak_rss_gb']:.2f} |",
            f"| zephyr dpo (padding-free + prefix sharing, ref model in memory) | {ours['pairs_per_s']:.3f} | {ours['s_per_step']:.1f} | {ours['peak_rss_gb']:.2f} |",
            f"| zephyr dpo, precomputed reference log-probs | {pre['pairs_per_s']:.3f} | {pre['s_per_step']:.1f} | {pre['peak_rss_gb']:.2f} |",
            f"| (building that cache, {opts.batch * (opts.steps + 1)} pairs, separate process) | | {built['cache_s']:.1f} s total | {built['peak_rss_gb']:.2f} |",
        ]
    )
    settings = (
        f"model {opts.model}, {'bf16 GPU' if opts.gpu else 'fp32 CPU'}, batch {opts.batch} pairs, max_length "
        f"{opts.max_length}, max_prompt_length {opts.max_prompt_length}, gradient checkpointing "
        f"{'on' if opts.gradient_checkpointing else 'off'}, {opts.steps} timed steps after 1 warm-up"
    )
    result = (
        f"RESULT speedup={speedup:.2f} speedup_precomputed={speedup_pre:.2f} peak_mem_ratio={mem:.2f} "
        f"peak_mem_ratio_precomputed={mem_pre:.2f}"
    )
    print(settings, table, json.dumps({"trl": trl, "zephyr": ours, "precomputed": pre}), result, sep="\n")
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
