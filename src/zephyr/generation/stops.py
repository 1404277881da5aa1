"""Stop strings: where one starts in a row's text, and how much of the text to hold back meanwhile.

The scheduler calls ``scan_stops`` after every token, so its cost per call must not grow with the
reply: it searches only the text added since the last call plus ``len(stop) - 1`` characters before
it (a stop may straddle the two), and ``held_back`` looks only at the last ``len(stop) - 1``
characters. A long reply with long stop strings is then linear, not quadratic, in its length.
"""

from __future__ import annotations

from collections.abc import Sequence


def scan_stops(text: str, stops: Sequence[str], start: int = 0) -> tuple[int | None, int]:
    """Where the first stop string starts (or None), and how many trailing characters to hold back
    because they could be the beginning of a stop string that the next tokens complete.
    ``text[:start]`` was searched before (and holds no stop string): only what follows is new.
    """
    if not stops:
        return None, 0
    longest = max(map(len, stops))
    begin = max(0, start - longest + 1)
    hits = [i for s in stops if (i := text.find(s, begin)) >= 0]
    if hits:
        return min(hits), 0
    return None, held_back(text, stops, longest)


def held_back(text: str, stops: Sequence[str], longest: int) -> int:
    """The length of the longest end of ``text`` that is a proper prefix of some stop string."""
    tail = text[len(text) - min(len(text), longest - 1) :]
    best = 0
    for s in stops:
        # Only ends shorter than ``s`` can be its proper prefix; try the longest first, and only at
        # positions holding its first character (a C-speed find, not a loop over every length).
        i = tail.find(s[0], max(0, len(tail) - len(s) + 1))
        while i >= 0 and len(tail) - i > best:
            if s.startswith(tail[i:]):
                best = len(tail) - i
                break
            i = tail.find(s[0], i + 1)
    return best


def stable_length(text: str) -> int:
    """How much of ``text`` later tokens cannot change: all of it but a trailing half character
    (decoded as U+FFFD until its other bytes arrive; a few, at most, for one UTF-8 character)."""
    end = len(text)
    while end > 0 and len(text) - end < 4 and text[end - 1] == "\ufffd":
        end -= 1
    return end
