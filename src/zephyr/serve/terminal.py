"""Interactive chat in the terminal: replies stream token by token from the shared batching engine."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from zephyr.generation.engine import Engine
from zephyr.generation.params import InvalidRequest, SamplingParams
from zephyr.io import write_json

HELP_TEXT = """Commands:
  /reset         start a new conversation (the system prompt stays)
  /system TEXT   set the system prompt and start over; `/system` alone removes it
  /save PATH     save the conversation as JSON ({"model": ..., "messages": [...]})
  /help          show this help
  /exit          quit (Ctrl-D works too)
Ctrl-C while a reply is being written stops that reply."""


@dataclass
class ChatSession:
    """A conversation with the model: the turns so far and how to sample the next reply."""

    engine: Engine
    params: SamplingParams
    system: str | None = None
    model_name: str = ""
    out: TextIO = field(default_factory=lambda: sys.stdout)  # looked up late, so redirection works
    messages: list[dict] = field(default_factory=list)

    def conversation(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def reset(self) -> None:
        self.messages = []

    def reply(self, text: str) -> str:
        """Add a user turn, stream the model's answer to ``out``, and keep it in the conversation."""
        self.messages.append({"role": "user", "content": text})
        try:
            handle = self.engine.submit(self.engine.encode_chat(self.conversation()), self.params)
        except InvalidRequest as exc:  # e.g. the conversation outgrew the context: say so, keep chatting
            self.messages.pop()
            self.out.write(f"(not sent: {exc}; /reset starts over)\n")
            return ""
        pieces = []
        try:
            for delta in handle:
                pieces.append(delta.text)
                self.out.write(delta.text)
                self.out.flush()
        except KeyboardInterrupt:
            handle.cancel()
            self.out.write(" [stopped]")
        self.out.write("\n")
        answer = "".join(pieces)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def save(self, path: str | os.PathLike) -> Path:
        """Write the conversation atomically, so an interrupted save never leaves half a file."""
        path = Path(path).expanduser()
        write_json(path, {"model": self.model_name, "messages": self.conversation()})
        return path

    def command(self, line: str) -> bool:
        """Run a slash command; returns False when the user asked to quit."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.reset()
            self.out.write("(new conversation)\n")
        elif name == "/system":
            self.system = rest or None
            self.reset()
            self.out.write(f"(system prompt {'set' if rest else 'removed'}; new conversation)\n")
        elif name == "/save" and rest:
            self.out.write(f"(saved to {self.save(rest)})\n")
        elif name == "/save":
            self.out.write("usage: /save PATH\n")
        else:
            self.out.write(HELP_TEXT + "\n")
        return True


def chat_loop(session: ChatSession, read: Callable[[str], str] = input) -> ChatSession:
    """Read lines until /exit or end of input; lines starting with `/` are commands, others are turns."""
    out = session.out
    out.write(f"Chatting with {session.model_name or 'the model'}. Type /help for commands.\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return session
        if not line.strip():
            continue
        if line.startswith("/"):
            if not session.command(line):
                return session
            continue
        out.write("assistant> ")
        out.flush()
        session.reply(line)
