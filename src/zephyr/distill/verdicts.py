"""Reading the judge's replies: strict, so a rating is only ever what the judge wrote.

The formats asked for (``zephyr.distill.rubrics``) label each text ``Text i`` and give its rating as
``Rating: d`` (the full form) or straight after the label, ``Text i: d`` (the compact form). Leniency goes
only as far as those formats allow: markdown decoration (``**Rating:** 4``, ``### Text 1``),
``Output for Text 1``, ``4/5`` or ``4 out of 5``, and a trailing period (``Text 1: 4.``). Everything else is a problem that leaves the text's rating missing:
no rating, a value outside 1-5 or not whole, two different ratings for one text, or a label for a text
that was never shown (the judge has lost track, so none of its ratings can be trusted).

>>> [v.rating for v in parse_ratings("Text 1\\nRating: 4\\nRationale: fine\\n\\nText 2\\nRating: 2", 2)]
[4, 2]
>>> parse_ratings("Text 1: Rating: 9", 1)[0].error
'Text 1: rating 9 is not a whole number from 1 to 5'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"(\d+(?:\.\d+)?)(?!\.?\d)(?:\s*(?:/|out\s+of)\s*(\d+))?"  # never part of a longer number
_LABEL = re.compile(r"^[ \t>#*\-]*(?:output\s+for\s+)?text\s*#?\s*(\d+)\b[ \t]*[:.)\-]?[ \t]*", re.I | re.M)
_RATING = re.compile(r"\brating\b[ \t]*(?:[:=\-]|is)?[ \t]*\[?[ \t]*(?:" + _NUMBER + r")?", re.I)
_BARE = re.compile(r"\[?" + _NUMBER + r"\]?(?=[\s,.;)]|$)")
_RATIONALE = re.compile(r"\brationale\b[ \t]*:[ \t]*(.+)", re.I | re.S)
_TYPE = re.compile(r"^[ \t*\-]*type\b[ \t]*:[ \t]*(.+)$", re.I | re.M)
_OVERALL = re.compile(r"\boverall[ \t]+score\b[ \t]*(?:[:=\-]|is)?[ \t]*\[?[ \t]*" + _NUMBER, re.I)


@dataclass
class Verdict:
    """The judge's verdict on one shown text; ``rating`` None with ``error`` when it could not be read."""

    rating: int | None
    rationale: str | None = None
    type: list[int] | None = None
    error: str | None = None


def _clean(reply: str) -> str:
    return reply.replace("**", "").replace("__", "").replace("\r\n", "\n")


def _value(number: str | None, denominator: str | None, top: int, whole: bool = True) -> float | None:
    """The number if it is on the 1..top scale (``x/top`` allowed), else None."""
    if number is None or (denominator is not None and int(denominator) != top):
        return None
    value = float(number)
    if whole and not value.is_integer():
        return None
    return value if 1 <= value <= top else None


def _segments(text: str, n: int) -> tuple[dict[int, list[tuple[str, str]]], str | None]:
    """Text label -> list of (text right after the label, whole segment); or an error for a bad label."""
    labels = list(_LABEL.finditer(text))
    if not labels and n == 1:
        return {1: [("", text)]}, None
    out: dict[int, list[tuple[str, str]]] = {}
    for k, m in enumerate(labels):
        i = int(m.group(1))
        if not 1 <= i <= n:
            return {}, f"it labels a Text {i}, but only Text 1 to Text {n} were shown"
        end = labels[k + 1].start() if k + 1 < len(labels) else len(text)
        out.setdefault(i, []).append((text[m.end() : end], text[m.start() : end]))
    return out, None


def _ratings_in(after_label: str, segment: str) -> tuple[list[int], list[str]]:
    """Valid ratings, and what is wrong with each invalid one, in one segment."""
    good, bad = [], []
    found = [(m.group(1), m.group(2)) for m in _RATING.finditer(segment)]
    if not found and (bare := _BARE.match(after_label)):  # compact form: the number straight after the label
        found = [(bare.group(1), bare.group(2))]
    for number, denominator in found:
        value = _value(number, denominator, 5)
        if value is not None:
            good.append(int(value))
        elif number is None:
            bad.append("`Rating:` is not followed by a number")
        else:
            written = number + (f"/{denominator}" if denominator else "")
            bad.append(f"rating {written} is not a whole number from 1 to 5")
    return good, bad


def _verdict(i: int, parts: list[tuple[str, str]] | None, n_types: int) -> Verdict:
    if not parts:
        return Verdict(None, error=f"no rating for Text {i}")
    good, bad = [], []
    for after_label, segment in parts:
        g, b = _ratings_in(after_label, segment)
        good, bad = good + g, bad + b
    if len(set(good)) > 1:
        return Verdict(None, error=f"Text {i} has conflicting ratings {sorted(set(good))}")
    if not good:
        return Verdict(None, error=f"Text {i}: {bad[0] if bad else 'no rating given'}")
    segment = "\n".join(s for _, s in parts)
    return Verdict(good[0], _rationale(segment), _types(segment, n_types))


def _rationale(segment: str) -> str | None:
    m = _RATIONALE.search(segment)
    return m.group(1).strip() or None if m else None


def _types(segment: str, n_types: int) -> list[int] | None:
    """The picked type numbers ([] for None); None when absent or unreadable (types are optional extras)."""
    m = _TYPE.search(segment) if n_types else None
    if not m:
        return None
    value = m.group(1).strip().strip("[]().").strip()
    if value.lower() in ("none", "n/a", "no", "-", ""):
        return []
    numbers = re.findall(r"\d+", value)
    picked = sorted({int(x) for x in numbers})
    if (
        not picked
        or re.sub(r"\band\b|[\d\s,;/&]", "", value.lower())
        or not all(1 <= x <= n_types for x in picked)
    ):
        return None
    return picked


def parse_ratings(reply: str, n: int, n_types: int = 0) -> list[Verdict]:
    """One Verdict per shown text (in shown order) from a judge's reply about ``n`` texts."""
    segments, error = _segments(_clean(reply), n)
    if error is not None:
        return [Verdict(None, error=error) for _ in range(n)]
    return [_verdict(i, segments.get(i), n_types) for i in range(1, n + 1)]


def problems(verdicts: list[Verdict]) -> str | None:
    """A sentence listing what could not be read, or None when every rating was read."""
    errors = list(dict.fromkeys(v.error for v in verdicts if v.rating is None))
    return "; ".join(errors) if errors else None


def parse_overall(reply: str) -> tuple[float | None, str | None, str | None]:
    """``(score 1-10, critique text, error)`` from a critique reply ending with ``Overall score: x``."""
    text = _clean(reply)
    found = list(_OVERALL.finditer(text))
    if not found:
        return None, None, "no `Overall score:` line"
    values = {_value(m.group(1), m.group(2), 10, whole=False) for m in found}
    if None in values:
        return None, None, f"overall score {found[0].group(1)} is not a number from 1 to 10"
    if len(values) > 1:
        return None, None, f"conflicting overall scores {sorted(values)}"
    critique = _OVERALL.sub("", text).strip() or None
    return values.pop(), critique, None
