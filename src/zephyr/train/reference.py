"""The reference of DPO and KTO: a frozen model, the policy with its adapters off, or log-probs computed once.

Precomputed log-probs are cached on disk under a key made of the reference weights (hashed from
the tensors actually loaded, so a merged adapter or a different dtype changes it), the token ids of
the data (so any change to the data, template or truncation changes it; for KTO this includes each
row's KL completion, so the cache follows the KL pairing), which completions are scored, the batch
layout and LD-DPO's ``ld_alpha`` (the cached sums are weighted with it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from zephyr.io import cache_dir, write_atomic
from zephyr.train.attention import restore_attention, use_packed_attention
from zephyr.train.collate import PAIR_COMPLETIONS, ref_column
from zephyr.train.logps import sequence_logps

log = logging.getLogger(__name__)


def weights_fingerprint(model) -> str:
    """A hash of every parameter and buffer of a model, as loaded (dtype included)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(dataset, completions: tuple[str, ...] = PAIR_COMPLETIONS) -> str:
    h = hashlib.blake2b(digest_size=16)
    for column in ("prompt_ids", *completions):
        for ids in dataset[column]:
            h.update(repr(ids).encode())
            h.update(b";")
    return h.hexdigest()


@contextlib.contextmanager
def reference_mode(model, ref_model):
    """Yield the module that computes reference log-probs: ``ref_model``, or the policy without adapters."""
    if ref_model is not None:
        yield ref_model
        return
    unwrapped = model.module if hasattr(model, "module") else model
    if not hasattr(unwrapped, "disable_adapter"):
        raise RuntimeError("no reference model and the policy has no adapters to disable")
    with unwrapped.disable_adapter():
        yield model


def _score(
    model, dataset, collator, batch_size: int, indices: list[int], device, desc: str, ld_alpha: float | None
) -> torch.Tensor:
    """Reference log-probs (len(indices), k) for the given rows (k completions each), in eval mode and without
    gradients."""
    k = len(collator.completions)
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(indices), batch_size), desc=desc, unit="batch"):
            rows = [dataset[i] for i in indices[start : start + batch_size]]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(rows).items()}
            out.append(sequence_logps(model, batch, ld_alpha)["logps"].view(-1, k).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, k)


def precompute_reference_logps(
    dataset,
    ref_source,
    collator,
    batch_size: int,
    accelerator,
    split: str,
    cache: str | None = None,
    kernel: str | None = "sdpa_blocks",
    ld_alpha: float | None = None,
):
    """Add a reference log-prob column per completion the collator scores (``ref_column``: DPO's
    ``ref_chosen_logps``/``ref_rejected_logps``), from the disk cache or computed now.

    ``ref_source`` is the module to score with (a reference model, or the policy inside
    ``reference_mode``). The rows are split across processes; each computes its share and all
    processes receive the whole result. Process 0 writes the cache atomically. ``kernel`` is the packed-
    attention kernel the collator's rows need (None for padded batches). With ``ld_alpha`` the
    sums are LD-DPO-weighted, as the trainer weights the policy's.
    """
    completions = tuple(collator.completions)
    parts = [weights_fingerprint(ref_source), data_fingerprint(dataset, completions), type(collator).__name__]
    if ld_alpha is not None:  # absent otherwise, so caches made before LD-DPO existed stay valid
        parts.append(f"ld_alpha={float(ld_alpha)!r}")
    if completions != PAIR_COMPLETIONS:  # likewise: DPO's keys are those of before KTO
        parts.append(f"completions={','.join(completions)}")
    key = hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()
    path = Path(cache or cache_dir() / "ref_logps") / f"{key}.pt"
    if path.is_file():
        values = torch.load(path)
        log.info("%s: reference log-probs loaded from the cache %s", split, path)
    else:
        rank, world = accelerator.process_index, accelerator.num_processes
        mine = list(range(rank, len(dataset), world))
        previous = use_packed_attention(ref_source, kernel) if kernel else None
        try:
            scored = _score(
                ref_source,
                dataset,
                collator,
                batch_size,
                mine,
                accelerator.device,
                f"Reference log-probs ({split})",
                ld_alpha,
            )
        finally:
            if previous is not None:
                restore_attention(ref_source, previous)
        values = torch.zeros(len(dataset), len(completions))
        parts = [(mine, scored)]
        if world > 1:
            from accelerate.utils import gather_object

            parts = gather_object(parts)  # every process gets every process's share
        for part_idx, part in parts:
            values[part_idx] = part
        if accelerator.is_main_process:
            write_atomic(path, lambda tmp: torch.save(values, tmp))
            log.info("%s: reference log-probs cached in %s", split, path)
    for j, key in enumerate(completions):
        dataset = dataset.add_column(ref_column(key), values[:, j].tolist())
    return dataset
