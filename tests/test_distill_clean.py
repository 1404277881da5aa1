"""`zephyr clean`: each filter on its own (truecasing, disclaimers, length, decontamination, exact and near
duplicates), the report of what each removed, and the written dataset."""

from __future__ import annotations

import json

import pytest

from support.data import shared_file
from zephyr.cli import main as zephyr_main
from zephyr.config import parse_config
from zephyr.data import load_rows, prompt_id_of
from zephyr.distill.clean import (
    DEFAULT_DISCLAIMERS,
    CleanConfig,
    clean,
    cut_before,
    find_disclaimer,
)
from zephyr.distill.overlap import Contamination, NearDuplicates, fingerprint
from zephyr.distill.truecase import truecase
from zephyr.errors import ConfigError

OFF = {"truecase": False, "remove_disclaimers": False, "dedupe": False, "near_dedupe": False}


def chat(*turns: str) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def run_clean(tmp_path, conversations, **values):
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps(c if isinstance(c, dict) else {"messages": c}) + "\n" for c in conversations)
    )
    cfg = parse_config(
        [CleanConfig], None, {"input": str(source), "output_dir": str(tmp_path / "out"), **values}
    )[0]
    result = clean(cfg)
    kept = [
        json.loads(line) for line in (tmp_path / "out" / "jsonl" / "train_sft.jsonl").read_text().splitlines()
    ]
    return kept, result.report["splits"]["train_sft"]


# ---- truecasing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before,after",
    [
        ("Hello. how are you?", "Hello. How are you?"),
        ("hello there! nice to meet you.", "Hello there! Nice to meet you."),
        ("It works.\n\nthen it stops.", "It works.\n\nThen it stops."),
        ('He said "stop." then left.', 'He said "stop." Then left.'),
        ("Use e.g. apples or i.e. fruit, etc. and more", "Use e.g. apples or i.e. fruit, etc. and more"),
        ("Dr. smith and Mr. jones met at 3.5 km.", "Dr. smith and Mr. jones met at 3.5 km."),
        ("Steps:\n1. open the lid\n2. pour", "Steps:\n1. open the lid\n2. pour"),
        ("Wait... what happened?", "Wait... what happened?"),
        ("Visit www.example.com. then log in", "Visit www.example.com. then log in"),
        ("Buy one. iPhone users get a discount.", "Buy one. iPhone users get a discount."),
        ("iPhone sales rose.", "iPhone sales rose."),
        ("Run it. `x = 1. y = 2` works. now go", "Run it. `x = 1. y = 2` works. Now go"),
        ("Code:\n```python\nx = 1. y\n```\ndone. next", "Code:\n```python\nx = 1. y\n```\ndone. Next"),
        ("J. r. tolkien wrote it.", "J. r. tolkien wrote it."),
        ("Already Fine. Nothing to do.", "Already Fine. Nothing to do."),
        ("x = 5.\n\nStep by step: it grows. y = 3 too.", "x = 5.\n\nStep by step: it grows. y = 3 too."),
        ("f'(x) = 3x. f(2) is 12. g of x is odd.", "f'(x) = 3x. f(2) is 12. g of x is odd."),
        ("i think so. a cat sat. don't go.", "I think so. A cat sat. Don't go."),
        ("config.yaml holds it. see above.", "config.yaml holds it. See above."),
    ],
)
def test_truecasing_fixes_sentence_starts_only(before, after):
    assert truecase(before) == after


# ---- disclaimers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply,hit",
    [
        ("As an AI language model, I cannot browse the web.", True),
        ("I don't have personal opinions, but here are both sides.", True),
        ("I do not have feelings the way people do.", True),
        ("I’m just an AI, so I can’t taste food.", True),
        ("I am not capable of feeling emotions.", True),
        ("My training data only goes up to 2021.", True),
        ("As a language model, I can summarise it.", True),
        ("Many people don't have opinions on this topic.", False),
        ("The AI revolution changed many industries.", False),
        ("I don't have the exact figure, but it is around 5%.", False),
    ],
)
def test_disclaimer_patterns(reply, hit):
    patterns = CleanConfig(input="x", output_dir="y").patterns
    messages = chat("Question?", reply)
    assert (find_disclaimer(messages, patterns) is not None) == hit
    assert find_disclaimer(chat(reply, "An answer."), patterns) is None  # user turns are never checked


def test_disclaimer_removal_truncates_or_drops(tmp_path):
    dialogues = [
        chat(
            "Hi there, how are things?",
            "Good, thanks! What can I do?",
            "Do you like jazz?",
            "As an AI, I do not have personal preferences.",
            "Ok, name a jazz album.",
            "Kind of Blue.",
        ),
        chat("What do you feel about rain?", "I don't have emotions, but rain is vital."),
        chat("Name a planet.", "Mars."),
    ]
    assert cut_before(dialogues[0], 3) == dialogues[0][:2]
    kept, report = run_clean(tmp_path, dialogues, **{**OFF, "remove_disclaimers": True})
    assert [k["messages"] for k in kept] == [dialogues[0][:2], dialogues[2]]
    assert (
        report["filters"]["disclaimers"]["truncated"] == 1
        and report["filters"]["disclaimers"]["removed"] == 1
    )
    assert report["filters"]["disclaimers"]["turns_removed"] == 4
    assert report["filters"]["disclaimers"]["examples"][0]["matched"].lower().startswith("as an ai")
    kept, report = run_clean(
        tmp_path, dialogues, **{**OFF, "remove_disclaimers": True, "disclaimer_action": "drop"}
    )
    assert [k["messages"] for k in kept] == [dialogues[2]] and report["filters"]["disclaimers"][
        "removed"
    ] == 2
    kept, _ = run_clean(
        tmp_path, dialogues, **{**OFF, "remove_disclaimers": True, "disclaimer_phrases": [r"\bmars\b"]}
    )
    assert [k["messages"] for k in kept] == dialogues[:2]  # the list is configurable
    assert len(DEFAULT_DISCLAIMERS) >= 5


# ---- duplicates and decontamination -----------------------------------------------------------------

LONG = (
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun evaporates "
    "water from seas and lakes; the vapour rises, cools and condenses into clouds; and the water falls back "
    "as rain or snow, feeding rivers and groundwater that flow to the sea again. Plants return water to the air "
    "through their leaves, glaciers store it for centuries, and underground aquifers release it slowly into "
    "springs. The whole cycle is driven by solar energy and gravity, and it keeps redistributing heat and "
    "fresh water around the planet."
)


def test_near_duplicate_index():
    index = NearDuplicates(threshold=0.8)
    assert index.check_and_add("a", LONG) is None
    assert index.check_and_add("b", LONG.replace("cools", "chills")) == "a"  # one word changed
    assert index.check_and_add("c", LONG[: len(LONG) // 2]) is None  # half the text: Jaccard well below 0.8
    assert (
        index.check_and_add("d", "A different text about volcanoes and how magma reaches the surface.")
        is None
    )
    assert fingerprint("Hello,  World!") == fingerprint("hello world")


def test_exact_and_near_duplicates_keep_the_first(tmp_path):
    dialogues = [
        chat("Explain the water cycle.", LONG),
        chat("Explain the water cycle!", LONG.upper()),  # the same up to case and punctuation
        chat("Explain the water cycle.", LONG.replace("cools", "chills")),
        chat("Explain volcanoes.", "Magma rises through cracks in the crust and erupts as lava."),
    ]
    kept, report = run_clean(tmp_path, dialogues, **{**OFF, "dedupe": True, "near_dedupe": True})
    assert [k["messages"] for k in kept] == [dialogues[0], dialogues[3]]
    first = prompt_id_of("Explain the water cycle.")
    assert report["filters"]["exact_duplicates"] == {
        "removed": 1,
        "examples": [{"prompt_id": prompt_id_of("Explain the water cycle!"), "duplicate_of": first}],
    }
    assert report["filters"]["near_duplicates"]["removed"] == 1
    kept, _ = run_clean(tmp_path, dialogues, **{**OFF, "dedupe": True, "dedupe_on": "prompt"})
    assert len(kept) == 2  # by first user turn: all water-cycle dialogues are one prompt


def test_decontamination_against_evaluation_prompts(tmp_path):
    evals = tmp_path / "evals.jsonl"
    evals.write_text(
        json.dumps(
            {
                "question_id": 7,
                "turns": [
                    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences.",
                    "Rewrite your previous response. Start every sentence with the letter A.",
                ],
            }
        )
        + "\n"
        + json.dumps({"instruction": "Name three colours."})
        + "\n"
    )
    index = Contamination([("q", "Compose an engaging travel blog post about a recent trip to Hawaii")], n=8)
    assert index.match("please COMPOSE an engaging travel blog post, about a recent trip!")[0] == "q"
    assert index.match("Compose a travel blog post about Hawaii.") is None
    dialogues = [
        chat(
            "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting culture.",
            "Aloha!",
        ),
        chat("Tell me a story.", "Once upon a time..."),
        chat("Quick one: name three colours.", "Red, green, blue."),  # shorter than n: matched whole
        chat("Rewrite your previous response. Start every sentence with the letter A, please.", "A ok."),
    ]
    kept, report = run_clean(tmp_path, dialogues, **OFF, decontaminate=[str(evals)], decontaminate_ngram=10)
    assert [k["messages"] for k in kept] == [dialogues[1]]
    found = report["filters"]["decontaminate"]
    assert found["removed"] == 3 and {e["matched"] for e in found["examples"]} == {"evals:7", "evals:2"}


def test_decontamination_against_mt_bench_and_alpaca_eval(tmp_path):
    mt_bench = shared_file("mt_bench/question.jsonl")
    alpaca = shared_file("alpaca_eval/instructions.jsonl")
    question = json.loads(mt_bench.read_text().splitlines()[0])["turns"][0]
    instruction = json.loads(alpaca.read_text().splitlines()[5])["instruction"]
    dialogues = [
        chat(question, "Sure."),
        chat(f"My boss asked: {instruction}", "Here it is."),
        chat("What is the capital of Peru?", "Lima."),
    ]
    kept, report = run_clean(tmp_path, dialogues, **OFF, decontaminate=[str(mt_bench), str(alpaca)])
    assert [k["messages"] for k in kept] == [dialogues[2]] and report["filters"]["decontaminate"][
        "removed"
    ] == 2


# ---- length, report and output ----------------------------------------------------------------------


def test_length_filters(tmp_path, tokenizer_dir):
    dialogues = [
        chat("Hi", "Hello! How can I help?"),
        chat("Hi", "Ok"),
        chat("Tell me a long story.", "word " * 300),
        chat("One", "Two", "Three", "Four", "Five", "Six"),
        {"messages": [{"role": "user", "content": "only a question"}]},  # unreadable as a dialogue
    ]
    kept, report = run_clean(tmp_path, dialogues, **OFF, min_response_chars=3, max_chars=1000, max_turns=4)
    assert [k["messages"] for k in kept] == [dialogues[0]]
    reasons = sorted(e["reason"] for e in report["filters"]["length"]["examples"])
    assert reasons == ["reply_too_short", "too_many_chars", "too_many_turns"]
    assert report["unreadable"] == 1 and report["rows_in"] == 5 and report["rows_out"] == 1
    kept, report = run_clean(tmp_path, dialogues[:3], **OFF, max_tokens=40, tokenizer=str(tokenizer_dir))
    assert len(kept) == 2 and report["filters"]["length"]["examples"][0]["reason"] == "too_many_tokens"
    with pytest.raises(ConfigError, match="`max_length` needs `tokenizer`"):
        CleanConfig(input="x", output_dir="y", max_length=5)


def test_clean_cli_writes_dataset_jsonl_and_report(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    rows = [
        {"messages": chat("what is rain? tell me.", "Rain is water. it falls from clouds.")},
        {"messages": chat("Do you get sad?", "As an AI, I do not have feelings.")},
        {"messages": chat("what is rain? tell me.", "Rain is water. it falls from clouds.")},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "clean.yaml"
    recipe.write_text(f"input: {source}\noutput_dir: {tmp_path / 'out'}\n")
    assert zephyr_main(["clean", str(recipe), "--near_dedupe=false"]) == 0
    printed = capsys.readouterr().out
    assert "train_sft: 3 in, 1 out" in printed and "disclaimers: removed 1" in printed
    report = json.loads((tmp_path / "out" / "clean_report.json").read_text())
    filters = report["splits"]["train_sft"]["filters"]
    assert filters["truecase"]["modified"] == 2 and filters["truecase"]["turns_changed"] == 4
    assert filters["exact_duplicates"]["removed"] == 1 and report["settings"]["near_dedupe"] is False
    loaded = load_rows(tmp_path / "out", "conversation", split="train_sft").dataset
    assert loaded[0]["messages"] == chat("What is rain? Tell me.", "Rain is water. It falls from clouds.")
    row = json.loads((tmp_path / "out" / "jsonl" / "train_sft.jsonl").read_text())
    assert row["prompt"] == "What is rain? Tell me." and row["prompt_id"] == prompt_id_of(
        "what is rain? tell me."
    )
