"""SFT throughput and peak memory: `zephyr sft`'s trainer against TRL's SFTTrainer, same run.

Both sides train the same model (same weights) on the same tokenized conversations (prompt + chosen
answer of the UltraFeedback sample in ../shared/data), with the same batch size, max length, device,
dtype, optimizer and gradient-checkpointing setting, for the same number of steps, each side in its own
process. The first `--warmup` steps (default 1) are not timed.

- zephyr: padding-free packed rows through the packed-attention kernel of `--attention-kernel` (auto:
  FlashAttention varlen on CUDA where flash_attn is installed, else flex on CUDA, the per-block SDPA
  loop elsewhere; see zephyr.train.attention.choose_kernel);
- trl: TRL's SFTTrainer, defaults otherwise. `--trl-padding-free auto` (the default) runs TRL's fastest
  supported layout: padding-free + FlashAttention 2 on CUDA where flash_attn is installed (TRL documents
  padding-free as supported with FlashAttention only), else padded to the longest in the batch with SDPA.
  `on` forces padding-free with SDPA (transformers then builds a dense block-diagonal mask from the
  position ids), `off` forces padding. The TRL settings that ran are printed and recorded.

Measured per side: real (non-pad) tokens trained per second over the timed steps, peak memory (peak RSS
on CPU; torch.cuda.max_memory_allocated on CUDA), and model FLOP/s and MFU, FLOPs counted from real tokens
only as bench/common.py's `train_flops` says (6 * N * tokens + 6 * layers * attn_dim * sum(len_i^2)).

    python bench/sft_throughput.py                 # SmolLM2-135M, fp32, CPU, batch 4, max_length 1024
    python bench/sft_throughput.py --steps 2 --model /path/to/tiny   # quick check
    python bench/sft_throughput.py --gpu --model-config llama-1b --batch 8 --steps 10 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    SHARED_DATA,
    add_training_options,
    append_to_benchmarks,
    bench_model,
    cuda_sync,
    emit_side,
    finish_training_options,
    flash_attn_available,
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

DATA = SHARED_DATA / "ultrafeedback" / "binarized_sample_train1000.jsonl"


def conversations(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]
        for r in rows
    ]


def tokenized(tokenizer_name: str, n: int, max_length: int):
    from zephyr.chat import tokenize_conversation
    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    examples = []
    for messages in conversations(n):
        tok = tokenize_conversation(tokenizer, messages)
        examples.append(
            {"input_ids": tok.input_ids[:max_length], "assistant_mask": tok.assistant_mask[:max_length]}
        )
    return tokenizer, examples


class StepTimer:
    """A TrainerCallback recording wall time per optimizer step (the GPU's queue drained at both ends)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                cuda_sync()
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                cuda_sync()
                timer.times.append(time.perf_counter() - timer.t0)

        self.times: list[float] = []
        self.callback = _Callback()


def training_args(cls, opts, out, **extra):
    return cls(
        output_dir=out,
        per_device_train_batch_size=opts.batch,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        gradient_checkpointing=opts.gradient_checkpointing,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        seed=opts.seed,
        dataloader_drop_last=True,
        train_sampling_strategy="sequential",
        **precision_args(opts),
        **extra,
    )


def trl_padding_free(opts) -> bool:
    if opts.trl_padding_free == "auto":
        return opts.device == "cuda" and flash_attn_available()
    return opts.trl_padding_free == "on"


def side_trl(opts) -> dict:
    import trl
    from datasets import Dataset

    start_side(opts)
    tokenizer, examples = tokenized(tokenizer_spec(opts), opts.rows, opts.max_length)
    ds = Dataset.from_list(
        [{"input_ids": e["input_ids"], "assistant_masks": e["assistant_mask"]} for e in examples]
    )
    attn = trl_attention(opts)
    padding_free = trl_padding_free(opts)
    model = bench_model(opts, attn_implementation=attn)
    checksum, fm = weights_checksum(model), flop_model(model)
    # Padding-free TRL refuses a max_length without packing; our conversations are already cut to it.
    config = training_args(
        trl.SFTConfig,
        opts,
        "/tmp/bench-sft-trl",
        max_length=None if padding_free else opts.max_length,
        padding_free=padding_free,
    )
    timer = StepTimer()
    trainer = trl.SFTTrainer(
        model=model, args=config, train_dataset=ds, processing_class=tokenizer, callbacks=[timer.callback]
    )
    trainer.train()
    layout = "padding-free" if padding_free else "padded to the batch's longest"
    settings = f"{layout}, attn_implementation={attn}"
    if padding_free and attn == "sdpa":
        settings += " (dense block-diagonal mask from position_ids)"
    return _summary(timer, examples, opts, fm, trl_settings=settings, weights_checksum=checksum)


def side_zephyr(opts) -> dict:
    from datasets import Dataset

    from zephyr.train.attention import choose_kernel, use_packed_attention
    from zephyr.train.collate import PackedCollator
    from zephyr.train.config import SFTConfig
    from zephyr.train.trainer import SFTTrainer

    start_side(opts)
    kernel = choose_kernel(opts.attention_kernel, opts.device)
    tokenizer, examples = tokenized(tokenizer_spec(opts), opts.rows, opts.max_length)
    ds = Dataset.from_list(examples)
    model = bench_model(opts)
    checksum, fm = weights_checksum(model), flop_model(model)
    config = training_args(
        SFTConfig,
        opts,
        "/tmp/bench-sft-zephyr",
        max_length=opts.max_length,
        attention_kernel=opts.attention_kernel,
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        data_collator=PackedCollator(),
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    use_packed_attention(trainer.model, kernel)
    trainer.train()
    return _summary(timer, examples, opts, fm, kernel=kernel, weights_checksum=checksum)


def _summary(timer: StepTimer, examples, opts, fm, **extra) -> dict:
    # Sequential sampling on both sides: both train on the same conversations in the same order.
    if len(timer.times) != opts.warmup + opts.steps:
        raise SystemExit(f"expected {opts.warmup + opts.steps} steps, timed {len(timer.times)}")
    timed = range(opts.batch * opts.warmup, opts.batch * (opts.warmup + opts.steps))
    lengths = [len(examples[i]["input_ids"]) for i in timed]
    real_tokens = sum(lengths)
    seconds = sum(timer.times[opts.warmup :])
    return {
        "tokens": real_tokens,
        "seconds": seconds,
        "tokens_per_s": real_tokens / seconds,
        "s_per_step": seconds / opts.steps,
        "median_s_per_step": statistics.median(timer.times[opts.warmup :]),
        "step_times": timer.times,
        "params": fm.total_params,
        "flops_params": fm.matmul_params,
        **side_common(opts, train_flops(fm, lengths), seconds),
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["trl", "zephyr"], help="internal: run one side")
    p.add_argument(
        "--steps", type=int, default=4, help="timed steps (--warmup untimed warm-up steps run first)"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--trl-padding-free",
        choices=["auto", "on", "off"],
        default="auto",
        help="TRL's layout; auto: padding-free + FlashAttention 2 on CUDA with flash_attn, else padded",
    )
    p.add_argument("--sides", default="trl,zephyr", help="which sides to run (comma-separated: trl, zephyr)")
    add_training_options(p)
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = finish_training_options(p.parse_args())
    if opts.rows < opts.batch * (opts.warmup + opts.steps):
        raise SystemExit(
            f"--rows must be at least batch * (warmup + steps) = {opts.batch * (opts.warmup + opts.steps)}"
        )
    if opts.side:
        emit_side(side_trl(opts) if opts.side == "trl" else side_zephyr(opts))
        return
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found: {DATA}")
    sides = [s.strip() for s in opts.sides.split(",") if s.strip()]
    if not sides or set(sides) - {"trl", "zephyr"}:
        raise SystemExit(f"--sides takes trl and/or zephyr; got {opts.sides!r}")
    args = [a for a in sys.argv[1:] if a != "--no-record"]
    results = {side: run_side(__file__, side, args) for side in sides}
    trl, ours = results.get("trl"), results.get("zephyr")
    any_side = trl or ours
    rows = [
        f"| side | real tokens/s | s/step | {mem_header(opts)} | model TFLOP/s | MFU |",
        "|---|---|---|---|---|---|",
    ]
    if trl:
        rows.append(
            f"| TRL 1.16 SFTTrainer ({trl['trl_settings']}) | {trl['tokens_per_s']:.1f} | {trl['s_per_step']:.3f} "
            f"| {trl['peak_mem_gb']:.2f} | {trl['model_tflops_per_s']:.2f} | {fmt_mfu(trl['mfu'])} |"
        )
    if ours:
        rows.append(
            f"| zephyr sft (padding-free, {ours['kernel']} kernel) | {ours['tokens_per_s']:.1f} | "
            f"{ours['s_per_step']:.3f} | {ours['peak_mem_gb']:.2f} | {ours['model_tflops_per_s']:.2f} | "
            f"{fmt_mfu(ours['mfu'])} |"
        )
    table = "\n".join(rows)
    kernel = (
        f"attention kernel {ours['kernel']} (requested {opts.attention_kernel})" if ours else "zephyr not run"
    )
    settings = (
        f"model {model_label(opts)} ({any_side['params'] / 1e6:.0f}M params), {precision_label(opts)} "
        f"({any_side['device_name']}), batch {opts.batch}, max_length {opts.max_length}, gradient "
        f"checkpointing {'on' if opts.gradient_checkpointing else 'off'}, {opts.steps} timed steps after "
        f"{opts.warmup} warm-up, {kernel}, TRL: {trl['trl_settings'] if trl else 'not run'}, "
        f"same initial weights: {same_weights(*results.values())}, MFU peak: {any_side['peak_source']}"
    )
    if trl and ours:
        result = (
            f"RESULT speedup={ours['tokens_per_s'] / trl['tokens_per_s']:.2f} "
            f"peak_mem_ratio={ours['peak_mem_gb'] / trl['peak_mem_gb']:.2f}"
        )
    else:
        only = trl or ours
        result = f"RESULT {sides[0]}_tokens_per_s={only['tokens_per_s']:.1f}"
    for name, side in (("trl", trl), ("zephyr", ours)):
        if side and side["mfu"] is not None:
            result += f" mfu_{name}={side['mfu']:.3f}"
    print(settings, table, json.dumps(results), result, sep="\n")
    write_json_line(
        opts.json_out,
        {
            "bench": "sft",
            "args": args,
            "settings": settings,
            "table": table,
            "sides": results,
            "result": result,
        },
    )
    if not opts.no_record:
        append_to_benchmarks(
            "SFT throughput vs TRL",
            "python bench/sft_throughput.py " + " ".join(args),
            settings + "\n\n" + table,
            result,
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
