"""Does each preference method learn on real pairs? DPO, IPO, KTO, ORPO and SimPO from the embedded model.

Every method starts from the same model (the embedded SmolLM2-135M-Instruct by default) and trains one
epoch on the same first N pairs of ../shared/data/ultrafeedback/binarized_sample_train1000.jsonl, with the
same batch (KTO's batch holds both rows of each pair, so it takes the same optimizer steps over the same
pairs), max_length and max_prompt_length, each with its own command (`zephyr dpo`, `kto`, `orpo`,
`simpo`) in its own process, one after the other. Then every trained model scores all 200 pairs of
binarized_sample_eval200.jsonl (same truncation) and the table reports, with the standard error over
the pairs:

- the method's own held-out preference accuracy: the implicit reward beta * (log pi - log pi_ref) of
  chosen over rejected for the reference-based methods (DPO, IPO, KTO; reference = the starting model),
  and the length-normalised log-likelihood margin for the reference-free ones (ORPO, SimPO);
- the length-normalised log-likelihood accuracy (mean token log-prob of chosen above rejected) for every
  method and for the starting model (the baseline row), so all rows compare on one scale;
- the mean change of the summed chosen and rejected log-likelihoods from the starting model;
- the training wall time.

Hyperparameters (`METHODS`; `--lr`/`--beta` override them for every method):
- DPO sigmoid: beta 0.5, lr 1e-6, the alignment-handbook's SmolLM2 DPO recipe (recipes/smollm2/dpo/
  config_smol.yaml, which it also uses for the 135M model);
- IPO: beta (tau) 0.1, lr 1e-6: TRL's DPOConfig default beta and the same lr as DPO;
- KTO: beta 0.1, lr 1e-6, desirable/undesirable weights 1.0: TRL's KTOConfig defaults (balanced classes);
- ORPO: beta (lambda) 0.1, lr 1e-6: TRL's ORPOConfig defaults;
- SimPO: beta 2.0, gamma 0.5 (gamma/beta 0.25), cpo_alpha 0, lr 1e-6: the SimPO paper's beta and ratio,
  and the upper end of its learning rates.

    python bench/preference_quality.py                       # N=128, recorded in BENCHMARKS.md
    python bench/preference_quality.py --pairs 16 --eval-pairs 16 --no-record   # quick check

Ends with `RESULT dpo_acc=... dpo_acc_se=... baseline_ll_acc=... ...`; exits 1 when DPO's held-out
accuracy is not above the baseline by two standard errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, append_to_benchmarks

TRAIN = SHARED_DATA / "ultrafeedback" / "binarized_sample_train1000.jsonl"
EVAL = SHARED_DATA / "ultrafeedback" / "binarized_sample_eval200.jsonl"

# name -> (command, settings, uses a reference model)
METHODS = {
    "dpo": ("dpo", {"loss_type": "sigmoid", "beta": 0.5, "learning_rate": 1e-6}, True),
    "ipo": ("dpo", {"loss_type": "ipo", "beta": 0.1, "learning_rate": 1e-6}, True),
    "kto": ("kto", {"beta": 0.1, "learning_rate": 1e-6}, True),
    "orpo": ("orpo", {"beta": 0.1, "learning_rate": 1e-6}, False),
    "simpo": ("simpo", {"beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0, "learning_rate": 1e-6}, False),
}


def first_rows(src: Path, n: int, dest: Path) -> Path:
    with open(src, encoding="utf-8") as f, open(dest, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= n:
                break
            out.write(line)
    return dest


def train(method: str, opts, data: Path, out: Path) -> float:
    """Train one method in its own process; returns the wall time in seconds."""
    command, settings, _ = METHODS[method]
    settings = dict(settings)
    if opts.lr is not None:
        settings["learning_rate"] = opts.lr
    if opts.beta is not None:
        settings["beta"] = opts.beta
    batch = opts.batch * (2 if method == "kto" else 1)  # both rows of each pair, the same steps
    common = {
        "model_name_or_path": opts.model,
        "torch_dtype": "float32",
        "dataset_name": str(data),
        "max_length": opts.max_length,
        "max_prompt_length": opts.max_prompt_length,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": 1,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "use_cpu": True,
        "output_dir": str(out),
    }
    args = [f"--{k}={v}" for k, v in (common | settings).items()]
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "zephyr.cli", command, *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"`zephyr {command}` for {method} failed with exit code {proc.returncode}")
    return time.perf_counter() - start


def eval_pairs(tokenizer, opts):
    from zephyr.data import load_rows
    from zephyr.train.dpo_data import tokenize_preferences

    # A pair whose two replies are the same text cannot be ranked either way: skipped and counted.
    rows = load_rows(str(EVAL), "preference", on_error="skip").dataset
    rows = rows.select(range(min(opts.eval_pairs, len(rows))))
    ds, _, _ = tokenize_preferences(rows, tokenizer, opts.max_length, opts.max_prompt_length, on_error="skip")
    return ds


def score(model_dir: str, ds, opts):
    import torch

    from zephyr.evaluate.prefs import score_pairs
    from zephyr.models import ModelArguments, load_model

    model = load_model(model_dir, ModelArguments(torch_dtype="float32"))
    with torch.inference_mode():
        return score_pairs(model, ds, batch_size=opts.eval_batch, desc=f"scoring {Path(model_dir).name}")


def accuracy(wins) -> tuple[float, float]:
    p = wins.float().mean().item()
    return p, math.sqrt(p * (1 - p) / wins.numel())


def row_metrics(scores, start, beta: float | None) -> dict:
    per_token = scores.logps / scores.lengths.clamp_min(1)
    ll_acc, ll_se = accuracy(per_token[0::2] > per_token[1::2])
    out = {"ll_acc": ll_acc, "ll_se": ll_se}
    if start is not None:
        if beta is not None:  # reference-based: the implicit reward against the starting model
            wins = beta * (scores.chosen - start.chosen) > beta * (scores.rejected - start.rejected)
            out["acc"], out["acc_se"] = accuracy(wins)
        else:
            out["acc"], out["acc_se"] = ll_acc, ll_se
        out["d_chosen"] = (scores.chosen - start.chosen).mean().item()
        out["d_rejected"] = (scores.rejected - start.rejected).mean().item()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=128, help="training pairs (the first N of the sample)")
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-prompt-length", type=int, default=96)
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS)
    )
    parser.add_argument("--lr", type=float, default=None, help="one learning rate for every method")
    parser.add_argument("--beta", type=float, default=None, help="one beta for every method")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-record", action="store_true")
    opts = parser.parse_args(argv)
    if not TRAIN.exists() or not EVAL.exists():
        raise SystemExit(f"benchmark data not found under {TRAIN.parent}")
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    import torch

    from zephyr.models import load_tokenizer, resolve_model

    torch.set_num_threads(opts.threads)
    start_dir = resolve_model(opts.model)
    tokenizer = load_tokenizer(start_dir)
    ds = eval_pairs(tokenizer, opts)
    load_at_start = os.getloadavg()[0]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pref-quality-") as tmp:
        data = first_rows(TRAIN, opts.pairs, Path(tmp) / "train.jsonl")
        walls = {}
        for method in methods:
            walls[method] = train(method, opts, data, Path(tmp) / method)
            print(f"{method}: trained in {walls[method]:.0f} s", flush=True)
        start = score(start_dir, ds, opts)
        results["start"] = row_metrics(start, None, None)
        for method in methods:
            _, settings, uses_ref = METHODS[method]
            beta = opts.beta if opts.beta is not None else settings["beta"]
            scores = score(str(Path(tmp) / method), ds, opts)
            results[method] = row_metrics(scores, start, beta if uses_ref else None) | {
                "wall_s": walls[method]
            }

    def cell(value, se=None, digits=3):
        return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")

    lines = [
        "| method | held-out preference accuracy (own measure) | log-likelihood accuracy (per token) | "
        "mean Δ log p(chosen) | mean Δ log p(rejected) | train wall s |",
        "|---|---|---|---|---|---|",
        f"| starting model (baseline) | | {cell(results['start']['ll_acc'], results['start']['ll_se'])} | | | |",
    ]
    for method in methods:
        r = results[method]
        measure = "implicit reward" if METHODS[method][2] else "length-normalised log-likelihood"
        lines.append(
            f"| {method} | {cell(r['acc'], r['acc_se'])} ({measure}) | {cell(r['ll_acc'], r['ll_se'])} | "
            f"{r['d_chosen']:+.2f} | {r['d_rejected']:+.2f} | {r['wall_s']:.0f} |"
        )
    table = "\n".join(lines)
    base = results["start"]["ll_acc"]
    result = "RESULT " + " ".join(
        [f"baseline_ll_acc={base:.3f}"]
        + [f"{m}_acc={results[m]['acc']:.3f} {m}_acc_se={results[m]['acc_se']:.3f}" for m in methods]
    )
    ok = "dpo" not in results or results["dpo"]["acc"] - 2 * results["dpo"]["acc_se"] > base
    print("\n" + table + "\n")
    print(json.dumps(results, indent=1))
    if not opts.no_record:
        command = shlex.join(
            ["python", "bench/preference_quality.py", *(argv if argv is not None else sys.argv[1:])]
        )
        steps = -(-opts.pairs // opts.batch)
        notes = (
            f"`{opts.model}`, fp32 CPU, {opts.pairs} training pairs (the first of the sample), one epoch, "
            f"{opts.batch} pairs per step ({steps} steps; KTO: both rows of each pair, {2 * opts.batch} rows per "
            f"step), cosine schedule with 10% warm-up, max_length {opts.max_length}, max_prompt_length "
            f"{opts.max_prompt_length}; evaluated on {len(ds)} held-out pairs with the same truncation. "
            "Hyperparameters as in the script's docstring"
            + (f" (overridden: lr {opts.lr}, beta {opts.beta})" if opts.lr or opts.beta else "")
            + ". ± is one standard error over the pairs. Each method trained in its own process, one after the "
            f"other; load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. DPO "
            f"floor (accuracy above the baseline by two standard errors): {'met' if ok else 'MISSED'}."
        )
        append_to_benchmarks(
            "Preference methods on real pairs: held-out accuracy", command, table + "\n\n" + notes, result
        )
    print(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
