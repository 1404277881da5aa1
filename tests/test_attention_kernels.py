"""Packed-attention kernels: flex attention, FlashAttention varlen and the per-block SDPA loop give the
padded computation's loss, log-probs and gradients, for SFT packing and DPO prefix sharing, with grouped-
query attention and with a Mistral sliding window shorter than the blocks.

PyTorch refuses flex attention's backward on CPU (it runs only compiled kernels on CUDA in practice);
its eager backward is exact, just slow, so these tests lift that guard to check our masks' gradients here.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from support.models import make_tiny_model
from zephyr.errors import ConfigError
from zephyr.train import attention
from zephyr.train.attention import Block, BlockLayout, choose_kernel, restore_attention, use_packed_attention
from zephyr.train.collate import PackedCollator, PaddedCollator, PairCollator
from zephyr.train.logps import sequence_logps, sft_loss_sum
from zephyr.train.losses import dpo_loss

WINDOW = 6  # shorter than every block below, so the window really cuts


@pytest.fixture(autouse=True)
def cpu_flex_backward(monkeypatch):
    import torch.nn.attention.flex_attention as flex

    monkeypatch.setattr(flex, "_validate_device", lambda *tensors: None)


def mistral(seed: int = 0, window: int = WINDOW):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=window,
        pad_token_id=0,
    )
    return MistralForCausalLM(config).float()


MODELS = {
    "llama-gqa": lambda seed=0: make_tiny_model(seed, vocab_size=300),
    "mistral-window": mistral,
}


def sft_examples(seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (9, 14, 5, 11):
        ids = torch.randint(3, 300, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "assistant_mask": [0] * 3 + [1] * (n - 3)})
    return out


def pairs(seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=gen).tolist()

    return [
        {"prompt_ids": ids(7), "chosen_ids": ids(9), "rejected_ids": ids(5)},
        {"prompt_ids": ids(4), "chosen_ids": ids(3), "rejected_ids": ids(10)},
        {"prompt_ids": ids(10), "chosen_ids": ids(8), "rejected_ids": ids(8)},
    ]


class kernel:
    """The model on a packed kernel (None: the model's own attention, for padded batches)."""

    def __init__(self, model, name):
        self.model, self.name = model, name

    def __enter__(self):
        self.previous = use_packed_attention(self.model, self.name) if self.name else None

    def __exit__(self, *exc):
        if self.name:
            restore_attention(self.model, self.previous)


def sft_run(model, batch, name):
    model.zero_grad()
    with kernel(model, name):
        total, count = sft_loss_sum(model, batch)
        (total / count).backward()
    return (total / count).item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_grads(got, want, label):
    assert got.keys() == want.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], atol=1e-5, rtol=1e-4, msg=f"{label}: {name}")


@pytest.mark.parametrize("arch", MODELS)
def test_sft_packing_every_kernel_equals_padded(arch):
    model = MODELS[arch]()
    examples = sft_examples()
    want_loss, want_grads = sft_run(model, PaddedCollator(0)(examples), None)
    packed = PackedCollator()(examples)
    for name in ("sdpa_blocks", "flex"):
        loss, grads = sft_run(model, packed, name)
        assert loss == pytest.approx(want_loss, abs=1e-5), name
        assert_same_grads(grads, want_grads, name)


def dpo_run(model, ref, batch, name):
    model.zero_grad()
    with kernel(model, name), kernel(ref, name):
        with torch.no_grad():
            ref_logps = sequence_logps(ref, batch)["logps"]
        out = sequence_logps(model, batch)
        losses, metrics = dpo_loss("sigmoid", out, ref_logps, beta=0.1)
        losses.mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out["logps"].detach(), losses.mean().item(), metrics, grads


@pytest.mark.parametrize("arch", MODELS)
def test_dpo_prefix_sharing_every_kernel_equals_padded(arch):
    ref, model = MODELS[arch](0), MODELS[arch](1)
    want_logps, want_loss, want_metrics, want_grads = dpo_run(
        model, ref, PairCollator("padded")(pairs()), None
    )
    assert want_metrics["rewards/margins"] != 0.0
    for layout in ("shared", "packed"):
        batch = PairCollator(layout)(pairs())
        for name in ("sdpa_blocks", "flex"):
            logps, loss, metrics, grads = dpo_run(model, ref, batch, name)
            label = f"{layout}/{name}"
            torch.testing.assert_close(logps, want_logps, atol=1e-5, rtol=1e-6, msg=label)
            assert loss == pytest.approx(want_loss, abs=1e-5), label
            assert metrics == pytest.approx(want_metrics, abs=1e-5), label
            assert_same_grads(grads, want_grads, label)


def test_the_window_really_cuts():
    """Guard against a vacuous window: with it ignored, the prefix-shared log-probs would differ."""
    batch = PairCollator("shared")(pairs())
    windowed, full = mistral(0, WINDOW), mistral(0, None)
    with torch.no_grad(), kernel(windowed, "flex"), kernel(full, "flex"):
        a, b = sequence_logps(windowed, batch)["logps"], sequence_logps(full, batch)["logps"]
    assert (a - b).abs().max() > 1e-3


def test_flex_builds_one_block_mask_per_batch(monkeypatch):
    import torch.nn.attention.flex_attention as flex

    calls = []
    original = flex.create_block_mask
    monkeypatch.setattr(flex, "create_block_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = make_tiny_model(layers=3, vocab_size=300)
    batch = PairCollator("shared")(pairs())
    with torch.no_grad(), kernel(model, "flex"):
        sequence_logps(model, batch)
        sequence_logps(model, batch)  # the reference pass over the same batch reuses it too
    assert len(calls) == 1


def test_flex_mask_matches_the_block_rules():
    """The block mask, read back densely: own block causal, the prefix visible, nothing else."""
    layout = BlockLayout((Block(0, 5), Block(5, 8, 0, 3), Block(8, 10)))
    mask = attention.flex_block_mask(layout, 10, None, torch.device("cpu"))
    visible = mask.mask_mod
    q, kv = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    got = visible(torch.tensor(0), torch.tensor(0), q, kv)
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[:5, :5] = torch.ones(5, 5).tril().bool()
    want[5:8, 0:3] = True  # rejected sees the prompt...
    want[5:8, 5:8] = torch.ones(3, 3).tril().bool()  # ...and itself, never the chosen tokens 3:5
    want[8:, 8:] = torch.ones(2, 2).tril().bool()
    assert torch.equal(got, want)


def fake_flash_attn(calls: list):
    """A stand-in for flash_attn's varlen function with its documented contract, computed with SDPA per
    sequence: it checks our wiring (cu_seqlens, the (tokens, heads, dim) layout, the window convention),
    not FlashAttention itself, which needs a CUDA build."""

    def flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size
    ):
        calls.append((cu_q.tolist(), max_q, window_size))
        assert cu_q.dtype == torch.int32 and causal and torch.equal(cu_q, cu_k)
        out = torch.empty_like(q)
        left = window_size[0]
        for s, e in zip(cu_q.tolist()[:-1], cu_q.tolist()[1:], strict=True):
            n = e - s
            i = torch.arange(n)
            mask = i[None, :] <= i[:, None]
            if left >= 0:
                mask &= (i[:, None] - i[None, :]) <= left
            qs, ks, vs = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=mask, scale=softmax_scale, enable_gqa=True
            )
            out[s:e] = o[0].transpose(0, 1)
        return out

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.mark.parametrize("arch", MODELS)
def test_flash_varlen_wiring_for_sft_and_flex_for_prefixes(arch, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash_attn(calls))
    model = MODELS[arch]()
    examples = sft_examples()
    want_loss, want_grads = sft_run(model, PaddedCollator(0)(examples), None)
    loss, grads = sft_run(model, PackedCollator()(examples), "flash_varlen")
    assert loss == pytest.approx(want_loss, abs=1e-5)
    assert_same_grads(grads, want_grads, "flash_varlen")
    window = (WINDOW - 1, 0) if arch == "mistral-window" else (-1, -1)
    assert calls[0] == ([0, 9, 23, 28, 39], 14, window)
    calls.clear()
    ref = MODELS[arch](1)
    batch = PairCollator("shared")(pairs())
    want = dpo_run(model, ref, PairCollator("padded")(pairs()), None)
    got = dpo_run(model, ref, batch, "flash_varlen")
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-6)
    assert_same_grads(got[3], want[3], "flash_varlen/shared")
    assert calls == []  # a prefix-shared row went through flex


def test_kernel_choice_by_device_and_installation(monkeypatch):
    assert choose_kernel("auto", "cpu") == "sdpa_blocks"
    assert choose_kernel("sdpa_blocks", "cuda") == "sdpa_blocks"
    assert choose_kernel("flex", "cpu", training=False) == "flex"
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    assert choose_kernel("auto", "cuda") == "flex"
    with pytest.raises(ConfigError, match="flash-attn"):
        choose_kernel("flash_varlen", "cuda")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert choose_kernel("auto", "cuda") == "flash_varlen"
    with pytest.raises(ConfigError, match="backward pass on CUDA only"):
        choose_kernel("flex", "cpu")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        choose_kernel("flash_varlen", "cpu")
    with pytest.raises(ConfigError, match="one of auto, sdpa_blocks, flex, flash_varlen"):
        choose_kernel("flash", "cpu")


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_recipe_kernel_this_machine_cannot_train_with_fails_at_parse_time(stage, tmp_path, monkeypatch):
    from zephyr.config import parse_config
    from zephyr.train.config import DPOConfig, SFTConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cls = SFTConfig if stage == "sft" else DPOConfig
    with pytest.raises(ConfigError, match="`attention_kernel: flex` cannot train on cpu"):
        parse_config([cls], None, [f"--output_dir={tmp_path}", "--attention_kernel=flex"])
    with pytest.raises(ConfigError, match="did you mean `flex`"):
        parse_config([cls], None, [f"--output_dir={tmp_path}", "--attention_kernel=flexx"])
    # Padded batches never use a packed kernel, so the key cannot stop them.
    (args,) = parse_config(
        [cls], None, [f"--output_dir={tmp_path}", "--attention_kernel=flex", "--padding_free=false"]
    )
    assert args.attention_kernel == "flex"


def test_reference_in_another_dtype_is_cast_to_the_policys_with_a_warning(caplog):
    from zephyr.train.dpo import match_reference_dtype

    policy, ref = make_tiny_model(vocab_size=300), make_tiny_model(vocab_size=300).to(torch.bfloat16)
    with caplog.at_level("WARNING"):
        ref = match_reference_dtype(ref, policy)
    assert next(ref.parameters()).dtype == torch.float32
    assert "casting the reference to torch.float32" in caplog.text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_losses_and_logps_stay_fp32_and_match_fp32(dtype):
    """bf16/fp16 end to end on the packed kernels: log-softmax, log-probs and the loss come out in fp32,
    the gradients in the weights' dtype, and the values within that dtype's rounding of the fp32 run."""
    ref32, model32 = make_tiny_model(0, vocab_size=300), make_tiny_model(1, vocab_size=300)
    ref, model = make_tiny_model(0, vocab_size=300).to(dtype), make_tiny_model(1, vocab_size=300).to(dtype)
    batch = PairCollator("shared")(pairs())
    want = dpo_run(model32, ref32, batch, "flex")
    for name in ("sdpa_blocks", "flex"):
        logps, loss, metrics, grads = dpo_run(model, ref, batch, name)
        assert logps.dtype == torch.float32
        assert all(g.dtype == dtype for g in grads.values())
        torch.testing.assert_close(logps, want[0], rtol=0.02, atol=0.5)  # summed over ~10 tokens
        assert loss == pytest.approx(want[1], abs=0.02)
    sft = PackedCollator()(sft_examples())
    model.zero_grad()
    with kernel(model, "sdpa_blocks"):
        total, count = sft_loss_sum(model, sft)
    assert total.dtype == torch.float32
    assert (total / count).item() == pytest.approx(sft_run(model32, sft, "sdpa_blocks")[0], rel=0.02)
