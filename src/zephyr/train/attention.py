"""Block-sparse attention for packed batches, registered as a transformers attention implementation.

A padding-free batch is one row holding several sequences back to back. Each *block* of that row
attends causally to itself and, optionally, in full to a *prefix* range earlier in the row:

- SFT packing: one block per conversation, no prefix, so conversations never see each other;
- DPO prefix sharing: [prompt+chosen] is one causal block, and [rejected] is a block whose prefix is
  the prompt, so the prompt is run once and the rejected tokens never see the chosen ones.

Blocks travel as a model-forward keyword argument (``zephyr_blocks``) that transformers passes down
to attention. Three kernels read them (``KERNELS``; ``choose_kernel`` picks one per run):

- ``sdpa_blocks``: one SDPA call per block, sum(len_i^2) work, no row-sized mask. Portable (CPU, any
  GPU), but on a GPU it is one small launch per block per layer;
- ``flex``: the whole row in one ``flex_attention`` call, with a block mask built once per batch from
  the layout and reused by every layer (compiled on CUDA; PyTorch has no flex backward on CPU);
- ``flash_varlen``: FlashAttention's varlen kernel over ``cu_seqlens``, for layouts without prefixes
  (SFT packing); a prefix-shared batch goes through ``flex`` instead.

Every kernel honours a sliding window (Mistral): a query sees only keys fewer than ``window``
positions behind it, positions counted as the model sees them (a rejected completion's position ids
continue from its prompt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from zephyr.errors import ConfigError

log = logging.getLogger(__name__)

ATTN_NAME = "zephyr_packed"
# kernel -> its attention implementation name in transformers ("flash" stays out of the names:
# transformers treats any implementation named like that as one of its own FlashAttention builds)
KERNELS = {"sdpa_blocks": ATTN_NAME, "flex": "zephyr_packed_flex", "flash_varlen": "zephyr_packed_varlen"}
KERNEL_CHOICES = ("auto", *KERNELS)


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
    # Per-batch masks built by the kernels, keyed by (kernel, row length, window, device): every layer
    # of a forward (and the recomputation under activation checkpointing) reuses the first one.
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def has_prefixes(self) -> bool:
        return any(b.prefix_end > b.prefix_start for b in self.blocks)

    def row_tensors(self, length: int, device) -> dict[str, torch.Tensor]:
        """Per-position tensors of the row: the block each position belongs to, that block's prefix range,
        and the position id the model gives it (a block's prefix counts as the positions before it)."""
        block_of = torch.full((length,), -1, dtype=torch.long)
        position = torch.zeros(length, dtype=torch.long)
        for i, b in enumerate(self.blocks):
            block_of[b.start : b.end] = i
            position[b.start : b.end] = torch.arange(b.end - b.start) + (b.prefix_end - b.prefix_start)
        if bool((block_of < 0).any()):
            raise ValueError(f"the blocks do not cover the packed row of {length} positions")
        prefix_start = torch.tensor([b.prefix_start for b in self.blocks], dtype=torch.long)
        prefix_end = torch.tensor([b.prefix_end for b in self.blocks], dtype=torch.long)
        out = {
            "block_of": block_of,
            "position": position,
            "prefix_start": prefix_start,
            "prefix_end": prefix_end,
        }
        return {k: v.to(device) for k, v in out.items()}


def _block_mask(n_query: int, n_prefix: int, device, window: int | None = None) -> torch.Tensor:
    """(n_query, n_prefix + n_query) boolean mask: prefix fully visible, the block itself causal, and with a
    sliding window no key ``window`` or more positions behind its query."""
    q_pos = torch.arange(n_prefix, n_prefix + n_query, device=device)
    kv_pos = torch.arange(n_prefix + n_query, device=device)
    mask = kv_pos[None, :] <= q_pos[:, None]
    if window is not None:
        mask &= (q_pos[:, None] - kv_pos[None, :]) < window
    return mask


def _window(sliding_window) -> int | None:
    """The window a layer attends within, or None for full attention."""
    return int(sliding_window) if sliding_window else None


def _sdpa_blocks(query, key, value, layout: BlockLayout, dropout: float, scaling, window: int | None):
    """The ``sdpa_blocks`` kernel: one SDPA call per block."""
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    for b in layout:
        q = query[:, :, b.start : b.end]
        k = key[:, :, b.start : b.end]
        v = value[:, :, b.start : b.end]
        n_prefix = b.prefix_end - b.prefix_start
        if n_prefix:
            k = torch.cat([key[:, :, b.prefix_start : b.prefix_end], k], dim=2)
            v = torch.cat([value[:, :, b.prefix_start : b.prefix_end], v], dim=2)
        if n_prefix or (window is not None and b.end - b.start > window):
            mask = _block_mask(b.end - b.start, n_prefix, query.device, window)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa
            )
        else:  # the window, if any, covers the whole block: plain causal attention
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, scale=scaling, enable_gqa=gqa
            )
        out[:, :, b.start : b.end] = o
    return out.transpose(1, 2).contiguous()


def _plain_sdpa(module, query, key, value, attention_mask, dropout, scaling, sliding_window, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if sliding_window is not None:
        kwargs["sliding_window"] = sliding_window
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def _check_single_row(query: torch.Tensor) -> None:
    if query.shape[0] != 1:
        raise ValueError("packed attention expects a single packed row (batch size 1)")


# --- flex attention ---------------------------------------------------------------------------------

_compiled_flex = None


def _flex_function(device: torch.device):
    """flex_attention, compiled once on CUDA (eager flex materialises every score; compiled, it is one
    fused kernel); eager elsewhere, where it only ever runs without gradients."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return _eager_flex
    if _compiled_flex is None:
        # Packed rows change length every batch: compile for dynamic shapes once, not per length.
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def _eager_flex(*args, **kwargs):
    """Uncompiled flex attention, without its warning: off CUDA it only scores (no gradients), where
    materialising the scores of one packed row is acceptable."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


def flex_block_mask(layout: BlockLayout, length: int, window: int | None, device: torch.device):
    """The flex ``BlockMask`` of a layout: a query sees its own block causally and its block's prefix,
    within the window. Built once per batch and cached on the layout for every layer."""
    key = ("flex", length, window, str(device))
    if key in layout.cache:
        return layout.cache[key]
    from torch.nn.attention.flex_attention import create_block_mask

    t = layout.row_tensors(length, device)
    block_of, position, prefix_start, prefix_end = (
        t["block_of"],
        t["position"],
        t["prefix_start"],
        t["prefix_end"],
    )

    def visible(batch, head, q, kv):
        own = (block_of[q] == block_of[kv]) & (kv <= q)
        prefix = (kv >= prefix_start[block_of[q]]) & (kv < prefix_end[block_of[q]])
        allowed = own | prefix
        if window is not None:
            allowed = allowed & (position[q] - position[kv] < window)
        return allowed

    mask = create_block_mask(
        visible, None, None, length, length, device=device, _compile=device.type == "cuda"
    )
    layout.cache[key] = mask
    return mask


def _flex(query, key, value, layout: BlockLayout, dropout: float, scaling, window: int | None):
    """The ``flex`` kernel: the whole packed row in one flex_attention call."""
    if dropout:
        raise ConfigError(
            "the `flex` attention kernel has no attention dropout; use `sdpa_blocks` or set it to 0"
        )
    mask = flex_block_mask(layout, query.shape[2], window, query.device)
    flex = _flex_function(query.device)
    out = flex(query, key, value, block_mask=mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous()


# --- FlashAttention varlen ----------------------------------------------------------------------------


def cu_seqlens(layout: BlockLayout, device) -> tuple[torch.Tensor, int]:
    """FlashAttention's cumulative sequence starts (int32, blocks + 1 entries) and the longest block."""
    key = ("cu_seqlens", str(device))
    if key not in layout.cache:
        starts = [b.start for b in layout.blocks] + [layout.blocks[-1].end]
        longest = max(b.end - b.start for b in layout.blocks)
        layout.cache[key] = (torch.tensor(starts, dtype=torch.int32, device=device), longest)
    return layout.cache[key]


def _flash_varlen(query, key, value, layout: BlockLayout, dropout: float, scaling, window: int | None):
    """The ``flash_varlen`` kernel: FlashAttention over the blocks as variable-length sequences. It cannot
    express a prefix, so prefix-shared batches take the ``flex`` kernel."""
    if layout.has_prefixes:
        return _flex(query, key, value, layout, dropout, scaling, window)
    from flash_attn import flash_attn_varlen_func

    starts, longest = cu_seqlens(layout, query.device)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (L, heads, d): FlashAttention's layout
    out = flash_attn_varlen_func(
        q,
        k,
        v,
        starts,
        starts,
        longest,
        longest,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
        # FlashAttention's left window counts the keys before the query: `window - 1` of them.
        window_size=(window - 1, 0) if window is not None else (-1, -1),
    )
    return out.unsqueeze(0)  # (1, L, heads, d)


def attention_forward(kernel):
    """The transformers attention function of a kernel: a packed row (``zephyr_blocks`` given) goes
    through ``kernel``; anything else (generation, a padded eval batch) through plain SDPA."""

    def forward(
        module: torch.nn.Module,
        query: torch.Tensor,  # (1, heads, L, d)
        key: torch.Tensor,  # (1, kv_heads, L, d)
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        zephyr_blocks: BlockLayout | None = None,
        sliding_window: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if zephyr_blocks is None:
            return _plain_sdpa(
                module, query, key, value, attention_mask, dropout, scaling, sliding_window, kwargs
            )
        _check_single_row(query)
        return kernel(query, key, value, zephyr_blocks, dropout, scaling, _window(sliding_window)), None

    forward.__doc__ = kernel.__doc__
    return forward


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
    # A sliding window (``local_size``) shorter than the keys needs a real mask outside packed rows.
    window_fits = kwargs.get("local_size") is None or kv_length <= kwargs["local_size"]
    if unpadded and window_fits and (q_length == 1 or q_length == kv_length):
        return None  # blocks, or SDPA's own is_causal, cover it
    return sdpa_mask(q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


FORWARDS = {
    "sdpa_blocks": attention_forward(_sdpa_blocks),
    "flex": attention_forward(_flex),
    "flash_varlen": attention_forward(_flash_varlen),
}


def register(kernel: str = "sdpa_blocks") -> str:
    """Register a kernel with transformers (idempotent) and return its implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = KERNELS[kernel]
    AttentionInterface.register(name, FORWARDS[kernel])
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, packed_attention_mask)
    return name


def flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def choose_kernel(requested: str, device: torch.device | str, training: bool = True) -> str:
    """The packed-attention kernel for a run: ``requested`` (a recipe's ``attention_kernel``) checked against
    the device and what is installed, ``auto`` resolved (CUDA: FlashAttention varlen where installed, else
    flex; elsewhere the per-block SDPA loop)."""
    device = torch.device(device)
    if requested not in KERNEL_CHOICES:
        raise ConfigError(f"`attention_kernel` must be one of {', '.join(KERNEL_CHOICES)}; got {requested!r}")
    if requested == "auto":
        if device.type != "cuda":
            return "sdpa_blocks"
        return "flash_varlen" if flash_attn_installed() else "flex"
    if requested == "flex" and training and device.type != "cuda":
        raise ConfigError(
            f"`attention_kernel: flex` cannot train on {device.type}: PyTorch's flex attention has a backward "
            "pass on CUDA only; use `auto` or `sdpa_blocks` here"
        )
    if requested == "flash_varlen":
        if device.type != "cuda":
            raise ConfigError(
                f"`attention_kernel: flash_varlen` needs a CUDA device; this run is on {device.type}"
            )
        if not flash_attn_installed():
            raise ConfigError(
                "`attention_kernel: flash_varlen` needs the flash-attn package (`pip install flash-attn "
                "--no-build-isolation`); `flex` needs nothing extra"
            )
    return requested


def use_packed_attention(model, kernel: str = "sdpa_blocks") -> str | None:
    """Switch a model to a packed-attention kernel; return the previous implementation to restore later.

    Models already on a FlashAttention/flex kernel of transformers cannot read blocks, so we always
    switch and restore before saving.
    """
    name = register(kernel)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    base.set_attn_implementation(name)
    return previous


def restore_attention(model, previous: str | None) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if previous and previous not in KERNELS.values():
        base.set_attn_implementation(previous)
