"""Shared fixtures: the embedded tokenizer, tiny random Llama models built from it, and a `zephyr serve`
on the tiny model. Plain helpers live in ``tests/support/``; test modules import those, never this file.

Tests never touch the network. The embedded checkpoint is converted once per cache dir
(``$ZEPHYR_CACHE``, ~40 s the first time) and only its tokenizer is used by the fast tests;
the `slow` tests use the real weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.models import make_tiny_model


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


@pytest.fixture(scope="module")
def serve_engine(tiny_model_dir):
    from zephyr.generation.engine import Engine

    with Engine.from_spec(str(tiny_model_dir), max_batch_size=16) as engine:
        yield engine


@pytest.fixture(scope="module")
def served(serve_engine):
    """`zephyr serve`'s app on the tiny model, on a free loopback port; yields its /v1 URL."""
    from zephyr.serve.server import ServerThread, create_app

    with ServerThread(create_app(serve_engine, "tiny")) as server:
        yield server.url + "/v1"
