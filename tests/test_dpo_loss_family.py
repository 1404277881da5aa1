"""The DPO loss family: every TRL 1.16 loss type, weighted mixes and LD-DPO against TRL's DPOTrainer, the
same numbers in every batch layout, the precomputed reference with ld_alpha, and recipe validation.

One tiny random Llama is the reference; the policy is a copy with a little seeded noise on every weight, so
the log-ratios are not zero. The replies are short: a random 49k-vocabulary model gives about -11 per token,
and fp32 sums of hundreds in another order than TRL's differ in the last bits.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from support.models import make_tiny_model
from support.preference import LAYOUTS, PAIR_KEYS, REWARD_METRICS, noisy_copy, packed
from zephyr.config import parse_config
from zephyr.errors import ConfigError
from zephyr.train.collate import PairCollator
from zephyr.train.config import DPOConfig
from zephyr.train.dpo_data import tokenize_pair
from zephyr.train.logps import completion_positions, sequence_logps
from zephyr.train.losses import DPO_LOSSES, USES_LABEL_SMOOTHING, LossSettings, PairLogps, mixed_loss
from zephyr.train.trainer import DPOTrainer

METRICS = (*REWARD_METRICS, "entropy", "mean_token_accuracy", "num_tokens")
EPS = 0.1  # label smoothing for every case: the losses that ignore it must ignore it as TRL does


# Short replies of unequal length (LD-DPO only weighs the tokens past the shorter one), both ways round.
ROWS = [
    ("What is 2 + 2?", "2 + 2 is 4.", "I think it might be 5, but I am not sure at all, sorry."),
    ("Name a colour.", "Blue, like a clear summer sky over a calm sea.", "Car."),
    ("Say hello.", "Hello there!", "Hi!"),
    ("What is the capital of France?", "Paris.", "London, probably, or maybe Berlin; it is hard to say."),
]


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    """Pairs, the reference, the noisy policy and TRL's DPOTrainer on them (built once for the module)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    rows = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for q, c, r in ROWS
    ]
    pairs = []
    for i, row in enumerate(rows):
        pair = tokenize_pair(tokenizer, row, max_length=256, max_prompt_length=128, row_index=i)
        pairs.append({k: getattr(pair, k) for k in PAIR_KEYS})
    longer = [len(p["chosen_ids"]) > len(p["rejected_ids"]) for p in pairs]
    assert any(longer) and not all(longer)
    ref = make_tiny_model(seed=0)
    policy = noisy_copy(ref, seed=3)
    text = Dataset.from_list(rows)  # TRL tokenizes these itself; its collator then gets our token ids
    config = trl.DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        beta=0.1,
        max_length=None,
        bf16=False,  # TRL's default bf16 autocast would touch the reference only
    )
    trainer = trl.DPOTrainer(
        model=policy, ref_model=ref, args=config, train_dataset=text, processing_class=tokenizer
    )
    trl_batch = trainer.data_collator([dict(p) for p in pairs])  # exactly our token ids, TRL's padding
    return SimpleNamespace(
        pairs=pairs,
        ref=ref,
        policy=policy,
        trl=trainer,
        trl_batch=trl_batch,
        pad=tokenizer.pad_token_id,
        out=tmp_path_factory.mktemp("ours"),
    )


def trl_result(s, loss_type, weights=None, ld_alpha=None, tau=0.05):
    """TRL's loss and metrics for one setting, set on its trainer as its __init__ would from DPOConfig."""
    t = s.trl
    t.loss_types, t.loss_weights = list(loss_type), list(weights or [1.0] * len(loss_type))
    t.label_smoothing, t.ld_alpha, t.args.discopop_tau = EPS, ld_alpha, tau
    s.policy.train()
    with torch.no_grad():
        loss = t.compute_loss(s.policy, s.trl_batch).item()
    metrics = {k: t._metrics["train"][k][-1] for k in METRICS}
    # TRL's num_tokens is its running total over every call so far; one batch's count is its attention mask.
    metrics["num_tokens"] = float(s.trl_batch["attention_mask"].sum())
    return loss, metrics


def recipe(out, **keys) -> DPOConfig:
    """A DPOConfig parsed as a recipe's keys are (lists and all)."""
    base = {"output_dir": str(out), "use_cpu": True, "report_to": "none", "label_smoothing": EPS}
    (config,) = parse_config([DPOConfig], None, base | keys)
    return config


def our_result(s, config: DPOConfig, layout: str = "shared"):
    """Our DPOTrainer's per-pair loss mean and metrics on the same pairs."""
    trainer = DPOTrainer(model=s.policy, ref_model=s.ref, args=config, data_collator=PairCollator())
    batch = PairCollator(layout, s.pad)(s.pairs)
    with packed(s.policy, s.ref, enabled=layout != "padded"), torch.no_grad():
        total, count, metrics = trainer.batch_loss(s.policy, batch)
    assert count == len(s.pairs)
    return total.item() / count, metrics


def assert_matches_trl(ours, theirs):
    (loss, metrics), (trl_loss, trl_metrics) = ours, theirs
    assert metrics["rewards/margins"] != pytest.approx(0.0, abs=1e-3)  # policy and reference differ
    # 1e-5 absolute, or 2e-6 relative for the large losses: sppo_hard at beta 0.1 is ~50 (it pulls the
    # log-ratios to +-5), and summed log-probs that differ from TRL's in their last fp32 bit move it by ~4e-5.
    assert loss == pytest.approx(trl_loss, abs=1e-5, rel=2e-6)
    for name in METRICS:
        tol = {"rel": 1e-5} if name.startswith("logps/") else {"abs": 1e-5}
        assert metrics[name] == pytest.approx(trl_metrics[name], **tol), name


# ----------------------------------------------------------------------------------------- TRL parity


@pytest.mark.parametrize("loss_type", list(DPO_LOSSES))
def test_every_loss_type_matches_trl(setup, loss_type):
    config = recipe(setup.out, loss_type=loss_type)
    assert config.loss_type == [loss_type]
    assert_matches_trl(our_result(setup, config), trl_result(setup, [loss_type]))


@pytest.mark.parametrize(
    ("loss_type", "weights"),
    [(["sigmoid", "sft"], [1.0, 0.5]), (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])],
    ids=["sigmoid+sft", "mpo"],
)
def test_weighted_mix_matches_trl(setup, loss_type, weights):
    config = recipe(setup.out, loss_type=loss_type, loss_weights=weights)
    ours, theirs = our_result(setup, config), trl_result(setup, loss_type, weights)
    assert_matches_trl(ours, theirs)
    # The mix is the weighted sum of each type alone.
    alone = [our_result(setup, recipe(setup.out, loss_type=name))[0] for name in loss_type]
    assert ours[0] == pytest.approx(sum(w * v for w, v in zip(weights, alone, strict=True)), abs=1e-6)


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["ipo"], ["aot"], ["sigmoid", "sft"]], ids="+".join)
def test_ld_alpha_matches_trl(setup, loss_type):
    weights = [1.0, 0.5] if len(loss_type) == 2 else None
    config = recipe(setup.out, loss_type=loss_type, loss_weights=weights, ld_alpha=0.5)
    ours, theirs = our_result(setup, config), trl_result(setup, loss_type, weights, ld_alpha=0.5)
    assert_matches_trl(ours, theirs)
    plain = our_result(setup, recipe(setup.out, loss_type=loss_type, loss_weights=weights))
    assert ours[1]["logps/chosen"] != pytest.approx(plain[1]["logps/chosen"], rel=1e-3)  # it does weigh


def test_discopop_tau_reaches_the_loss(setup):
    config = recipe(setup.out, loss_type="discopop", discopop_tau=0.5)
    ours, theirs = our_result(setup, config), trl_result(setup, ["discopop"], tau=0.5)
    assert_matches_trl(ours, theirs)
    assert ours[0] != pytest.approx(our_result(setup, recipe(setup.out, loss_type="discopop"))[0], abs=1e-6)


# --------------------------------------------------------------------------------------------- layouts


@pytest.fixture(scope="module")
def layout_scores(setup):
    """PairLogps for every layout, without and with ld_alpha."""
    out = {}
    for layout in LAYOUTS:
        batch = PairCollator(layout, setup.pad)(setup.pairs)
        with packed(setup.policy, setup.ref, enabled=layout != "padded"), torch.no_grad():
            for ld_alpha in (None, 0.5):
                policy = sequence_logps(setup.policy, batch, ld_alpha)
                ref = sequence_logps(setup.ref, batch, ld_alpha)["logps"]
                out[layout, ld_alpha] = PairLogps.from_scores(policy, ref)
    return out


@pytest.mark.parametrize("ld_alpha", [None, 0.5])
@pytest.mark.parametrize("loss_type", list(DPO_LOSSES))
def test_layouts_agree_for_every_loss(layout_scores, loss_type, ld_alpha):
    settings = LossSettings(beta=0.1, label_smoothing=EPS)
    padded = mixed_loss(layout_scores["padded", ld_alpha], [loss_type], settings)
    for layout in ("packed", "shared"):
        losses = mixed_loss(layout_scores[layout, ld_alpha], [loss_type], settings)
        torch.testing.assert_close(losses, padded, atol=1e-5, rtol=1e-6, msg=f"{layout} {loss_type}")


@pytest.mark.parametrize(
    ("loss_type", "weights", "ld_alpha"),
    [(["aot"], None, None), (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], 0.5)],
    ids=["aot", "mpo-ld"],
)
def test_layouts_give_equal_gradients(setup, loss_type, weights, ld_alpha):
    settings = LossSettings(beta=0.1, label_smoothing=EPS)
    grads = {}
    for layout in LAYOUTS:
        batch = PairCollator(layout, setup.pad)(setup.pairs)
        setup.policy.zero_grad()
        with packed(setup.policy, setup.ref, enabled=layout != "padded"):
            with torch.no_grad():
                ref = sequence_logps(setup.ref, batch, ld_alpha)["logps"]
            scores = PairLogps.from_scores(sequence_logps(setup.policy, batch, ld_alpha), ref)
            mixed_loss(scores, loss_type, settings, weights).mean().backward()
        grads[layout] = {n: p.grad.clone() for n, p in setup.policy.named_parameters()}
    setup.policy.zero_grad()
    assert any(g.abs().max() > 0 for g in grads["padded"].values())
    for layout in ("packed", "shared"):
        for name, grad in grads[layout].items():
            torch.testing.assert_close(
                grad, grads["padded"][name], atol=1e-5, rtol=1e-4, msg=f"{layout} {name}"
            )


def test_completion_positions_follow_each_completion():
    # Tokens of completions 0, 2 and then 1, 3 (the padded layout's order), one completion per run.
    seq = torch.tensor([0, 0, 0, 2, 2, 1, 3, 3, 3, 3])
    assert completion_positions(seq, 4).tolist() == [0, 1, 2, 0, 1, 0, 0, 1, 2, 3]


def test_ld_alpha_one_is_plain_dpo(setup):
    batch = PairCollator("shared", setup.pad)(setup.pairs)
    with packed(setup.ref), torch.no_grad():
        plain = sequence_logps(setup.ref, batch)
        one = sequence_logps(setup.ref, batch, 1.0)
        zero = sequence_logps(setup.ref, batch, 0.0)
    torch.testing.assert_close(one["logps"], plain["logps"])
    torch.testing.assert_close(zero["unweighted_logps"], plain["logps"])
    # With ld_alpha 0 each pair's two sums cover the same number of tokens: the shorter completion's.
    lengths = plain["lengths"]
    assert not torch.equal(lengths[0::2], lengths[1::2])
    assert not torch.allclose(zero["logps"], plain["logps"])


# ------------------------------------------------------------------------- precomputed reference + ld_alpha


def test_precomputed_reference_is_ld_weighted_and_keyed_by_ld_alpha(setup, tmp_path):
    from datasets import Dataset

    from zephyr.train.reference import precompute_reference_logps

    data = Dataset.from_list(setup.pairs)
    accelerator = SimpleNamespace(
        process_index=0, num_processes=1, device=torch.device("cpu"), is_main_process=True
    )
    collator = PairCollator("shared", setup.pad)
    cache = tmp_path / "cache"
    batch = collator(setup.pairs)
    for n_files, ld_alpha in enumerate((None, 0.5, 0.5), start=1):
        scored = precompute_reference_logps(
            data, setup.ref, collator, 4, accelerator, "train", str(cache), ld_alpha=ld_alpha
        )
        with packed(setup.ref), torch.no_grad():
            expected = sequence_logps(setup.ref, batch, ld_alpha)["logps"]
        got = torch.tensor(
            [v for row in scored for v in (row["ref_chosen_logps"], row["ref_rejected_logps"])]
        )
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
        assert len(list(cache.glob("*.pt"))) == min(n_files, 2)  # a new key for ld_alpha, reused after
    # The trainer takes the precomputed (weighted) reference as it is and gives the same loss as on the fly.
    config = recipe(setup.out, loss_type=["sigmoid", "sft"], ld_alpha=0.5)
    on_the_fly = our_result(setup, config)
    trainer = DPOTrainer(model=setup.policy, ref_model=None, args=config, data_collator=collator)
    with packed(setup.policy), torch.no_grad():
        total, count, metrics = trainer.batch_loss(setup.policy, collator([dict(r) for r in scored]))
    assert total.item() / count == pytest.approx(on_the_fly[0], abs=1e-5)
    assert metrics == pytest.approx(on_the_fly[1], abs=1e-5)


# ------------------------------------------------------------------------------------------ recipe checks


def write_recipe(tmp_path, text: str):
    path = tmp_path / "dpo.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\nreport_to: none\n{text}", encoding="utf-8"
    )
    return path


def test_recipe_parses_loss_lists(tmp_path):
    path = write_recipe(tmp_path, "loss_type: [sigmoid, bco_pair, sft]\nloss_weights: [0.8, 0.2, 1]\n")
    (config,) = parse_config([DPOConfig], path)
    assert config.loss_type == ["sigmoid", "bco_pair", "sft"] and config.loss_weights == [0.8, 0.2, 1.0]
    (config,) = parse_config([DPOConfig], write_recipe(tmp_path, "loss_type: ipo\n"))
    assert config.loss_type == ["ipo"] and config.loss_weights is None and config.ld_alpha is None
    (config,) = parse_config(
        [DPOConfig],
        None,
        [f"--output_dir={tmp_path}", "--loss_type", "sigmoid", "sft", "--loss_weights=[1, 1e-1]"],
    )
    assert config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "loss_type: [sigmoid, sigmod_norm]\n",
            r"`loss_type` must be one of .*did you mean `sigmoid_norm`\?",
        ),
        ("loss_type: bco_par\n", r"did you mean `bco_pair`\?"),
        ("loss_type: []\n", r"`loss_type` must be a loss name or a non-empty list"),
        (
            "loss_type: [sigmoid, sft]\nloss_weights: [1.0]\n",
            r"`loss_weights` has 1 weight\(s\) but `loss_type` has 2",
        ),
        ("loss_weights: [0.5, 0.5]\n", r"`loss_weights` has 2 weight\(s\) but `loss_type` has 1"),
        (
            "loss_type: [sigmoid, sft]\nloss_weights: [1.0, .nan]\n",
            r"`loss_weights` must hold finite numbers",
        ),
        ("loss_type: exo_pair\n", r"`label_smoothing` must be greater than 0 for the `exo_pair` loss"),
        (
            "loss_type: robust\nlabel_smoothing: 0.5\n",
            r"`label_smoothing` must be at least 0 and less than 0.5",
        ),
        ("ld_alpha: 1.5\n", r"`ld_alpha` must be at least 0 and at most 1"),
        ("discopop_tau: 0\n", r"`discopop_tau` must be positive"),
    ],
)
def test_bad_loss_settings_fail_when_the_recipe_is_parsed(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config([DPOConfig], write_recipe(tmp_path, text))


def test_label_smoothing_without_a_loss_that_reads_it_is_noted(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="zephyr.train.config"):
        parse_config([DPOConfig], write_recipe(tmp_path, "loss_type: [sigmoid, sft]\nlabel_smoothing: 0.1\n"))
    assert "has no effect" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="zephyr.train.config"):
        parse_config([DPOConfig], write_recipe(tmp_path, "loss_type: [sigmoid, aot]\nlabel_smoothing: 0.1\n"))
    assert "has no effect" not in caplog.text
    assert set(USES_LABEL_SMOOTHING) < set(DPO_LOSSES)


def test_loss_values_on_hand_computed_scores():
    """A few losses by hand on made-up log-probs (two pairs), including the batch-level sft and aot."""
    x = PairLogps(
        chosen=torch.tensor([-10.0, -20.0]),
        rejected=torch.tensor([-14.0, -18.0]),
        ref_chosen=torch.tensor([-12.0, -19.0]),
        ref_rejected=torch.tensor([-13.0, -21.0]),
        chosen_lengths=torch.tensor([4.0, 6.0]),
        rejected_lengths=torch.tensor([5.0, 3.0]),
        chosen_nll=torch.tensor(3.0),
    )
    s = LossSettings(beta=0.5, label_smoothing=0.1)
    rw, rl = [2.0, -1.0], [-1.0, 3.0]

    def ls(v):
        return -math.log1p(math.exp(-v))

    bco = [-ls(0.5 * a) - ls(-0.5 * b) for a, b in zip(rw, rl, strict=True)]
    assert mixed_loss(x, ["bco_pair"], s).tolist() == pytest.approx(bco, abs=1e-6)
    assert mixed_loss(x, ["sft"], s).tolist() == [3.0, 3.0]
    # aot: sorted policy gaps (4, -2) -> (-2, 4) against sorted reference gaps (1, 2)
    aot = [-0.9 * ls(0.5 * d) - 0.1 * ls(-0.5 * d) for d in (-2 - 1, 4 - 2)]
    assert mixed_loss(x, ["aot"], s).tolist() == pytest.approx(aot, abs=1e-6)
    mix = mixed_loss(x, ["bco_pair", "sft"], s, [0.2, 1.0])
    assert mix.tolist() == pytest.approx([0.2 * b + 3.0 for b in bco], abs=1e-6)
