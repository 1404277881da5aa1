"""Block-sparse attention for packed batches, registered as a transformers attention implementation.

A padding-free batch is one row holding several sequences back to back. Each *block* of that row
attends causally to itself and, optionally, in full to a *prefix* range earlier in the row:

- SFT packing: one block per conversation, no prefix, so conversations never see each other;
- DPO prefix sharing: [prompt+chosen] is one causal block, and [rejected] is a block whose prefix is
  the prompt, so the prompt is run once and the rejected tokens never see the chosen ones.

Running each block through SDPA separately costs sum(len_i^2) attention work instead of the
(sum len_i)^2 of one dense masked call, and never materialises a row-sized mask. Blocks travel as
a model-forward keyword argument (``zephyr_blocks``) that transformers passes down to attention.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

ATTN_NAME = "zephyr_packed"


class Block(NamedTuple):
    """Query rows [start, end) attend causally to themselves and fully to [prefix_start, prefix_end)."""

    start: int
    end: int
    prefix_start: int = 0
    prefix_end: int = 0


@dataclass(frozen=True)
class BlockLayout:
    """The blocks of one packed row. A plain object, not a tuple, so Trainer and accelerate pass it
    to the model untouched instead of trying to move its numbers to a device."""

    blocks: tuple[Block, ...]

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)


def _block_mask(n_query: int, n_prefix: int, device) -> torch.Tensor:
    """(n_query, n_prefix + n_query) boolean mask: prefix fully visible, the block itself causal."""
    causal = torch.ones(n_query, n_query, dtype=torch.bool, device=device).tril()
    prefix = torch.ones(n_query, n_prefix, dtype=torch.bool, device=device)
    return torch.cat([prefix, causal], dim=1)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, heads, L, d)
    key: torch.Tensor,  # (1, kv_heads, L, d)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    zephyr_blocks: Iterable[Block] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if zephyr_blocks is None:  # not a packed batch (e.g. generation): plain SDPA semantics
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects a single packed row (batch size 1)")
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    for b in zephyr_blocks:
        q = query[:, :, b.start : b.end]
        k = key[:, :, b.start : b.end]
        v = value[:, :, b.start : b.end]
        if b.prefix_end > b.prefix_start:
            k = torch.cat([key[:, :, b.prefix_start : b.prefix_end], k], dim=2)
            v = torch.cat([value[:, :, b.prefix_start : b.prefix_end], v], dim=2)
            mask = _block_mask(b.end - b.start, b.prefix_end - b.prefix_start, query.device)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa
            )
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, scale=scaling, enable_gqa=gqa
            )
        out[:, :, b.start : b.end] = o
    return out.transpose(1, 2).contiguous(), None


def packed_attention_mask(
    *, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs
):
    """The mask transformers builds for a model on this implementation.

    A packed row carries its structure in blocks, so no dense (L, L) mask is built for it. A model
    can still see ordinary padded batches while switched (evaluation inside a training run,
    generation), and those need the regular SDPA mask, not FlashAttention's 2-D one.
    """
    from transformers.masking_utils import sdpa_mask

    unpadded = attention_mask is None or bool(attention_mask[:, -kv_length:].all())
    if unpadded and (q_length == 1 or q_length == kv_length):
        return None  # blocks, or SDPA's own is_causal, cover it
    return sdpa_mask(q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register the implementation with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(ATTN_NAME, packed_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, packed_attention_mask)
    return ATTN_NAME


def use_packed_attention(model) -> str | None:
    """Switch a model to packed attention; return the previous implementation to restore later.

    Models already on a FlashAttention/flex kernel keep it only if they can read blocks; since ours
    works everywhere SDPA does, we always switch and restore before saving.
    """
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    base.set_attn_implementation(ATTN_NAME)
    return previous


def restore_attention(model, previous: str | None) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if previous and previous != ATTN_NAME:
        base.set_attn_implementation(previous)
