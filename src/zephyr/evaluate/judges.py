"""LLM judges: judge prompt templates, how a verdict is read out of the judge's reply, and running many
judgments through any generation backend with resume.

Prompt files use FastChat's judge_prompts.jsonl format (``name``, ``type``, ``system_prompt``,
``prompt_template``, ``output_format``, ...). FastChat's file is used by prompt name: single-v1,
single-v1-multi-turn, single-math-v1, single-math-v1-multi-turn for single grading and pair-v2,
pair-v2-multi-turn, pair-math-v1, pair-math-v1-multi-turn for pairwise. Without a file, the project's
own prompts (``DEFAULT_PROMPTS``, same placeholders and output formats) are used.

Verdicts are parsed exactly as FastChat parses them: a rating is the first ``[[x]]`` (else the first
``[x]``) holding a number, -1 when there is none; a pairwise verdict is ``[[A]]``, else ``[[B]]``, else
``[[C]]`` (tie), else ``error``, tested in that order on the whole reply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zephyr.errors import ConfigError, DataError
from zephyr.evaluate.scoring import in_scale
from zephyr.generation.jobs import DEFAULT_CONCURRENCY, run_jobs
from zephyr.io import read_jsonl

if TYPE_CHECKING:
    from zephyr.generation.backends import Backend

log = logging.getLogger(__name__)

ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
TWO_SCORES = re.compile(r"\[\[(\d+\.?\d*),\s?(\d+\.?\d*)\]\]")
TWO_SCORES_BACKUP = re.compile(r"\[(\d+\.?\d*),\s?(\d+\.?\d*)\]")
TIE_DELTA = 0.1  # two ratings this close are a tie (FastChat's pair-v1 rule)
OUTPUT_FORMATS = {"single": ("[[rating]]",), "pairwise": ("[[A]]", "[[rating_a,rating_b]]")}

JUDGE_MAX_TOKENS = 2048  # FastChat's judge budget


# --- prompts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt template in FastChat's format."""

    name: str
    type: str  # "single" or "pairwise"
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = "general"
    description: str = ""

    def render(self, **values: str) -> str:
        try:
            return self.prompt_template.format(**values)
        except KeyError as exc:
            raise ConfigError(
                f"Judge prompt `{self.name}` uses the placeholder {{{exc.args[0]}}}, which this kind of judgment "
                f"does not fill; it can use: {', '.join(sorted(values))}"
            ) from None

    def conversation(self, user_prompt: str) -> list[dict]:
        """The messages sent to the judge: the prompt's system text (if any), then the filled template."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": user_prompt}]


# (mode, reference-based, multi-turn) -> FastChat's prompt name for that job.
FASTCHAT_NAMES = {
    ("single", False, False): "single-v1",
    ("single", False, True): "single-v1-multi-turn",
    ("single", True, False): "single-math-v1",
    ("single", True, True): "single-math-v1-multi-turn",
    ("pairwise", False, False): "pair-v2",
    ("pairwise", False, True): "pair-v2-multi-turn",
    ("pairwise", True, False): "pair-math-v1",
    ("pairwise", True, True): "pair-math-v1-multi-turn",
}


@dataclass
class PromptSet:
    """Judge prompts by name, and which name serves which job."""

    prompts: dict[str, JudgePrompt]
    names: dict[tuple[str, bool, bool], str]
    source: str

    def pick(self, mode: str, reference: bool, multi_turn: bool) -> JudgePrompt:
        name = self.names[(mode, reference, multi_turn)]
        if name not in self.prompts:
            raise ConfigError(
                f"{self.source} has no judge prompt named `{name}`, needed for {mode} judging"
                f"{' with reference answers' if reference else ''}{' of turn 2' if multi_turn else ''}; "
                f"it has: {', '.join(sorted(self.prompts)) or 'none'}"
            )
        return self.prompts[name]


_PROMPT_FIELDS = ("name", "type", "system_prompt", "prompt_template", "output_format")


def _prompt_from_row(row: dict, source: str, line: int) -> JudgePrompt:
    for key in _PROMPT_FIELDS:
        if not isinstance(row.get(key), str):
            raise DataError(
                f"must be a string, got {type(row.get(key)).__name__}", source=source, line=line, field=key
            )
    if row["type"] not in OUTPUT_FORMATS:
        raise DataError(
            f"must be `single` or `pairwise`; got {row['type']!r}", source=source, line=line, field="type"
        )
    if row["output_format"] not in OUTPUT_FORMATS[row["type"]]:
        allowed = " or ".join(OUTPUT_FORMATS[row["type"]])
        raise DataError(
            f"a {row['type']} prompt's output format must be {allowed}; got {row['output_format']!r}",
            source=source,
            line=line,
            field="output_format",
        )
    extra = {k: str(row.get(k, "")) for k in ("category", "description")}
    return JudgePrompt(**{k: row[k] for k in _PROMPT_FIELDS}, **extra)


def load_judge_prompts(path: str | Path | None) -> PromptSet:
    """FastChat-format judge prompts from ``path``, or the project's defaults when ``path`` is None."""
    if path is None:
        prompts = {p.name: p for p in DEFAULT_PROMPTS}
        return PromptSet(
            prompts,
            dict(zip(FASTCHAT_NAMES, (p.name for p in DEFAULT_PROMPTS), strict=True)),
            "the default judge prompts",
        )
    prompts = {}
    for loc, row in read_jsonl(path, objects=True):
        line = loc["line"]
        prompt = _prompt_from_row(row, str(path), line)
        if prompt.name in prompts:
            raise DataError(
                f"duplicate prompt name {prompt.name!r}", source=str(path), line=line, field="name"
            )
        prompts[prompt.name] = prompt
    return PromptSet(prompts, dict(FASTCHAT_NAMES), str(path))


# --- verdicts -----------------------------------------------------------------------------------------


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_rating(judgment: str) -> int | float:
    """The judge's rating: the first ``[[n]]``, else the first ``[n]``; -1 when there is none or it lies
    outside MT-Bench's 1-10 scale (counted as unreadable, like a missing rating)."""
    match = ONE_SCORE.search(judgment) or ONE_SCORE_BACKUP.search(judgment)
    if not match:
        return -1
    rating = _number(match.group(1))
    return rating if in_scale(rating) else -1


def parse_verdict(judgment: str, output_format: str = "[[A]]") -> str:
    """``A``, ``B``, ``tie`` or ``error`` for a pairwise judgment (positions as the judge saw them)."""
    if output_format == "[[rating_a,rating_b]]":
        match = TWO_SCORES.search(judgment) or TWO_SCORES_BACKUP.search(judgment)
        if not match:
            return "error"
        a, b = (_number(g.strip()) for g in match.groups())
        return "tie" if abs(a - b) <= TIE_DELTA else ("A" if a > b else "B")
    for token, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if token in judgment:
            return verdict
    return "error"


# --- running judgments --------------------------------------------------------------------------------


@dataclass
class JudgeTask:
    """One unit of finished work: the judge conversations it needs (one, or two with positions swapped)
    and how to turn the judge's replies into the record that is saved."""

    key: tuple
    conversations: list[list[dict]]
    build: Callable[[list], dict]  # the judge's reply texts, or with `options` their option log-probs


def run_tasks(
    backend: Backend,
    tasks: Sequence[JudgeTask],
    save: Callable[[dict], None],
    *,
    max_tokens: int = JUDGE_MAX_TOKENS,
    concurrency: int = DEFAULT_CONCURRENCY,
    desc: str = "judge",
    options: Sequence[str] | None = None,
) -> list[dict]:
    """Judge every task at temperature 0, many at once, calling ``save`` with each record as soon as it is
    made. With ``options`` the judge writes nothing: each task gets the log-probability of each option
    as the first token of the reply. A backend failure raises RunInterrupted after every finished record
    has been saved."""
    from zephyr.generation.params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    records: list[dict] = []

    def job(task: JudgeTask):
        if options:
            return lambda: task.build(backend.option_logprobs(task.conversations, options))
        return lambda: task.build(
            [choices[0].text for choices in backend.generate(task.conversations, params)]
        )

    def keep(_: int, record: dict) -> None:
        save(record)
        records.append(record)

    run_jobs([job(t) for t in tasks], keep, concurrency=concurrency, desc=desc, unit="judgment")
    return records


# --- the project's own default prompts ----------------------------------------------------------------

_RATE = (
    "End with your rating of the response on a 1-to-10 scale, written in double square brackets exactly like "
    'this: "Rating: [[7]]".'
)
_PICK = (
    'After your comparison, give your verdict in double square brackets: "[[A]]" if assistant A\'s answer is '
    'better, "[[B]]" if assistant B\'s answer is better, or "[[C]]" if they are equally good.'
)
_FAIR = (
    "Judge fairly: the order in which the answers appear, their length and the assistants' names must not sway "
    "you."
)
_ONE = "[Question]\n{question}\n\n"
_REF_ONE = "[Reference Answer]\n{ref_answer_1}\n[End of Reference Answer]\n\n"
_DIALOGUE = (
    "<|Conversation with the Assistant|>\n\n### User:\n{question_1}\n\n### Assistant:\n{answer_1}\n\n"
    "### User:\n{question_2}\n\n### Assistant:\n{answer_2}\n\n<|End of Conversation|>"
)
_REF_DIALOGUE = (
    "<|Reference Dialogue|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n"
    "### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|End of Reference Dialogue|>\n\n\n"
)


def _pair_dialogue(side: str) -> str:
    s = side.lower()
    return (
        f"<|Conversation with Assistant {side}|>\n\n### User:\n{{question_1}}\n\n### Assistant {side}:\n"
        f"{{answer_{s}_1}}\n\n### User:\n{{question_2}}\n\n### Assistant {side}:\n{{answer_{s}_2}}\n\n"
        f"<|End of Conversation with Assistant {side}|>"
    )


_PAIR_ANSWERS = (
    "[Answer of Assistant A]\n{answer_a}\n[End of Answer of Assistant A]\n\n"
    "[Answer of Assistant B]\n{answer_b}\n[End of Answer of Assistant B]"
)
_SYSTEM = "You are a careful, impartial evaluator of AI assistants."

DEFAULT_PROMPTS = (  # in the order of FASTCHAT_NAMES
    JudgePrompt(
        "zephyr-single",
        "single",
        _SYSTEM,
        "You will grade an AI assistant's answer to the question below. Weigh how helpful, relevant, accurate, "
        "deep, creative and detailed it is. First explain your assessment in a few sentences. "
        + _RATE
        + "\n\n"
        + _ONE
        + "[Assistant's Answer]\n{answer}\n[End of Assistant's Answer]",
        "[[rating]]",
        "general",
        "Grade one answer to a single question.",
    ),
    JudgePrompt(
        "zephyr-single-multi-turn",
        "single",
        "You grade the second answer an AI assistant gives in a two-turn conversation. Weigh how helpful, "
        "relevant, accurate, deep, creative and detailed that second answer is, in the light of the first turn. "
        "First explain your assessment in a few sentences. " + _RATE + "\n\n",
        _DIALOGUE,
        "[[rating]]",
        "general",
        "Grade the answer to the follow-up question.",
    ),
    JudgePrompt(
        "zephyr-single-ref",
        "single",
        _SYSTEM,
        "You will grade an AI assistant's answer to the question below for correctness and helpfulness. A "
        "reference answer is given: compare the assistant's answer with it, point out any mistakes and correct "
        "them. "
        + _RATE
        + "\n\n"
        + _ONE
        + _REF_ONE
        + "[Assistant's Answer]\n{answer}\n[End of Assistant's Answer]",
        "[[rating]]",
        "math",
        "Grade one answer against a reference answer.",
    ),
    JudgePrompt(
        "zephyr-single-ref-multi-turn",
        "single",
        "You grade the second answer an AI assistant gives in a two-turn conversation, for correctness and "
        "helpfulness. Reference answers to both questions are given: compare the assistant's second answer with "
        "the second reference answer, point out any mistakes and correct them. " + _RATE + "\n\n",
        _REF_DIALOGUE + _DIALOGUE,
        "[[rating]]",
        "math",
        "Grade the follow-up answer against a reference.",
    ),
    JudgePrompt(
        "zephyr-pair",
        "pairwise",
        "You compare two AI assistants' answers to the same question and decide which one follows the "
        "instructions and answers better, weighing helpfulness, relevance, accuracy, depth, creativity and "
        "detail. Explain your comparison briefly first. " + _FAIR + " " + _PICK,
        _ONE + _PAIR_ANSWERS,
        "[[A]]",
        "general",
        "Compare two answers to one question.",
    ),
    JudgePrompt(
        "zephyr-pair-multi-turn",
        "pairwise",
        "You compare two AI assistants' conversations with the same user and decide which assistant answers the "
        "user's second question better, weighing helpfulness, relevance, accuracy, depth, creativity and detail. "
        "Explain your comparison briefly first. " + _FAIR + " " + _PICK,
        _pair_dialogue("A") + "\n\n\n" + _pair_dialogue("B"),
        "[[A]]",
        "general",
        "Compare two answers to the follow-up question.",
    ),
    JudgePrompt(
        "zephyr-pair-ref",
        "pairwise",
        "You compare two AI assistants' answers to the same question for correctness and helpfulness. A "
        "reference answer is given: check both answers against it and note their mistakes. "
        + _FAIR
        + " "
        + _PICK,
        _ONE + _REF_ONE + _PAIR_ANSWERS,
        "[[A]]",
        "math",
        "Compare two answers against a reference.",
    ),
    JudgePrompt(
        "zephyr-pair-ref-multi-turn",
        "pairwise",
        "You compare two AI assistants' conversations with the same user, for the correctness and helpfulness of "
        "their answers to the second question. Reference answers are given: check both assistants against them "
        "and note their mistakes. " + _FAIR + " " + _PICK,
        _REF_DIALOGUE + _pair_dialogue("A") + "\n\n\n" + _pair_dialogue("B"),
        "[[A]]",
        "math",
        "Compare two follow-up answers against a reference.",
    ),
)

# Read from the judge's next-token distribution rather than its text (as AlpacaEval 2.0's weighted
# annotators do with the API's log-probs): every verdict is readable, and the preference is graded.
LETTER_PROMPT = JudgePrompt(
    "zephyr-pair-letter",
    "pairwise",
    _SYSTEM,
    "Two AI assistants answered the same instruction. Decide which answer follows the instruction better, "
    "weighing helpfulness, relevance, accuracy and detail. "
    + _FAIR
    + "\n\n"
    + _ONE
    + _PAIR_ANSWERS
    + "\n\nWhich answer is better? Reply with one letter only: A or B.",
    "A|B",
    "general",
    "Compare two answers; the verdict is the probability of the first token being A or B.",
)
LETTER_OPTIONS = ("A", "B")
