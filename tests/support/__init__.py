"""Support code the test modules share: plain helpers, not tests and not fixtures.

Test modules import from here (``from support.models import make_tiny_model``) and never from one
another or from ``conftest``; pytest fixtures that several modules use live in ``tests/conftest.py``,
which pytest makes visible to every test module without an import. ``tests/`` is on ``sys.path``
because it holds the rootdir conftest (and has no ``__init__.py``), so ``support`` imports as a
top-level package.

- ``support.data``: files under ``../shared/data``, skipping the test when they are absent.
- ``support.models``: tiny random Llama builders (and saved checkpoints) and the activation-checkpointing
  helper.
- ``support.fakes``: a scripted generation backend for the evaluation tests.
- ``support.dialogues``: a scripted user simulator and teachers for `zephyr dialogue` (also as a CLI).
- ``support.http``: ``FaultProxy`` (a fault-injecting HTTP proxy), fast-retry backend specs and ``call``
  (one JSON request).
- ``support.processes``: starting the real CLI paused at a named point, for the SIGKILL tests.
- ``support.preference``: TRL's reward metric names, noisy policy copies, ``packed`` attention for a block,
  a pipeline recipe with one alignment stage.
- ``support.gguf_models``: tiny Llamas and a SentencePiece-style tokenizer for the GGUF export tests.
"""
