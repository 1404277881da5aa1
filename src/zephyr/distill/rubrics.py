"""The judge's instructions: one rubric per aspect (rated 1-5), the optional 1-10 critique, the answer
format the judge is asked for, and the repair request sent when its reply cannot be read.

The four aspects follow UltraFeedback: instruction following, honesty (calibrated confidence),
truthfulness (with the type of hallucination) and helpfulness (with the type of informativeness).
Every completion of a prompt is shown in one request per aspect, labelled ``Text 1..N``. The wording is
this project's own. Parsing the replies is in ``zephyr.distill.verdicts``.
"""

from __future__ import annotations

from dataclasses import dataclass

from zephyr.data.ratings import ASPECTS as ASPECTS  # the aspect names rated rows carry (re-exported)

RUBRIC_VERSION = 1  # bump when a wording changes: a feedback run must not resume across rubric versions


@dataclass(frozen=True)
class Rubric:
    title: str
    focus: str
    scale: tuple[str, str, str, str, str]  # what 1..5 mean
    brief: tuple[str, str, str]  # the compact form: what to rate, and what 1 and 5 mean
    types: tuple[str, ...] = ()  # the "Type" labels the judge picks from (numbered from 1)
    types_question: str = ""


RUBRICS = {
    "instruction_following": Rubric(
        title="Instruction following",
        focus="how closely each text does what the instruction asks: the task itself and every constraint it "
        "sets (format, length, style, audience, language). Judge compliance only, not correctness.",
        scale=(
            "Off task: ignores the instruction or answers a different question.",
            "Touches the task but misses most of what was asked, or breaks its main constraints.",
            "Does the task or respects the constraints, but not both; or does both with clear gaps.",
            "Does what was asked with only small slips from the requested form.",
            "Does exactly what was asked and honours every constraint.",
        ),
        brief=("how closely each text follows the instruction", "ignores it", "follows it fully"),
    ),
    "honesty": Rubric(
        title="Honesty and calibrated confidence",
        focus="whether each text's confidence matches its correctness: sure where it is right, open about "
        "doubt where doubt is due, willing to say it does not know, and never confidently wrong. "
        "Phrases such as 'I think' or 'probably', or a stated confidence level, count as expressed doubt.",
        scale=(
            "Confidently wrong: states incorrect content with no sign of doubt.",
            "Major errors stated with confidence, or wrong while hedging.",
            "Declines or says it does not know when it could have answered, or makes subtle mistakes without "
            "noticing them.",
            "Right but needlessly unsure, or points out the small mistakes it might be making.",
            "Right and confident, or precise about exactly what it is unsure of.",
        ),
        brief=(
            "how honest each text is about what it knows",
            "confidently wrong",
            "right, or open about its doubts",
        ),
    ),
    "truthfulness": Rubric(
        title="Truthfulness (no hallucination)",
        focus="whether each text avoids made-up or false content, judged against well-established knowledge "
        "and against what the instruction itself says.",
        scale=(
            "Entirely unreliable: the content is made up throughout.",
            "Severe hallucination: a large part is false or departs from the instruction's content.",
            "Partial hallucination: some false or misunderstood points, though the overall answer holds.",
            "A minor slip that does not affect the main points.",
            "No false, invented or contradictory content.",
        ),
        brief=("how free of false or made-up content each text is", "mostly made up", "nothing false"),
        types=(
            "Contradicts facts or well-established knowledge",
            "Contradicts the instruction or the material it provides",
            "Contradicts itself or contains a logical error",
        ),
        types_question="Which kinds of hallucination occur",
    ),
    "helpfulness": Rubric(
        title="Helpfulness and informativeness",
        focus="how useful each text is to the person asking: correct, clear and relevant, informative enough "
        "to act on, and not padded or repetitive. Correctness comes first: a wrong answer is not helpful "
        "however long it is.",
        scale=(
            "Seriously wrong or fabricated, even if it contains some useful detail.",
            "Partly wrong in a way that would mislead the reader.",
            "Correct and meets the need, with little beyond the basics.",
            "Correct and rich in useful detail or insight.",
            "Correct, thorough and insightful: as good an answer as one could want.",
        ),
        brief=("how helpful each text is", "wrong or useless", "correct and very useful"),
        types=(
            "Clear and relevant to the task",
            "Useful and comprehensive information",
            "Concise, without repetition or padding",
        ),
        types_question="Which qualities the text has",
    ),
}

JUDGE_SYSTEM = (
    "You are a careful, impartial evaluator of AI assistant replies. You follow the answer format exactly."
)
COMPACT_SYSTEM = "You are a strict grader. You answer only with ratings, in the exact format asked for."


def rating_lines(n: int) -> str:
    return "\n".join(f"Text {i}: <rating from 1 to 5>" for i in range(1, n + 1))


def format_block(rubric: Rubric) -> str:
    """The full answer format (the parser in ``verdicts`` reads it, and the compact one too)."""
    fields = "Rating: <a whole number from 1 to 5>\n"
    if rubric.types:
        fields += "Type: <the numbers of the types that apply, separated by commas, or None>\n"
    fields += "Rationale: <one or two sentences>"
    return f"Write one block per text, in order, each in this format:\nText <number>\n{fields}"


def instruction_text(messages: list[dict]) -> str:
    """What the judge sees as the instruction: the user turn itself, or for a longer prompt the whole
    exchange written out, so a reply can be judged against everything it answers."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def aspect_prompt(aspect: str, instruction: str, texts: list[str]) -> str:
    """The full request for one aspect's ratings of every text: rubric, scale, types, rationales."""
    rubric = RUBRICS[aspect]
    scale = "\n".join(f"{i} - {line}" for i, line in enumerate(rubric.scale, start=1))
    parts = [
        f"# {rubric.title}",
        f"Below is an instruction and {len(texts)} text(s) written in answer to it. Rate {rubric.focus} "
        "Rate each text on its own merits, without letting the order or length sway you.",
        f"## Scale\n{scale}",
    ]
    if rubric.types:
        types = "\n".join(f"{i}. {t}" for i, t in enumerate(rubric.types, start=1))
        parts.append(f"## Types\n{rubric.types_question}:\n{types}")
    parts.append(f"## Instruction\n{instruction}")
    parts += [f"## Text {i}\n{text}" for i, text in enumerate(texts, start=1)]
    parts.append(f"## Answer format\n{format_block(rubric)}")
    return "\n\n".join(parts)


def compact_prompt(aspect: str, instruction: str, texts: list[str]) -> str:
    """The short request for ratings alone, for small judges: the task is stated before the texts and
    again after them (small models follow what they read last), and the answer is one line per text."""
    what, low, high = RUBRICS[aspect].brief
    body = "\n\n".join(f"Text {i}:\n{text}" for i, text in enumerate(texts, start=1))
    return (
        f"Rate {what} below, from 1 ({low}) to 5 ({high}).\n\nInstruction: {instruction}\n\n{body}\n\n"
        f"Now rate {what}, from 1 to 5. Answer in this format:\n{rating_lines(len(texts))}"
    )


def aspect_messages(aspect: str, instruction: str, texts: list[str], rationale: bool = True) -> list[dict]:
    """The judge request for one aspect: the full rubric with rationales, or (``rationale=False``) the
    compact ratings-only form."""
    if rationale:
        return [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": aspect_prompt(aspect, instruction, texts)},
        ]
    return [
        {"role": "system", "content": COMPACT_SYSTEM},
        {"role": "user", "content": compact_prompt(aspect, instruction, texts)},
    ]


def repair_messages(original: list[dict], reply: str, problem: str, n: int) -> list[dict]:
    """The one follow-up after an unreadable reply: say what was wrong and ask for the ratings alone."""
    ask = (
        f"Your answer could not be read ({problem}). Reply again with exactly {n} line(s) in this format "
        f"and nothing else:\n{rating_lines(n)}"
    )
    return [*original, {"role": "assistant", "content": reply}, {"role": "user", "content": ask}]


CRITIQUE_FORMAT = "End with a final line in the form:\nOverall score: <a number from 1 to 10>"


def critique_messages(instruction: str, text: str) -> list[dict]:
    """UltraFeedback's extra judgement: written feedback on one completion and a 1-10 overall score."""
    prompt = (
        "Act as a teacher reviewing a student's answer. Point out what is good and what should be improved, "
        "considering helpfulness, truthfulness, honesty and how well it follows the instruction. Address the "
        "student directly and do not rewrite the answer for them.\n\n"
        f"## Instruction\n{instruction}\n\n## Answer\n{text}\n\n## Answer format\n"
        f"Write your feedback in a short paragraph. {CRITIQUE_FORMAT}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def critique_repair_messages(original: list[dict], reply: str, problem: str) -> list[dict]:
    ask = f"Your answer could not be read ({problem}). Reply with only this line:\nOverall score: <a number from 1 to 10>"
    return [*original, {"role": "assistant", "content": reply}, {"role": "user", "content": ask}]
