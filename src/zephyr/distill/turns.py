"""Checking each turn of a simulated dialogue as it is written, with a named reason for every change.

Text from the user simulator and the teachers is checked before it joins the dialogue (so the next
prompt already sees clean text). Two kinds of outcome:

- **fixes**, after which the turn is kept: ``role_prefix`` (a leading ``User:``, ``### Human:``,
  ``**Assistant:**``, ``<|user|>`` ... of the turn's own role is removed), ``role_part`` (the turn goes
  on to write the other side's part after a line-start label: that part is cut off),
  ``enclosing_quotes`` (a user message wrapped whole in quotes);
- **stops**, after which the dialogue ends before this exchange (it keeps the exchanges before it, and
  is rejected if none is left): ``simulator_end`` (the end signal), ``empty_turn``, ``repeated_turn``
  (the same text, ignoring case, spacing and punctuation, as an earlier turn, or a user turn that parrots
  the last answer), ``simulator_as_assistant`` (the user turn opens with an assistant label or speaks as
  one: "Sure! Here is...", "As an AI language model..."), ``teacher_as_user`` (a reply that opens
  with a user label).

Where this overlaps `zephyr clean`, it uses clean's own code: its disclaimer patterns (a user turn that
disclaims being an AI is the simulator acting as the assistant) and the overlap fingerprint its exact
deduplication compares. Disclaimers in the teachers' replies are left to `zephyr clean`, which runs next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from zephyr.distill.clean import disclaims
from zephyr.distill.overlap import fingerprint, words
from zephyr.distill.simulator import ends_dialogue

FIXES = ("role_prefix", "role_part", "enclosing_quotes")
STOPS = (
    "simulator_end",
    "empty_turn",
    "repeated_turn",
    "simulator_as_assistant",
    "teacher_as_user",
)

# Labels that only ever name a side of a chat; a turn must not start with the other side's, nor go on
# to write it (a line starting with one). ``OWN`` labels are only stripped from the start of the turn
# of that role: "Question:" opening a user turn is a leaked label, in a reply it may be a quiz.
ROLES = {
    "user": ("user", "human"),
    "assistant": ("assistant", "ai", "ai assistant", "bot", "chatbot", "gpt", "chatgpt"),
}
OWN = {"user": ("me", "the user", "question"), "assistant": ("the assistant", "answer", "response")}


def _label(names: tuple[str, ...], at_line_start: bool) -> re.Pattern:
    """A role label: ``<|name|>`` or ``[Name]`` as they are, or ``Name:`` with markdown around it
    (``### Name:``, ``**Name:**``, ``**Name**:``)."""
    alt = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in sorted(names, key=len, reverse=True))
    label = (
        rf"(?:<\|(?:{alt})\|>|\[(?:{alt})\]"
        rf"|(?:\#{{1,6}}[ \t]*)?[*_]{{0,2}}(?:{alt})[*_]{{0,2}}[ \t]*:[*_]{{0,2}})"
    )
    if at_line_start:
        return re.compile(rf"(?:^|\n)[ \t]*{label}", re.I)
    return re.compile(rf"^\s*{label}[ \t]*\n?", re.I)


LEADING = {role: _label(ROLES[role] + OWN[role], False) for role in ROLES}
OTHER_LEADING = {role: _label(ROLES[role], False) for role in ROLES}
IN_TEXT = {role: _label(ROLES[role], True) for role in ROLES}
OTHER = {"user": "assistant", "assistant": "user"}

# How an assistant opens a reply; a user turn opening this way is the simulator answering, not asking.
_ASSISTANT_OPENERS = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|absolutely)\b[,!.:]?\s*(?:here|i|let)"
    r"|i(?:'d| would) be (?:happy|glad) to help|great question|what a (?:great|good) question"
    r"|here(?:'s| is| are) (?:a|an|the|some) (?:\w+ )?(?:answer|explanation|overview|summary)\b)",
    re.I,
)
_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'"}


@dataclass
class TurnCheck:
    """What came of one turn: the text to keep (None: the dialogue stops here, see ``stop``) and the fixes."""

    text: str | None
    fixes: list[dict] = field(default_factory=list)  # {"filter", "removed"}
    stop: str | None = None


def check_turn(role: str, text: str, messages: list[dict]) -> TurnCheck:
    """Check a new ``role`` turn against the dialogue so far (``messages``, ending with the other role)."""
    check = TurnCheck(None)
    if role == "user" and ends_dialogue(text):
        check.stop = "simulator_end"
        return check
    text = text.strip()
    if OTHER_LEADING[OTHER[role]].match(text):
        check.stop = "simulator_as_assistant" if role == "user" else "teacher_as_user"
        return check
    while found := LEADING[role].match(text):
        check.fixes.append({"filter": "role_prefix", "removed": found.group(0).strip()})
        text = text[found.end() :].strip()
    if found := IN_TEXT[OTHER[role]].search(text):
        check.fixes.append({"filter": "role_part", "removed": _snippet(text[found.start() :])})
        text = text[: found.start()].strip()
    if role == "user" and len(text) > 1 and _QUOTES.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
        check.fixes.append({"filter": "enclosing_quotes", "removed": text[0] + text[-1]})
        text = text[1:-1].strip()
    check.stop = _stop(role, text, messages)
    check.text = None if check.stop else text
    return check


def _stop(role: str, text: str, messages: list[dict]) -> str | None:
    if not words(text):  # nothing but spaces and punctuation
        return "empty_turn"
    if role == "user" and (_ASSISTANT_OPENERS.match(text) or disclaims(text)):
        return "simulator_as_assistant"
    key = fingerprint(text)
    if any(fingerprint(m["content"]) == key for m in messages if m["role"] == role) or (
        role == "user" and messages and fingerprint(messages[-1]["content"]) == key
    ):
        return "repeated_turn"
    return None


def _snippet(text: str, limit: int = 120) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."
