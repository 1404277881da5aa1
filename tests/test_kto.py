"""KTO (`zephyr kto`): TRL 1.16 KTOTrainer parity on the loss, the KL estimate and every logged metric, the same
numbers and gradients in every batch layout, no gradient through the KL term, the precomputed reference and
its cache key, the unpaired data (TRL rows, pairs, rated completions) and its errors, the class checks, the
CLI, the recipes and the pipeline stage.

One tiny random Llama is the reference; the policy is a copy with a little seeded noise on every weight, so
the log-ratios (and the KL estimate, which must be above its clamp at 0 to matter) are not zero. TRL's
collator gets exactly our token ids and KL completions, so both sides score the same sequences.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from support.models import make_tiny_model
from support.preference import LAYOUTS, noisy_copy, packed, pipeline_with_alignment_stage
from zephyr.config import parse_config
from zephyr.errors import ConfigError, DataError
from zephyr.train.collate import PairCollator
from zephyr.train.config import DPOConfig, KTOConfig
from zephyr.train.dpo_data import tokenize_unpaired
from zephyr.train.kto import add_kl_completions, balance_warning, kl_partners, kto_collator
from zephyr.train.losses import KTO_LOSSES, UnpairedLogps, UnpairedSettings, kto, unpaired_loss
from zephyr.train.trainer import KTOTrainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

METRICS = (
    "kl",
    "logits/chosen",
    "logits/rejected",
    "rewards/chosen",
    "logps/chosen",
    "rewards/rejected",
    "logps/rejected",
    "rewards/margins",
    "entropy",
    "num_tokens",
)
WEIGHTS = [(1.0, 1.0), (1.5, 0.6)]

# Short replies of unequal length, the two classes mixed (a row's KL completion is the row before's).
ROWS = [
    ("What is 2 + 2?", "2 + 2 is 4.", True),
    ("Name a colour.", "Car.", False),
    ("Say hello.", "Hello there!", True),
    ("What is the capital of France?", "London, probably, or maybe Berlin.", False),
    ("Count to three.", "One, two, three.", True),
    ("Spell cat.", "D-O-G", False),
]


def message_rows(rows=ROWS) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": q}],
            "completion": [{"role": "assistant", "content": c}],
            "label": label,
        }
        for q, c, label in rows
    ]


def token_rows(tokenizer, rows, batch_size: int):
    from datasets import Dataset

    tokens = [tokenize_unpaired(tokenizer, r, 256, 128, row_index=i)[0] for i, r in enumerate(rows)]
    return add_kl_completions(Dataset.from_list(tokens), batch_size, 256)


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    """Token rows with their KL completions, the reference, the noisy policy and TRL's KTOTrainer on them."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    rows = message_rows()
    ref = make_tiny_model(seed=0)
    policy = noisy_copy(ref, seed=3)
    trainer = trl.KTOTrainer(
        model=policy,
        ref_model=ref,
        args=trl.KTOConfig(
            output_dir=str(tmp_path_factory.mktemp("trl")),
            per_device_train_batch_size=len(rows),
            report_to=[],
            use_cpu=True,
            bf16=False,  # TRL's default bf16 autocast would touch the reference only
            gradient_checkpointing=False,  # TRL's default would switch it on for our shared policy
            max_length=None,
        ),
        train_dataset=Dataset.from_list(rows),  # TRL tokenizes these itself; its collator then gets ours
        processing_class=tokenizer,
    )
    desirable = [r for r in rows if r["label"]]
    return SimpleNamespace(
        rows=[dict(r) for r in token_rows(tokenizer, rows, len(rows))],
        one_class=[dict(r) for r in token_rows(tokenizer, desirable, len(desirable))],
        tokenizer=tokenizer,
        ref=ref,
        policy=policy,
        trl=trainer,
        pad=tokenizer.pad_token_id,
        out=str(tmp_path_factory.mktemp("ours")),
    )


def recipe(out, **keys) -> KTOConfig:
    """A KTOConfig parsed as a recipe's keys are."""
    base = {"output_dir": str(out), "use_cpu": True, "report_to": "none", "per_device_train_batch_size": 6}
    (config,) = parse_config([KTOConfig], None, base | keys)
    return config


def trl_result(s, rows, loss_type: str, weights):
    """TRL's loss and metrics on ``rows``, its trainer's settings set as its __init__ sets them."""
    t = s.trl
    t.loss_type, t.calculate_KL = loss_type, KTO_LOSSES[loss_type].uses_kl
    t.desirable_weight, t.undesirable_weight = weights
    keys = {"prompt_ids": "prompt_ids", "completion_ids": "completion_ids", "label": "label"}
    if t.calculate_KL:
        keys["kl_completion_ids"] = "KL_completion_ids"
    batch = t.data_collator([{theirs: r[ours] for ours, theirs in keys.items()} for r in rows])
    t._metrics["train"].clear()
    s.policy.train()
    with torch.no_grad():
        loss = t.compute_loss(s.policy, batch).item()
    metrics = {k: v[-1] for k, v in t._metrics["train"].items()}
    # TRL's num_tokens is its running total over every call so far; one batch's count is its attention mask.
    metrics["num_tokens"] = float(batch["attention_mask"].sum())
    return loss, metrics


def our_result(s, config: KTOConfig, rows, layout: str = "shared"):
    """Our KTOTrainer's loss (mean over rows) and metrics on the same rows."""
    trainer = KTOTrainer(model=s.policy, ref_model=s.ref, args=config, data_collator=PairCollator())
    completions = kto_collator(config, s.pad).completions
    batch = PairCollator(layout, s.pad, completions=completions, passthrough=("label",))(rows)
    with packed(s.policy, s.ref, enabled=layout != "padded"), torch.no_grad():
        total, count, metrics = trainer.batch_loss(s.policy, batch)
    assert count == len(rows)
    return total.item() / count, metrics


def assert_matches_trl(ours, theirs):
    (loss, metrics), (trl_loss, trl_metrics) = ours, theirs
    assert set(metrics) == set(trl_metrics)
    assert loss == pytest.approx(trl_loss, abs=1e-5)
    for name, value in metrics.items():
        tol = {"rel": 1e-5} if name.startswith("logps/") else {"abs": 1e-5}
        assert value == pytest.approx(trl_metrics[name], **tol), name


# ----------------------------------------------------------------------------------------- TRL parity


@pytest.mark.parametrize("weights", WEIGHTS, ids=["w1-1", "w1.5-0.6"])
@pytest.mark.parametrize("loss_type", list(KTO_LOSSES))
def test_loss_kl_and_metrics_match_trl(setup, loss_type, weights):
    config = recipe(
        setup.out, loss_type=loss_type, desirable_weight=weights[0], undesirable_weight=weights[1]
    )
    ours, theirs = our_result(setup, config, setup.rows), trl_result(setup, setup.rows, loss_type, weights)
    assert set(ours[1]) == set(METRICS)
    assert_matches_trl(ours, theirs)
    if loss_type == "kto":
        assert ours[1]["kl"] > 0.05  # above the clamp: z0 really enters the loss
    else:
        assert ours[1]["kl"] == 0.0  # TRL logs 0 for a loss with no KL term
    assert ours[1]["rewards/margins"] != pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("loss_type", list(KTO_LOSSES))
def test_a_batch_of_one_class_logs_what_trl_logs(setup, loss_type):
    """A batch without undesirable rows: TRL logs no rejected metric and no margin for it; neither do we."""
    config = recipe(setup.out, loss_type=loss_type, desirable_weight=1.5, per_device_train_batch_size=3)
    ours = our_result(setup, config, setup.one_class)
    theirs = trl_result(setup, setup.one_class, loss_type, (1.5, 1.0))
    assert_matches_trl(ours, theirs)
    assert set(ours[1]) == {"kl", "logits/chosen", "rewards/chosen", "logps/chosen", "entropy", "num_tokens"}


def test_weights_scale_the_rows_and_stay_out_of_the_mean():
    """TRL's loss: mean over all rows of w(y) * loss(y); the weights are not in the denominator."""
    x = UnpairedLogps(
        logps=torch.tensor([-10.0, -20.0, -5.0]),
        ref_logps=torch.tensor([-12.0, -19.0, -6.0]),
        labels=torch.tensor([True, False, False]),
        lengths=torch.tensor([4.0, 6.0, 2.0]),
        logit_sums=torch.tensor([0.4, 0.6, 0.2]),
        kl_logps=torch.tensor([-30.0, -31.0, -32.0]),
        ref_kl_logps=torch.tensor([-30.5, -31.5, -32.5]),
    )
    s = UnpairedSettings(beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    losses, metrics = unpaired_loss("kto", x, s)
    z0 = 0.5
    r = [2.0, -1.0, 1.0]
    sig = torch.sigmoid
    expected = [
        2.0 * (1 - sig(torch.tensor(0.5 * (r[0] - z0)))),
        0.5 * (1 - sig(torch.tensor(0.5 * (z0 - r[1])))),
        0.5 * (1 - sig(torch.tensor(0.5 * (z0 - r[2])))),
    ]
    assert losses.tolist() == pytest.approx([float(e) for e in expected], abs=1e-6)
    assert metrics["kl"] == pytest.approx(z0)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * (r[1] + r[2]) / 2)
    assert metrics["logits/rejected"] == pytest.approx(0.8 / 8)
    # A negative KL estimate is clamped at 0.
    below = UnpairedLogps(**{**x.__dict__, "ref_kl_logps": x.kl_logps + 1.0})
    losses0, metrics0 = unpaired_loss("kto", below, s)
    assert metrics0["kl"] == 0.0
    weights = torch.where(x.labels, 2.0, 0.5)
    torch.testing.assert_close(losses0, weights * kto(x.logratios, x.labels, torch.tensor(0.0), s))


def test_the_kl_estimate_is_summed_over_processes():
    """z0 is the mean over processes of each batch's mean, and the metrics are sums over processes divided by
    the counts over processes (a fake two-process `total` doubles every sum)."""
    x = UnpairedLogps(
        logps=torch.tensor([-10.0, -20.0]),
        ref_logps=torch.tensor([-12.0, -19.0]),
        labels=torch.tensor([True, False]),
        lengths=torch.tensor([4.0, 6.0]),
        logit_sums=torch.tensor([0.4, 0.6]),
        kl_logps=torch.tensor([-30.0, -31.0]),
        ref_kl_logps=torch.tensor([-31.0, -31.0]),
    )
    s = UnpairedSettings()
    one = unpaired_loss("kto", x, s)
    two = unpaired_loss("kto", x, s, total=lambda t: 2 * t)
    torch.testing.assert_close(one[0], two[0])
    assert one[1] == pytest.approx(two[1])


# --------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("loss_type", list(KTO_LOSSES))
def test_layouts_agree_on_loss_metrics_and_gradients(setup, loss_type):
    config = recipe(setup.out, loss_type=loss_type, desirable_weight=1.5, undesirable_weight=0.6)
    trainer = KTOTrainer(model=setup.policy, ref_model=setup.ref, args=config, data_collator=PairCollator())
    completions = kto_collator(config, setup.pad).completions
    results = {}
    for layout in LAYOUTS:
        batch = PairCollator(layout, setup.pad, completions=completions, passthrough=("label",))(setup.rows)
        setup.policy.zero_grad()
        with packed(setup.policy, setup.ref, enabled=layout != "padded"):
            total, count, metrics = trainer.batch_loss(setup.policy, batch)
            (total / count).backward()
        grads = {n: p.grad.clone() for n, p in setup.policy.named_parameters()}
        results[layout] = (total.item() / count, metrics, grads)
    setup.policy.zero_grad()
    loss, metrics, grads = results["padded"]
    assert any(g.abs().max() > 0 for g in grads.values())
    for layout in ("packed", "shared"):
        other_loss, other_metrics, other_grads = results[layout]
        assert other_loss == pytest.approx(loss, abs=1e-6), layout
        assert other_metrics == pytest.approx(metrics, abs=1e-5, rel=1e-5), layout
        for name, grad in other_grads.items():
            torch.testing.assert_close(grad, grads[name], atol=1e-5, rtol=1e-4, msg=f"{layout} {name}")


def test_shared_layout_runs_each_prompt_once_for_both_completions(setup):
    config = recipe(setup.out)
    batch = kto_collator(config, setup.pad)(setup.rows)
    width = batch["input_ids"].shape[1]
    expected = sum(
        len(r["prompt_ids"]) + len(r["completion_ids"]) + len(r["kl_completion_ids"]) for r in setup.rows
    )
    assert width == expected
    assert batch["label"].tolist() == [r[2] for r in ROWS]
    # Only the positions that score a completion token get logits.
    assert batch["target_col"].numel() == sum(
        len(r["completion_ids"]) + len(r["kl_completion_ids"]) for r in setup.rows
    )


def test_the_kl_term_takes_no_gradient(setup):
    """One forward over completions and KL completions gives the gradient of the loss with z0 computed apart
    without gradient (TRL's separate no-grad KL forward), and the policy's KL log-probs carry no graph."""
    config = recipe(setup.out, desirable_weight=1.5, undesirable_weight=0.6)
    settings = config.loss_settings()
    batch = kto_collator(config, setup.pad)(setup.rows)
    setup.policy.zero_grad()
    with packed(setup.policy, setup.ref):
        from zephyr.train.logps import sequence_logps

        policy = sequence_logps(setup.policy, batch)
        with torch.no_grad():
            ref = sequence_logps(setup.ref, batch)["logps"]
        x = UnpairedLogps.from_scores(policy, ref, batch["label"], with_kl=True)
        assert not x.kl_logps.requires_grad and x.logps.requires_grad
        losses, metrics = unpaired_loss("kto", x, settings)
        losses.mean().backward()
        ours = {n: p.grad.clone() for n, p in setup.policy.named_parameters()}
        setup.policy.zero_grad()
        # Completions alone, z0 a constant.
        alone = PairCollator("shared", setup.pad, completions=("completion_ids",), passthrough=("label",))
        plain = alone(setup.rows)
        logps = sequence_logps(setup.policy, plain)["logps"]
        with torch.no_grad():
            ref_plain = sequence_logps(setup.ref, plain)["logps"]
        z0 = torch.tensor(metrics["kl"])
        labels = plain["label"]
        weights = torch.where(labels, settings.desirable_weight, settings.undesirable_weight)
        (weights * kto(logps - ref_plain, labels, z0, settings)).mean().backward()
    for name, p in setup.policy.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
    setup.policy.zero_grad()


# ------------------------------------------------------------------------------------------- KL pairing


def test_kl_partners_rotate_within_each_batch():
    assert kl_partners(6, 3) == [2, 0, 1, 5, 3, 4]
    assert kl_partners(7, 3) == [2, 0, 1, 5, 3, 4, 5]  # a lone last row takes the row before, not itself
    assert kl_partners(4, 8) == [3, 0, 1, 2]


def test_kl_completions_are_cut_to_fit_after_their_own_prompt():
    from datasets import Dataset

    rows = Dataset.from_list(
        [
            {"prompt_ids": [1] * 6, "completion_ids": [5, 6], "label": True},
            {"prompt_ids": [2, 2], "completion_ids": [7, 8, 9, 10, 11], "label": False},
        ]
    )
    kl = add_kl_completions(rows, 2, max_length=8)["kl_completion_ids"]
    assert kl == [[7, 8], [5, 6]]  # row 0: 6 prompt tokens leave room for 2


# -------------------------------------------------------------------------------- precomputed reference


def test_precomputed_reference_matches_the_live_one_and_its_key_follows_the_kl_pairing(setup, tmp_path):
    from datasets import Dataset

    from zephyr.train.reference import precompute_reference_logps

    accelerator = SimpleNamespace(
        process_index=0, num_processes=1, device=torch.device("cpu"), is_main_process=True
    )
    config = recipe(setup.out, desirable_weight=1.5)
    collator = kto_collator(config, setup.pad)
    cache = tmp_path / "cache"
    plain = [{k: r[k] for k in ("prompt_ids", "completion_ids", "label")} for r in setup.rows]
    data = Dataset.from_list(setup.rows)
    scored = precompute_reference_logps(data, setup.ref, collator, 4, accelerator, "train", str(cache))
    assert {"ref_completion_logps", "ref_kl_completion_logps"} <= set(scored.column_names)
    assert len(list(cache.glob("*.pt"))) == 1
    precompute_reference_logps(data, setup.ref, collator, 2, accelerator, "train", str(cache))
    assert len(list(cache.glob("*.pt"))) == 1  # the batch size of the pass does not matter
    repaired = add_kl_completions(Dataset.from_list(plain), 3, 256)  # another pairing
    precompute_reference_logps(repaired, setup.ref, collator, 4, accelerator, "train", str(cache))
    assert len(list(cache.glob("*.pt"))) == 2
    # The trainer takes the precomputed reference and gives the loss and metrics of the live one.
    live = our_result(setup, config, setup.rows)
    trainer = KTOTrainer(model=setup.policy, ref_model=None, args=config, data_collator=collator)
    batch = collator([dict(r) for r in scored])
    assert "ref_logps" in batch
    with packed(setup.policy), torch.no_grad():
        total, count, metrics = trainer.batch_loss(setup.policy, batch)
    assert total.item() / count == pytest.approx(live[0], abs=1e-6)
    assert metrics == pytest.approx(live[1], abs=1e-5, rel=1e-5)


# ----------------------------------------------------------------------------------------------- data


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def test_trl_unpaired_rows_standard_and_conversational_read_alike(tmp_path):
    from zephyr.data import load_rows

    standard = {"prompt": "What colour is the sky?", "completion": "Blue.", "label": True}
    conversational = {
        "prompt": [{"role": "user", "content": "What colour is the sky?"}],
        "completion": [{"role": "assistant", "content": "Blue."}],
        "label": True,
    }
    ds = load_rows(write_jsonl(tmp_path / "u.jsonl", [standard, conversational]), "unpaired").dataset
    assert len(ds) == 2 and ds[0] == ds[1]
    assert ds[0]["completion"] == [{"role": "assistant", "content": "Blue."}] and ds[0]["label"] is True


def test_preference_pairs_become_one_desirable_and_one_undesirable_row(tmp_path):
    from zephyr.data import load_rows

    binarized = {  # ultrafeedback_binarized's shape: chosen/rejected hold the whole conversation
        "prompt": "Name a fruit.",
        "prompt_id": "p1",
        "chosen": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}],
        "rejected": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Car."}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    plain = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
    ds = load_rows(write_jsonl(tmp_path / "p.jsonl", [binarized, plain]), "unpaired").dataset
    assert len(ds) == 4
    assert ds["label"] == [True, False, True, False]
    assert [r["completion"][0]["content"] for r in ds] == ["Apple.", "Car.", "Hi!", "No."]
    assert ds[0]["prompt"] == ds[1]["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    assert ds["prompt_id"][:2] == ["p1", "p1"] and ds["score"][:2] == [8.0, 3.0]


def rated_record(prompt_id: str, scores) -> dict:
    """A `zephyr feedback` row: each completion with its fine-grained (1-5) and overall (1-10) scores."""
    return {
        "schema_version": 1,
        "prompt_id": prompt_id,
        "prompt": f"question {prompt_id}",
        "messages": [{"role": "user", "content": f"question {prompt_id}"}],
        "completions": [
            {
                "model": "m",
                "response": f"answer {i}",
                "annotations": {"helpfulness": {"rating": None if fine is None else round(fine)}},
                "fine-grained_score": fine,
                "overall_score": overall,
            }
            for i, (fine, overall) in enumerate(scores)
        ],
    }


def test_rated_completions_are_labelled_by_the_threshold(tmp_path):
    from zephyr.data import load_rows
    from zephyr.data.schemas import UnpairedRules

    path = write_jsonl(
        tmp_path / "rated.jsonl", [rated_record("a", [(4.5, 9), (4.0, 6), (2.75, 3), (None, None)])]
    )
    default = load_rows(path, "unpaired").dataset
    # fine-grained_score >= 4 (the default on the 1-5 scales) is desirable; the unrated completion is left out
    assert default["label"] == [True, True, False] and default["score"] == [4.5, 4.0, 2.75]
    assert default["prompt_id"] == ["a"] * 3
    assert default[0]["completion"] == [{"role": "assistant", "content": "answer 0"}]
    overall = load_rows(path, "unpaired", rules=UnpairedRules("overall_score")).dataset
    assert overall["label"] == [True, False, False]  # 7 on the 1-10 scale
    strict = load_rows(path, "unpaired", rules=UnpairedRules("fine-grained_score", 4.25)).dataset
    assert strict["label"] == [True, False, False]
    aspect = load_rows(path, "unpaired", rules=UnpairedRules("helpfulness", 3)).dataset
    assert aspect["label"] == [True, True, True]  # ratings 4 (4.5 rounds to 4), 4, 3
    config = recipe(tmp_path, kto_score_field="overall_score", kto_threshold=6)
    assert config.unpaired_rules() == UnpairedRules("overall_score", 6)


BAD_ROWS = [
    ({"prompt": "q", "completion": "a", "label": 1}, "label", "must be true (desirable) or false"),
    ({"prompt": "q", "completion": "a"}, "label", "is missing"),
    ({"prompt": "q", "label": True}, "completion", "is missing: an unpaired row needs"),
    ({"completion": "a", "label": True}, "prompt", "is missing"),
    ({"prompt": "q", "completion": "", "label": True}, "completion", "is empty"),
    ({"prompt": "q", "completion": 3, "label": False}, "completion", "must be a string or a list"),
    (
        {"prompt": "q", "completion": [{"role": "user", "content": "a"}], "label": False},
        "completion[0].role",
        "expected 'assistant'",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "completion": "b",
            "label": True,
        },
        "prompt[1].role",
        "must end with a user turn",
    ),
    ({"schema_version": 9, "prompt": "q", "completions": []}, "schema_version", "upgrade zephyr"),
]


@pytest.mark.parametrize(("row", "field", "reason"), BAD_ROWS, ids=[f for _, f, _ in BAD_ROWS])
def test_bad_unpaired_rows_name_file_line_and_field(tmp_path, row, field, reason):
    from zephyr.data import load_rows

    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "fine", "label": True}, row])
    with pytest.raises(DataError) as info:
        load_rows(path, "unpaired")
    message = str(info.value)
    assert message.startswith(f"{path}, line 2, field `{field}`: "), message
    assert reason in message
    skipped = load_rows(path, "unpaired", on_error="skip")
    assert len(skipped.dataset) == 1 and skipped.skipped == 1


def test_arrow_sources_name_the_row(tmp_path):
    from datasets import Dataset

    from zephyr.data import load_rows

    Dataset.from_list([{"prompt": "q", "completion": "a", "label": "yes"}]).to_parquet(tmp_path / "u.parquet")
    with pytest.raises(DataError, match=r"u.parquet, row 0, field `label`: must be true"):
        load_rows(tmp_path / "u.parquet", "unpaired")


# ------------------------------------------------------------------------------------ classes and balance


def test_balance_warning_gives_the_ratio_and_weights_that_fit():
    assert balance_warning(100, 100, 1.0, 1.0) is None
    assert balance_warning(120, 100, 1.0, 1.0) is None  # 1.2 is in [1, 4/3]
    text = balance_warning(300, 100, 1.0, 1.0)
    assert "300 desirable and 100 undesirable" in text
    assert "= 1 * 300 / (1 * 100) = 3.000, outside [1, 4/3]" in text
    assert "`desirable_weight` to 0.333-0.444 (keeping undesirable_weight 1)" in text
    assert "`undesirable_weight` to 2.250-3.000 (keeping desirable_weight 1)" in text
    # Equal counts with unequal weights: TRL does not check; the ratio 2 is outside the range all the same.
    assert "= 2.000, outside" in balance_warning(50, 50, 2.0, 1.0)
    fewer_good = balance_warning(100, 300, 1.0, 1.0)
    assert (
        "`desirable_weight` to 3.000-4.000" in fewer_good
        and "`undesirable_weight` to 0.250-0.333" in fewer_good
    )


def kto_data_args(path: Path):
    from zephyr.data.config import DataArguments

    (data_args,) = parse_config(
        [DataArguments], None, {"dataset_mixer": {str(path): 1.0}, "dataset_splits": ["train"]}
    )
    return data_args


def test_one_class_data_fails_before_the_model_loads(tmp_path, tokenizer):
    from zephyr.train.kto import prepare_kto_data

    only_good = write_jsonl(
        tmp_path / "good.jsonl", [{"prompt": f"q{i}", "completion": "a", "label": True} for i in range(4)]
    )
    with pytest.raises(
        DataError,
        match=r"KTO needs both desirable and undesirable rows, .* no undesirable \(label false\) rows \(4 desirable, 0 undesirable\)",
    ):
        prepare_kto_data(tokenizer, kto_data_args(only_good), recipe(tmp_path, per_device_train_batch_size=2))
    rated = write_jsonl(tmp_path / "rated.jsonl", [rated_record("a", [(4.5, 9), (4.25, 8)])])
    with pytest.raises(DataError, match=r"score 4.25-4.5 on `fine-grained_score`, and `kto_threshold` is 4"):
        prepare_kto_data(tokenizer, kto_data_args(rated), recipe(tmp_path, per_device_train_batch_size=2))


def test_unbalanced_data_is_warned_about(tmp_path, tokenizer, caplog):
    from zephyr.train.kto import prepare_kto_data

    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i != 0} for i in range(4)]
    with caplog.at_level("WARNING", logger="zephyr.train.kto"):
        data = prepare_kto_data(
            tokenizer,
            kto_data_args(write_jsonl(tmp_path / "u.jsonl", rows)),
            recipe(tmp_path, per_device_train_batch_size=2),
        )
    assert "3 desirable and 1 undesirable rows" in caplog.text and "outside [1, 4/3]" in caplog.text
    train = data["train"]
    assert sorted(train["row"]) == [0, 1, 2, 3]  # shuffled once, every row kept
    partners = kl_partners(4, 2)
    assert train["kl_completion_ids"] == [train["completion_ids"][j] for j in partners]


# ---------------------------------------------------------------------------------------------- config


def write_recipe(tmp_path, text: str, name: str = "kto.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\nreport_to: none\n{text}", encoding="utf-8"
    )
    return path


TRL_STYLE = """\
# the keys of TRL's KTOConfig and its trl/scripts/kto.py example
model_name_or_path: trl-lib/qwen1.5-1.8b-sft
dataset_name: trl-lib/kto-mix-14k
per_device_train_batch_size: 16
num_train_epochs: 1
learning_rate: 5.0e-7
lr_scheduler_type: cosine
gradient_accumulation_steps: 1
eval_steps: 500
warmup_ratio: 0.1
logging_first_step: true
beta: 0.1
loss_type: kto
desirable_weight: 1.0
undesirable_weight: 1.33
max_length: 1024
precompute_ref_log_probs: false
precompute_ref_batch_size: 32
disable_dropout: true
dataset_num_proc: 4
train_sampling_strategy: sequential
pad_to_multiple_of: null
use_peft: true
lora_r: 16
lora_alpha: 16
"""


def test_a_trl_style_kto_config_parses(tmp_path):
    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments

    m, d, a = parse_config([ModelArguments, DataArguments, KTOConfig], write_recipe(tmp_path, TRL_STYLE))
    assert (m.model_name_or_path, d.dataset_name, m.use_peft) == (
        "trl-lib/qwen1.5-1.8b-sft",
        "trl-lib/kto-mix-14k",
        True,
    )
    assert (a.beta, a.learning_rate, a.undesirable_weight, a.precompute_ref_batch_size) == (
        0.1,
        5e-7,
        1.33,
        32,
    )
    (defaults,) = parse_config([KTOConfig], write_recipe(tmp_path, ""))
    assert (defaults.beta, defaults.learning_rate, defaults.loss_type) == (0.1, 1e-6, "kto")
    assert (defaults.desirable_weight, defaults.undesirable_weight) == (1.0, 1.0)
    assert defaults.train_sampling_strategy == "sequential" and defaults.disable_dropout


@pytest.mark.parametrize(
    "path", ["recipes/demo/kto.yaml", "recipes/mistral-7b/kto.yaml"], ids=["demo", "mistral-7b"]
)
def test_shipped_recipes_parse(path):
    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments

    root = Path(__file__).resolve().parents[1]
    m, d, a = parse_config(
        [ModelArguments, DataArguments, KTOConfig], root / path, ["--use_cpu=true", "--bf16=false"]
    )
    assert a.loss_type == "kto" and a.beta == 0.1 and a.per_device_train_batch_size > 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "per_device_train_batch_size: 1\n",
            r"`per_device_train_batch_size` is 1, but loss_type 'kto' .* at least 2",
        ),
        ("train_sampling_strategy: random\n", r"`train_sampling_strategy` is 'random'.* use `sequential`"),
        ("loss_type: sigmoid\n", r"'sigmoid' is not a `zephyr kto` loss; run this recipe with `zephyr dpo`"),
        ("loss_type: kot\n", r"did you mean `kto`\?"),
        ("loss_type: kto_pair\n", r"'kto_pair' was TRL's paired approximation .* use `loss_type: kto`"),
        ("beta: 0\n", r"`beta` must be positive"),
        ("undesirable_weight: -1\n", r"`undesirable_weight` must be positive"),
        ("kto_score_field: overall\n", r"`kto_score_field` must be one of .*did you mean `overall_score`\?"),
        ("ld_alpha: 0.5\n", r"`ld_alpha` .* is a DPO setting; run this recipe with `zephyr dpo`"),
    ],
)
def test_bad_kto_settings_fail_when_the_recipe_is_parsed(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config([KTOConfig], write_recipe(tmp_path, text))


def test_apo_zero_unpaired_needs_no_kl_batch(tmp_path):
    (config,) = parse_config(
        [KTOConfig],
        write_recipe(
            tmp_path,
            "loss_type: apo_zero_unpaired\nper_device_train_batch_size: 1\ntrain_sampling_strategy: random\n",
        ),
    )
    assert not config.uses_kl and kto_collator(config, 0).completions == ("completion_ids",)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired", "kto_pair"])
def test_kto_loss_types_given_to_dpo_name_zephyr_kto(tmp_path, loss_type):
    with pytest.raises(
        ConfigError, match=rf"`loss_type` '{loss_type}' is KTO's: .*run this recipe with `zephyr kto`"
    ):
        parse_config([DPOConfig], write_recipe(tmp_path, f"loss_type: {loss_type}\n"))
    with pytest.raises(ConfigError, match=r"`desirable_weight` .* is a KTO setting .*`zephyr kto`"):
        parse_config([DPOConfig], write_recipe(tmp_path, "desirable_weight: 1.5\n"))


# ---------------------------------------------------------------------------------------------- the CLI


def cli_args(model_dir, out, data, *extra):
    return [
        "kto",
        f"--model_name_or_path={model_dir}",
        f"--dataset_mixer={{{data}: 1.0}}",
        "--dataset_splits=[train]",
        f"--output_dir={out}",
        "--torch_dtype=float32",
        "--per_device_train_batch_size=4",
        "--learning_rate=1e-2",
        "--lr_scheduler_type=constant",
        "--max_length=128",
        "--max_prompt_length=64",
        "--max_steps=8",
        "--logging_steps=1",
        "--save_strategy=no",
        "--report_to=none",
        "--seed=1",
        "--use_cpu=true",
        *extra,
    ]


def test_cli_trains_logs_trl_metrics_and_saves(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import zephyr.train.kto as kto_module
    from zephyr.cli import main

    refs, batches = [], []

    class Recording(KTOTrainer):
        def __init__(self, *a, ref_model=None, **k):
            refs.append(ref_model)
            super().__init__(*a, ref_model=ref_model, **k)

        def batch_loss(self, model, batch):
            batches.append(int(batch["label"].numel()))
            return super().batch_loss(model, batch)

    monkeypatch.setattr(kto_module, "KTOTrainer", Recording)
    pairs = [
        {"prompt": f"what is {i} times {i}?", "chosen": f"{i * i}.", "rejected": "no idea"} for i in range(8)
    ]
    data = tmp_path / "pairs"
    data.mkdir()
    write_jsonl(data / "train.jsonl", pairs)
    write_jsonl(data / "test.jsonl", pairs[:2])
    out, cache = tmp_path / "out", tmp_path / "refcache"
    extra = (
        "--precompute_ref_log_probs=true",
        f"--ref_cache_dir={cache}",
        "--dataset_splits=[train, test]",
        "--eval_strategy=steps",
        "--eval_steps=8",
    )
    assert main(cli_args(tiny_model_dir, out, data, *extra)) == 0

    assert refs == [None]  # precomputed: no reference model in memory while training
    assert len(list(cache.glob("*.pt"))) == 2  # train and test
    assert batches[:8] == [4] * 8  # 16 rows from 8 pairs: 4 sequential batches of 4, twice
    assert batches[8:] == [4, 4]  # the evaluation at step 8 and the final one (4 rows, eval batches of 8)
    evals = [
        h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in h
    ]
    assert evals and {"eval_kl", "eval_rewards/chosen", "eval_rewards/margins"} <= set(evals[-1])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logs = [h for h in history if "loss" in h]
    assert len(logs) == 8 and all("kl" in h and "logps/chosen" in h for h in logs)
    assert set(METRICS) <= set(logs[0])  # a batch of both classes logs every metric
    assert logs[0]["kl"] == 0.0 and logs[0]["loss"] == pytest.approx(0.5)  # policy == reference at step 0
    # The same batch one epoch later: a lower loss.
    assert logs[4]["loss"] < logs[0]["loss"]
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    card = (out / "README.md").read_text()
    assert "Trained with `zephyr kto`" in card and "learning_rate: 0.01" in card


def test_cli_one_class_data_fails_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import zephyr.train.kto as kto_module
    from zephyr.cli import main

    def boom(*a, **k):
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr(kto_module, "load_policy", boom)
    data = write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": f"q{i}", "completion": "a", "label": False} for i in range(4)]
    )
    assert main(cli_args(tiny_model_dir, tmp_path / "out", data)) == 2
    assert "KTO needs both desirable and undesirable rows" in capsys.readouterr().err


def test_dpo_given_loss_type_kto_names_zephyr_kto(tmp_path, capsys):
    from zephyr.cli import main
    from zephyr.cli.common import check_method_directory

    assert main(["dpo", str(write_recipe(tmp_path, "loss_type: kto\n"))]) == 2
    assert "run this recipe with `zephyr kto`" in capsys.readouterr().err
    filed = tmp_path / "kto"
    filed.mkdir()
    with pytest.raises(ConfigError, match="run it with `zephyr kto`"):
        check_method_directory(write_recipe(filed, "beta: 0.1\n", "config_full.yaml"), "zephyr dpo", [])


# -------------------------------------------------------------------------------------------- pipeline


def test_pipeline_kto_trains_on_the_feedback_output_else_the_pairs(tmp_path):
    from zephyr.pipeline.stages import ALIGNMENT_STAGES, STAGES, PipelineContext
    from zephyr.pipeline.validate import validate_stage

    assert "kto" in ALIGNMENT_STAGES and STAGES["kto"].trains
    ctx = PipelineContext(tmp_path)
    ctx.outputs = {"sft": {"model": "runs/sft/model"}, "binarize": {"data": "runs/binarize/data"}}
    section = STAGES["kto"].wire({}, ctx)
    assert section["dataset_mixer"] == {"runs/binarize/data": 1.0}
    assert section["dataset_splits"] == ["train_prefs", "test_prefs"]
    assert section["model_name_or_path"] == "runs/sft/model"
    ctx.outputs["feedback"] = {"rated": "runs/feedback/rated.jsonl"}
    section = STAGES["kto"].wire({}, ctx)
    assert section["dataset_mixer"] == {"runs/feedback/rated.jsonl": 1.0} and section["dataset_splits"] == [
        "train"
    ]
    assert "feedback" in STAGES["kto"].reads
    assert STAGES["dpo"].wire({}, ctx)["dataset_mixer"] == {"runs/binarize/data": 1.0}  # dpo keeps the pairs
    validate_stage("kto", section, ctx.produced())
    with pytest.raises(ConfigError, match="stage `kto`.*`per_device_train_batch_size` is 1"):
        validate_stage("kto", {**section, "per_device_train_batch_size": 1}, ctx.produced())


def test_pipeline_dry_run_with_a_kto_stage(tmp_path, tiny_model_dir):
    from zephyr.pipeline import run_pipeline

    recipe_ = pipeline_with_alignment_stage(tmp_path, tiny_model_dir, "kto")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe_))
    summary = run_pipeline(path, dry_run=True)
    assert list(summary) == ["sft", "kto", "export"] and summary["kto"]["state"] == "would run"
    with pytest.raises(ConfigError, match="one alignment stage per pipeline.*dpo, kto"):
        run_pipeline(path, dry_run=True, overrides={"dpo": {"max_steps": 1}})
