"""MT-Bench judge matches: the judge prompts for single grading and pairwise comparison built from
questions, answers and references, keyed as FastChat keys its judgment records, and judgment files read back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from zephyr.errors import DataError
from zephyr.evaluate.judges import JudgeTask, PromptSet, parse_rating, parse_verdict
from zephyr.evaluate.mt_bench import Question, answer_turns, load_questions
from zephyr.evaluate.scoring import summarize_pairwise, summarize_single
from zephyr.io import read_jsonl

log = logging.getLogger(__name__)


def _reference_turns(q: Question, references: dict | None) -> list[str] | None:
    """The reference answer's turns for a question graded against one (math, reasoning, coding)."""
    if references is None or not q.needs_reference:
        return None
    return answer_turns(references[q.question_id])


def single_tasks(
    questions: Sequence[Question],
    answers: dict[str, dict],
    prompts: PromptSet,
    references: dict | None,
    judge: str,
) -> list[JudgeTask]:
    """One task per (model, question, turn); turn 2 only for two-turn questions (as FastChat)."""
    tasks = []
    for model, model_answers in answers.items():
        for q in questions:
            ref = _reference_turns(q, references)
            for turn in (1, 2) if len(q.turns) == 2 else (1,):
                prompt = prompts.pick("single", ref is not None, turn == 2)
                key = (q.question_id, model, judge, prompt.name, turn)
                user = prompt.render(
                    **_single_values(q, answer_turns(model_answers[q.question_id]), ref, turn)
                )
                tasks.append(JudgeTask(key, [prompt.conversation(user)], _single_builder(key, user, prompt)))
    return tasks


def _single_values(q: Question, answer: list[str], ref: list[str] | None, turn: int) -> dict:
    values = (
        {"question": q.turns[0], "answer": answer[0]}
        if turn == 1
        else {
            "question_1": q.turns[0],
            "question_2": q.turns[1],
            "answer_1": answer[0],
            "answer_2": answer[1],
        }
    )
    return values | _ref_values(ref, turn)


def _ref_values(ref: list[str] | None, turn: int) -> dict:
    if ref is None:
        return {}
    return {"ref_answer_1": ref[0]} | ({"ref_answer_2": ref[1]} if turn == 2 else {})


def _single_builder(key: tuple, user_prompt: str, prompt):
    qid, model, judge, _, turn = key

    def build(replies: list[str]) -> dict:
        return {
            "question_id": qid,
            "model": model,
            "judge": [judge, prompt.name],
            "user_prompt": user_prompt,
            "judgment": replies[0],
            "score": parse_rating(replies[0]),
            "turn": turn,
            "tstamp": time.time(),
        }

    return build


def single_key(record: dict) -> tuple:
    judge, prompt_name = record["judge"]
    return (record["question_id"], record["model"], judge, prompt_name, int(record["turn"]))


def pair_tasks(
    questions: Sequence[Question],
    pairs: Sequence[tuple[str, str]],
    answers: dict[str, dict],
    prompts: PromptSet,
    references: dict | None,
    judge: str,
) -> list[JudgeTask]:
    """One task per (model pair, question, turn): two judge games, the second with positions swapped."""
    tasks = []
    for m1, m2 in pairs:
        for q in questions:
            ref = _reference_turns(q, references)
            for turn in (1, 2) if len(q.turns) == 2 else (1,):
                prompt = prompts.pick("pairwise", ref is not None, turn == 2)
                key = (q.question_id, m1, m2, judge, prompt.name, turn)
                a1, a2 = answer_turns(answers[m1][q.question_id]), answer_turns(answers[m2][q.question_id])
                g1 = prompt.render(**_pair_values(q, a1, a2, ref, turn))
                g2 = prompt.render(**_pair_values(q, a2, a1, ref, turn))
                tasks.append(
                    JudgeTask(
                        key,
                        [prompt.conversation(g1), prompt.conversation(g2)],
                        _pair_builder(key, g1, g2, prompt),
                    )
                )
    return tasks


def _pair_values(q: Question, a: list[str], b: list[str], ref: list[str] | None, turn: int) -> dict:
    if turn == 1:
        values = {"question": q.turns[0], "answer_a": a[0], "answer_b": b[0]}
    else:
        values = {
            "question_1": q.turns[0],
            "question_2": q.turns[1],
            "answer_a_1": a[0],
            "answer_b_1": b[0],
            "answer_a_2": a[1],
            "answer_b_2": b[1],
        }
    return values | _ref_values(ref, turn)


def _pair_builder(key: tuple, g1_prompt: str, g2_prompt: str, prompt):
    qid, m1, m2, judge, _, turn = key
    g1_map, g2_map = {"A": "model_1", "B": "model_2"}, {"A": "model_2", "B": "model_1"}

    def build(replies: list[str]) -> dict:
        g1 = parse_verdict(replies[0], prompt.output_format)
        g2 = parse_verdict(replies[1], prompt.output_format)
        return {
            "question_id": qid,
            "model_1": m1,
            "model_2": m2,
            "g1_winner": g1_map.get(g1, g1),
            "g2_winner": g2_map.get(g2, g2),
            "judge": [judge, prompt.name],
            "g1_user_prompt": g1_prompt,
            "g1_judgment": replies[0],
            "g2_user_prompt": g2_prompt,
            "g2_judgment": replies[1],
            "turn": turn,
            "tstamp": time.time(),
        }

    return build


def pair_key(record: dict) -> tuple:
    judge, prompt_name = record["judge"]
    return (
        record["question_id"],
        record["model_1"],
        record["model_2"],
        judge,
        prompt_name,
        int(record["turn"]),
    )


def load_judgments(path: str | Path, kind: str) -> list[dict]:
    """Judgment records (``kind`` single or pairwise), checked for the fields scoring reads."""
    need = (
        ("question_id", "model", "score", "turn")
        if kind == "single"
        else ("question_id", "model_1", "model_2", "g1_winner", "g2_winner", "turn")
    )
    out = []
    for loc, row in read_jsonl(path, objects=True, torn_tail="skip"):
        line = loc["line"]
        for key in need:
            if key not in row:
                raise DataError("is missing", source=str(path), line=line, field=key)
        if kind == "single" and (
            isinstance(row["score"], bool) or not isinstance(row["score"], (int, float))
        ):
            raise DataError(
                f"must be a number, got {row['score']!r}", source=str(path), line=line, field="score"
            )
        out.append(row)
    return out


def pair_summary(records: list[dict], baseline: str | None) -> dict:
    errors = sum("error" in (r["g1_winner"], r["g2_winner"]) for r in records)
    return {
        "n_errors": errors,
        "models": {m: p.as_dict() for m, p in summarize_pairwise(records, baseline).items()},
    }


def score_judgments(path: str, questions: str | None, baseline: str | None) -> dict:
    """Scores from an existing judgment file, exactly as FastChat's show_result computes them."""
    path = Path(path)
    first = next((row for _, row in read_jsonl(path, objects=True)), None)
    if first is None:
        raise DataError("holds no judgments", source=str(path))
    if "g1_winner" in first:
        records = load_judgments(path, "pairwise")
        involved = {m for r in records for m in (r["model_1"], r["model_2"])}
        baseline = baseline if baseline in involved else None
        return {
            "mode": "pairwise",
            "baseline": baseline,
            "judgment_file": str(path),
            **pair_summary(records, baseline),
        }
    question_file = Path(questions) if questions else path.parent.parent / "question.jsonl"
    categories = None
    if question_file.is_file():
        categories = {q.question_id: q.category for q in load_questions(question_file)}
    summary = summarize_single(load_judgments(path, "single"), categories)
    return {
        "mode": "single",
        "judgment_file": str(path),
        "models": {m: v.as_dict() for m, v in summary.items()},
    }
