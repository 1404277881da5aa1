"""Text overlap: exact and near-duplicate detection (MinHash with LSH) and n-gram decontamination.

All three work on the same normalised words (lower case, punctuation dropped), so "Hello,  World!" and
"hello world" are the same text to every filter.

>>> words("Hello,  World! It's 3.5 km.")
['hello', 'world', 'it', 's', '3', '5', 'km']
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_PRIME = (1 << 31) - 1  # hash values and permutations live below this Mersenne prime


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def fingerprint(text: str) -> str:
    """Identity of a text up to case, spacing and punctuation (for exact-duplicate removal)."""
    return hashlib.sha1(" ".join(words(text)).encode("utf-8")).hexdigest()


class NearDuplicates:
    """Finds texts whose word-shingle Jaccard similarity with an earlier text reaches ``threshold``.

    Each text gets a MinHash signature (``num_perm`` permutations of its ``shingle``-word shingles);
    locality-sensitive hashing over bands of the signature finds candidate pairs cheaply, and a
    candidate counts only if the signatures agree on at least ``threshold`` of their positions (the
    MinHash estimate of Jaccard similarity). The first text of a group is kept.
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, shingle: int = 5, seed: int = 1):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
        self.threshold, self.shingle = threshold, shingle
        self.bands, self.rows = _bands(threshold, num_perm)
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, _PRIME, size=num_perm, dtype=np.int64)
        self._b = rng.integers(0, _PRIME, size=num_perm, dtype=np.int64)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._signatures: list[np.ndarray] = []
        self._keys: list[str] = []

    def signature(self, text: str) -> np.ndarray:
        tokens = words(text)
        shingles = {
            " ".join(tokens[i : i + self.shingle]) for i in range(max(1, len(tokens) - self.shingle + 1))
        }
        hashes = np.fromiter((zlib.crc32(s.encode("utf-8")) & _PRIME for s in shingles), dtype=np.int64)
        return (
            ((self._a[:, None] * hashes[None, :] + self._b[:, None]) % _PRIME).min(axis=1).astype(np.uint32)
        )

    def check_and_add(self, key: str, text: str) -> str | None:
        """The key of an earlier near-duplicate of ``text``; otherwise None, and ``text`` is remembered."""
        sig = self.signature(text)
        bands = [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        candidates = {
            j for band, bucket in zip(bands, self._buckets, strict=True) for j in bucket.get(band, ())
        }
        for j in sorted(candidates):
            if float(np.mean(self._signatures[j] == sig)) >= self.threshold:
                return self._keys[j]
        index = len(self._keys)
        self._keys.append(key)
        self._signatures.append(sig)
        for band, bucket in zip(bands, self._buckets, strict=True):
            bucket.setdefault(band, []).append(index)
        return None


def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands x rows for LSH: the most rows per band (fewest false candidates) whose detection threshold,
    (1/bands)^(1/rows), stays well below ``threshold`` so true near-duplicates are rarely missed."""
    pairs = [(num_perm // r, r) for r in range(1, num_perm + 1) if num_perm % r == 0]
    good = [(b, r) for b, r in pairs if (1 / b) ** (1 / r) <= threshold - 0.1]
    return max(good, key=lambda p: p[1]) if good else (num_perm, 1)


class Contamination:
    """Flags text sharing any word ``n``-gram with a set of evaluation prompts.

    An evaluation prompt shorter than ``n`` words counts as a single gram of its own length, so a short
    benchmark question copied whole is still caught.
    """

    def __init__(self, prompts: Iterable[tuple[str, str]], n: int = 10):
        if n < 1:
            raise ValueError(f"n must be at least 1; got {n}")
        self.n = n
        self._grams: dict[str, str] = {}  # gram -> id of the first evaluation prompt containing it
        self._lengths: set[int] = set()
        self.size = 0
        for prompt_id, text in prompts:
            tokens = words(text)
            if not tokens:
                continue
            size = min(n, len(tokens))
            self._lengths.add(size)
            for gram in _grams(tokens, size):
                self._grams.setdefault(gram, prompt_id)
            self.size += 1

    def match(self, text: str) -> tuple[str, str] | None:
        """``(evaluation prompt id, shared gram)`` for the first overlap, or None."""
        tokens = words(text)
        for size in sorted(self._lengths, reverse=True):
            for gram in _grams(tokens, size):
                if gram in self._grams:
                    return self._grams[gram], gram
        return None


def _grams(tokens: list[str], size: int) -> Iterable[str]:
    return (" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1))
