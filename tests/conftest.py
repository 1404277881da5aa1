"""Shared fixtures: the embedded tokenizer and tiny random Llama models built from it.

Tests never touch the network. The embedded checkpoint is converted once per cache dir
(``$ZEPHYR_CACHE``, ~40 s the first time) and only its tokenizer is used by the fast tests;
the `slow` tests use the real weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def embedded_dir() -> str:
    from zephyr.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer_dir(embedded_dir, tmp_path_factory) -> Path:
    """A directory holding only the embedded tokenizer (cheap to load)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(embedded_dir).save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(tokenizer_dir):
    """The embedded tokenizer prepared for training (template kept, pad != eos). Fresh per test."""
    from zephyr.models import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture
def zephyr_tokenizer(tokenizer_dir):
    """The embedded tokenizer with the Zephyr chat template."""
    from zephyr.models import load_tokenizer

    return load_tokenizer(str(tokenizer_dir), chat_template="zephyr")


def make_tiny_model(seed: int = 0, layers: int = 2, hidden: int = 64):
    """A randomly initialised Llama with the embedded tokenizer's vocabulary, in fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
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
    return LlamaForCausalLM(config).float()


def enable_checkpointing(model, reentrant: bool) -> list[int]:
    """Turn on activation checkpointing (the transformers 5.2x name, else the older one) and return a
    counter of first-layer attention calls, which doubles when backward really recomputes."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": reentrant})
    calls = [0]
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A saved tiny checkpoint (model + tokenizer) usable as a model spec by the CLI."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model().save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out
