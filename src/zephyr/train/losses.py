"""The DPO loss family, as TRL 1.16's DPOTrainer computes it: pure functions of tensors, one table.

Each loss takes the batch's log-probs (``PairLogps``) and the loss settings (``LossSettings``) and
returns one value per pair whose mean is TRL's loss for that type. Several types may be mixed with
weights (``mixed_loss``): the total is sum_k w_k * mean(loss_k), returned per pair so the trainer can
sum them and divide by the pair count of the whole accumulated step. Terms TRL defines on the batch
as a whole (``sft``, the sorted ``aot`` pair) come back as n values with the same mean.

``label_smoothing`` enters only ``robust``, ``exo_pair``, ``aot`` and ``aot_unpaired``, as in TRL 1.16;
``sigmoid`` is plain DPO whatever its value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairLogps:
    """What a loss may look at for a batch of n pairs; every tensor is (n,) unless said otherwise.

    Policy and reference log-probs are summed over completion tokens (LD-DPO-weighted when that is
    on); lengths are completion token counts; ``chosen_nll`` is a 0-d tensor: the mean negative
    log-prob per chosen token over the whole batch, never LD-weighted.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    chosen_nll: torch.Tensor

    @classmethod
    def from_scores(cls, policy: dict, ref_logps: torch.Tensor) -> PairLogps:
        """From ``sequence_logps`` output and reference log-probs, both interleaved [c0, r0, c1, r1, ...].

        ``policy`` needs ``logps`` and ``lengths``; ``unweighted_logps`` (for ``chosen_nll``) defaults to
        ``logps``.
        """
        logps, lengths = policy["logps"], policy["lengths"]
        plain_chosen = policy.get("unweighted_logps", logps)[0::2]
        return cls(
            chosen=logps[0::2],
            rejected=logps[1::2],
            ref_chosen=ref_logps[0::2],
            ref_rejected=ref_logps[1::2],
            chosen_lengths=lengths[0::2],
            rejected_lengths=lengths[1::2],
            chosen_nll=-plain_chosen.sum() / lengths[0::2].sum().clamp_min(1),
        )

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    @property
    def delta(self) -> torch.Tensor:
        """How much more the policy raised the chosen reply than the rejected one, over the reference."""
        return self.chosen_logratios - self.rejected_logratios

    def per_token_delta(self) -> torch.Tensor:
        """``delta`` with each log-ratio divided by its completion's token count."""
        return self.chosen_logratios / self.chosen_lengths.clamp_min(
            1
        ) - self.rejected_logratios / self.rejected_lengths.clamp_min(1)


@dataclass(frozen=True)
class LossSettings:
    """The scalars the losses read: DPO's beta, the label noise eps, DiscoPOP's temperature."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05


def _smoothed_sigmoid(z: torch.Tensor, eps: float) -> torch.Tensor:
    """-log sigmoid(z), with eps of the weight moved to the flipped label (the aot losses)."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def sigmoid(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """DPO (Rafailov et al.): -log sigmoid(beta * delta). TRL 1.16 applies no label smoothing here."""
    return -F.logsigmoid(s.beta * x.delta)


def hinge(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """SLiC's hinge on the scaled margin: max(0, 1 - beta * delta)."""
    return torch.relu(1 - s.beta * x.delta)


def ipo(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """IPO on per-token log-ratios: (delta_per_token - 1 / (2 beta))^2."""
    return (x.per_token_delta() - 1 / (2 * s.beta)) ** 2


def exo_pair(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """EXO for a pair: KL from the policy's two-way preference softmax to the target (1 - eps, eps)."""
    z = s.beta * x.delta
    eps = torch.tensor(s.label_smoothing, device=z.device, dtype=z.dtype)
    win = torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps))
    lose = torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(eps))
    return win + lose


def nca_pair(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """NCA: raise the chosen reward in absolute terms, push both rewards down by half as much."""
    chosen, rejected = s.beta * x.chosen_logratios, s.beta * x.rejected_logratios
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def robust(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """Robust DPO: the unbiased clean-label loss under label-flip probability eps."""
    z, eps = s.beta * x.delta, s.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def bco_pair(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """Paired BCO: a binary classifier with the chosen reward as positive, the rejected as negative."""
    return -F.logsigmoid(s.beta * x.chosen_logratios) - F.logsigmoid(-s.beta * x.rejected_logratios)


def sppo_hard(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """SPPO with hard win probabilities: log-ratios pulled to +1/(2 beta) (chosen) and -1/(2 beta)."""
    half = 0.5 / s.beta
    return (x.chosen_logratios - half) ** 2 + (x.rejected_logratios + half) ** 2


def aot(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """AOT (paired): the sorted policy chosen-minus-rejected log-prob gaps against the sorted reference
    gaps, through the smoothed sigmoid. A batch-level loss: value k belongs to rank k, not to pair k."""
    policy_gaps, _ = torch.sort(x.chosen - x.rejected, dim=0)
    ref_gaps, _ = torch.sort(x.ref_chosen - x.ref_rejected, dim=0)
    return _smoothed_sigmoid(s.beta * (policy_gaps - ref_gaps), s.label_smoothing)


def aot_unpaired(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """AOT (unpaired): sorted chosen log-ratios against sorted rejected log-ratios, smoothed sigmoid."""
    chosen, _ = torch.sort(x.chosen_logratios, dim=0)
    rejected, _ = torch.sort(x.rejected_logratios, dim=0)
    return _smoothed_sigmoid(s.beta * (chosen - rejected), s.label_smoothing)


def apo_zero(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """APO-zero: the chosen replies beat the model's own; raise chosen, lower rejected likelihood."""
    return 1 - torch.sigmoid(s.beta * x.chosen_logratios) + torch.sigmoid(s.beta * x.rejected_logratios)


def apo_down(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """APO-down: the chosen replies are worse than the model's own; lower both, the rejected more."""
    return torch.sigmoid(s.beta * x.chosen_logratios) + 1 - torch.sigmoid(s.beta * x.delta)


def discopop(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """DiscoPOP: a blend of the logistic and exponential losses, mixed by sigmoid(beta * delta / tau)."""
    z = s.beta * x.delta
    mix = torch.sigmoid(z / s.discopop_tau)
    return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix


def sft(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """NLL of the chosen completions, token mean over the batch, repeated once per pair."""
    return x.chosen_nll.expand(x.chosen.shape[0])


def sigmoid_norm(x: PairLogps, s: LossSettings) -> torch.Tensor:
    """DPO on per-token log-ratios: -log sigmoid(beta * delta_per_token)."""
    return -F.logsigmoid(s.beta * x.per_token_delta())


Loss = Callable[[PairLogps, LossSettings], torch.Tensor]

# TRL 1.16's DPOConfig.loss_type names, in its order.
DPO_LOSSES: dict[str, Loss] = {
    "sigmoid": sigmoid,
    "hinge": hinge,
    "ipo": ipo,
    "exo_pair": exo_pair,
    "nca_pair": nca_pair,
    "robust": robust,
    "bco_pair": bco_pair,
    "sppo_hard": sppo_hard,
    "aot": aot,
    "aot_unpaired": aot_unpaired,
    "apo_zero": apo_zero,
    "apo_down": apo_down,
    "discopop": discopop,
    "sft": sft,
    "sigmoid_norm": sigmoid_norm,
}
# The losses that read label_smoothing (TRL 1.16 ignores it in all others).
USES_LABEL_SMOOTHING = ("robust", "exo_pair", "aot", "aot_unpaired")


def mixed_loss(
    x: PairLogps,
    loss_types: Sequence[str],
    settings: LossSettings,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Per-pair values whose mean is sum_k weights[k] * mean(loss_k); no weights: all 1."""
    weights = [1.0] * len(loss_types) if weights is None else list(weights)
    if len(weights) != len(loss_types):
        raise ValueError(f"{len(weights)} loss weights for {len(loss_types)} loss types")
    total = torch.zeros_like(x.chosen)
    for name, weight in zip(loss_types, weights, strict=True):
        total = total + weight * DPO_LOSSES[name](x, settings)
    return total


def pair_metrics(x: PairLogps, beta: float, logit_sums: torch.Tensor) -> dict[str, float]:
    """TRL's DPO metrics for a batch; ``logit_sums`` is (2n,), interleaved, as from ``sequence_logps``."""
    chosen_rewards = beta * x.chosen_logratios.detach()
    rejected_rewards = beta * x.rejected_logratios.detach()
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": x.chosen.detach().mean().item(),
        "logps/rejected": x.rejected.detach().mean().item(),
        # Token-weighted over the batch, as TRL reports them.
        "logits/chosen": (logit_sums[0::2].sum() / x.chosen_lengths.sum()).item(),
        "logits/rejected": (logit_sums[1::2].sum() / x.rejected_lengths.sum()).item(),
    }


def dpo_loss(
    loss_type: str | Sequence[str],
    policy: dict,
    ref_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    *,
    loss_weights: Sequence[float] | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair losses (n,) and TRL-named metrics from ``sequence_logps`` output and reference log-probs.

    ``loss_type`` is one name or several (mixed with ``loss_weights``); ``policy["logps"]`` and
    ``ref_logps`` are interleaved (2n,) tensors.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    x = PairLogps.from_scores(policy, ref_logps)
    settings = LossSettings(beta, label_smoothing, discopop_tau)
    losses = mixed_loss(x, types, settings, loss_weights)
    return losses, pair_metrics(x, beta, policy["logit_sums"])
