"""Preference accuracy on held-out pairs: does a model prefer the chosen reply to the rejected one?

- One model: log-prob preference accuracy, the share of pairs where log pi(chosen|x) > log pi(rejected|x)
  (and the same per token, which does not favour short replies).
- A DPO model and its reference: the implicit reward r = beta * (log pi - log pi_ref) of each reply, with
  TRL's metric names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins) and the DPO
  loss, computed with the training code's own loss function so evaluation and training agree exactly.

Ties count as wrong, as in TRL. Pairs are scored with the training batch layout (the prompt runs once
for both replies), so a pair costs one forward pass per model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from zephyr.train.attention import choose_kernel, restore_attention, use_packed_attention
from zephyr.train.collate import PairCollator
from zephyr.train.logps import sequence_logps
from zephyr.train.losses import dpo_loss

log = logging.getLogger(__name__)


@dataclass
class PairScores:
    """Summed completion log-probs, interleaved per pair as [chosen_0, rejected_0, chosen_1, ...]: (2n,)."""

    logps: torch.Tensor
    logit_sums: torch.Tensor
    lengths: torch.Tensor

    @property
    def chosen(self) -> torch.Tensor:
        return self.logps[0::2]

    @property
    def rejected(self) -> torch.Tensor:
        return self.logps[1::2]


def score_pairs(model, dataset, batch_size: int = 8, desc: str = "score pairs") -> PairScores:
    """Log-probs of every tokenized pair (rows with prompt_ids/chosen_ids/rejected_ids) under ``model``."""
    from tqdm.auto import tqdm

    collator = PairCollator("shared")
    device = next(model.parameters()).device
    previous = use_packed_attention(model, choose_kernel("auto", device, training=False))
    parts = {"logps": [], "logit_sums": [], "lengths": []}
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch"):
                rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(rows).items()}
                out = sequence_logps(model, batch)
                for k in parts:
                    parts[k].append(out[k].float().cpu())
    finally:
        restore_attention(model, previous)
    return PairScores(*(torch.cat(parts[k]) for k in ("logps", "logit_sums", "lengths")))


def _accuracy(wins: torch.Tensor) -> tuple[float, float]:
    """Mean of a boolean tensor and its standard error."""
    p = wins.float().mean().item()
    return p, math.sqrt(p * (1 - p) / wins.numel())


def logp_metrics(scores: PairScores) -> dict[str, float]:
    """How often the model alone prefers the chosen reply, in total and per token."""
    acc, se = _accuracy(scores.chosen > scores.rejected)
    per_token = scores.logps / scores.lengths.clamp_min(1)
    acc_tok, se_tok = _accuracy(per_token[0::2] > per_token[1::2])
    return {
        "n_pairs": scores.chosen.numel(),
        "logps/accuracy": acc,
        "logps/accuracy_stderr": se,
        "logps/accuracy_per_token": acc_tok,
        "logps/accuracy_per_token_stderr": se_tok,
        "logps/chosen": scores.chosen.mean().item(),
        "logps/rejected": scores.rejected.mean().item(),
        "logps/margins": (scores.chosen - scores.rejected).mean().item(),
    }


def reward_metrics(
    policy: PairScores, reference: PairScores, beta: float, loss_type: str = "sigmoid"
) -> dict:
    """Implicit-reward metrics of a DPO policy against its reference, under TRL's names."""
    losses, metrics = dpo_loss(
        loss_type,
        {"logps": policy.logps, "logit_sums": policy.logit_sums, "lengths": policy.lengths},
        reference.logps,
        beta,
    )
    chosen_r = beta * (policy.chosen - reference.chosen)
    rejected_r = beta * (policy.rejected - reference.rejected)
    _, se = _accuracy(chosen_r > rejected_r)
    margins = chosen_r - rejected_r
    return metrics | {
        "loss": losses.mean().item(),
        "rewards/accuracies_stderr": se,
        "rewards/margins_std": margins.std().item() if margins.numel() > 1 else 0.0,
        "beta": beta,
    }
