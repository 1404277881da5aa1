"""Truecasing for distilled dialogues: a sentence or reply that starts lower-case gets its capital back,
leaving code, formulas, abbreviations and deliberate lower case (identifiers, `iPhone`) alone.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# Patterns (case-insensitive regular expressions) for assistant turns that disclaim feelings, opinions or
# being a person. Our own list; replace it with `disclaimer_phrases`.
ABBREVIATIONS = {
    "e.g",
    "i.e",
    "etc",
    "vs",
    "cf",
    "al",
    "approx",
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "no",
    "fig",
    "inc",
    "ltd",
    "jr",
    "sr",
    "u.s",
    "u.k",
    "a.m",
    "p.m",
    "ca",
    "vol",
    "ed",
    "eq",
}
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.S)
_WORD = r"([a-z]\w*(?:['’][a-z]+)*)"
_SENTENCE_START = re.compile(r"(?<=[.!?])([\"')\]]*)(\s+)" + _WORD)
_FIRST_WORD = re.compile(r"^(\s*[\"'(\[]*)" + _WORD)
_FORMULA_NEXT = re.compile(r"\s*[=(<>+*/^\[{'’]")


def truecase(text: str) -> str:
    """Capitalise sentence starts written in lower case, outside code spans and blocks.

    >>> truecase("Hello. how are you? fine, e.g. apples. see `x. y` and www.example.com")
    'Hello. How are you? Fine, e.g. apples. See `x. y` and www.example.com'
    """
    out, last = [], 0
    for m in _CODE.finditer(text):
        out += [_truecase_prose(text[last : m.start()], first=last == 0), m.group(0)]
        last = m.end()
    out.append(_truecase_prose(text[last:], first=last == 0))
    return "".join(out)


def _truecase_prose(prose: str, first: bool) -> str:
    def fix(m: re.Match) -> str:
        before = prose[: m.start()].rstrip("\"')]")
        previous = before.rsplit(None, 1)[-1] if before.split() else ""
        if _no_sentence_end(previous) or _deliberate(m.group(3), prose[m.end() :]):
            return m.group(0)
        return m.group(1) + m.group(2) + m.group(3)[0].upper() + m.group(3)[1:]

    def fix_first(m: re.Match) -> str:
        if _deliberate(m.group(2), prose[m.end() :]):
            return m.group(0)
        return m.group(1) + m.group(2)[0].upper() + m.group(2)[1:]

    fixed = _SENTENCE_START.sub(fix, prose)
    return _FIRST_WORD.sub(fix_first, fixed, count=1) if first else fixed


def _no_sentence_end(previous: str) -> bool:
    """Whether a period ends an abbreviation, initial, number, ellipsis or address rather than a sentence."""
    word = previous.lower().rstrip(".!?")
    return (
        not previous
        or word in ABBREVIATIONS
        or previous.endswith("..")
        or len(word) == 1
        or word.replace(".", "").isdigit()
        or bool(re.search(r"[/@:]|\w\.\w", previous))
    )


def _deliberate(word: str, after: str) -> bool:
    """Whether a lower-case start is on purpose: iPhone, eBay, snake_case, x86, file.txt, or a variable
    or function in a formula (``x = 5``, ``f(x)``, ``f'(x)``)."""
    return (
        any(ch.isupper() or ch.isdigit() for ch in word[1:])
        or "_" in word
        or after.startswith(".")
        or (len(word) == 1 and word not in "ai")
        or bool(_FORMULA_NEXT.match(after))
    )


def truecase_messages(messages: list[dict], roles: list[str]) -> tuple[list[dict], int]:
    out, changed = [], 0
    for m in messages:
        content = truecase(m["content"]) if m["role"] in roles else m["content"]
        changed += content != m["content"]
        out.append({"role": m["role"], "content": content})
    return out, changed
