"""Teacher "principles": the system prompts that steer each completion, and how one is drawn per completion.

As in UltraFeedback, every completion is written under one principle (helpfulness, honesty,
truthfulness or verbalized calibration), drawn with weights that may depend on the prompt's category
or source, and then one of the principle's wordings is drawn, so the pool of completions varies in
more than the model that wrote it. The wordings below are this project's own.
"""

from __future__ import annotations

import hashlib
import random

from zephyr.errors import ConfigError

NO_PRINCIPLE = "none"  # no system prompt at all

PRINCIPLE_PROMPTS: dict[str, list[str]] = {
    "helpfulness": [
        "You are a capable assistant. Give answers that are correct, complete and easy to act on, and leave "
        "out anything that does not help the person asking.",
        "Your job is to be genuinely useful. Work out what the user is trying to achieve, answer that directly, "
        "and add the detail or example that makes the answer usable.",
        "Answer as a knowledgeable colleague would: accurate, specific and to the point, with a short "
        "explanation where it helps understanding.",
    ],
    "honesty": [
        "Be honest about what you know. When you are sure, say so plainly; when you are not, say what you are "
        "unsure about; when you do not know, say that instead of inventing an answer.",
        "You value candour over confidence. Point out when a question rests on a false premise, and never "
        "present a guess as a fact.",
        "Answer truthfully and flag your own uncertainty. It is better to say 'I am not certain' than to sound "
        "authoritative and be wrong.",
    ],
    "truthfulness": [
        "Stick to facts you can stand behind. Do not make up names, numbers, quotes or sources, and stay "
        "faithful to what the user actually wrote.",
        "Accuracy comes first. If the question contains a mistaken assumption, correct it gently rather than "
        "building on it, and do not add details you cannot verify.",
        "Give information that is true to the world and true to the question: no invented facts, no "
        "contradictions, no drifting away from what was asked.",
    ],
    "verbalized_calibration": [
        "After answering, state how confident you are in your answer as a percentage, for example "
        "'Confidence: 80%', and make that number honest.",
        "Answer the question, then rate your certainty on a scale from 0% to 100% on a final line starting "
        "with 'Confidence:'.",
        "Give your best answer and end with a line 'Confidence: N%' that reflects how likely you think it is "
        "that the answer is right.",
    ],
}

DEFAULT_PRINCIPLE_WEIGHTS = {
    "helpfulness": 0.4,
    "honesty": 0.2,
    "truthfulness": 0.2,
    "verbalized_calibration": 0.2,
}


def stable_rng(*parts: object) -> random.Random:
    """A random generator seeded from ``parts`` alone (not from the process, the order or the time)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def stable_seed(*parts: object) -> int:
    """A 31-bit sampling seed derived from ``parts``."""
    return stable_rng(*parts).getrandbits(31)


def principle_catalogue(custom: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The built-in wordings, with principles from ``custom`` added or replaced."""
    catalogue = {k: list(v) for k, v in PRINCIPLE_PROMPTS.items()}
    for name, texts in (custom or {}).items():
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t.strip() for t in texts)
        ):
            raise ConfigError(
                f"`principle_prompts.{name}` must be a non-empty list of system prompts; got {texts!r}"
            )
        catalogue[name] = texts
    return catalogue


def check_weights(weights: dict[str, float], catalogue: dict[str, list[str]], where: str) -> None:
    if not isinstance(weights, dict) or not weights:
        raise ConfigError(f"`{where}` must map principle names to weights; got {weights!r}")
    for name, w in weights.items():
        if name != NO_PRINCIPLE and name not in catalogue:
            raise ConfigError(
                f"`{where}` names principle `{name}`, which has no system prompts; known: "
                f"{', '.join(sorted(catalogue) + [NO_PRINCIPLE])} (add wordings with `principle_prompts`)"
            )
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"`{where}.{name}` must be a non-negative number; got {w!r}")
    if sum(weights.values()) <= 0:
        raise ConfigError(f"`{where}` has no positive weight")


def draw_principle(
    rng: random.Random, weights: dict[str, float], catalogue: dict[str, list[str]]
) -> tuple[str, str | None]:
    """A principle by weight and one of its wordings (None for the `none` principle)."""
    names = sorted(weights)  # sorted: the draw must not depend on the order keys were written in
    name = rng.choices(names, weights=[weights[n] for n in names])[0]
    if name == NO_PRINCIPLE:
        return name, None
    return name, rng.choice(catalogue[name])
