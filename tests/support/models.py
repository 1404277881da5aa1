"""Tiny random models for the fast tests: the embedded tokenizer's vocabulary, a couple of small layers."""

from __future__ import annotations

import torch


def make_tiny_model(seed: int = 0, layers: int = 2, hidden: int = 64, **overrides):
    """A randomly initialised Llama with the embedded tokenizer's vocabulary, in fp32; ``overrides`` are
    LlamaConfig keys (another vocabulary size, context length, untied embeddings, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(LlamaConfig(**(settings | overrides))).float()


def enable_checkpointing(model, reentrant: bool) -> list[int]:
    """Turn on activation checkpointing (the transformers 5.2x name, else the older one) and return a
    counter of first-layer attention calls, which doubles when backward really recomputes."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": reentrant})
    calls = [0]
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def save_tiny_checkpoint(out, tokenizer_dir, seed: int = 0):
    """A tiny random model (``make_tiny_model(seed)``) saved with the tokenizer of ``tokenizer_dir``: a model
    spec the engine and the CLI load. Different seeds give different models (compare mode's two sides)."""
    from transformers import AutoTokenizer

    make_tiny_model(seed=seed).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out
