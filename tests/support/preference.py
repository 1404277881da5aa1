"""Helpers the preference-training tests share: the TRL metric names, policies that differ from their
reference, and models switched to packed attention for a block of code."""

from __future__ import annotations

import contextlib
import copy

import torch

from zephyr.train.attention import restore_attention, use_packed_attention

PAIR_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")
LAYOUTS = ("padded", "packed", "shared")
# What TRL's preference trainers log for every method (ORPO and CPO add theirs).
REWARD_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)


@contextlib.contextmanager
def packed(*models, enabled: bool = True):
    """The models on packed (block) attention inside the block, their own kernel afterwards."""
    previous = [use_packed_attention(m) for m in models] if enabled else []
    try:
        yield
    finally:
        for m, prev in zip(models, previous, strict=False):
            restore_attention(m, prev)


def noisy_copy(model, seed: int, scale: float = 0.02):
    """A deep copy of ``model`` with seeded Gaussian noise on every weight: a policy that differs from its
    reference, so log-ratios (and every loss that reads them) are not zero."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return out


def pipeline_with_alignment_stage(tmp_path, model_dir, stage: str) -> dict:
    """A dry-runnable pipeline recipe: sft on the demo conversations, ``stage`` on the demo pairs, export."""
    training = {"max_steps": 1, "report_to": "none", "save_strategy": "no", "use_cpu": True}
    return {
        "run_dir": str(tmp_path / "run"),
        "sft": {
            "model_name_or_path": str(model_dir),
            "dataset_mixer": {"zephyr:demo_sft": 1.0},
            "dataset_splits": ["train"],
            **training,
        },
        stage: {"dataset_mixer": {"zephyr:demo_prefs": 1.0}, "dataset_splits": ["train"], **training},
        "export": {"format": "merged"},
    }
