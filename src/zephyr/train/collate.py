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

    With k completions per example, sequence k*i + j is example i's completion j (a DPO pair: 2i chosen,
    2i+1 rejected). A column may appear more than once: with prefix sharing, the last prompt position
    predicts the first token of every completion.
    """

    def __init__(self):
        self.row, self.col, self.tok, self.seq = [], [], [], []

    def add(self, row: int, cols, tokens: Sequence[int], seq: int) -> None:
        cols = list(cols)
        self.row += [row] * len(cols)
        self.col += cols
        self.tok += list(tokens)
        self.seq += [seq] * len(cols)

    def tensors(self, prefix: str = "target") -> dict:
        return {
            f"{prefix}_row": torch.tensor(self.row, dtype=torch.long),
            f"{prefix}_col": torch.tensor(self.col, dtype=torch.long),
            f"{prefix}_ids": torch.tensor(self.tok, dtype=torch.long),
            f"{prefix}_seq": torch.tensor(self.seq, dtype=torch.long),
        }


class _Context:
    """The positions that score no completion token, for the losses and metrics that read them (ORPO's NLL
    covers the prompt; TRL's ORPO/CPO logits/* average over whole sequences): each prompt's positions that
    predict its own next token (tokens 2..P of the prompt, once per example, in the first completion's copy;
    sequence i is example i), and the last position of each completion (it predicts nothing; numbered as the
    completions are)."""

    def __init__(self):
        self.prompt, self.end = _Targets(), _Targets()

    def add(self, row: int, prompt_start: int, prompt: Sequence[int], pair: int) -> None:
        self.prompt.add(row, range(prompt_start, prompt_start + len(prompt) - 1), prompt[1:], pair)

    def add_end(self, row: int, col: int, seq: int) -> None:
        self.end.add(row, [col], [IGNORE], seq)

    def tensors(self) -> dict:
        return self.prompt.tensors("prompt_target") | self.end.tensors("end")


def ref_column(completion_key: str) -> str:
    """The column of precomputed reference log-probs of a completion column (``chosen_ids`` ->
    ``ref_chosen_logps``)."""
    return f"ref_{completion_key.removesuffix('_ids')}_logps"


PAIR_COMPLETIONS = ("chosen_ids", "rejected_ids")


@dataclass
class PairCollator:
    """A prompt and its completions per example, in one of three layouts; every layout scores exactly the
    same tokens. ``completions`` names the completion columns: DPO's pair (chosen, rejected) by default, KTO's
    (completion, KL completion) or a single one.

    - ``shared`` (default): one row of [prompt, first completion, other completions...] per example, back to
      back. The prompt runs once; each later completion block sees the prompt and itself, never another
      completion, and its position ids continue from the prompt as if the other completions were not there.
    - ``packed``: one row of [prompt, completion] blocks, one block per completion; no padding, no sharing.
    - ``padded``: TRL's layout: k*n rows (every example's first completion, then every second one, ...),
      right-padded.

    ``score_context`` also scores the positions outside the completions (``prompt_target_*``: each
    prompt predicting its own tokens; ``end_*``: the last position of each completion), for ORPO's
    NLL over the prompt and TRL's whole-sequence logits metrics. ``passthrough`` columns (KTO's ``label``)
    come back as one tensor each; precomputed reference log-probs (``ref_column`` of each completion) as
    ``ref_logps``, interleaved like the sequences.

    >>> pair = {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]}
    >>> b = PairCollator("shared", score_context=True)([pair])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist()
    ([[1, 2, 3, 4, 5]], [[0, 1, 2, 3, 2]])
    >>> b["target_col"].tolist(), b["target_ids"].tolist(), b["target_seq"].tolist()
    ([1, 2, 1], [3, 4, 5], [0, 0, 1])
    >>> b["prompt_target_col"].tolist(), b["prompt_target_ids"].tolist(), b["end_col"].tolist()
    ([0], [2], [3, 4])
    """

    layout: str = "shared"
    pad_token_id: int = 0
    score_context: bool = False
    completions: tuple[str, ...] = PAIR_COMPLETIONS
    passthrough: tuple[str, ...] = ()

    def __call__(self, examples: list[dict]) -> dict:
        if self.layout == "padded":
            return self._padded(examples)
        if self.layout not in ("shared", "packed"):
            raise ValueError(f"unknown pair layout {self.layout!r}; expected shared, packed or padded")
        k = len(self.completions)
        ids, pos, blocks, targets, context = [], [], [], _Targets(), _Context()
        for i, ex in enumerate(examples):
            p = ex["prompt_ids"]
            start = len(ids)
            last_prompt = start + len(p) - 1  # this position predicts the first completion token
            for j, key in enumerate(self.completions):
                c, seq = ex[key], k * i + j
                if j == 0 or self.layout == "packed":
                    block = len(ids)
                    ids += p + c
                    pos += range(len(p) + len(c))
                    blocks.append(Block(block, len(ids)))
                    first = block + len(p) - 1
                    targets.add(0, range(first, first + len(c)), c, seq)
                    if j == 0:
                        context.add(0, start, p, i)
                else:  # shared: the completion alone, attending to the prompt of the first block
                    block = len(ids)
                    ids += c
                    pos += range(len(p), len(p) + len(c))
                    blocks.append(Block(block, len(ids), start, start + len(p)))
                    targets.add(0, [last_prompt] + list(range(block, block + len(c) - 1)), c, seq)
                context.add_end(0, len(ids) - 1, seq)
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "zephyr_blocks": BlockLayout(tuple(blocks)),
            **targets.tensors(),
            **(context.tensors() if self.score_context else {}),
            **self._extras(examples),
        }

    def _padded(self, examples: list[dict]) -> dict:
        n, k = len(examples), len(self.completions)
        seqs = [e["prompt_ids"] + e[key] for key in self.completions for e in examples]
        width = max(len(s) for s in seqs)
        ids = torch.full((k * n, width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((k * n, width), dtype=torch.long)
        targets, context = _Targets(), _Context()
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            attn[row, : len(seq)] = 1
            j, i = divmod(row, n)
            ex = examples[i]
            completion = ex[self.completions[j]]
            first = len(ex["prompt_ids"]) - 1
            targets.add(row, range(first, first + len(completion)), completion, k * i + j)
            if j == 0:
                context.add(row, 0, ex["prompt_ids"], i)
            context.add_end(row, len(seq) - 1, k * i + j)
        return {
            "input_ids": ids,
            "attention_mask": attn,
            **targets.tensors(),
            **(context.tensors() if self.score_context else {}),
            **self._extras(examples),
        }

    def _extras(self, examples: list[dict]) -> dict:
        """The passthrough columns, each sequence's real tokens (prompt + completion, ``sequence_tokens``,
        interleaved like ``target_seq``: what TRL's padded layout counts for `num_tokens`), and the
        precomputed reference log-probs when the examples carry them."""
        out = {name: torch.tensor([e[name] for e in examples]) for name in self.passthrough}
        out["sequence_tokens"] = torch.tensor(
            [len(e["prompt_ids"]) + len(e[key]) for e in examples for key in self.completions]
        )
        columns = [ref_column(key) for key in self.completions]
        if columns[0] in examples[0]:
            values = [e[c] for e in examples for c in columns]
            out["ref_logps"] = torch.tensor(values, dtype=torch.float32)
        return out
