"""SFT throughput and peak memory: `zephyr sft`'s trainer against TRL's SFTTrainer, same run.

Both sides train the same model on the same tokenized conversations (prompt + chosen answer of the
UltraFeedback sample in ../shared/data), with the same batch size, max length, dtype, optimizer and
gradient-checkpointing setting, for the same number of steps, each side in its own process. TRL
keeps its defaults otherwise (no packing, padding to the longest in the batch). We count real
(non-pad) tokens per second over the timed steps; the first step is a warm-up and is not timed.

    python bench/sft_throughput.py                 # SmolLM2-135M, fp32, CPU, batch 4, max_length 1024
    python bench/sft_throughput.py --steps 2 --model /path/to/tiny   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, append_to_benchmarks, emit_side, peak_rss_gb, run_side

DATA = SHARED_DATA / "ultrafeedback" / "binarized_sample_train1000.jsonl"


def conversations(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]
        for r in rows
    ]


def tokenized(model: str, n: int, max_length: int):
    from zephyr.chat import tokenize_conversation
    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    examples = []
    for messages in conversations(n):
        tok = tokenize_conversation(tokenizer, messages)
        examples.append(
            {"input_ids": tok.input_ids[:max_length], "assistant_mask": tok.assistant_mask[:max_length]}
        )
    return tokenizer, examples


class StepTimer:
    """A TrainerCallback recording wall time per optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer.t0)

        self.times: list[float] = []
        self.callback = _Callback()


def training_args(cls, opts, out, **extra):
    return cls(
        output_dir=out,
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps + 1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        gradient_checkpointing=opts.gradient_checkpointing,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=not opts.gpu,
        bf16=opts.gpu,
        seed=42,
        dataloader_drop_last=True,
        train_sampling_strategy="sequential",
        **extra,
    )


def side_trl(opts) -> dict:
    import trl
    from datasets import Dataset

    from zephyr.models import ModelArguments, load_model

    tokenizer, examples = tokenized(opts.model, opts.rows, opts.max_length)
    ds = Dataset.from_list(
        [{"input_ids": e["input_ids"], "assistant_masks": e["assistant_mask"]} for e in examples]
    )
    model = load_model(
        opts.model, ModelArguments(torch_dtype="bf16" if opts.gpu else "fp32"), for_training=True
    )
    config = training_args(trl.SFTConfig, opts, "/tmp/bench-sft-trl", max_length=opts.max_length)
    timer = StepTimer()
    trainer = trl.SFTTrainer(
        model=model, args=config, train_dataset=ds, processing_class=tokenizer, callbacks=[timer.callback]
    )
    trainer.train()
    return _summary(timer, examples, opts)


def side_zephyr(opts) -> dict:
    from datasets import Dataset

    from zephyr.models import ModelArguments, load_model
    from zephyr.train.attention import use_packed_attention
    from zephyr.train.collate import PackedCollator
    from zephyr.train.config import SFTConfig
    from zephyr.train.trainer import SFTTrainer

    tokenizer, examples = tokenized(opts.model, opts.rows, opts.max_length)
    ds = Dataset.from_list(examples)
    model = load_model(
        opts.model, ModelArguments(torch_dtype="bf16" if opts.gpu else "fp32"), for_training=True
    )
    config = training_args(SFTConfig, opts, "/tmp/bench-sft-zephyr", max_length=opts.max_length)
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        data_collator=PackedCollator(),
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    use_packed_attention(trainer.model)
    trainer.train()
    return _summary(timer, examples, opts)


def _summary(timer: StepTimer, examples, opts) -> dict:
    # Sequential sampling on both sides: both train on the same conversations in the same order.
    timed = list(range(opts.batch, opts.batch * (opts.steps + 1)))
    real_tokens = sum(len(examples[i]["input_ids"]) for i in timed)
    seconds = sum(timer.times[1:])
    return {
        "tokens": real_tokens,
        "seconds": seconds,
        "tokens_per_s": real_tokens / seconds,
        "s_per_step": seconds / opts.steps,
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["trl", "zephyr"], help="internal: run one side")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument(
        "--steps", type=int, default=4, help="timed steps (one more untimed warm-up step runs first)"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--gpu", action="store_true", help="bf16 on CUDA instead of fp32 on CPU")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = p.parse_args()
    if opts.side:
        emit_side(side_trl(opts) if opts.side == "trl" else side_zephyr(opts))
        return
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found: {DATA}")
    args = sys.argv[1:]
    trl = run_side(__file__, "trl", args)
    ours = run_side(__file__, "zephyr", args)
    speedup = ours["tokens_per_s"] / trl["tokens_per_s"]
    mem_ratio = ours["peak_rss_gb"] / trl["peak_rss_gb"]
    table = "\n".join(
        [
            "| side | real tokens/s | s/step | peak RSS (GB) |",
            "|---|---|---|---|",
            f"| TRL 1.16 SFTTrainer (padded) | {trl['tokens_per_s']:.1f} | {trl['s_per_step']:.1f} | {trl['peak_rss_gb']:.2f} |",
            f"| zephyr sft (padding-free) | {ours['tokens_per_s']:.1f} | {ours['s_per_step']:.1f} | {ours['peak_rss_gb']:.2f} |",
        ]
    )
    settings = (
        f"model {opts.model}, {'bf16 GPU' if opts.gpu else 'fp32 CPU'}, batch {opts.batch}, max_length "
        f"{opts.max_length}, gradient checkpointing {'on' if opts.gradient_checkpointing else 'off'}, "
        f"{opts.steps} timed steps after 1 warm-up"
    )
    result = f"RESULT speedup={speedup:.2f} peak_mem_ratio={mem_ratio:.2f}"
    print(settings)
    print(table)
    print(result)
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
