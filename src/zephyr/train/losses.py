"""Preference losses as TRL 1.16 computes them: pure functions of tensors, in tables.

The DPO family (TRL's DPOTrainer): each loss takes the batch's log-probs (``PairLogps``) and the loss
settings (``LossSettings``) and returns one value per pair whose mean is TRL's loss for that type.
Several types may be mixed with weights (``mixed_loss``): the total is sum_k w_k * mean(loss_k),
returned per pair so the trainer can sum them and divide by the pair count of the whole accumulated
step. Terms TRL defines on the batch as a whole (``sft``, the sorted ``aot`` pair) come back as n
values with the same mean.

``label_smoothing`` enters only ``robust``, ``exo_pair``, ``aot`` and ``aot_unpaired``, as in TRL 1.16;
``sigmoid`` is plain DPO whatever its value.

The reference-free methods (ORPO, CPO with SimPO and AlphaPO, as TRL 1.16's experimental trainers
compute them) follow: ``PolicyLogps`` in, per-pair losses and TRL's metrics out, one table per method
(``CPO_LOSSES``) and one of methods (``REFERENCE_FREE``).

The unpaired methods (TRL 1.16's KTOTrainer: KTO and the unpaired APO-zero) come last: ``UnpairedLogps`` in
(each row one completion, labelled desirable or not, with its KL completion), per-row weighted losses and
TRL's metrics out (``KTO_LOSSES``, ``unpaired_loss``).
"""

from __future__ import annotations

import math
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


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL's rewards/* metrics from (n,) rewards; a tie counts as a wrong ranking."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
    }


def token_metrics(policy: dict, rows: slice = slice(None), pairs: bool = False) -> dict[str, float]:
    """TRL's token-weighted `entropy` over the completions ``rows`` picks out of ``sequence_logps(...,
    token_stats=True)``'s interleaved sequences (KTO: the rows' completions, not the KL ones), and for
    ``pairs`` (DPO) `mean_token_accuracy`, the top-1 hit rate over the chosen tokens."""
    if "entropy_sums" not in policy:
        return {}
    lengths = policy["lengths"]
    out = {"entropy": (policy["entropy_sums"][rows].sum() / lengths[rows].sum().clamp_min(1)).item()}
    if pairs:
        hits = policy["hit_sums"][0::2].sum() / lengths[0::2].sum().clamp_min(1)
        out["mean_token_accuracy"] = hits.item()
    return out


def pair_metrics(x: PairLogps, beta: float, logit_sums: torch.Tensor) -> dict[str, float]:
    """TRL's DPO metrics for a batch; ``logit_sums`` is (2n,), interleaved, as from ``sequence_logps``."""
    return {
        **reward_metrics(beta * x.chosen_logratios, beta * x.rejected_logratios),
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


# --- reference-free methods: TRL 1.16's experimental ORPO and CPO (SimPO, AlphaPO) trainers ---------------


@dataclass(frozen=True)
class PolicyLogps:
    """What a reference-free loss may look at for n pairs: the policy's own log-probs, no reference.

    Every tensor is (n,). ``chosen``/``rejected`` are summed over completion tokens and ``*_lengths``
    count those tokens; ``prompt``/``prompt_lengths`` cover each prompt's own tokens after its first
    (ORPO's NLL is over the whole chosen sequence). The ``*_logits`` are vocabulary-mean logits summed
    over positions, for TRL's logits/* metrics: ``prompt_logits`` over the prompt's positions but its
    last; ``chosen_logits``/``rejected_logits`` over the positions that predict completion tokens;
    ``chosen_end``/``rejected_end`` at the completion's last position, which predicts nothing.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    prompt: torch.Tensor
    prompt_lengths: torch.Tensor
    prompt_logits: torch.Tensor
    chosen_logits: torch.Tensor
    rejected_logits: torch.Tensor
    chosen_end: torch.Tensor
    rejected_end: torch.Tensor

    @classmethod
    def from_scores(cls, policy: dict) -> PolicyLogps:
        """From ``sequence_logps`` output on a batch collated with ``score_context``."""
        logps, lengths, logits, ends = (
            policy["logps"],
            policy["lengths"],
            policy["logit_sums"],
            policy["end_logits"],
        )
        return cls(
            chosen=logps[0::2],
            rejected=logps[1::2],
            chosen_lengths=lengths[0::2],
            rejected_lengths=lengths[1::2],
            prompt=policy["prompt_logps"],
            prompt_lengths=policy["prompt_lengths"],
            prompt_logits=policy["prompt_logit_sums"],
            chosen_logits=logits[0::2],
            rejected_logits=logits[1::2],
            chosen_end=ends[0::2],
            rejected_end=ends[1::2],
        )

    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen and rejected log-probs as per-token means (SimPO's length normalisation)."""
        chosen = self.chosen / self.chosen_lengths.clamp_min(1)
        return chosen, self.rejected / self.rejected_lengths.clamp_min(1)

    def completion_nll(self) -> torch.Tensor:
        """0-d: the mean negative log-prob per chosen completion token over the batch (CPO's NLL)."""
        return -self.chosen.sum() / self.chosen_lengths.sum().clamp_min(1)

    def sequence_nll(self) -> torch.Tensor:
        """0-d: the same over the whole chosen sequences, prompt tokens after the first included (ORPO's)."""
        count = self.prompt_lengths.sum() + self.chosen_lengths.sum()
        return -(self.prompt.sum() + self.chosen.sum()) / count.clamp_min(1)

    def logit_means(self, last_position: bool) -> tuple[float, float]:
        """TRL's logits/chosen and logits/rejected: the vocabulary-mean logit averaged over the positions of
        the chosen (rejected) sequences, prompt included, the last one only with ``last_position`` (TRL's CPO
        covers it, its ORPO stops one short). TRL also averages over its padding, so the two agree on
        batches that need none."""
        extra = 1.0 if last_position else 0.0

        def mean(logits: torch.Tensor, lengths: torch.Tensor, end: torch.Tensor) -> float:
            total = self.prompt_logits + logits + extra * end
            return (total.sum() / (self.prompt_lengths + lengths + extra).sum()).item()

        return (
            mean(self.chosen_logits, self.chosen_lengths, self.chosen_end),
            mean(self.rejected_logits, self.rejected_lengths, self.rejected_end),
        )


@dataclass(frozen=True)
class FreeSettings:
    """The scalars of the reference-free losses, under TRL's ORPOConfig/CPOConfig names (ORPO reads beta)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    cpo_alpha: float = 1.0
    simpo_gamma: float = 0.5
    alpha: float = 0.0


def cpo_sigmoid(chosen: torch.Tensor, rejected: torch.Tensor, s: FreeSettings) -> torch.Tensor:
    """CPO (Xu et al.): DPO's logistic loss on the policy's own summed log-probs, conservative with eps."""
    return _smoothed_sigmoid(s.beta * (chosen - rejected), s.label_smoothing)


def cpo_hinge(chosen: torch.Tensor, rejected: torch.Tensor, s: FreeSettings) -> torch.Tensor:
    """SLiC's hinge on the summed log-prob margin: max(0, 1 - beta * margin)."""
    return torch.relu(1 - s.beta * (chosen - rejected))


def cpo_ipo(chosen: torch.Tensor, rejected: torch.Tensor, s: FreeSettings) -> torch.Tensor:
    """IPO without a reference, on per-token mean log-probs: (margin - 1 / (2 beta))^2."""
    return (chosen - rejected - 1 / (2 * s.beta)) ** 2


def simpo(chosen: torch.Tensor, rejected: torch.Tensor, s: FreeSettings) -> torch.Tensor:
    """SimPO (Meng et al.): the logistic loss on beta * (per-token mean margin) - gamma, with eps."""
    return _smoothed_sigmoid(s.beta * (chosen - rejected) - s.simpo_gamma, s.label_smoothing)


@dataclass(frozen=True)
class MarginLoss:
    """A CPO loss type: a function of the (n,) chosen and rejected rewards before beta, and whether those
    are per-token mean log-probs (else sums)."""

    fn: Callable[[torch.Tensor, torch.Tensor, FreeSettings], torch.Tensor]
    per_token: bool


# TRL 1.16's CPOConfig.loss_type names (its `alphapo` is simpo with cpo_alpha 0, set by the config).
CPO_LOSSES: dict[str, MarginLoss] = {
    "sigmoid": MarginLoss(cpo_sigmoid, per_token=False),
    "hinge": MarginLoss(cpo_hinge, per_token=False),
    "ipo": MarginLoss(cpo_ipo, per_token=True),
    "simpo": MarginLoss(simpo, per_token=True),
}
# The CPO losses that read label_smoothing (TRL warns that hinge and ipo ignore it).
CPO_USES_LABEL_SMOOTHING = ("sigmoid", "simpo")


def alphapo_reward(logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """AlphaPO's reward shape r = (1 - p^(-alpha)) / alpha of p = exp(logps); alpha 0 keeps the log-prob."""
    return logps if alpha == 0 else -torch.expm1(-alpha * logps) / alpha


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, without cancellation on either side of -ln 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(x: PolicyLogps, s: FreeSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """ORPO (Hong et al.): the chosen sequences' NLL minus beta * log sigmoid(log odds ratio), the odds taken
    on per-token mean log-probs. As in TRL 1.16 the NLL covers the prompt tokens too."""
    chosen, rejected = x.per_token()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    nll = x.sequence_nll()
    logits_chosen, logits_rejected = x.logit_means(last_position=False)
    return nll - s.beta * ratio, {
        **reward_metrics(s.beta * chosen, s.beta * rejected),
        "logps/chosen": chosen.detach().mean().item(),
        "logps/rejected": rejected.detach().mean().item(),
        "logits/chosen": logits_chosen,
        "logits/rejected": logits_rejected,
        "nll_loss": nll.detach().item(),
        "log_odds_ratio": ratio.detach().mean().item(),
        "log_odds_chosen": log_odds.detach().mean().item(),
    }


def cpo_loss(x: PolicyLogps, s: FreeSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """CPO and its relatives (SimPO, AlphaPO): a ``CPO_LOSSES`` margin loss plus ``cpo_alpha`` times the NLL of
    the chosen completions. With ``cpo_alpha`` 0 TRL computes no NLL and logs nll_loss 0; so does this."""
    loss = CPO_LOSSES[s.loss_type]
    chosen, rejected = x.per_token() if loss.per_token else (x.chosen, x.rejected)
    chosen_rewards, rejected_rewards = alphapo_reward(chosen, s.alpha), alphapo_reward(rejected, s.alpha)
    nll = x.completion_nll() if s.cpo_alpha != 0 else torch.zeros((), device=chosen.device)
    logits_chosen, logits_rejected = x.logit_means(last_position=True)
    return loss.fn(chosen_rewards, rejected_rewards, s) + s.cpo_alpha * nll, {
        **reward_metrics(s.beta * chosen_rewards, s.beta * rejected_rewards),
        "logps/chosen": chosen.detach().mean().item(),
        "logps/rejected": rejected.detach().mean().item(),
        "logits/chosen": logits_chosen,
        "logits/rejected": logits_rejected,
        "nll_loss": nll.detach().item(),
    }


# The reference-free methods: per-pair losses (n,) whose mean is TRL's loss, and TRL's metrics.
REFERENCE_FREE: dict[str, Callable[[PolicyLogps, FreeSettings], tuple[torch.Tensor, dict[str, float]]]] = {
    "orpo": orpo_loss,
    "cpo": cpo_loss,
}


def reference_free_loss(
    method: str, policy: dict, settings: FreeSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """``REFERENCE_FREE[method]`` on ``sequence_logps`` output of a batch collated with ``score_context``."""
    return REFERENCE_FREE[method](PolicyLogps.from_scores(policy), settings)


# --- unpaired methods: TRL 1.16's KTOTrainer (KTO and the unpaired APO-zero) --------------------------------


@dataclass(frozen=True)
class UnpairedLogps:
    """What an unpaired loss may look at for n rows, each one completion labelled desirable or not; every
    tensor is (n,).

    ``logps``/``ref_logps`` are the policy's and the reference's log-probs of each completion, summed over its
    tokens; ``labels`` is True for the desirable rows. ``kl_logps``/``ref_kl_logps`` are the same for each row's
    KL completion (its prompt followed by another row's completion), the policy's detached; None for a loss
    that estimates no KL term. ``lengths`` and ``logit_sums`` (the vocabulary-mean logit summed over the
    completion's positions) feed TRL's logits/* metrics.
    """

    logps: torch.Tensor
    ref_logps: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    logit_sums: torch.Tensor
    kl_logps: torch.Tensor | None = None
    ref_kl_logps: torch.Tensor | None = None

    @classmethod
    def from_scores(
        cls, policy: dict, ref_logps: torch.Tensor, labels: torch.Tensor, with_kl: bool
    ) -> UnpairedLogps:
        """From ``sequence_logps`` output and reference log-probs of a batch whose sequences are, per row, the
        completion and (``with_kl``) the KL completion: [c0, kl0, c1, kl1, ...], or [c0, c1, ...]."""
        k = 2 if with_kl else 1
        logps = policy["logps"]
        return cls(
            logps=logps[0::k],
            ref_logps=ref_logps[0::k],
            labels=labels.to(device=logps.device, dtype=torch.bool),
            lengths=policy["lengths"][0::k],
            logit_sums=policy["logit_sums"][0::k],
            # The KL term is a baseline, not something to optimise: no gradient flows through it.
            kl_logps=logps[1::2].detach() if with_kl else None,
            ref_kl_logps=ref_logps[1::2] if with_kl else None,
        )

    @property
    def logratios(self) -> torch.Tensor:
        return self.logps - self.ref_logps


@dataclass(frozen=True)
class UnpairedSettings:
    """The scalars of the unpaired losses, under TRL's KTOConfig names."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def kto(r: torch.Tensor, labels: torch.Tensor, z0: torch.Tensor, s: UnpairedSettings) -> torch.Tensor:
    """KTO (Ethayarajh et al., Eq. 7): 1 - sigmoid(beta (r - z0)) for desirable rows, 1 - sigmoid(beta (z0 - r))
    for undesirable ones, z0 the batch's KL estimate."""
    return torch.where(labels, 1 - torch.sigmoid(s.beta * (r - z0)), 1 - torch.sigmoid(s.beta * (z0 - r)))


def apo_zero_unpaired(
    r: torch.Tensor, labels: torch.Tensor, z0: torch.Tensor, s: UnpairedSettings
) -> torch.Tensor:
    """APO-zero without pairs: raise the likelihood of desirable replies (1 - sigmoid(beta r)), lower that of
    undesirable ones (sigmoid(beta r)); no KL term."""
    return torch.where(labels, 1 - torch.sigmoid(s.beta * r), torch.sigmoid(s.beta * r))


@dataclass(frozen=True)
class UnpairedLoss:
    """A KTO loss type: per-row losses from the (n,) log-ratios, labels and the KL estimate, and whether it
    needs that estimate (and with it the KL completions)."""

    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, UnpairedSettings], torch.Tensor]
    uses_kl: bool


# TRL 1.16's KTOConfig.loss_type names.
KTO_LOSSES: dict[str, UnpairedLoss] = {
    "kto": UnpairedLoss(kto, uses_kl=True),
    "apo_zero_unpaired": UnpairedLoss(apo_zero_unpaired, uses_kl=False),
}

# The batch sums behind the KL estimate and TRL's metrics, in this order (see ``unpaired_stats``).
_STATS = (
    "kl",
    "kl_parts",
    "n_chosen",
    "n_rejected",
    "rewards_chosen",
    "rewards_rejected",
    "logps_chosen",
    "logps_rejected",
    "logits_chosen",
    "logits_rejected",
    "tokens_chosen",
    "tokens_rejected",
)


def unpaired_stats(x: UnpairedLogps, beta: float) -> torch.Tensor:
    """(len(_STATS),) detached sums for one process's batch: what must be added up over processes before the
    KL estimate and the metrics can be read (one collective call for all of them)."""
    d, u = x.labels, ~x.labels
    r = beta * x.logratios.detach()
    logps = x.logps.detach()
    kl = (x.kl_logps - x.ref_kl_logps).mean() if x.kl_logps is not None else logps.new_zeros(())
    values = [
        kl,
        torch.ones_like(kl),
        d.sum(),
        u.sum(),
        r[d].sum(),
        r[u].sum(),
        logps[d].sum(),
        logps[u].sum(),
    ]
    values += [x.logit_sums[d].sum(), x.logit_sums[u].sum(), x.lengths[d].sum(), x.lengths[u].sum()]
    return torch.stack([v.detach().float() for v in values])


def unpaired_metrics(stats: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
    """TRL's KTO metrics from the summed ``unpaired_stats``. As in TRL, a metric of a class the batch (over all
    processes) lacks is not logged for that batch, and the logged value averages the batches that had it."""
    v = dict(zip(_STATS, stats.tolist(), strict=True))
    out = {"kl": kl.item()}
    for side in ("chosen", "rejected"):
        if v[f"tokens_{side}"] > 0:
            out[f"logits/{side}"] = v[f"logits_{side}"] / v[f"tokens_{side}"]
    for side in ("chosen", "rejected"):
        if v[f"n_{side}"] > 0:
            out[f"rewards/{side}"] = v[f"rewards_{side}"] / v[f"n_{side}"]
            out[f"logps/{side}"] = v[f"logps_{side}"] / v[f"n_{side}"]
    if v["n_chosen"] > 0 and v["n_rejected"] > 0:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


def unpaired_loss(
    loss_type: str,
    x: UnpairedLogps,
    s: UnpairedSettings,
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-row losses (n,) whose mean over the batch's rows is TRL's KTO loss (each row weighted by
    ``desirable_weight`` or ``undesirable_weight``; the weights are not in the denominator), and TRL's metrics.

    ``total`` sums a tensor over processes (None: one process). The KL estimate z0 is the mean over processes
    of each batch's mean KL-completion log-ratio, clamped at 0, with no gradient; TRL logs it as ``kl`` (0 for
    a loss that needs none).
    """
    loss = KTO_LOSSES[loss_type]
    stats = unpaired_stats(x, s.beta)
    stats = stats if total is None else total(stats)
    v = dict(zip(_STATS, stats, strict=True))
    kl = (v["kl"] / v["kl_parts"]).clamp(min=0) if loss.uses_kl else stats.new_zeros(())
    weights = torch.where(x.labels, s.desirable_weight, s.undesirable_weight).to(x.logps.dtype)
    losses = weights * loss.fn(x.logratios, x.labels, kl.to(x.logps.dtype), s)
    return losses, unpaired_metrics(stats, kl)
