"""Batch layouts: padding-free packed rows (the default) and classic padded batches (the baseline).

Examples reaching a collator are token lists already; each carries ``input_ids`` and
``assistant_mask`` (1 = trained token), and packed examples also ``seq_lengths`` (the
conversations packed into them). Collators return *shifted* labels: ``shift_labels[i]`` is the
token the model must predict at position i, or -100, so the loss never has to shift or guess
where one packed conversation ends and the next begins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zephyr.train.attention import Block, BlockLayout

IGNORE = -100


def shifted_targets(input_ids: Sequence[int], trained: Sequence[int]) -> list[int]:
    """Targets for next-token prediction within one sequence: position i predicts token i+1 if trained.

    >>> shifted_targets([5, 6, 7, 8], [0, 1, 1, 0])
    [6, 7, -100, -100]
    """
    out = [tok if m else IGNORE for tok, m in zip(input_ids[1:], trained[1:], strict=True)]
    return out + [IGNORE]


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sequence indices into bins of at most ``capacity`` tokens, best-fit decreasing.

    Longest first, each into the fullest bin that still has room: few bins, little waste, and a
    deterministic result for a given list of lengths.

    >>> pack_best_fit([5, 3, 4, 2], capacity=7)
    [[0, 3], [2, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sequence {i} has {n} tokens, more than the packing capacity {capacity}")
        fits = [b for b in range(len(bins)) if room[b] >= n]
        if fits:
            b = min(fits, key=lambda b: room[b])
            bins[b].append(i)
            room[b] -= n
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def _sequences(example: dict) -> list[tuple[list[int], list[int]]]:
    """Split an example into its (input_ids, assistant_mask) sequences (one unless it was packed)."""
    ids, mask = list(example["input_ids"]), list(example["assistant_mask"])
    lengths = example.get("seq_lengths") or [len(ids)]
    out, start = [], 0
    for n in lengths:
        out.append((ids[start : start + n], mask[start : start + n]))
        start += n
    return out


@dataclass
class PackedCollator:
    """Flatten a batch into one row with no padding; attention stays within each sequence.

    >>> batch = PackedCollator()([
    ...     {"input_ids": [1, 2, 3], "assistant_mask": [0, 1, 1]},
    ...     {"input_ids": [4, 5], "assistant_mask": [0, 1]},
    ... ])
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
    ([[1, 2, 3, 4, 5]], [[0, 1, 2, 0, 1]])
    >>> batch["shift_labels"].tolist(), [tuple(b) for b in batch["zephyr_blocks"]]
    ([[2, 3, -100, 5, -100]], [(0, 3, 0, 0), (3, 5, 0, 0)])
    """

    def __call__(self, examples: list[dict]) -> dict:
        ids, pos, targets, blocks = [], [], [], []
        for example in examples:
            for seq_ids, seq_mask in _sequences(example):
                start = len(ids)
                ids += seq_ids
                pos += range(len(seq_ids))
                targets += shifted_targets(seq_ids, seq_mask)
                blocks.append(Block(start, len(ids)))
        shift_labels = torch.tensor([targets])
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "shift_labels": shift_labels,
            "labels": shift_labels,  # Trainer counts loss tokens from `labels`; ours are already shifted
            "zephyr_blocks": BlockLayout(tuple(blocks)),
        }


@dataclass
class PaddedCollator:
    """One conversation per row, right-padded to the longest in the batch (TRL's layout).

    Kept as the parity baseline and for attention kernels that cannot take packed rows.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        seqs = [s for example in examples for s in _sequences(example)]
        width = max(len(s[0]) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for row, (seq_ids, seq_mask) in enumerate(seqs):
            n = len(seq_ids)
            ids[row, :n] = torch.tensor(seq_ids)
            attn[row, :n] = 1
            targets[row, :n] = torch.tensor(shifted_targets(seq_ids, seq_mask))
        return {"input_ids": ids, "attention_mask": attn, "shift_labels": targets, "labels": targets}
