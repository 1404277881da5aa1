"""dDPO: batch layouts, the loss family, TRL parity, truncation, bad input, the reference model, the CLI.

Fast tests use the embedded tokenizer with tiny random Llamas (see support.models); the `slow` test trains the
embedded SmolLM2 for real and checks that DPO teaches it a preference it did not have.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from support.models import enable_checkpointing, make_tiny_model
from support.preference import PAIR_KEYS, REWARD_METRICS, noisy_copy, packed
from zephyr.chat import encode_prompt, render
from zephyr.errors import DataError
from zephyr.train.attention import ATTN_NAME
from zephyr.train.collate import PairCollator
from zephyr.train.dpo_data import tokenize_pair, tokenize_preferences
from zephyr.train.logps import sequence_logps
from zephyr.train.losses import DPO_LOSSES, dpo_loss

LN2 = math.log(2)
DEMO = "zephyr:demo_prefs"
METRICS = set(REWARD_METRICS)


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def demo_rows():
    from zephyr.data import load_rows

    return load_rows(DEMO, "preference").dataset


def demo_pairs(tokenizer, rows, n=4, max_length=1024, max_prompt_length=512) -> list[dict]:
    out = []
    for i in range(n):
        pair = tokenize_pair(tokenizer, rows[i], max_length, max_prompt_length, row_index=i)
        out.append({k: getattr(pair, k) for k in PAIR_KEYS})
    return out


def layout_logps(model, pairs, layout, pad_token_id=0, grad=False):
    batch = PairCollator(layout, pad_token_id)(pairs)
    with packed(model, enabled=layout != "padded"), torch.set_grad_enabled(grad):
        return sequence_logps(model, batch), batch


def chat(*turns: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def pref_row(prompt: str, chosen: str, rejected: str) -> dict:
    """A normalised preference row (what zephyr.data hands to tokenization)."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "prompt_id": prompt[:16],
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def good_pref_rows(n: int, tag: str = "q") -> list[dict]:
    return [
        {
            "prompt": f"{tag}: what is {i} times {i}?",
            "chosen": f"{i} times {i} is {i * i}.",
            "rejected": f"I am not sure, maybe {i + 1}?",
        }
        for i in range(n)
    ]


def log_history(out: Path) -> list[dict]:
    """The log of the last checkpoint (the finished model dir holds no trainer state)."""
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def dpo_cli_args(model_dir, out, *extra, data=None):
    data_args = (
        [f"--dataset_mixer={{{data}: 1.0}}", "--dataset_splits=[train]"]
        if data is not None
        else ["--dataset_mixture={datasets: [{id: 'zephyr:demo_prefs'}], test_split_size: 8, seed: 0}"]
    )
    return [
        "dpo",
        f"--model_name_or_path={model_dir}",
        *data_args,
        f"--output_dir={out}",
        "--torch_dtype=float32",
        "--per_device_train_batch_size=4",
        "--per_device_eval_batch_size=8",
        "--learning_rate=1e-2",
        "--lr_scheduler_type=constant",
        "--max_length=128",
        "--max_prompt_length=64",
        "--logging_steps=1",
        "--save_strategy=no",
        "--report_to=none",
        "--seed=1",
        "--use_cpu=true",
        *extra,
    ]


# ------------------------------------------------------------------------------------ 1. layouts + boundary


def test_layouts_give_equal_logps_and_gradients(tokenizer, demo_rows):
    """padded (plain sdpa), packed and shared: same log-probs, lengths, logit sums, DPO loss and gradients."""
    pairs = demo_pairs(tokenizer, demo_rows)
    ref = make_tiny_model(seed=0)
    model = noisy_copy(ref, seed=1)
    results = {}
    for layout in ("padded", "packed", "shared"):
        model.zero_grad()
        ref_out, _ = layout_logps(ref, pairs, layout, tokenizer.pad_token_id)
        out, batch = layout_logps(model, pairs, layout, tokenizer.pad_token_id, grad=True)
        losses, metrics = dpo_loss("sigmoid", out, ref_out["logps"], beta=0.1)
        with packed(model, enabled=layout != "padded"):
            losses.mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[layout] = (out, losses.mean().item(), metrics, grads, batch)

    padded_out, padded_loss, padded_metrics, padded_grads, _ = results["padded"]
    expected_lengths = [float(len(p[k])) for p in pairs for k in ("chosen_ids", "rejected_ids")]
    assert padded_out["lengths"].tolist() == expected_lengths
    assert padded_metrics["rewards/margins"] != 0.0  # the policy really differs from the reference
    real_tokens = {
        "packed": sum(
            2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs
        ),
        "shared": sum(len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs),
    }
    for layout in ("packed", "shared"):
        out, loss, metrics, grads, batch = results[layout]
        assert batch["input_ids"].shape == (1, real_tokens[layout])  # no padding is run through the model
        for key in ("logps", "lengths", "logit_sums"):
            torch.testing.assert_close(out[key], padded_out[key], atol=1e-5, rtol=1e-6, msg=f"{layout} {key}")
        assert loss == pytest.approx(padded_loss, abs=1e-5)
        assert metrics == pytest.approx(padded_metrics, abs=1e-5)
        assert grads.keys() == padded_grads.keys() and len(grads) == len(list(model.parameters()))
        for name, grad in grads.items():
            torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=1e-4, msg=f"{layout} {name}")
    assert any(g.abs().max() > 0 for g in padded_grads.values())


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_shared_layout_gradients(tokenizer, demo_rows, reentrant):
    """Recomputing activations must replay the same blocks: the block layout reaches checkpointed layers."""
    pairs = demo_pairs(tokenizer, demo_rows)
    ref = make_tiny_model(seed=0)
    with torch.no_grad():
        ref_logps = layout_logps(ref, pairs, "shared")[0]["logps"]
    model = noisy_copy(ref, seed=1).train()
    grads, calls = [], [0]
    for checkpointing in (False, True):
        if checkpointing:
            calls = enable_checkpointing(model, reentrant)
        model.zero_grad()
        out, _ = layout_logps(model, pairs, "shared", grad=True)
        losses, _ = dpo_loss("sigmoid", out, ref_logps, beta=0.1)
        with packed(model):
            losses.mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert calls[0] == 2  # forward, then the recomputation during backward
    assert grads[1].keys() == grads[0].keys() and len(grads[0]) == len(list(model.parameters()))
    for name, grad in grads[1].items():
        torch.testing.assert_close(grad, grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_shared_layout_hides_chosen_from_rejected(tokenizer):
    """Changing a chosen token must not change the rejected log-prob in the prefix-shared row."""
    model = make_tiny_model()
    a = {"prompt_ids": [1, 40, 41, 42], "chosen_ids": [50, 51, 52], "rejected_ids": [60, 61]}
    b = dict(a, chosen_ids=[70, 71, 72])
    out_a, _ = layout_logps(model, [a], "shared")
    out_b, _ = layout_logps(model, [b], "shared")
    assert out_a["logps"][1].item() == pytest.approx(out_b["logps"][1].item(), abs=1e-6)
    assert out_a["logps"][0].item() != pytest.approx(out_b["logps"][0].item(), abs=1e-3)


# A template whose generation prompt ends in a space: `assistant: ` + `Hello` tokenizes as `assistant:` + ` Hello`.
MERGE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def test_boundary_is_found_on_tokens_when_bpe_merges_across_it(tokenizer):
    tokenizer.chat_template = MERGE_TEMPLATE
    row = pref_row("Greet me.", "Hello there, friend!", "Go away.")
    prompt_alone = encode_prompt(tokenizer, row["prompt"])
    # The prompt alone ends in a dangling space token, which the completion's first word absorbs.
    assert tokenizer.convert_ids_to_tokens(prompt_alone[-1]) == "Ġ"
    pair = tokenize_pair(tokenizer, row, max_length=1024, max_prompt_length=None)

    for side in ("chosen", "rejected"):
        text = render(tokenizer, row["prompt"] + row[side])
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        # The last trained token is the reply's end of turn (EOS); the newline after it is template glue.
        last_trained = max(i for i, t in enumerate(full) if t == tokenizer.eos_token_id)
        completion = pair.chosen_ids if side == "chosen" else pair.rejected_ids
        assert pair.prompt_ids + completion == full[: last_trained + 1], side
    assert prompt_alone[: len(pair.prompt_ids)] == pair.prompt_ids
    assert len(pair.prompt_ids) == len(prompt_alone) - 1  # the merged space moved to the completions
    assert tokenizer.decode(pair.chosen_ids).startswith(" Hello there")
    assert tokenizer.decode(pair.rejected_ids).startswith(" Go away")


def test_boundary_without_merge_keeps_the_whole_prompt(tokenizer, demo_rows):
    pair = tokenize_pair(tokenizer, demo_rows[0], 1024, 512)
    assert pair.prompt_ids == encode_prompt(tokenizer, demo_rows[0]["prompt"])
    assert pair.chosen_ids[-1] == tokenizer.eos_token_id and pair.rejected_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(pair.chosen_ids[:-1]) == demo_rows[0]["chosen"][-1]["content"]


# -------------------------------------------------------------------------------------------- 2. losses


def _ls(x: float) -> float:
    """log sigmoid(x)"""
    return -math.log1p(math.exp(-x))


def _fake_policy(logps, lengths):
    logps = torch.tensor(logps, dtype=torch.float32)
    lengths = torch.tensor(lengths, dtype=torch.float32)
    return {"logps": logps, "lengths": lengths, "logit_sums": torch.arange(1.0, len(logps) + 1) * lengths}


POLICY = [-10.0, -14.0, -20.0, -18.0, -7.0, -9.0]  # [c0, r0, c1, r1, c2, r2]
REF = [-12.0, -13.0, -19.0, -21.0, -6.0, -8.0]
LENGTHS = [4, 6, 5, 3, 2, 7]


@pytest.mark.parametrize(
    ("loss_type", "eps"),
    [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.0), ("robust", 0.1), ("ipo", 0.0), ("hinge", 0.0)],
)
def test_loss_matches_hand_computation(loss_type, eps):
    beta = 0.5
    assert set(DPO_LOSSES) == {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    }
    losses, _ = dpo_loss(
        loss_type, _fake_policy(POLICY, LENGTHS), torch.tensor(REF), beta, label_smoothing=eps
    )
    expected = []
    for i in range(3):
        rw, rl = POLICY[2 * i] - REF[2 * i], POLICY[2 * i + 1] - REF[2 * i + 1]
        d = beta * (rw - rl)
        if loss_type == "sigmoid":  # TRL 1.16 applies no label smoothing to sigmoid
            expected.append(-_ls(d))
        elif loss_type == "robust":
            expected.append((-(1 - eps) * _ls(d) + eps * _ls(-d)) / (1 - 2 * eps))
        elif loss_type == "ipo":
            expected.append((rw / LENGTHS[2 * i] - rl / LENGTHS[2 * i + 1] - 1 / (2 * beta)) ** 2)
        else:
            expected.append(max(0.0, 1 - d))
    assert losses.shape == (3,)
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)


def test_label_smoothing_zero_is_plain_dpo_for_sigmoid_and_robust():
    """robust with eps 0 is DPO; sigmoid ignores eps altogether, as in TRL 1.16 (no conservative DPO)."""
    policy, ref = _fake_policy(POLICY, LENGTHS), torch.tensor(REF)
    plain, _ = dpo_loss("sigmoid", policy, ref, 0.3)
    robust, _ = dpo_loss("robust", policy, ref, 0.3)
    smoothed, _ = dpo_loss("sigmoid", policy, ref, 0.3, label_smoothing=0.2)
    smoothed_robust, _ = dpo_loss("robust", policy, ref, 0.3, label_smoothing=0.2)
    torch.testing.assert_close(robust, plain)
    torch.testing.assert_close(smoothed, plain)
    assert not torch.allclose(smoothed_robust, plain)


def test_metrics_names_values_and_ties():
    beta = 0.1
    # pair 0: chosen gains more (correct), pair 1: rejected gains more (wrong), pair 2: a tie (wrong).
    policy = [-10.0, -12.0, -20.0, -15.0, -8.0, -9.0]
    ref = [-11.0, -12.0, -20.0, -16.0, -7.0, -8.0]
    lengths = [2, 3, 4, 5, 6, 7]
    p = _fake_policy(policy, lengths)
    _, m = dpo_loss("sigmoid", p, torch.tensor(ref), beta)
    assert set(m) == METRICS
    rw = [beta * (policy[i] - ref[i]) for i in (0, 2, 4)]
    rl = [beta * (policy[i] - ref[i]) for i in (1, 3, 5)]
    assert rw[2] == rl[2]  # the tie
    assert m["rewards/chosen"] == pytest.approx(sum(rw) / 3, abs=1e-6)
    assert m["rewards/rejected"] == pytest.approx(sum(rl) / 3, abs=1e-6)
    assert m["rewards/margins"] == pytest.approx((sum(rw) - sum(rl)) / 3, abs=1e-6)
    assert m["rewards/accuracies"] == pytest.approx(1 / 3)
    assert m["logps/chosen"] == pytest.approx((-10 - 20 - 8) / 3)
    assert m["logps/rejected"] == pytest.approx((-12 - 15 - 9) / 3)
    sums = p["logit_sums"].tolist()
    assert m["logits/chosen"] == pytest.approx((sums[0] + sums[2] + sums[4]) / (2 + 4 + 6))  # token-weighted
    assert m["logits/rejected"] == pytest.approx((sums[1] + sums[3] + sums[5]) / (3 + 5 + 7))


def test_step_zero_loss_is_ln2_with_policy_equal_to_reference(tokenizer, demo_rows):
    model = make_tiny_model()
    pairs = demo_pairs(tokenizer, demo_rows, max_length=256, max_prompt_length=128)
    out, _ = layout_logps(model, pairs, "shared", grad=True)
    ref, _ = layout_logps(copy.deepcopy(model), pairs, "shared")  # a frozen copy, as a fresh run has
    losses, m = dpo_loss("sigmoid", out, ref["logps"], beta=0.1)
    assert losses.mean().item() == pytest.approx(0.693147, abs=1e-6)
    assert m["rewards/chosen"] == m["rewards/rejected"] == m["rewards/margins"] == 0.0
    assert m["rewards/accuracies"] == 0.0  # every pair is a tie


def test_config_validates_dpo_settings(tmp_path):
    from zephyr.errors import ConfigError
    from zephyr.train.config import DPOConfig
    from zephyr.train.dpo import pair_collator

    with pytest.raises(ConfigError, match="did you mean `sigmoid`"):
        DPOConfig(output_dir=str(tmp_path), loss_type="sigmoyd")
    with pytest.raises(ConfigError, match="max_prompt_length"):
        DPOConfig(output_dir=str(tmp_path), max_length=128, max_prompt_length=128)
    # Both speed-ups are on by default, each switchable.
    assert pair_collator(DPOConfig(output_dir=str(tmp_path)), 0).layout == "shared"
    assert pair_collator(DPOConfig(output_dir=str(tmp_path), prefix_sharing=False), 0).layout == "packed"
    assert pair_collator(DPOConfig(output_dir=str(tmp_path), padding_free=False), 0).layout == "padded"


# ----------------------------------------------------------------------------------------- 3. TRL parity


def test_sigmoid_loss_and_metrics_match_trl_dpo_trainer(tokenizer, demo_rows, tmp_path):
    """TRL 1.16's DPOTrainer on the same 4 pairs and models: loss and every reward/logp/logit metric agree.

    Completions are cut to ~40 tokens: a summed log-prob of a random 49k-vocabulary model is about -11 per
    token, and fp32 sums of ~1000 in a different order differ by ~1e-4, which beta=0.1 would bring to the
    edge of the 1e-5 tolerance on rewards.
    """
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    pairs = demo_pairs(tokenizer, demo_rows, max_length=96, max_prompt_length=48)
    ref = make_tiny_model(seed=0)
    model = noisy_copy(ref, seed=3)
    batch = PairCollator("shared", tokenizer.pad_token_id)(pairs)
    with packed(model, ref), torch.no_grad():
        ours = sequence_logps(model, batch)
        losses, metrics = dpo_loss("sigmoid", ours, sequence_logps(ref, batch)["logps"], beta=0.1)
    assert ref.config._attn_implementation == model.config._attn_implementation == "sdpa"

    # TRL 1.16 tokenizes text rows itself (a dataset of token ids alone is rejected), so it gets the same rows as
    # text; its tokenization must agree with ours, then its collator batches exactly our (cut) token ids.
    text = Dataset.from_list(
        [{k: demo_rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in range(4)]
    )
    config = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        beta=0.1,
        max_length=None,
        bf16=False,  # TRL defaults to bf16 autocast, which it applies to the reference only
    )
    trainer = trl.DPOTrainer(
        model=model, ref_model=ref, args=config, train_dataset=text, processing_class=tokenizer
    )
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for i, full in enumerate(demo_pairs(tokenizer, demo_rows)):
        theirs = trainer.train_dataset[i]
        assert theirs["prompt_ids"] == full["prompt_ids"]
        # TRL also trains the template's newline after <|im_end|>; we stop at the end-of-turn token.
        assert theirs["chosen_ids"] == full["chosen_ids"] + newline
        assert theirs["rejected_ids"] == full["rejected_ids"] + newline
    trl_batch = trainer.data_collator([{k: p[k] for k in PAIR_KEYS} for p in pairs])
    assert trl_batch["input_ids"].shape[0] == 8  # TRL pads chosen and rejected rows to the batch maximum
    model.train()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, trl_batch).item()
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    assert metrics["rewards/margins"] != pytest.approx(0.0, abs=1e-3)  # the comparison is not between zeros
    assert losses.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    for name in METRICS:
        tol = {"rel": 1e-5} if name.startswith("logps/") else {"abs": 1e-5}
        assert metrics[name] == pytest.approx(trl_metrics[name], **tol), name


# ------------------------------------------------------------------------------------------ 4. truncation


LONG_ROW = pref_row(
    " ".join(f"word{i}" for i in range(120)),
    " ".join(f"alpha{i}" for i in range(90)),
    " ".join(f"beta{i}" for i in range(90)),
)


@pytest.mark.parametrize("template", [None, "zephyr"])
def test_truncation_follows_the_handbook(tokenizer, template):
    """Prompt cut from the left to max_prompt_length (BOS kept), completions from the right to fit max_length."""
    from zephyr.chat import prepare_tokenizer

    if template:
        prepare_tokenizer(tokenizer, template)
    full = tokenize_pair(tokenizer, LONG_ROW, max_length=10**6, max_prompt_length=None)
    assert not full.truncated and len(full.prompt_ids) > 100 and len(full.chosen_ids) > 100
    cut = tokenize_pair(tokenizer, LONG_ROW, max_length=96, max_prompt_length=40)
    assert cut.truncated
    assert len(cut.prompt_ids) == 40
    if template is None:
        # SmolLM's own template starts with <|im_start|>, its BOS: kept, the rest cut from the left.
        assert full.prompt_ids[0] == tokenizer.bos_token_id
        assert cut.prompt_ids == [tokenizer.bos_token_id] + full.prompt_ids[-39:]
    else:
        # The Zephyr template puts no BOS first with this tokenizer: a plain left cut.
        assert full.prompt_ids[0] != tokenizer.bos_token_id
        assert cut.prompt_ids == full.prompt_ids[-40:]
    assert cut.prompt_ids[-3:] == full.prompt_ids[-3:]  # the generation prompt survives
    assert cut.chosen_ids == full.chosen_ids[:56] and cut.rejected_ids == full.rejected_ids[:56]
    assert len(cut.prompt_ids) + len(cut.chosen_ids) <= 96
    # A short prompt keeps every token and leaves the completions the rest of max_length.
    short = dict(LONG_ROW, prompt=[{"role": "user", "content": "Hi"}])
    s = tokenize_pair(tokenizer, short, max_length=96, max_prompt_length=40)
    assert s.truncated and len(s.prompt_ids) < 40 and len(s.prompt_ids) + len(s.chosen_ids) == 96


def test_truncated_rows_are_counted_and_logged(tokenizer, caplog):
    rows = [pref_row("Hi", "Hello!", "Go away."), LONG_ROW, dict(LONG_ROW, prompt_id="second")]
    with caplog.at_level(logging.WARNING, logger="zephyr.train.dpo_data"):
        ds, skipped, truncated = tokenize_preferences(rows, tokenizer, 96, 40)
    assert (len(ds), skipped, truncated) == (3, 0, 2)
    assert "2 of 3 pairs were cut" in caplog.text
    assert ds.column_names[:3] == list(PAIR_KEYS)
    _, _, none_cut = tokenize_preferences(rows[:1], tokenizer, 96, 40)
    assert none_cut == 0


def test_prompt_filling_max_length_is_a_data_error(tokenizer):
    rows = [pref_row("Hi", "Hello!", "Go away."), dict(LONG_ROW, prompt_id="too-long")]
    with pytest.raises(DataError) as err:
        tokenize_preferences(rows, tokenizer, 96, None)
    msg = str(err.value)
    assert err.value.field == "prompt" and err.value.row == 1
    assert "row 1" in msg and "field `prompt`" in msg and "too-long" in msg and "max_length=96" in msg
    ds, skipped, _ = tokenize_preferences(rows, tokenizer, 96, None, on_error="skip")
    assert (len(ds), skipped) == (1, 1)
    assert ds["row"] == [0]


def test_one_prompt_id_for_two_different_prompts_is_a_data_error(tokenizer):
    """Mislabelled data (two prompts under one id) must not train silently."""
    rows = [pref_row("Hi", "Hello!", "Go away."), dict(pref_row("Bye", "Ciao!", "No."), prompt_id="Hi")]
    with pytest.raises(DataError, match=r"row 1, field `prompt_id`: shares prompt_id 'Hi' with row 0"):
        tokenize_preferences(rows, tokenizer, 96, None)
    ds, skipped, _ = tokenize_preferences(rows, tokenizer, 96, None, on_error="skip")
    assert (len(ds), skipped) == (1, 1)
    # The same prompt under one id, several pairs of it, is the normal case.
    same = [pref_row("Hi", "Hello!", "Go away."), pref_row("Hi", "Hey!", "Leave.")]
    assert len(tokenize_preferences(same, tokenizer, 96, None)[0]) == 2


# ----------------------------------------------------------------------------------------- 5. bad input


BAD_ROWS = {
    "identical": ({"prompt": "Q?", "chosen": "Same answer.", "rejected": "Same answer."}, "rejected"),
    "empty completion": ({"prompt": "Q?", "chosen": "", "rejected": "An answer."}, "chosen"),
    "empty reply turn": (
        {"chosen": chat("Q?", ""), "rejected": chat("Q?", "An answer.")},
        "chosen[1].content",
    ),
    "roles do not alternate": (
        {"chosen": chat("Q?", "A.") + [{"role": "assistant", "content": "B."}], "rejected": chat("Q?", "C.")},
        "chosen[2].role",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_rows_name_the_line_and_field_or_are_skipped(kind, tmp_path):
    from zephyr.data import load_rows

    bad, field = BAD_ROWS[kind]
    path = write_jsonl(tmp_path / "prefs.jsonl", good_pref_rows(3) + [bad] + good_pref_rows(2, "z"))
    with pytest.raises(DataError) as err:
        load_rows(str(path), "preference")
    msg = str(err.value)
    assert "prefs.jsonl" in msg and "line 4" in msg and f"field `{field}`" in msg, msg
    result = load_rows(str(path), "preference", on_error="skip")
    assert (len(result.dataset), result.skipped) == (5, 1)


def test_completions_identical_within_max_length_are_a_data_error(tokenizer):
    """Different replies that only differ after the max_length cut leave no preference to learn."""
    same = " ".join(f"w{i}" for i in range(60))
    rows = [pref_row("Hi", "Hello!", "Go away."), pref_row("Q?", same + " yes", same + " no")]
    with pytest.raises(DataError, match="identical") as err:
        tokenize_preferences(rows, tokenizer, 64, 32)
    assert err.value.field == "rejected" and err.value.row == 1
    ds, skipped, _ = tokenize_preferences(rows, tokenizer, 64, 32, on_error="skip")
    assert (len(ds), skipped) == (1, 1)


def test_cli_bad_row_is_a_one_line_error_and_skip_trains(tiny_model_dir, tmp_path, capsys):
    from zephyr.cli import main

    rows = good_pref_rows(6)
    rows.insert(3, BAD_ROWS["roles do not alternate"][0])
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    assert main(dpo_cli_args(tiny_model_dir, tmp_path / "fail", "--max_steps=1", data=data)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (
        err.startswith("zephyr dpo: error:")
        and "prefs.jsonl" in err
        and "line 4" in err
        and "`chosen[2].role`" in err
    )

    # A prompt that leaves no room for a completion is found at tokenization, with the row's prompt_id.
    long_prompt = {
        "prompt": " ".join(f"word{i}" for i in range(200)),
        "chosen": "Yes.",
        "rejected": "No.",
        "prompt_id": "the-long-one",
    }
    data2 = write_jsonl(tmp_path / "prefs2.jsonl", good_pref_rows(6) + [long_prompt])
    assert main(dpo_cli_args(tiny_model_dir, tmp_path / "fail2", "--max_prompt_length=null", data=data2)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the-long-one" in err and "field `prompt`" in err, err

    # With on_error=skip both bad rows are skipped and training runs to the end.
    data3 = write_jsonl(tmp_path / "prefs3.jsonl", rows + [long_prompt])
    out = tmp_path / "skip"
    args = dpo_cli_args(
        tiny_model_dir, out, "--max_prompt_length=null", "--on_error=skip", "--num_train_epochs=1", data=data3
    )
    assert main(args) == 0
    assert (out / "model.safetensors").is_file()
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["epoch"] == 1.0 and math.isfinite(metrics["train_loss"])  # the whole epoch, no crash


# ---------------------------------------------------------------------------------------- 6. reference


def _dpo_args(tmp_path, **kw):
    from zephyr.train.config import DPOConfig

    base = dict(
        output_dir=str(tmp_path / "trainer"), use_cpu=True, report_to=[], beta=0.1, save_strategy="no"
    )
    return DPOConfig(**{**base, **kw})


def test_precomputed_reference_is_cached_reused_and_rekeyed(tokenizer, demo_rows, tmp_path, monkeypatch):
    from accelerate import PartialState

    import zephyr.train.reference as reference
    from zephyr.train.reference import precompute_reference_logps

    rows = demo_rows.select(range(6))
    ds, _, _ = tokenize_preferences(rows, tokenizer, 128, 64)
    ref = make_tiny_model(seed=5)
    collator = PairCollator("shared", tokenizer.pad_token_id)
    state, cache = PartialState(), tmp_path / "refcache"
    calls = []
    real_score = reference._score

    def counting(*a, **k):
        calls.append(1)
        return real_score(*a, **k)

    monkeypatch.setattr(reference, "_score", counting)

    def run(dataset, model):
        return precompute_reference_logps(dataset, model, collator, 4, state, "train", str(cache))

    first = run(ds, ref)
    assert len(calls) == 1 and len(list(cache.glob("*.pt"))) == 1
    assert ref.config._attn_implementation == "sdpa"  # restored after scoring with packed attention

    # The cached values are the reference's log-probs, computed on the fly.
    live, _ = layout_logps(ref, [ds[i] for i in range(len(ds))], "shared")
    live = live["logps"].view(-1, 2)
    torch.testing.assert_close(torch.tensor(first["ref_chosen_logps"]), live[:, 0], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(first["ref_rejected_logps"]), live[:, 1], atol=1e-4, rtol=1e-6)

    # A second run (same weights, data, tokenization) reads the cache and computes nothing.
    def boom(*a, **k):
        raise AssertionError("reference log-probs recomputed although cached")

    monkeypatch.setattr(reference, "_score", boom)
    again = run(ds, copy.deepcopy(ref))
    assert again["ref_chosen_logps"] == first["ref_chosen_logps"]
    assert again["ref_rejected_logps"] == first["ref_rejected_logps"]

    # Other data, other tokenization (a max_length that cuts), other weights: each a new key, computed anew.
    monkeypatch.setattr(reference, "_score", counting)
    run(ds.select(range(5)), ref)
    cut, _, n_cut = tokenize_preferences(rows, tokenizer, 80, 48)
    assert n_cut > 0
    run(cut, ref)
    run(ds, noisy_copy(ref, seed=9, scale=1e-3))
    assert len(calls) == 4 and len(list(cache.glob("*.pt"))) == 4


def test_training_loss_with_precomputed_reference_equals_live_reference(tokenizer, demo_rows, tmp_path):
    from accelerate import PartialState

    from zephyr.train.reference import precompute_reference_logps
    from zephyr.train.trainer import DPOTrainer

    ds, _, _ = tokenize_preferences(demo_rows.select(range(4)), tokenizer, 128, 64)
    ref = make_tiny_model(seed=0)
    policy = noisy_copy(ref, seed=2)
    collator = PairCollator("shared", tokenizer.pad_token_id)
    pre_ds = precompute_reference_logps(ds, ref, collator, 2, PartialState(), "train", str(tmp_path / "c"))
    args = _dpo_args(tmp_path)
    live = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, data_collator=collator)
    pre = DPOTrainer(model=policy, ref_model=None, args=args, train_dataset=pre_ds, data_collator=collator)
    live_batch = collator([ds[i] for i in range(4)])
    pre_batch = collator([pre_ds[i] for i in range(4)])
    assert "ref_logps" in pre_batch and "ref_logps" not in live_batch
    with packed(policy, ref), torch.no_grad():
        live_total, live_n, live_m = live.batch_loss(policy, live_batch)
        pre_total, pre_n, pre_m = pre.batch_loss(policy, pre_batch)
    assert live_n == pre_n == 4
    assert live_m["rewards/margins"] != pytest.approx(0.0, abs=1e-3)
    assert pre_total.item() / pre_n == pytest.approx(live_total.item() / live_n, abs=1e-5)
    assert pre_m == pytest.approx(live_m, abs=1e-5)


def test_gradient_accumulation_averages_over_pairs(tokenizer, demo_rows, tmp_path):
    """One step of 4 pairs x 1 equals 2 pairs x 2 accumulated (plain SGD, so a loss scale error would show)."""
    from zephyr.train.trainer import DPOTrainer

    ds, _, _ = tokenize_preferences(demo_rows.select(range(4)), tokenizer, 96, 48)
    ref = make_tiny_model(seed=0)
    start = noisy_copy(ref, seed=4)
    collator = PairCollator("shared", tokenizer.pad_token_id)
    weights, losses = [], []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        policy = copy.deepcopy(start)
        args = _dpo_args(
            tmp_path / f"ga{accumulation}",
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            logging_steps=1,
        )
        trainer = DPOTrainer(
            model=policy, ref_model=copy.deepcopy(ref), args=args, train_dataset=ds, data_collator=collator
        )
        with packed(policy, trainer.ref_model):
            trainer.train()
        weights.append(policy.state_dict())
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h][0])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    moved = max((weights[0][k] - start.state_dict()[k]).abs().max().item() for k in weights[0])
    assert moved > 1e-4
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=1e-6, rtol=1e-4, msg=name)


def test_lora_reference_is_the_base_model_with_adapters_disabled(
    tokenizer, tiny_model_dir, demo_rows, tmp_path
):
    from zephyr.models import ModelArguments, load_model
    from zephyr.train.dpo import load_policy, load_reference, pair_collator
    from zephyr.train.setup import maybe_add_lora
    from zephyr.train.trainer import DPOTrainer

    model_args = ModelArguments(
        model_name_or_path=str(tiny_model_dir), use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.0
    )
    args = _dpo_args(
        tmp_path,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        max_steps=2,
        per_device_train_batch_size=4,
        max_length=128,
        max_prompt_length=64,
        logging_steps=1,
    )
    assert load_reference(model_args, args, tokenizer) is None  # no second copy in memory
    policy = maybe_add_lora(load_policy(model_args, tokenizer), model_args, args)
    base = load_model(str(tiny_model_dir))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    ds, _, _ = tokenize_preferences(demo_rows.select(range(4)), tokenizer, 128, 64)
    collator = pair_collator(args, tokenizer.pad_token_id)
    batch = collator([ds[i] for i in range(4)])
    trainer = DPOTrainer(model=policy, ref_model=None, args=args, train_dataset=ds, data_collator=collator)
    with packed(policy, base):
        with torch.no_grad():
            base_logps = sequence_logps(base, batch)["logps"]
            ref_before = trainer.reference_logps(policy, batch)
            policy_before = sequence_logps(policy, batch)["logps"]
        trainer.train()
        with torch.no_grad():
            ref_after = trainer.reference_logps(policy, batch)
            policy_after = sequence_logps(policy, batch)["logps"]
    torch.testing.assert_close(ref_before, base_logps, atol=1e-4, rtol=1e-6)
    # Fresh LoRA adapters start at the base model.
    torch.testing.assert_close(policy_before, base_logps, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(ref_after, base_logps, atol=1e-4, rtol=1e-6)  # the reference did not move
    assert (policy_after - base_logps).abs().max() > 0.1  # the policy did
    margin_before = (policy_before - ref_before).view(-1, 2)
    margin_after = (policy_after - ref_after).view(-1, 2)
    assert (margin_after[:, 0] - margin_after[:, 1]).mean() > (
        margin_before[:, 0] - margin_before[:, 1]
    ).mean()
    frozen = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in policy.state_dict().items()
        if "lora_" not in k
    }
    for name, value in base_state.items():
        torch.testing.assert_close(frozen[name], value, msg=name)


def test_dpo_on_an_sft_lora_adapter_references_the_merged_sft_model(tiny_model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    import zephyr.train.dpo as dpo_module
    from zephyr.cli import main
    from zephyr.train.trainer import DPOTrainer

    # An "SFT" LoRA adapter on the tiny model, with non-zero B so it really changes the outputs.
    torch.manual_seed(0)
    sft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "sft-adapter"
    sft.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir
    )

    seen = {}

    class Recording(DPOTrainer):
        def reference_logps(self, model, batch):
            out = super().reference_logps(model, batch)
            if "ref" not in seen:
                seen["batch"] = {k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}
                seen["ref"] = out.detach().cpu().clone()
            return out

    monkeypatch.setattr(dpo_module, "DPOTrainer", Recording)
    out = tmp_path / "dpo"
    assert (
        main(
            dpo_cli_args(
                adapter, out, "--use_peft=true", "--lora_r=4", "--max_steps=1", "--max_train_samples=8"
            )
        )
        == 0
    )
    assert (out / "adapter_config.json").is_file()

    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter
    ).merge_and_unload()
    bare = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with packed(merged, bare), torch.no_grad():
        merged_logps = sequence_logps(merged, seen["batch"])["logps"]
        bare_logps = sequence_logps(bare, seen["batch"])["logps"]
    assert (merged_logps - bare_logps).abs().max() > 1.0  # the adapter matters
    torch.testing.assert_close(seen["ref"], merged_logps, atol=1e-3, rtol=1e-5)


# ------------------------------------------------------------------------------------------ 7. end to end


def test_cli_dpo_learns_logs_metrics_and_saves(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import zephyr.train.dpo as dpo_module
    import zephyr.train.reference as reference
    from zephyr.cli import main
    from zephyr.train.trainer import DPOTrainer

    refs_in_memory = []

    class Recording(DPOTrainer):
        def __init__(self, *a, ref_model=None, **k):
            refs_in_memory.append(ref_model)
            super().__init__(*a, ref_model=ref_model, **k)

    monkeypatch.setattr(dpo_module, "DPOTrainer", Recording)
    out, cache = tmp_path / "out", tmp_path / "refcache"
    common = ("--precompute_ref_log_probs=true", f"--ref_cache_dir={cache}", "--eval_strategy=steps")
    first = ("--max_steps=6", "--eval_steps=6", "--save_strategy=steps", "--save_steps=6")
    assert main(dpo_cli_args(tiny_model_dir, out, *common, *first)) == 0

    history = log_history(out)
    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    assert len(train_logs) == 6 and len(eval_logs) == 1
    assert train_logs[0]["loss"] == pytest.approx(LN2, abs=1e-4)  # policy == reference at step 0
    assert min(h["loss"] for h in train_logs[-3:]) < LN2 - 0.1
    assert all(METRICS <= set(h) for h in train_logs)
    assert train_logs[-1]["rewards/accuracies"] > 0
    # TRL's extra metrics: num_tokens is the running total of real tokens, logged as it grows.
    totals = [h["num_tokens"] for h in train_logs]
    assert totals == sorted(totals) and totals[0] > 0 and len(set(totals)) == len(totals)
    assert all(h["entropy"] > 0 and 0 <= h["mean_token_accuracy"] <= 1 for h in train_logs)
    assert eval_logs[0]["eval_num_tokens"] == totals[-1]
    eval_keys = set(eval_logs[0]) - {"epoch", "step"}
    assert {f"eval_{m}" for m in METRICS} <= eval_keys
    assert all(k.startswith("eval_") for k in eval_keys), eval_keys

    # Both splits were scored once and cached; the model loads with plain transformers; the card is written.
    assert len(list(cache.glob("*.pt"))) == 2
    assert refs_in_memory == [None]  # with precomputed log-probs no reference model is kept for training
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.use_cache is True
    assert ATTN_NAME not in (out / "config.json").read_text()
    card = (out / "README.md").read_text()
    assert "zephyr dpo" in card and "eval_rewards/accuracies" in card and "learning_rate: 0.01" in card

    # A second run reuses the cached reference log-probs: nothing is scored again.
    def boom(*a, **k):
        raise AssertionError("reference log-probs recomputed although cached")

    monkeypatch.setattr(reference, "_score", boom)
    assert (
        main(dpo_cli_args(tiny_model_dir, tmp_path / "again", *common, "--max_steps=1", "--eval_steps=1"))
        == 0
    )


# ----------------------------------------------------------------------------------------- 8. it learns


MARKER = "Certainly! "
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Germany", "Berlin"),
    ("Russia", "Moscow"),
    ("Ireland", "Dublin"),
]
LEGS = [
    ("spider", 8),
    ("dog", 4),
    ("bird", 2),
    ("ant", 6),
    ("cat", 4),
    ("horse", 4),
    ("crab", 10),
    ("duck", 2),
]
OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("early", "late"),
    ("full", "empty"),
    ("open", "closed"),
    ("wet", "dry"),
]
COLORS = [
    ("grass", "green"),
    ("snow", "white"),
    ("a banana", "yellow"),
    ("the sky", "blue"),
    ("coal", "black"),
    ("a tomato", "red"),
    ("an orange", "orange"),
    ("chocolate", "brown"),
]


def marker_prompts() -> list[tuple[str, str]]:
    """56 (prompt, plain answer) pairs from a few question families, interleaved so any slice mixes them."""
    families = [
        [
            (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
            for a, b in [
                (3, 4),
                (12, 9),
                (25, 17),
                (8, 8),
                (40, 2),
                (7, 15),
                (33, 11),
                (6, 19),
                (14, 14),
                (21, 30),
            ]
        ],
        [(f"What is the capital of {c}?", f"The capital of {c} is {cap}.") for c, cap in CAPITALS],
        [(f"How many legs does a {a} have?", f"A {a} has {n} legs.") for a, n in LEGS],
        [(f"What is the opposite of {w}?", f"The opposite of {w} is {o}.") for w, o in OPPOSITES],
        [(f"What color is {t}?", f"{t[0].upper() + t[1:]} is {c}.") for t, c in COLORS],
        [
            (f"Spell the word {w} backwards.", f"{w} backwards is {w[::-1]}.")
            for w in ["cat", "lamp", "river", "stone", "apple", "music"]
        ],
    ]
    out = []
    for i in range(max(map(len, families))):
        out += [f[i] for f in families if i < len(f)]
    return out


def _greedy_replies(model, tokenizer, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    """Batched greedy generation (left padding), one reply per prompt."""
    ids = [encode_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids])
    attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


@pytest.mark.slow
def test_embedded_model_learns_a_marker_preference(tmp_path):
    """DPO on pairs whose chosen replies start with a marker: held-out greedy replies then use it far more often.

    40 training pairs (chosen = "Certainly! " + answer, rejected = the answer), 10 steps of 8 pairs at lr 3e-5,
    reference log-probs precomputed, prefix sharing on. Measured: 0/16 held-out replies carry the marker before,
    16/16 after; held-out reward accuracy 1.0 (margin ~8.8). About 2 minutes on 2 idle cores.
    """
    from zephyr.cli import main
    from zephyr.models import load_model, load_tokenizer

    torch.manual_seed(0)
    items = marker_prompts()
    train, held_out = items[:40], items[40:]
    assert len(held_out) == 16
    rows = [{"prompt": p, "chosen": MARKER + a, "rejected": a} for p, a in train]
    data = write_jsonl(tmp_path / "marker.jsonl", rows)

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    reference = load_model("smollm2-135m-instruct", for_training=False).eval()
    held_prompts = [p for p, _ in held_out]
    before = _greedy_replies(reference, tokenizer, held_prompts)
    hits_before = sum(MARKER.strip() in r for r in before)

    out = tmp_path / "dpo"
    args = [
        "dpo",
        "--model_name_or_path=smollm2-135m-instruct",
        f"--dataset_mixer={{{data}: 1.0}}",
        "--dataset_splits=[train]",
        f"--output_dir={out}",
        "--torch_dtype=float32",
        "--beta=0.1",
        "--learning_rate=3e-5",
        "--lr_scheduler_type=constant",
        "--per_device_train_batch_size=8",
        "--per_device_eval_batch_size=16",
        "--num_train_epochs=2",
        "--max_length=96",
        "--max_prompt_length=64",
        "--precompute_ref_log_probs=true",
        f"--ref_cache_dir={tmp_path / 'refcache'}",
        "--logging_steps=1",
        "--save_strategy=no",
        "--report_to=none",
        "--seed=0",
        "--use_cpu=true",
    ]
    assert main(args) == 0
    policy = load_model(str(out)).eval()
    after = _greedy_replies(policy, tokenizer, held_prompts)
    hits_after = sum(MARKER.strip() in r for r in after)
    print(f"marker in held-out replies: {hits_before}/16 before, {hits_after}/16 after")

    # Held-out implicit reward accuracy: beta * log(pi / pi_ref), chosen against rejected.
    pairs = [tokenize_pair(tokenizer, pref_row(p, MARKER + a, a), 96, 64) for p, a in held_out]
    pairs = [{k: getattr(pair, k) for k in PAIR_KEYS} for pair in pairs]
    with torch.no_grad():
        pol, _ = layout_logps(policy, pairs, "shared")
        ref, _ = layout_logps(reference, pairs, "shared")
    _, metrics = dpo_loss("sigmoid", pol, ref["logps"], beta=0.1)
    print("held-out reward metrics:", metrics)
    assert hits_before <= 2, before
    assert hits_after >= 8 and hits_after >= hits_before + 6, after
    assert metrics["rewards/accuracies"] > 0.9, metrics
