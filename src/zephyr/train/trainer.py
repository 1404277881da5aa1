"""The training loop: transformers.Trainer, with our loss, our batch layouts and extra metrics.

Trainer keeps checkpointing, schedulers, mixed precision, distributed launch and logging; we
override only how a batch becomes a loss (``batch_loss``), how eval computes it, how extra
metrics are averaged into the logs, how a checkpoint reaches the disk (whole or not at all, see
``zephyr.train.checkpoints``) and that a run resumed at its last step trains no further.
SFT, DPO, KTO and the reference-free preference methods share this class and differ in ``batch_loss``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import SaveStrategy, rotate_checkpoints

from zephyr.io import write_atomic
from zephyr.train.checkpoints import PREFIX, pause_point, staged_checkpoint
from zephyr.train.logps import sequence_logps, sft_loss_sum
from zephyr.train.losses import (
    PairLogps,
    UnpairedLogps,
    mixed_loss,
    pair_metrics,
    reference_free_loss,
    token_metrics,
    unpaired_loss,
)

log = logging.getLogger(__name__)


class ZephyrTrainer(Trainer):
    """Base trainer. Subclasses implement ``batch_loss(model, batch) -> (summed loss, item count, metrics)``."""

    # We normalise by the number of loss items over the whole accumulated step ourselves.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def _run_epoch(self, *args, **kwargs):
        # Trainer would take one more optimizer step from a checkpoint saved at max_steps (it tests the
        # limit only after a step), changing a finished model; a resumed finished run trains nothing.
        if self.state.global_step >= self.state.max_steps > 0:
            log.info(
                "Step %d of %d is already done; nothing left to train",
                self.state.global_step,
                self.state.max_steps,
            )
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint save, built in a staging dir and renamed to ``checkpoint-N`` when complete;
        then Trainer's pushing and rotation, which therefore only ever see complete checkpoints."""
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX}-{self.state.global_step}"
        with staged_checkpoint(self, final) as staging:
            self._write_checkpoint(str(staging), run_dir, final)
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(final))
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _write_checkpoint(self, out: str, run_dir: Path, final: Path) -> None:
        """Everything Trainer._save_checkpoint writes, into ``out``, in its order."""
        self.save_model(out, _internal_call=True)
        saves = self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
        if saves and self.state.best_global_step:
            best = run_dir / f"{PREFIX}-{self.state.best_global_step}"
            if best == final or best.exists():  # this checkpoint is the best one, or an earlier one is
                self.state.best_model_checkpoint = str(best)
        if self.args.should_save:
            pause_point("checkpoint", self.state.global_step)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(out)
            self._save_scaler(out)
            self._save_rng_state(out)
        if self.args.should_save:
            for cb in [
                c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)
            ]:
                name, cb_state = cb.__class__.__name__, cb.state()
                if isinstance(self.state.stateful_callbacks[name], list):
                    self.state.stateful_callbacks[name].append(cb_state)
                else:
                    self.state.stateful_callbacks[name] = cb_state
            self.state.save_to_json(str(Path(out) / "trainer_state.json"))

    def batch_loss(self, model, batch: dict) -> tuple[torch.Tensor, int, dict[str, float]]:
        raise NotImplementedError

    _total_train_tokens = 0  # TRL's `num_tokens`: the real tokens of every training batch so far

    def _sum_over_processes(self, t: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return t
        return self.accelerator.reduce(t, reduction="sum")

    def _record(self, mode: str, metrics: dict[str, float], training: bool) -> None:
        """Keep a batch's metrics for the next log; a batch's `num_tokens` (its real tokens, as TRL counts
        them) is added to the running total over processes, which is what is logged, as TRL does."""
        tokens = metrics.pop("num_tokens", None)
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        if tokens is not None:
            if training:
                counted = self._sum_over_processes(torch.tensor(float(tokens), device=self.args.device))
                self._total_train_tokens += int(counted.item())
            self._metrics[mode]["num_tokens"] = [float(self._total_train_tokens)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        total, count, metrics = self.batch_loss(model, inputs)
        mode = "train" if model.training else "eval"
        self._record(mode, metrics, model.training)
        if num_items_in_batch is not None and model.training:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # num_items_in_batch counts every process's items; DDP then averages gradients over processes.
                loss = loss * self.accelerator.num_processes
        else:
            loss = total / max(count, 1)
            if model.training:
                loss = loss / self.current_gradient_accumulation_steps
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            total, count, metrics = self.batch_loss(model, inputs)
        self._record("eval", metrics, training=False)
        return (total / max(count, 1)).detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Average the metrics gathered since the last log into it (eval ones with the eval_ prefix)."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._metrics[mode].items():
            if values:
                mean = torch.tensor(values, device=self.args.device).mean()
                logs[prefix + name] = self.accelerator.gather_for_metrics(mean.reshape(1)).mean().item()
        self._metrics[mode].clear()
        super().log(logs, start_time)


class SFTTrainer(ZephyrTrainer):
    """Distilled SFT: next-token loss on the trained (assistant) tokens only."""

    def batch_loss(self, model, batch):
        total, count = sft_loss_sum(model, batch)
        return total, count, {"num_tokens_trained": float(count)}


def write_model_card(
    output_dir: str | Path, title: str, recipe: dict, metrics: dict, base_model: str
) -> Path:
    """A README.md with the base model, the full effective recipe and the final metrics."""
    import yaml

    path = Path(output_dir) / "README.md"
    shown = {k: v for k, v in recipe.items() if v not in (None, [], {})}
    lines = [
        "---",
        yaml.safe_dump(
            {"base_model": base_model, "library_name": "transformers", "tags": ["zephyr", title]}
        ).strip(),
        "---",
        f"# {Path(output_dir).name}",
        "",
        f"Trained with `zephyr {title}` from `{base_model}`. Loads with `AutoModelForCausalLM.from_pretrained` and",
        "`AutoTokenizer.from_pretrained`; the chat template is in the tokenizer.",
        "",
        "## Final metrics",
        "",
        "```json",
        json.dumps(metrics, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(shown, sort_keys=True, default_flow_style=False).strip(),
        "```",
        "",
    ]
    write_atomic(path, "\n".join(lines))
    return path


class ReferenceTrainer(ZephyrTrainer):
    """What DPO and KTO share: reference log-probs for every scored sequence of a batch (see PairCollator).

    They come from the batch when precomputed, else from ``ref_model`` or, with LoRA and no ``ref_model``,
    from the policy with its adapters disabled.
    """

    def __init__(self, *args, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            self.ref_model = ref_model.to(self.args.device)

    def reference_logps(self, model, batch, ld_alpha: float | None = None) -> torch.Tensor:
        if "ref_logps" in batch:  # precomputed, with the same ld_alpha (it is part of the cache key)
            return batch["ref_logps"]
        from zephyr.train.reference import reference_mode

        with torch.no_grad(), reference_mode(model, self.ref_model) as ref:
            return sequence_logps(ref, batch, ld_alpha)["logps"]


def batch_tokens(batch: dict, rows: slice = slice(None)) -> dict[str, float]:
    """The real tokens (prompt + completion) of the sequences ``rows`` picks, as TRL's padded layout counts
    them (each pair's prompt twice, whatever our layout ran), for `num_tokens`."""
    if "sequence_tokens" not in batch:
        return {}
    return {"num_tokens": float(batch["sequence_tokens"][rows].sum())}


class DPOTrainer(ReferenceTrainer):
    """Direct preference optimisation on pair batches (see PairCollator)."""

    def reference_logps(self, model, batch, ld_alpha: float | None = None) -> torch.Tensor:
        return super().reference_logps(model, batch, self.args.ld_alpha)

    def batch_loss(self, model, batch):
        args = self.args
        policy = sequence_logps(model, batch, args.ld_alpha, token_stats=True)
        scores = PairLogps.from_scores(policy, self.reference_logps(model, batch))
        losses = mixed_loss(scores, args.loss_type, args.loss_settings(), args.loss_weights)
        metrics = pair_metrics(scores, args.beta, policy["logit_sums"]) | token_metrics(policy, pairs=True)
        return losses.sum(), losses.numel(), metrics | batch_tokens(batch)


class ReferenceFreeTrainer(ZephyrTrainer):
    """ORPO and CPO/SimPO on pair batches collated with ``score_context``: the loss reads the policy's own
    log-probs from its one forward per batch; there is no reference model to load, copy or run.
    ``args.METHOD`` picks the loss (``losses.REFERENCE_FREE``), ``args.loss_settings()`` its numbers."""

    def batch_loss(self, model, batch):
        args = self.args
        policy = sequence_logps(model, batch)
        losses, metrics = reference_free_loss(args.METHOD, policy, args.loss_settings())
        return losses.sum(), losses.numel(), metrics


class KTOTrainer(ReferenceTrainer):
    """KTO and the unpaired APO-zero on batches of (prompt, completion, KL completion) rows (PairCollator with
    ``completions=("completion_ids", "kl_completion_ids")`` and a ``label`` column; no KL completion for
    apo_zero_unpaired). One policy forward scores both; the KL completions' log-probs are detached, so they
    only set the baseline z0 (gathered over processes, as TRL does) and take no gradient."""

    def batch_loss(self, model, batch):
        args = self.args
        policy = sequence_logps(model, batch, token_stats=True)
        scores = UnpairedLogps.from_scores(
            policy, self.reference_logps(model, batch), batch["label"], with_kl=args.uses_kl
        )
        losses, metrics = unpaired_loss(
            args.loss_type, scores, args.loss_settings(), self._sum_over_processes
        )
        rows = slice(0, None, 2) if args.uses_kl else slice(None)  # each row's own completion, not its KL one
        metrics |= token_metrics(policy, rows) | batch_tokens(batch, rows)
        return losses.sum(), losses.numel(), metrics
