"""Chat with and serve a model: the OpenAI-compatible server and its chat page, and the terminal chat,
both on the batching engine of ``zephyr.generation`` (re-exported here for callers that serve).

- ``Engine`` (``zephyr.generation.engine``): batching generation (``generate`` for batch use, ``submit``
  to stream);
- ``server.create_app`` / ``server.ServerThread``: the HTTP API (``zephyr serve``);
- ``terminal.chat_loop``: the interactive terminal chat (``zephyr chat``).
"""

from zephyr.generation.engine import Completion, Engine
from zephyr.generation.params import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams"]
