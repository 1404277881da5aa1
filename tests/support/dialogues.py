"""Scripted models for the `zephyr dialogue` tests: a user simulator and teachers whose replies follow from
the prompt alone, with markers in a seed's text that make them misbehave on cue.

- ``scripted_backends(...)`` returns ``make_backend`` replacements: spec model ``sim`` is the simulator,
  any other model a teacher (its replies name it);
- markers (in the seed's question or topic) make the simulator end early (``[end-after-1]``), prefix its
  turn with a label (``[prefix]``), wrap it in quotes (``[quote]``), write the assistant's part after its
  question (``[both]``), speak as the assistant (``[as-assistant]``, ``[opener]``) or repeat the opening
  (``[repeat]``), and make the teacher label its reply (``[answer-prefix]``), go on as the user
  (``[answer-goes-on]``), open as the user (``[answer-as-user]``), answer nothing on the second turn
  (``[empty-answer]``) or on the first (``[first-empty]``);
- run as a script, it is the `zephyr` CLI with these backends (``ZEPHYR_TEST_DELAY`` seconds per call),
  for the SIGKILL tests: ``python tests/support/dialogues.py dialogue RECIPE.yaml``.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

if __name__ == "__main__":
    # As a script, Python puts tests/support first on the path, where support/http.py would hide the
    # standard library's `http`; put tests/ there instead, as for the test modules.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from support.fakes import ScriptedBackend


def _opening(prompt: str) -> str:
    """The transcript's first user turn (where a seed's markers are)."""
    found = re.search(r"conversation so far:\n\nUser: (.*?)(?:\n\n|$)", prompt, re.S)
    return found.group(1) if found else prompt


def simulator_reply(conversation: list[dict], params) -> str:
    prompt = conversation[-1]["content"]
    if "Write the first message" in prompt:
        topic = re.search(r"(?:this topic|about this): (.*?)\n", prompt).group(1)
        return f"User: Tell me something specific about {topic}?"
    if "Below is a text" in prompt:
        return "Could you help me understand this text?"
    opening = _opening(prompt)
    n = len(re.findall(r"(?m)^Assistant: ", prompt))  # answers so far
    follow = f"Follow-up {n} about {opening[:30]}?"
    cues = {
        "[end-after-1]": "[END]" if n == 1 else follow,
        "[prefix]": f"### Human: {follow}",
        "[quote]": f'"{follow}"',
        "[both]": f"{follow}\nAssistant: I would answer that myself.",
        "[as-assistant]": "Assistant: Here is everything you need to know.",
        "[opener]": "Certainly! Here is an overview of the whole topic.",
        "[repeat]": opening,
    }
    return next((reply for cue, reply in cues.items() if cue in opening), follow)


def teacher_reply(name: str):
    def reply(conversation: list[dict], params) -> str:
        users = [m["content"] for m in conversation if m["role"] == "user"]
        n = len(users) - 1  # this answer's exchange
        answer = f"Answer {n} by {name}: about '{users[-1][:40]}'."
        opening = users[0]
        cues = {
            "[answer-prefix]": f"**Assistant:** {answer}",
            "[answer-goes-on]": f"{answer}\n\nUser: And what about tomorrow?",
            "[answer-as-user]": "User: wait, I have a question too",
            "[empty-answer]": "   " if n == 1 else answer,
            "[first-empty]": "" if n == 0 else answer,
        }
        return next((r for cue, r in cues.items() if cue in opening), answer)

    return reply


class Recording(ScriptedBackend):
    """A scripted backend that logs each call in a shared list and can wait on a barrier, so a test can
    see which requests were in flight together."""

    def __init__(self, name, reply, log: list, barrier: threading.Barrier | None = None, delay: float = 0.0):
        super().__init__(name, reply)
        self.log, self.barrier, self.delay = log, barrier, delay

    def generate(self, conversations, params):
        self.log.append(self.name)
        if self.barrier is not None:
            self.barrier.wait()
        if self.delay:
            time.sleep(self.delay)
        return super().generate(conversations, params)


def scripted_backends(log: list | None = None, barriers: dict | None = None, delay: float = 0.0):
    """A ``make_backend`` replacement: one scripted backend per model name, made on first use."""
    log = [] if log is None else log
    barriers = barriers or {}
    made: dict[str, Recording] = {}

    def make_backend(spec):
        model = spec.model if hasattr(spec, "model") else (spec["model"] if isinstance(spec, dict) else spec)
        if model not in made:
            reply = simulator_reply if model == "sim" else teacher_reply(model)
            role = "sim" if model == "sim" else "teacher"
            made[model] = Recording(model, reply, log, barriers.get(role), delay)
        return made[model]

    make_backend.made = made
    make_backend.log = log
    return make_backend


def main(argv: list[str]) -> int:
    from zephyr.cli import main as zephyr_main
    from zephyr.generation import backends

    backends.make_backend = scripted_backends(delay=float(os.environ.get("ZEPHYR_TEST_DELAY", "0")))
    return zephyr_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
