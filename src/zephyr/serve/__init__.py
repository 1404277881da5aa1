"""Chat with and serve a model: the batching engine, the OpenAI-compatible server and its chat page,
and the terminal chat.

- ``engine.Engine``: dynamic batching generation (``generate`` for batch use, ``submit`` to stream);
- ``server.create_app`` / ``server.ServerThread``: the HTTP API (``zephyr serve``);
- ``terminal.chat_loop``: the interactive terminal chat (``zephyr chat``).
"""

from zephyr.serve.engine import Completion, Engine, SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams"]
