"""MT-Bench, score-compatible with FastChat's llm_judge: question files, answer files, answer generation
and the judge matches.

Files (the shapes FastChat's gen_model_answer, gen_judgment and show_result read and write):

- question: ``{"question_id": 81, "category": "writing", "turns": ["...", "..."]}``, one per line;
- model answer / reference answer: ``{"question_id", "answer_id", "model_id",
  "choices": [{"index": 0, "turns": ["...", "..."]}], "tstamp"}``, one per line, in a file named
  after the model;
- single judgment: ``{"question_id", "model", "judge": [judge, prompt name], "user_prompt", "judgment",
  "score", "turn", "tstamp"}``; pairwise judgment: ``{"question_id", "model_1", "model_2", "g1_winner",
  "g2_winner", "judge", "g1_user_prompt", "g1_judgment", "g2_user_prompt", "g2_judgment", "turn", "tstamp"}``.

Answering follows FastChat: each category samples at its own temperature (greedy below 1e-4), up to
1024 new tokens, and turn 2 is asked after the model's own turn-1 answer. Math, reasoning and coding
are judged against reference answers.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zephyr.errors import ConfigError, DataError
from zephyr.evaluate.settings import MAX_NEW_TOKENS
from zephyr.generation.jobs import DEFAULT_CONCURRENCY, run_jobs
from zephyr.io import append_jsonl, read_jsonl, write_jsonl

if TYPE_CHECKING:
    from zephyr.generation.backends import Backend

log = logging.getLogger(__name__)

TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7  # a category FastChat does not know
GREEDY_BELOW = 1e-4
REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")
MAX_TURNS = 2
CATEGORY_ORDER = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]

    @property
    def temperature(self) -> float:
        return TEMPERATURES.get(self.category, DEFAULT_TEMPERATURE)

    @property
    def needs_reference(self) -> bool:
        return self.category in REFERENCE_CATEGORIES

    def as_dict(self) -> dict:
        return {"question_id": self.question_id, "category": self.category, "turns": list(self.turns)}


def _question_id(row: dict, source: str, line: int):
    qid = row.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid.strip()):
        raise DataError(
            f"must be an integer or a non-empty string, got {qid!r}",
            source=source,
            line=line,
            field="question_id",
        )
    return qid


def _turns(value, source: str, line: int, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(
            f"must be a non-empty list of strings, got {value!r:.60}", source=source, line=line, field=field
        )
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"must be a non-empty string, got {text!r:.60}",
                source=source,
                line=line,
                field=f"{field}[{i}]",
            )
    return tuple(value)


def load_questions(path: str | Path) -> list[Question]:
    """Questions in FastChat's format; a bad row raises a DataError naming the file, line and field."""
    questions, seen = [], {}
    for loc, row in read_jsonl(path, objects=True):
        line = loc["line"]
        qid = _question_id(row, str(path), line)
        if qid in seen:
            raise DataError(
                f"duplicate question_id {qid!r} (first on line {seen[qid]})",
                source=str(path),
                line=line,
                field="question_id",
            )
        seen[qid] = line
        category = row.get("category")
        if not isinstance(category, str) or not category.strip():
            raise DataError(
                f"must be a non-empty string, got {category!r}", source=str(path), line=line, field="category"
            )
        turns = _turns(row.get("turns"), str(path), line, "turns")
        if len(turns) > MAX_TURNS:
            # The judge prompts grade turn 1 and turn 2 (FastChat's single-v1 and single-v1-multi-turn);
            # accepting more turns would answer them and silently never grade them.
            raise DataError(
                f"has {len(turns)} turns; MT-Bench judges at most {MAX_TURNS}",
                source=str(path),
                line=line,
                field="turns",
            )
        questions.append(Question(qid, category, turns))
    if not questions:
        raise DataError("holds no questions", source=str(path))
    return questions


def load_answers(path: str | Path, *, tolerate_torn_tail: bool = False) -> dict:
    """question_id -> answer record, from a model answer (or reference answer) file. A question answered
    twice keeps its last answer, as FastChat does when it reads the file."""
    answers = {}
    torn = "skip" if tolerate_torn_tail else "raise"
    for loc, row in read_jsonl(path, objects=True, torn_tail=torn):
        line = loc["line"]
        qid = _question_id(row, str(path), line)
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise DataError(
                "must be a non-empty list of {index, turns} objects",
                source=str(path),
                line=line,
                field="choices",
            )
        turns = choices[0].get("turns")
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataError(
                "must be a list of strings", source=str(path), line=line, field="choices[0].turns"
            )
        answers[qid] = row
    return answers


def answer_turns(record: dict) -> list[str]:
    return record["choices"][0]["turns"]


def check_answers(questions: Sequence[Question], answers: dict, model: str, source: str) -> None:
    """Every question answered, with an answer for every turn."""
    missing = [q.question_id for q in questions if q.question_id not in answers]
    if missing:
        raise DataError(
            f"model `{model}` has no answer to question(s) {_ids(missing)}; generate them first",
            source=source,
        )
    short = [q.question_id for q in questions if len(answer_turns(answers[q.question_id])) < len(q.turns)]
    if short:
        raise DataError(
            f"model `{model}` answered fewer turns than asked for question(s) {_ids(short)}", source=source
        )


def require_references(questions: Sequence[Question], references: dict | None, source: str) -> None:
    """Every math, reasoning and coding question needs a reference answer for each turn it is judged on."""
    needing = [q for q in questions if q.needs_reference]
    missing = [q.question_id for q in needing if q.question_id not in (references or {})]
    short = [
        q.question_id
        for q in needing
        if q.question_id in (references or {})
        and len(answer_turns(references[q.question_id])) < min(len(q.turns), 2)
    ]
    if missing or short:
        cats = ", ".join(REFERENCE_CATEGORIES[:3])
        parts = ([f"no reference answer for question(s) {_ids(missing)}"] if missing else []) + (
            [f"too few reference turns for question(s) {_ids(short)}"] if short else []
        )
        raise ConfigError(
            f"{source}: {'; '.join(parts)}. MT-Bench judges {cats} questions against reference answers: pass a "
            "file that has them with `--reference-answers`, or `--no-reference` to judge them with the general "
            "prompts (scores are then not comparable with published MT-Bench numbers)."
        )


def _ids(ids: Sequence) -> str:
    return ", ".join(map(str, ids))


# --- answering ----------------------------------------------------------------------------------------

_ID_ALPHABET = string.ascii_letters + string.digits


def new_answer_id() -> str:
    """A random 22-character id, the shape of FastChat's shortuuid answer ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


def answer_record(question_id, model_id: str, choices: Sequence[Sequence[str]]) -> dict:
    return {
        "question_id": question_id,
        "answer_id": new_answer_id(),
        "model_id": model_id,
        "choices": [{"index": i, "turns": list(turns)} for i, turns in enumerate(choices)],
        "tstamp": time.time(),
    }


def sampling_params(question: Question, max_new_tokens: int, seed: int):
    from zephyr.generation.params import SamplingParams

    t = question.temperature
    return SamplingParams(
        temperature=t if t >= GREEDY_BELOW else 0.0, top_p=1.0, max_tokens=max_new_tokens, seed=seed
    )


def converse(backend: Backend, question: Question, max_new_tokens: int, seed: int = 0) -> list[str]:
    """The model's answers to every turn of one question, each turn asked after its own earlier answers."""
    params = sampling_params(question, max_new_tokens, seed)
    chat: list[dict] = []
    answers = []
    for text in question.turns:
        chat.append({"role": "user", "content": text})
        reply = backend.generate([chat], params)[0][0].text.strip()
        answers.append(reply)
        chat.append({"role": "assistant", "content": reply})
    return answers


def generate_answers(
    backend: Backend,
    questions: Sequence[Question],
    model_id: str,
    answer_file: str | Path,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    num_choices: int = 1,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict:
    """Answer every question not yet in ``answer_file``, many at once; each answer is saved as soon as it is
    complete, so an interrupted run resumes. The file ends sorted by question id, one answer per question."""
    answer_file = Path(answer_file)
    done = load_answers(answer_file, tolerate_torn_tail=True) if answer_file.is_file() else {}
    todo = [q for q in questions if q.question_id not in done]
    if done and todo:
        log.info(
            "%s: %d of %d questions already answered; answering the other %d",
            answer_file,
            len(questions) - len(todo),
            len(questions),
            len(todo),
        )

    def job(q: Question):
        return lambda: [converse(backend, q, max_new_tokens, seed=i) for i in range(num_choices)]

    def save(index: int, choices: list[list[str]]) -> None:
        record = answer_record(todo[index].question_id, model_id, choices)
        append_jsonl(answer_file, [record])
        done[record["question_id"]] = record

    run_jobs(
        [job(q) for q in todo], save, concurrency=concurrency, desc=f"answer ({model_id})", unit="question"
    )
    write_jsonl(answer_file, [done[k] for k in sorted(done, key=_sort_key)])
    return done


def _sort_key(qid) -> tuple:
    return (0, qid, "") if isinstance(qid, int) else (1, 0, str(qid))
