"""The user simulator of `zephyr dialogue`: the prompts that make a chat model play the human side.

UltraChat never published its user-simulator prompts; these are this project's own. Two jobs:

- an **opening**, when a seed gives only a topic (or a material without an instruction): write the first
  message a person would send about it;
- a **follow-up** after each assistant answer: the next user message, which builds on that answer, in a
  style drawn per turn (brief, casual, detailed, beginner, expert, sceptical, ...), with a goal that
  depends on the sector (dig deeper into a question about the world; revise or extend a piece of
  writing; keep working on the same material).

The simulator sees the conversation as a **transcript inside one user message**, not as a chat with the
roles swapped. A chat model is trained to answer whatever sits in the user role; with roles swapped it
reads the assistant's answers as questions to answer and slides back into the assistant's voice (small
models nearly always do), and templates that reject a system prompt would lose the instructions. Asked
to "write the user's next message" below a labelled transcript, any instruction-tuned model knows which
side it is on, the instructions stay in the one message every template accepts, and what it writes
back is the user's text alone, which ``zephyr.distill.turns`` then checks.

The simulator ends a dialogue early by replying with ``END_SIGNAL`` alone; ``ends_dialogue`` finds it
however a model decorates it.
"""

from __future__ import annotations

import re

# Changing any wording below changes the data: it is part of the stage's settings (`prompt_version`).
PROMPT_VERSION = 1
END_SIGNAL = "[END]"

USER_STYLES = (
    "briefly, in one or two sentences",
    "casually, the way people type in a chat window",
    "in some detail, saying why you want to know",
    "as someone new to the subject who wants a simpler explanation",
    "as someone who knows the basics and wants more depth",
    "with some healthy scepticism about the last answer",
    "asking for a concrete example or for the steps",
    "relating it to your own situation",
)

FOLLOW_UP_GOALS = {
    "world": (
        "Dig deeper into the subject: ask about a detail, a cause or a consequence the assistant mentioned, "
        "ask it to clarify or back up a claim, or move on to a closely related question."
    ),
    "writing": (
        "Keep working on the piece of writing: ask for a revision (tone, length, audience, structure), a "
        "continuation, another version, or changes to one specific part."
    ),
    "materials": (
        "Keep working with the same material: ask about another part of it, or ask for it to be summarised, "
        "explained, rewritten or turned into something else (a list, questions, a title)."
    ),
}

OPENINGS = {
    "world": (
        "Write the first message of a conversation in which a curious person asks an AI assistant about "
        "this topic: {topic}\n\nThe message is one specific, natural question or request, not a list of "
        "questions."
    ),
    "writing": (
        "Write the first message of a conversation in which a person asks an AI assistant to write "
        "something about this: {topic}\n\nSay what kind of text is wanted (a poem, a story, an email, a "
        "speech, an essay, a product description, ...) and add a detail or a constraint or two."
    ),
    "materials": (
        "Below is a text that a person has in front of them. Write the message in which they ask an AI "
        "assistant for help with it: to summarise it, answer a question about it, rewrite it, or pull "
        "information out of it. Write only the request: the text itself will be attached after it."
        "\n\nThe text:\n{material}"
    ),
}

_RULES = (
    "Rules:\n"
    "- Write only the user's message, in the user's own voice.\n"
    "- Never answer the question yourself and never write the assistant's part.\n"
    '- Do not put a label such as "User:" in front of it.'
)


def opening_prompt(sector: str, topic: str | None, material: str | None) -> list[dict]:
    """The request for a dialogue's first user message, from a topic (or a material)."""
    text = OPENINGS[sector].format(topic=topic or "", material=material or "")
    return [{"role": "user", "content": f"{text}\n\n{_RULES}"}]


def follow_up_prompt(sector: str, messages: list[dict], style: str, max_chars: int) -> list[dict]:
    """The request for the next user message after the assistant's last answer."""
    content = (
        "You are playing the user in a conversation with an AI assistant. The conversation so far:\n\n"
        f"{transcript(messages, max_chars)}\n\n"
        f"Write the user's next message, {style}. {FOLLOW_UP_GOALS[sector]}\n\n"
        f"{_RULES}\n"
        "- Build on the assistant's last answer; do not ask again what was already asked.\n"
        f"- If the user would have nothing more to ask, reply with {END_SIGNAL} and nothing else."
    )
    return [{"role": "user", "content": content}]


_LABELS = {"user": "User", "assistant": "Assistant"}


def transcript(messages: list[dict], max_chars: int) -> str:
    """``User: ...`` / ``Assistant: ...`` blocks. Past ``max_chars`` the opening is cut to its first quarter
    and the oldest turns after it are left out, the latest kept, so a long dialogue still fits."""
    blocks = [f"{_LABELS[m['role']]}: {m['content'].strip()}" for m in messages]
    if sum(map(len, blocks)) <= max_chars:
        return "\n\n".join(blocks)
    head = blocks[0] if len(blocks[0]) <= max_chars // 4 else blocks[0][: max_chars // 4] + " [...]"
    budget, kept = max_chars - len(head), []
    for block in reversed(blocks[1:]):
        if len(block) > budget:
            if not kept:  # the last answer always stays, cut if it must be
                kept.append(block[: max(budget, 0)] + " [...]")
            break
        kept.insert(0, block)
        budget -= len(block)
    omitted = len(blocks) - 1 - len(kept)
    gap = [f"[... {omitted} earlier message(s) left out ...]"] if omitted else []
    return "\n\n".join([head, *gap, *kept])


_END = re.compile(r"[\[<(]\s*end(?:\s+of\s+(?:the\s+)?(?:conversation|dialogue|chat))?\s*[\]>)]", re.I)


def ends_dialogue(text: str) -> bool:
    """True when the simulator gave the end signal (``[END]``, ``<END>``, ``[End of conversation]``, or a
    bare ``END``), alone or with other words."""
    return bool(_END.search(text)) or text.strip().strip(".!*_`'\"").upper() == "END"
