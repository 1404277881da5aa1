"""Data layer: every source format, every row shape, every bad-input error, and both mixture forms."""

from __future__ import annotations

import hashlib
import json
import logging
import random

import datasets
import pytest
from datasets import Dataset, DatasetDict

from support.data import shared_file
from zephyr.data import load_datasets, load_mixer, load_mixture, load_rows, normalise_row, prompt_id_of
from zephyr.data.config import DataArguments
from zephyr.errors import ConfigError, DataError, ZephyrError


def chat(*turns: str, system: str | None = None) -> list[dict]:
    """user/assistant messages alternating from a user turn."""
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def write_jsonl(path, rows) -> str:
    """Rows given as dicts are dumped; strings are written as raw lines (for malformed input)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def conv_rows(n: int, tag: str = "c") -> list[dict]:
    return [
        {"messages": chat(f"{tag} question {i}", f"{tag} answer {i}"), "prompt_id": f"{tag}{i}"}
        for i in range(n)
    ]


def uf_binarized_row(i: int) -> dict:
    """A row shaped like HuggingFaceH4/ultrafeedback_binarized."""
    prompt = f"Prompt number {i}?"
    chosen = chat(prompt, f"good answer {i}")
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
        "chosen": chosen,
        "rejected": chat(prompt, f"bad answer {i}"),
        "messages": chosen,
        "score_chosen": 8.0,
        "score_rejected": 5.5,
    }


def contents(ds, column="messages") -> list[str]:
    return [m[0]["content"] for m in ds[column]]


# --- sources ---------------------------------------------------------------------------------------


def test_jsonl_conversation_drops_other_columns(tmp_path):
    src = write_jsonl(tmp_path / "sft.jsonl", conv_rows(3) + [""])  # a trailing blank line is fine
    result = load_rows(src, "conversation")
    assert result.skipped == 0 and result.skipped_examples == []
    assert result.dataset.column_names == ["messages"]
    assert result.dataset[1]["messages"] == chat("c question 1", "c answer 1")


def test_json_array_and_split_object(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(conv_rows(2)))
    assert len(load_rows(tmp_path / "a.json", "conversation").dataset) == 2
    (tmp_path / "b.json").write_text(json.dumps({"train_sft": conv_rows(3), "test_sft": conv_rows(1)}))
    assert len(load_rows(tmp_path / "b.json", "conversation", split="test_sft").dataset) == 1
    with pytest.raises(ConfigError, match="train_sft"):
        load_rows(tmp_path / "b.json", "conversation", split="validation")


def test_json_file_holding_json_lines(tmp_path):
    src = write_jsonl(tmp_path / "lines.json", conv_rows(3))
    assert len(load_rows(src, "conversation").dataset) == 3


def test_parquet(tmp_path):
    Dataset.from_list([uf_binarized_row(i) for i in range(4)]).to_parquet(tmp_path / "prefs.parquet")
    ds = load_rows(tmp_path / "prefs.parquet", "preference").dataset
    assert len(ds) == 4
    assert ds[0]["prompt"] == chat("Prompt number 0?")
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "good answer 0"}]


def test_save_to_disk_dataset_dict_and_dataset(tmp_path):
    splits = DatasetDict(
        {
            "train_prefs": Dataset.from_list([uf_binarized_row(i) for i in range(5)]),
            "test_prefs": Dataset.from_list([uf_binarized_row(i) for i in range(5, 7)]),
        }
    )
    splits.save_to_disk(tmp_path / "uf")
    assert len(load_rows(tmp_path / "uf", "preference", split="test_prefs").dataset) == 2
    with pytest.raises(ConfigError, match="test_prefs, train_prefs"):
        load_rows(tmp_path / "uf", "preference")  # no `train`, two splits: must choose
    splits["train_prefs"].save_to_disk(tmp_path / "one")
    assert len(load_rows(tmp_path / "one", "preference", split="ignored").dataset) == 5


def test_handbook_layout_dir_split_saved_to_disk(tmp_path):
    Dataset.from_list(conv_rows(3)).save_to_disk(tmp_path / "mix" / "train_sft")
    assert len(load_rows(tmp_path / "mix", "conversation", split="train_sft").dataset) == 3


def test_dir_of_split_files_and_shards(tmp_path):
    write_jsonl(tmp_path / "train_sft.jsonl", conv_rows(4))
    data = tmp_path / "data"
    data.mkdir()
    Dataset.from_list(conv_rows(2, "x")).to_parquet(data / "test_sft-00000-of-00002.parquet")
    Dataset.from_list(conv_rows(3, "y")).to_parquet(data / "test_sft-00001-of-00002.parquet")
    assert len(load_rows(tmp_path, "conversation", split="train_sft").dataset) == 4
    test = load_rows(tmp_path, "conversation", split="test_sft").dataset
    assert contents(test) == [f"x question {i}" for i in range(2)] + [f"y question {i}" for i in range(3)]
    with pytest.raises(ConfigError, match="no split `train_gen`.*test_sft, train_sft"):
        load_rows(tmp_path, "conversation", split="train_gen")


def test_missing_path_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "nope.jsonl", "conversation")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv.*unsupported file type"):
        load_rows(tmp_path / "x.csv", "conversation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no saved dataset"):
        load_rows(tmp_path / "empty", "conversation")


def test_hub_failure_is_one_clear_error(monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError(
            "Couldn't reach 'HuggingFaceH4/ultrachat_200k' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ZephyrError) as info:
        load_rows("HuggingFaceH4/ultrachat_200k", "conversation", split="train_sft")
    message = str(info.value)
    assert (
        "HuggingFaceH4/ultrachat_200k" in message and "train_sft" in message and "ConnectionError" in message
    )
    assert calls == [(("HuggingFaceH4/ultrachat_200k", None), {"split": "train_sft"})]


def test_hub_dataset_is_normalised(monkeypatch):
    hub = DatasetDict({"train_prefs": Dataset.from_list([uf_binarized_row(i) for i in range(3)])})
    monkeypatch.setattr(
        datasets, "load_dataset", lambda spec, config, split=None: hub[split] if split else hub
    )
    assert (
        len(load_rows("HuggingFaceH4/ultrafeedback_binarized", "preference", split="train_prefs").dataset)
        == 3
    )
    assert len(load_rows("HuggingFaceH4/ultrafeedback_binarized", "preference").dataset) == 3


def test_columns_selects_raw_columns(tmp_path):
    rows = [uf_binarized_row(i) for i in range(2)]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    ds = load_rows(src, "preference", columns=["chosen", "rejected"]).dataset
    assert ds[0]["prompt"] == chat("Prompt number 0?")  # inferred from the shared opening turn
    assert ds[0]["score_chosen"] is None  # the score columns were not selected
    Dataset.from_list(rows).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="no column `prompts`"):
        load_rows(tmp_path / "p.parquet", "preference", columns=["prompts"])


# --- row shapes ------------------------------------------------------------------------------------


def test_conversation_keeps_system_and_multi_turn(tmp_path):
    row = {
        "messages": [{"role": "system", "content": "", "name": "x"}] + chat("hi", "hello", "more?", "sure")
    }
    ds = load_rows(write_jsonl(tmp_path / "a.jsonl", [row]), "conversation").dataset
    assert ds[0]["messages"] == [{"role": "system", "content": ""}] + chat("hi", "hello", "more?", "sure")


def test_preference_ultrafeedback_binarized_shape(tmp_path):
    ds = load_rows(write_jsonl(tmp_path / "uf.jsonl", [uf_binarized_row(0)]), "preference").dataset
    assert ds.column_names == ["prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected"]
    assert ds[0] == {
        "prompt": chat("Prompt number 0?"),
        "chosen": [{"role": "assistant", "content": "good answer 0"}],
        "rejected": [{"role": "assistant", "content": "bad answer 0"}],
        "prompt_id": hashlib.sha256(b"Prompt number 0?").hexdigest(),
        "score_chosen": 8.0,
        "score_rejected": 5.5,
    }


def test_preference_shapes_normalise_alike():
    loc = {"source": "mem", "row": 0}
    strings = normalise_row("preference", {"prompt": "Q?", "chosen": "A", "rejected": "B"}, loc)
    trl_style = normalise_row(
        "preference",
        {
            "prompt": chat("Q?"),
            "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}],
        },
        loc,
    )
    implicit = normalise_row("preference", {"chosen": chat("Q?", "A"), "rejected": chat("Q?", "B")}, loc)
    assert strings == trl_style == implicit
    assert strings["prompt_id"] == hashlib.sha256(b"Q?").hexdigest() == prompt_id_of("Q?")
    assert strings["score_chosen"] is None


def test_preference_multi_turn_prompt_is_longest_shared_prefix():
    loc = {"source": "mem", "row": 0}
    row = {
        "chosen": chat("q1", "a1", "q2", "good", system="sys"),
        "rejected": chat("q1", "a1", "q2", "bad", system="sys"),
    }
    out = normalise_row("preference", row, loc)
    assert out["prompt"] == chat("q1", "a1", "q2", system="sys")
    assert out["chosen"] == [{"role": "assistant", "content": "good"}]
    # A string prompt naming the user turn behind a system turn is accepted too.
    row = {"prompt": "q", "chosen": chat("q", "good", system="s"), "rejected": chat("q", "bad", system="s")}
    assert normalise_row("preference", row, loc)["prompt"] == chat("q", system="s")


def test_shared_ultrafeedback_sample():
    path = shared_file("ultrafeedback/binarized_sample_train1000.jsonl")
    result = load_rows(path, "preference", on_error="skip")
    # The sample holds 4 pairs with chosen == rejected and 2 with an empty reply.
    assert (len(result.dataset), result.skipped) == (994, 6)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    row = result.dataset[0]
    assert row["prompt"] == chat(first["prompt"])
    assert row["chosen"] == [{"role": "assistant", "content": first["chosen"]}]
    assert row["prompt_id"] == hashlib.sha256(first["prompt"].encode()).hexdigest()
    assert (row["score_chosen"], row["score_rejected"]) == (
        first["metadata"]["score_chosen"],
        first["metadata"]["score_rejected"],
    )
    with pytest.raises(
        DataError, match=r"binarized_sample_train1000\.jsonl, line 307, field `rejected`: is identical"
    ):
        load_rows(path, "preference")


def test_prompt_sources(tmp_path):
    rows = [
        {"prompt": "plain?"},
        {"messages": chat("q1", "a1", "q2", "a2"), "prompt_id": "given"},  # a *_gen row: final reply dropped
        {"instruction": "alpaca?", "dataset": "helpful_base"},
        {"turns": ["first?", "second?"], "question_id": 81, "category": "writing"},
    ]
    ds = load_rows(write_jsonl(tmp_path / "p.jsonl", rows), "prompt").dataset
    assert ds.column_names == ["prompt_id", "messages", "category", "question_id", "dataset", "turns"]
    assert ds["messages"] == [chat("plain?"), chat("q1", "a1", "q2"), chat("alpaca?"), chat("first?")]
    assert ds["prompt_id"][:2] == [prompt_id_of("plain?"), "given"]
    assert ds[3]["question_id"] == 81 and ds[3]["category"] == "writing" and ds[0]["category"] is None


def test_shared_mt_bench_and_alpaca_eval_prompts():
    mt = load_rows(shared_file("mt_bench/question.jsonl"), "prompt").dataset
    assert len(mt) == 80 and mt[0]["question_id"] == 81 and len(mt[0]["turns"]) == 2
    assert mt[0]["messages"] == chat(mt[0]["turns"][0])
    alpaca = load_rows(shared_file("alpaca_eval/instructions.jsonl"), "prompt").dataset
    assert len(alpaca) == 805 and alpaca[0]["dataset"] == "helpful_base"


def test_mixed_question_id_types_become_strings(tmp_path):
    src = write_jsonl(
        tmp_path / "q.jsonl", [{"prompt": "a", "question_id": 1}, {"prompt": "b", "question_id": "x"}]
    )
    assert load_rows(src, "prompt").dataset["question_id"] == ["1", "x"]


# --- errors ----------------------------------------------------------------------------------------

BAD_ROWS = [
    # (kind, row, field named in the error, words of the reason)
    ("conversation", {"text": "hi"}, "messages", "is missing"),
    ("conversation", {"messages": chat("hi", "hello")[::-1]}, "messages[0].role", "alternate"),
    (
        "conversation",
        {"messages": chat("hi", "yo", "again", "ok")[:1] + chat("hi", "yo")},
        "messages[1].role",
        "alternate",
    ),
    ("conversation", {"messages": chat("hi", "  ")}, "messages[1].content", "is empty"),
    (
        "conversation",
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        "messages[0].content",
        "must be a string",
    ),
    ("conversation", {"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "must be one of"),
    ("conversation", {"messages": chat("only a question")}, "messages", "no assistant"),
    ("preference", {"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
    ("preference", {"chosen": chat("q", "a"), "rejected": chat("q", "a")}, "rejected", "identical"),
    ("preference", {"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "is empty"),
    ("preference", {"prompt": "q", "chosen": "a"}, "rejected", "is missing"),
    ("preference", {"prompt": "q", "chosen": 5, "rejected": "b"}, "chosen", "string or a list"),
    ("preference", {"chosen": "a", "rejected": "b"}, "prompt", "is missing"),
    (
        "preference",
        {"prompt": "other", "chosen": chat("q", "a"), "rejected": chat("q", "b")},
        "prompt",
        "does not match",
    ),
    (
        "preference",
        {"chosen": chat("q", "a"), "rejected": chat("p", "b")},
        "rejected",
        "no opening user turn",
    ),
    ("preference", {"prompt": "q", "chosen": chat("q", "a"), "rejected": "b"}, "rejected", "only the reply"),
    (
        "preference",
        {"chosen": chat("q", "a", "q2"), "rejected": chat("q", "b", "q2")},
        "chosen[2].role",
        "end with an assistant",
    ),
    (
        "preference",
        {"prompt": chat("q", "a"), "chosen": "x", "rejected": "y"},
        "prompt[1].role",
        "end with a user",
    ),
    (
        "preference",
        {"prompt": "q", "chosen": [{"role": "assistant", "content": None}], "rejected": "y"},
        "chosen[0].content",
        "must be a string",
    ),
    (
        "preference",
        {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": "high"},
        "score_chosen",
        "number",
    ),
    (
        "preference",
        {"prompt": "q", "chosen": "a", "rejected": "b", "metadata": {"score_rejected": [1]}},
        "metadata.score_rejected",
        "number",
    ),
    ("prompt", {"id": 3}, "prompt", "is missing"),
    ("prompt", {"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role", "alternate"),
    ("prompt", {"instruction": ""}, "instruction", "is empty"),
    ("prompt", {"turns": ["ok", 2]}, "turns[1]", "must be a string"),
    ("prompt", {"prompt": "q", "category": 7}, "category", "must be str"),
]


@pytest.mark.parametrize("kind,row,field,reason", BAD_ROWS)
def test_bad_row_names_file_line_and_field(tmp_path, kind, row, field, reason):
    good = {"conversation": conv_rows(1)[0], "preference": uf_binarized_row(0), "prompt": {"prompt": "fine"}}[
        kind
    ]
    src = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as info:
        load_rows(src, kind)
    err = info.value
    assert (err.source, err.line, err.field) == (src, 2, field)
    assert str(err).startswith(f"{src}, line 2, field `{field}`: ") and reason in str(err)


def test_malformed_json_line_and_non_object(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [conv_rows(1)[0], '{"messages": [', "[1, 2]"])
    with pytest.raises(DataError, match=r"x\.jsonl, line 2: malformed JSON"):
        load_rows(src, "conversation")
    result = load_rows(src, "conversation", on_error="skip")
    assert (len(result.dataset), result.skipped) == (1, 2)
    assert "line 3: must be an object" in result.skipped_examples[1]
    (tmp_path / "latin1.jsonl").write_bytes(b'{"messages": "caf\xe9"}\n')
    with pytest.raises(DataError, match="line 1: is not valid UTF-8"):
        load_rows(tmp_path / "latin1.jsonl", "conversation")


def test_json_errors_name_row_or_line(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(conv_rows(2) + [{"messages": chat("q", "")}]))
    with pytest.raises(DataError, match=r"rows\.json, row 2, field `messages\[1\]\.content`: is empty"):
        load_rows(tmp_path / "rows.json", "conversation")
    (tmp_path / "broken.json").write_text('[\n  {"messages": []},\n  oops\n]')
    with pytest.raises(DataError, match=r"broken\.json, line 3: malformed JSON"):
        load_rows(tmp_path / "broken.json", "conversation")
    (tmp_path / "scalar.json").write_text("3")
    with pytest.raises(DataError, match="JSON array"):
        load_rows(tmp_path / "scalar.json", "conversation")


def test_arrow_source_errors_name_row(tmp_path):
    rows = conv_rows(3)
    rows[2] = {"messages": chat("q", "a"), "prompt_id": "p"}
    rows[2]["messages"][1]["content"] = ""
    Dataset.from_list(rows).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet, row 2, field `messages\[1\]\.content`: is empty"):
        load_rows(tmp_path / "c.parquet", "conversation")
    result = load_rows(tmp_path / "c.parquet", "conversation", on_error="skip")
    assert (len(result.dataset), result.skipped) == (2, 1)
    assert "row 2" in result.skipped_examples[0]


def test_skip_counts_and_warns(tmp_path, caplog):
    rows = conv_rows(10)
    bad = [{"messages": chat("q", "")}] * 7 + ["not json"]
    src = write_jsonl(tmp_path / "s.jsonl", rows[:5] + bad + rows[5:])
    with caplog.at_level(logging.WARNING, logger="zephyr.data.loading"):
        result = load_rows(src, "conversation", on_error="skip")
    assert (len(result.dataset), result.skipped, len(result.skipped_examples)) == (10, 8, 5)
    assert "line 6, field `messages[1].content`" in result.skipped_examples[0]
    assert "Skipped 8 malformed row(s)" in caplog.text
    all_bad = load_rows(write_jsonl(tmp_path / "b.jsonl", bad), "conversation", on_error="skip")
    assert len(all_bad.dataset) == 0 and all_bad.dataset.column_names == ["messages"]


def test_bad_arguments(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", conv_rows(1))
    with pytest.raises(ConfigError, match="kind"):
        load_rows(src, "sft")
    with pytest.raises(ConfigError, match="on_error"):
        load_rows(src, "conversation", on_error="ignore")


ODD_VALUES = [
    None,
    0,
    1.5,
    True,
    "",
    " ",
    "x",
    [],
    {},
    [None],
    [1],
    ["x"],
    [{}],
    [{"role": "user"}],
    [{"role": 1, "content": "x"}],
    [{"role": "user", "content": []}],
    {"role": "user", "content": "x"},
    [{"role": "assistant", "content": "x"}],
    chat("q", "a"),
    chat("q"),
    [[]],
]
FIELDS = [
    "messages",
    "prompt",
    "chosen",
    "rejected",
    "prompt_id",
    "score_chosen",
    "metadata",
    "instruction",
    "turns",
    "question_id",
    "category",
    "dataset",
]


@pytest.mark.parametrize("kind", ["conversation", "preference", "prompt"])
def test_fuzz_odd_rows_give_data_errors_only(tmp_path, kind):
    rng = random.Random(kind)
    rows = []
    for _ in range(300):
        row = {f: rng.choice(ODD_VALUES) for f in rng.sample(FIELDS, rng.randint(0, 5))}
        rows.append(row)
        try:
            normalise_row(
                kind, row, {"source": "fuzz", "row": 0}, ("category", "question_id", "dataset", "turns")
            )
        except DataError:
            pass
    for odd in ODD_VALUES:
        with pytest.raises(DataError):
            normalise_row(kind, odd, {"source": "fuzz", "row": 0})
    # Through a file too: whatever survives must build one consistent table.
    lines = rows + [json.dumps(v) for v in ODD_VALUES]
    result = load_rows(write_jsonl(tmp_path / "fuzz.jsonl", lines), kind, on_error="skip")
    assert len(result.dataset) + result.skipped == len(rows) + len(ODD_VALUES)


# --- mixtures --------------------------------------------------------------------------------------


@pytest.fixture
def two_sources(tmp_path):
    """Two handbook-style datasets: `a` (train_sft 10, test_sft 4) as files, `b` (20, 6) saved to disk."""
    a = tmp_path / "a"
    a.mkdir()
    write_jsonl(a / "train_sft.jsonl", conv_rows(10, "a-train"))
    write_jsonl(a / "test_sft.jsonl", conv_rows(4, "a-test"))
    DatasetDict(
        {
            "train_sft": Dataset.from_list(conv_rows(20, "b-train")),
            "test_sft": Dataset.from_list(conv_rows(6, "b-test")),
        }
    ).save_to_disk(tmp_path / "b")
    return str(a), str(tmp_path / "b")


def test_mixer_takes_first_rows_of_train_and_all_of_test(two_sources):
    a, b = two_sources
    out = load_mixer({a: 0.5, b: 0.3}, ["train_sft", "test_sft"], "conversation")
    assert set(out) == {"train", "test"}
    assert (len(out["train"]), len(out["test"])) == (5 + 6, 4 + 6)
    expected = {f"a-train question {i}" for i in range(5)} | {f"b-train question {i}" for i in range(6)}
    assert set(contents(out["train"])) == expected
    assert contents(out["train"]) != sorted(expected, key=lambda s: (s[0], int(s.split()[-1])))  # shuffled
    # Test splits are never subsampled, whatever the fractions.
    out = load_mixer({a: 0.0, b: 0.1}, ["train_sft", "test_sft"], "conversation")
    assert (len(out["train"]), len(out["test"])) == (2, 10)


def test_mixer_matches_handbook_order(two_sources):
    a, b = two_sources
    out = load_mixer({a: 0.5, b: 0.3}, ["train_sft", "test_sft"], "conversation")
    parts = [
        load_rows(a, "conversation", split="train_sft").dataset.select(range(5)),
        load_rows(b, "conversation", split="train_sft").dataset.select(range(6)),
    ]
    expected = datasets.concatenate_datasets(parts).shuffle(seed=42)
    assert out["train"]["messages"] == expected["messages"]
    again = load_mixer({a: 0.5, b: 0.3}, ["train_sft", "test_sft"], "conversation")
    assert again["train"]["messages"] == out["train"]["messages"]
    assert again["test"]["messages"] == out["test"]["messages"]


def test_mixer_single_file_is_train_only(tmp_path, two_sources):
    a, _ = two_sources
    single = write_jsonl(tmp_path / "extra.jsonl", conv_rows(8, "f"))
    out = load_mixer({a: 1.0, single: 0.5}, ["train_sft", "test_sft"], "conversation")
    assert (len(out["train"]), len(out["test"])) == (10 + 4, 4)
    assert "train" in load_mixer({single: 1.0}, ["train_sft"], "conversation")


@pytest.mark.parametrize(
    "mixer,splits,match",
    [
        ({"x": -0.1}, ["train"], "between 0 and 1"),
        ({"x": 1.5}, ["train"], "between 0 and 1"),
        ({"x": "half"}, ["train"], "between 0 and 1"),
        ({"x": 0.5}, ["validation"], "neither a train nor a test"),
        ({}, ["train"], "must map"),
    ],
)
def test_mixer_bad_settings(mixer, splits, match):
    with pytest.raises(ConfigError, match=match):
        load_mixer(mixer, splits, "conversation")


def test_mixer_configs_must_match_datasets(two_sources):
    with pytest.raises(ConfigError, match="dataset_configs"):
        load_mixer({two_sources[0]: 1.0}, ["train_sft"], "conversation", configs=["a", "b"])


def test_mixture_weights_seed_and_test_split(two_sources):
    a, b = two_sources
    mixture = {
        "datasets": [
            {"id": a, "split": "train_sft", "weight": 0.5, "columns": ["messages"]},
            {"id": b, "split": "train_sft"},  # no weight: every row
        ],
        "seed": 7,
        "test_split_size": 0.2,
    }
    out = load_mixture(mixture, "conversation")
    assert (len(out["train"]), len(out["test"])) == (20, 5)  # 5 + 20 = 25 rows, 20% held out
    a_rows = load_rows(a, "conversation", split="train_sft").dataset
    kept_a = {
        c for c in contents(datasets.concatenate_datasets([out["train"], out["test"]])) if c.startswith("a-")
    }
    assert kept_a == set(contents(a_rows.shuffle(seed=7).select(range(5))))
    again = load_mixture(mixture, "conversation")
    assert again["train"]["messages"] == out["train"]["messages"]
    other = load_mixture({**mixture, "seed": 8}, "conversation")
    assert other["train"]["messages"] != out["train"]["messages"]
    no_test = load_mixture({"datasets": mixture["datasets"]}, "conversation")
    assert list(no_test) == ["train"] and len(no_test["train"]) == 25


@pytest.mark.parametrize(
    "mixture,match",
    [
        ({"datasets": [{"id": "x", "wieght": 0.5}]}, r"Unknown key `wieght`.*did you mean `weight`"),
        ({"datasets": [{"id": "x"}], "test_size": 0.1}, r"did you mean `test_split_size`"),
        ({"datasets": [{"id": "x", "weight": 2}]}, "between 0 and 1"),
        ({"datasets": [{"split": "train"}]}, r"datasets\[0\]\.id"),
        ({"datasets": []}, "non-empty list"),
        ({"datasets": [{"id": "x"}], "seed": "one"}, "seed"),
        ({"datasets": [{"id": "x"}], "test_split_size": 1.5}, "test_split_size"),
        ({"datasets": [{"id": "x", "columns": "messages"}]}, "columns"),
    ],
)
def test_mixture_bad_settings(mixture, match):
    with pytest.raises(ConfigError, match=match):
        load_mixture(mixture, "conversation")


def test_load_datasets_both_forms_and_limits(two_sources):
    a, b = two_sources
    args = DataArguments(
        dataset_mixer={a: 1.0, b: 1.0},
        dataset_splits=["train_sft", "test_sft"],
        max_train_samples=7,
        max_eval_samples=3,
    )
    out = load_datasets(args, "conversation")
    assert (len(out["train"]), len(out["test"])) == (7, 3)
    args = DataArguments(dataset_mixture={"datasets": [{"id": a, "split": "test_sft"}], "test_split_size": 1})
    out = load_datasets(args, "conversation")
    assert (len(out["train"]), len(out["test"])) == (3, 1)
    with pytest.raises(ConfigError, match="No dataset"):
        load_datasets(DataArguments(), "conversation")


def test_load_datasets_skips_bad_rows_when_asked(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", conv_rows(3) + ["{bad"])
    args = DataArguments(dataset_mixer={str(tmp_path): 1.0}, dataset_splits=["train"], on_error="skip")
    assert len(load_datasets(args, "conversation")["train"]) == 3
    with pytest.raises(DataError, match="line 4"):
        load_datasets(
            DataArguments(dataset_mixer={str(tmp_path): 1.0}, dataset_splits=["train"]), "conversation"
        )
