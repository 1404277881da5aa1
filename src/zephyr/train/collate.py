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


class _Targets:
    """Accumulates (row, column, token, sequence) for every completion token to score.

    Sequence 2i is pair i's chosen completion and 2i+1 its rejected one. A column may appear twice:
    with prefix sharing, the last prompt position predicts the first token of both completions.
    """

    def __init__(self):
        self.row, self.col, self.tok, self.seq = [], [], [], []

    def add(self, row: int, cols, tokens: Sequence[int], seq: int) -> None:
        cols = list(cols)
        self.row += [row] * len(cols)
        self.col += cols
        self.tok += list(tokens)
        self.seq += [seq] * len(cols)

    def tensors(self) -> dict:
        return {
            "target_row": torch.tensor(self.row),
            "target_col": torch.tensor(self.col),
            "target_ids": torch.tensor(self.tok),
            "target_seq": torch.tensor(self.seq),
        }


def _ref_logps(examples: list[dict]) -> dict:
    """Precomputed reference log-probs, interleaved like the sequences: [c0, r0, c1, r1, ...]."""
    if "ref_chosen_logps" not in examples[0]:
        return {}
    values = [v for e in examples for v in (e["ref_chosen_logps"], e["ref_rejected_logps"])]
    return {"ref_logps": torch.tensor(values, dtype=torch.float32)}


@dataclass
class PairCollator:
    """Preference pairs in one of three layouts; every layout scores exactly the same tokens.

    - ``shared`` (default): one row of [prompt, chosen, rejected] per pair, back to back. The prompt
      runs once; the rejected block sees the prompt and itself, never the chosen tokens, and its
      position ids continue from the prompt as if the chosen tokens were not there.
    - ``packed``: one row of [prompt, chosen][prompt, rejected] per pair; no padding, no sharing.
    - ``padded``: TRL's layout: 2n rows (all chosen, then all rejected), right-padded.

    >>> pair = {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]}
    >>> b = PairCollator("shared")([pair])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist()
    ([[1, 2, 3, 4, 5]], [[0, 1, 2, 3, 2]])
    >>> b["target_col"].tolist(), b["target_ids"].tolist(), b["target_seq"].tolist()
    ([1, 2, 1], [3, 4, 5], [0, 0, 1])
    """

    layout: str = "shared"
    pad_token_id: int = 0

    def __call__(self, examples: list[dict]) -> dict:
        if self.layout == "padded":
            return self._padded(examples)
        ids, pos, blocks, targets = [], [], [], _Targets()
        for i, ex in enumerate(examples):
            p, c, r = ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]
            start = len(ids)
            last_prompt = start + len(p) - 1  # this position predicts the first completion token
            ids += p + c
            pos += range(len(p) + len(c))
            blocks.append(Block(start, len(ids)))
            targets.add(0, range(last_prompt, last_prompt + len(c)), c, 2 * i)
            if self.layout == "shared":
                r_start = len(ids)
                ids += r
                pos += range(len(p), len(p) + len(r))
                blocks.append(Block(r_start, len(ids), start, start + len(p)))
                targets.add(0, [last_prompt] + list(range(r_start, r_start + len(r) - 1)), r, 2 * i + 1)
            elif self.layout == "packed":
                r_start = len(ids)
                ids += p + r
                pos += range(len(p) + len(r))
                blocks.append(Block(r_start, len(ids)))
                first = r_start + len(p) - 1
                targets.add(0, range(first, first + len(r)), r, 2 * i + 1)
            else:
                raise ValueError(f"unknown pair layout {self.layout!r}; expected shared, packed or padded")
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "zephyr_blocks": BlockLayout(tuple(blocks)),
            **targets.tensors(),
            **_ref_logps(examples),
        }

    def _padded(self, examples: list[dict]) -> dict:
        n = len(examples)
        seqs = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + [
            e["prompt_ids"] + e["rejected_ids"] for e in examples
        ]
        width = max(len(s) for s in seqs)
        ids = torch.full((2 * n, width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((2 * n, width), dtype=torch.long)
        targets = _Targets()
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            attn[row, : len(seq)] = 1
            ex = examples[row % n]
            completion = ex["chosen_ids"] if row < n else ex["rejected_ids"]
            first = len(ex["prompt_ids"]) - 1
            targets.add(row, range(first, first + len(completion)), completion, 2 * (row % n) + (row >= n))
        return {"input_ids": ids, "attention_mask": attn, **targets.tensors(), **_ref_logps(examples)}
