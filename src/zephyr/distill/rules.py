"""A rubric a program checks: the rule-based judge of `feedback` and the `rules` benchmark of `eval`.

A rule set is a few checks on the reply's text (a word limit, keywords it must or must not contain, how it
starts or ends, a regular expression). It is the judge to use when the question is whether training moves
a model towards a behaviour you can state exactly: the verdict is never wrong, costs nothing and is the
same in feedback (where it rates the samples of an iterative round) and in eval (where it measures the
held-out satisfaction rate), so a rise in the second is the model's, not the judge's.

Each reply gets the fraction of rules it passes, ``score`` in [0, 1], and is ``satisfied`` when it passes
them all. As an UltraFeedback-style rating (1-5) that is ``1 + 4 * score``: all rules passed is 5, none is 1.

    >>> rules = RuleSet(max_words=5, contains=["cat"])
    >>> verdict = rules.check("The cat sat.")
    >>> verdict.satisfied, verdict.score, verdict.rating
    (True, 1.0, 5.0)
    >>> rules.check("A dog sat on the mat today.").failed
    ['max_words: 7 words > 5', 'contains: no "cat"']
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from zephyr.config import check_settings, parse_config, setting
from zephyr.errors import ConfigError

RULES_ASPECT = "rules"  # the annotation key the rule judge's ratings go under in a rated row
_WORD = re.compile(r"\S+")


@dataclass
class RuleSet:
    """The checks a reply must pass. Unset checks are not applied; at least one must be set."""

    max_words: int | None = setting("At most this many words (runs of non-space characters).", None, ge=1)
    min_words: int | None = setting("At least this many words.", None, ge=0)
    contains: list[str] = setting(
        "Keywords that must all appear, as whole words, ignoring case (`Paris`, `step by step`).",
        default_factory=list,
    )
    excludes: list[str] = setting(
        "Keywords none of which may appear (whole words, ignoring case).", default_factory=list
    )
    starts_with: str | None = setting("The reply (stripped) starts with this text, ignoring case.", None)
    ends_with: str | None = setting("The reply (stripped) ends with this text, ignoring case.", None)
    pattern: str | None = setting("A Python regular expression the reply must match somewhere.", None)

    def __post_init__(self):
        check_settings(self)
        self._compiled: dict[str, re.Pattern] = {}  # keyword (or "" for `pattern`) -> its regex
        if self.max_words is not None and self.min_words is not None and self.min_words > self.max_words:
            raise ConfigError(
                f"`min_words` ({self.min_words}) is above `max_words` ({self.max_words}): no reply passes both"
            )
        for key in ("contains", "excludes"):
            words = getattr(self, key)
            if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                raise ConfigError(f"`{key}` must be a list of non-empty keywords; got {words!r}", key=key)
            for word in words:
                self._compiled[word] = re.compile(rf"(?<!\w){re.escape(word.strip())}(?!\w)", re.IGNORECASE)
        if self.pattern is not None:
            try:
                self._compiled[""] = re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(
                    f"`pattern` {self.pattern!r} is not a valid regular expression: {exc}"
                ) from None
        if not self.names():
            raise ConfigError(
                "A rule set needs at least one rule: max_words, min_words, contains, excludes, starts_with, "
                "ends_with or pattern (e.g. {max_words: 40, contains: [example]})"
            )

    @classmethod
    def parse(cls, raw: Any, where: str) -> RuleSet:
        """A RuleSet from a recipe mapping; an unknown key is named with the nearest valid one."""
        if isinstance(raw, RuleSet):
            return raw
        if not isinstance(raw, dict):
            raise ConfigError(f"`{where}` must be a mapping of rules such as {{max_words: 40}}; got {raw!r}")
        try:
            return parse_config([cls], None, dict(raw))[0]
        except ConfigError as exc:
            raise ConfigError(f"`{where}`: {exc}") from None

    def to_json(self) -> dict:
        """The rules that are set, as a recipe would write them (the identity of this judge)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}

    def names(self) -> list[str]:
        """One name per check applied (a keyword rule counts once per keyword)."""
        return [name for name, _ in self._checks("")]

    def check(self, text: str) -> RuleVerdict:
        return RuleVerdict(tuple(self._checks(text)))

    def _checks(self, text: str):
        """(rule name, what is wrong or "") for every rule that is set."""
        reply = text.strip()
        words = len(_WORD.findall(reply))
        if self.max_words is not None:
            yield "max_words", f"{words} words > {self.max_words}" if words > self.max_words else ""
        if self.min_words is not None:
            yield "min_words", f"{words} words < {self.min_words}" if words < self.min_words else ""
        for word in self.contains:
            yield "contains", "" if self._compiled[word].search(reply) else f'no "{word}"'
        for word in self.excludes:
            yield "excludes", f'has "{word}"' if self._compiled[word].search(reply) else ""
        folded = reply.casefold()
        if self.starts_with is not None:
            ok = folded.startswith(self.starts_with.strip().casefold())
            yield "starts_with", "" if ok else f"does not start with {self.starts_with!r}"
        if self.ends_with is not None:
            ok = folded.endswith(self.ends_with.strip().casefold())
            yield "ends_with", "" if ok else f"does not end with {self.ends_with!r}"
        if self.pattern is not None:
            yield "pattern", "" if self._compiled[""].search(reply) else f"no match for {self.pattern!r}"


@dataclass(frozen=True)
class RuleVerdict:
    """One reply's outcome on each rule: (rule name, what is wrong), the second empty when it passed."""

    outcomes: tuple[tuple[str, str], ...]

    @property
    def failed(self) -> list[str]:
        return [f"{name}: {problem}" for name, problem in self.outcomes if problem]

    @property
    def satisfied(self) -> bool:
        return all(not problem for _, problem in self.outcomes)

    @property
    def score(self) -> float:
        return sum(not problem for _, problem in self.outcomes) / len(self.outcomes)

    @property
    def rating(self) -> float:
        """The score on UltraFeedback's 1-5 scale."""
        return round(1 + 4 * self.score, 4)

    def rationale(self) -> str:
        if not self.failed:
            return "passed every rule"
        return "failed " + "; ".join(self.failed)


def rule_judge(judge: Any) -> RuleSet | None:
    """The RuleSet of a judge spec ``{type: rules, RULE: VALUE, ...}``; None for a model judge."""
    if not (isinstance(judge, dict) and judge.get("type") == "rules"):
        return None
    return RuleSet.parse({k: v for k, v in judge.items() if k != "type"}, "judge")
