"""Log-likelihoods from a model: per-token log-probs, the SFT loss sum, and summed completion log-probs.

The trainers and the preference evaluation call these to turn a batch into numbers; the losses that
consume those numbers live in ``zephyr.train.losses`` and never see a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
STATS_ROWS = 256  # rows per piece of token_logps' entropy (each a (rows, V) fp32 temporary)


def selected_logits(model, batch: dict, keep: torch.Tensor) -> torch.Tensor:
    """Run the model and return LM-head logits only at sequence positions ``keep`` (1-D indices).

    Never materialising logits for untrained positions is the biggest memory saving in SFT/DPO:
    a 1024-token row of a 49k vocabulary is 200 MB of fp32 per copy.
    """
    inputs = {
        k: batch[k] for k in ("input_ids", "position_ids", "attention_mask", "zephyr_blocks") if k in batch
    }
    return model(**inputs, logits_to_keep=keep, use_cache=False).logits


def token_logps(
    logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 2048, with_stats: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(target) for each position, computed in fp32 one chunk at a time; 0 where target == -100.

    With ``with_stats``, also from the same log-probs and with no gradient: the entropy of each position's
    next-token distribution, and 1.0 where its top token is the target (TRL's `entropy` and
    `mean_token_accuracy`). The entropy is taken ``STATS_ROWS`` rows at a time, since each piece holds a
    (rows, V) fp32 copy of the probabilities beside the chunk's log-probs.

    logits: (N, V); targets: (N,) -> (N,), or with stats ((N,), (N,), (N,))
    """
    out = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    entropy, hits = torch.empty_like(out), torch.empty_like(out)
    valid = targets != IGNORE
    for start in range(0, targets.shape[0], chunk_rows):
        sl = slice(start, start + chunk_rows)
        lp = F.log_softmax(logits[sl].float(), dim=-1)
        picked = lp.gather(-1, targets[sl].clamp_min(0).unsqueeze(-1)).squeeze(-1)
        out[sl] = torch.where(valid[sl], picked, torch.zeros_like(picked))
        if with_stats:
            with torch.no_grad():
                for sub in range(0, lp.shape[0], STATS_ROWS):
                    part = lp[sub : sub + STATS_ROWS]
                    entropy[start + sub : start + sub + part.shape[0]] = -(part.exp() * part).sum(dim=-1)
                hits[sl] = (lp.argmax(dim=-1) == targets[sl]).float()
    return (out, entropy, hits) if with_stats else out


def sft_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the trained tokens of a batch, and how many there were."""
    targets = batch["shift_labels"]  # (B, L)
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)  # positions with a target in any row
    if keep.numel() == 0:  # nothing to learn in this batch; keep the graph connected for DDP
        logits = selected_logits(model, batch, torch.zeros(1, dtype=torch.long, device=targets.device))
        return logits.sum() * 0.0, 0
    logits = selected_logits(model, batch, keep)  # (B, K, V)
    kept = targets[:, keep]
    logps = token_logps(logits.reshape(-1, logits.shape[-1]), kept.reshape(-1))
    return -logps.sum(), int((kept != IGNORE).sum())


# --- preference pairs -------------------------------------------------------------------------------


def completion_positions(seq: torch.Tensor, n_seq: int) -> torch.Tensor:
    """The 0-based place of each scored token within its own completion.

    ``seq`` names the completion of every scored token (PairCollator's ``target_seq``); every layout
    lists a completion's tokens in reading order, so a token's place is how many tokens of the same
    completion come before it in that list, whatever the row and column they sit in.
    """
    order = torch.argsort(seq, stable=True)
    counts = torch.bincount(seq, minlength=n_seq)
    first = torch.cumsum(counts, 0) - counts  # where each completion starts in the sorted list
    places = torch.empty_like(seq)
    places[order] = torch.arange(seq.numel(), device=seq.device) - first[seq[order]]
    return places


def ld_weights(seq: torch.Tensor, lengths: torch.Tensor, ld_alpha: float) -> torch.Tensor:
    """LD-DPO token weights: 1 for the first min(|y_w|, |y_l|) tokens of each completion of a pair,
    ``ld_alpha`` for the tokens past that shared length (only the longer completion has any)."""
    shared = torch.minimum(lengths[0::2], lengths[1::2]).repeat_interleave(2)  # (2n,)
    inside = completion_positions(seq, lengths.numel()) < shared[seq]
    return torch.where(inside, 1.0, float(ld_alpha)).to(torch.float32)


def sequence_logps(
    model, batch: dict, ld_alpha: float | None = None, token_stats: bool = False
) -> dict[str, torch.Tensor]:
    """Summed log-probs of every scored completion in a pair batch (see PairCollator), in one forward.

    Returns, each (2n,) and interleaved [chosen_0, rejected_0, ...]:
    ``logps`` the summed completion log-probs, with LD-DPO's down-weighting of the tokens past the
    shorter completion's length when ``ld_alpha`` is given; ``unweighted_logps`` the plain sums (the
    same tensor without ``ld_alpha``); ``logit_sums`` the vocabulary-mean logit summed over completion
    tokens (for TRL's logits/* metrics); ``lengths`` the completion token counts. With ``token_stats``
    (the policy's forward, for TRL's metrics) also ``entropy_sums``, the next-token entropy summed over each
    completion's tokens, and ``hit_sums``, how many of its tokens are the model's top-1 prediction.

    A batch collated with ``score_context`` adds, each (n,), per pair: ``prompt_logps`` (the prompt's
    own tokens after its first, summed), ``prompt_logit_sums`` and ``prompt_lengths``; and (2n,)
    ``end_logits``, the vocabulary-mean logit at each completion's last position.
    """
    groups = ["target"] + (["prompt_target", "end"] if "prompt_target_col" in batch else [])
    cols, where = torch.unique(torch.cat([batch[f"{g}_col"] for g in groups]), return_inverse=True)
    logits = selected_logits(model, batch, cols)  # (rows, K, V)
    rows = torch.cat([batch[f"{g}_row"] for g in groups])
    picked = logits[rows, where].split([batch[f"{g}_col"].numel() for g in groups])  # (T_g, V) each
    seq = batch["target_seq"]
    n_seq = int(seq.max()) + 1

    def per_sequence(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float32, device=values.device).index_add(0, index, values)

    def mean_logits(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().mean(dim=-1)

    if token_stats:
        token_lp, entropy, hits = token_logps(picked[0], batch["target_ids"], with_stats=True)
    else:
        token_lp = token_logps(picked[0], batch["target_ids"])
    lengths = torch.bincount(seq, minlength=n_seq).float()
    unweighted = per_sequence(token_lp, seq, n_seq)
    logps = (
        unweighted
        if ld_alpha is None
        else per_sequence(token_lp * ld_weights(seq, lengths, ld_alpha), seq, n_seq)
    )
    out = {
        "logps": logps,
        "unweighted_logps": unweighted,
        "logit_sums": per_sequence(mean_logits(picked[0]), seq, n_seq),
        "lengths": lengths,
    }
    if token_stats:
        out["entropy_sums"] = per_sequence(entropy, seq, n_seq)
        out["hit_sums"] = per_sequence(hits, seq, n_seq)
    if len(groups) > 1:
        pair, ends, n = batch["prompt_target_seq"], batch["end_seq"], n_seq // 2
        out["prompt_logps"] = per_sequence(token_logps(picked[1], batch["prompt_target_ids"]), pair, n)
        out["prompt_logit_sums"] = per_sequence(mean_logits(picked[1]), pair, n)
        out["prompt_lengths"] = torch.bincount(pair, minlength=n).float()
        out["end_logits"] = per_sequence(mean_logits(picked[2]), ends, n_seq)
    return out
