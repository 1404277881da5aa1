"""Reference-free preference methods (ORPO, CPO, SimPO, AlphaPO): TRL 1.16 parity on the loss and every logged
metric, the same numbers (and gradients) in every batch layout, no reference model ever run, the CLI, the
pipeline stages and recipe checks.

A tiny random Llama is the policy; TRL's experimental ORPOTrainer and CPOTrainer score the same token pairs
through their own collator and padding. TRL's logits/* average over its padding too, so those two metrics
are compared on a batch whose sequences all have one length (no padding); everything else on ragged pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from support.models import make_tiny_model
from support.preference import LAYOUTS, PAIR_KEYS, REWARD_METRICS, packed, pipeline_with_alignment_stage
from zephyr.config import parse_config
from zephyr.errors import ConfigError
from zephyr.train.collate import PairCollator
from zephyr.train.config import CPOConfig, DPOConfig, ORPOConfig, SimPOConfig
from zephyr.train.dpo_data import tokenize_pair
from zephyr.train.trainer import ReferenceFreeTrainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

EPS = 0.1  # label smoothing for every CPO case: hinge and ipo must ignore it as TRL does
COMMON_METRICS = (*REWARD_METRICS, "nll_loss")
ORPO_METRICS = (*COMMON_METRICS, "log_odds_ratio", "log_odds_chosen")
LOGITS = ("logits/chosen", "logits/rejected")

ROWS = [
    ("What is 2 + 2?", "2 + 2 is 4.", "I think it might be 5, but I am not sure at all, sorry."),
    ("Name a colour.", "Blue, like a clear summer sky over a calm sea.", "Car."),
    ("Say hello.", "Hello there!", "Hi!"),
    ("What is the capital of France?", "Paris.", "London, probably, or maybe Berlin; it is hard to say."),
]


def uniform_pairs(width: int = 20) -> list[dict]:
    """Random-token pairs whose chosen and rejected sequences all have ``width`` tokens: TRL pads none."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for prompt_len in (4, 7, 11):
        ids = torch.randint(100, 5000, (3, width), generator=gen).tolist()
        rest = width - prompt_len
        out.append(
            {"prompt_ids": ids[0][:prompt_len], "chosen_ids": ids[1][:rest], "rejected_ids": ids[2][:rest]}
        )
    return out


def trl_features(pair: dict) -> dict:
    """A pair as TRL's ORPO/CPO tokenize_row leaves it (prompt tokens masked out of the labels)."""
    p, c, r = (pair[k] for k in PAIR_KEYS)
    return {
        "prompt_input_ids": p,
        "prompt_attention_mask": [1] * len(p),
        "chosen_input_ids": p + c,
        "chosen_attention_mask": [1] * (len(p) + len(c)),
        "chosen_labels": [-100] * len(p) + c,
        "rejected_input_ids": p + r,
        "rejected_attention_mask": [1] * (len(p) + len(r)),
        "rejected_labels": [-100] * len(p) + r,
    }


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    """Ragged and uniform pairs, the policy, and TRL's ORPOTrainer and CPOTrainer on it (built once)."""
    trl_orpo = pytest.importorskip("trl.experimental.orpo")
    trl_cpo = pytest.importorskip("trl.experimental.cpo")
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
    ragged = []
    for i, row in enumerate(rows):
        pair = tokenize_pair(tokenizer, row, max_length=256, max_prompt_length=128, row_index=i)
        ragged.append({k: getattr(pair, k) for k in PAIR_KEYS})
    policy = make_tiny_model(seed=3)
    text = Dataset.from_list(rows)  # TRL tokenizes these itself in __init__; its collator then gets ours
    trl_args = dict(
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,  # TRL's default would switch it on for our shared policy
        max_length=256,
    )
    orpo = trl_orpo.ORPOTrainer(
        model=policy,
        args=trl_orpo.ORPOConfig(output_dir=str(tmp_path_factory.mktemp("orpo")), **trl_args),
        train_dataset=text,
        processing_class=tokenizer,
    )
    cpo = trl_cpo.CPOTrainer(
        model=policy,
        args=trl_cpo.CPOConfig(output_dir=str(tmp_path_factory.mktemp("cpo")), **trl_args),
        train_dataset=text,
        processing_class=tokenizer,
    )
    return SimpleNamespace(
        ragged=ragged,
        uniform=uniform_pairs(),
        policy=policy,
        orpo=orpo,
        cpo=cpo,
        pad=tokenizer.pad_token_id,
        out=str(tmp_path_factory.mktemp("ours")),
    )


def config(s, cls, **keys):
    """A config parsed as a recipe's keys are."""
    (parsed,) = parse_config([cls], None, {"output_dir": s.out, "use_cpu": True, "report_to": "none", **keys})
    return parsed


def trl_result(s, trainer, pairs, **attrs):
    """TRL's loss and metrics on ``pairs``, its trainer's settings set as its __init__ sets them."""
    for name, value in attrs.items():
        setattr(trainer, name, value)
    batch = trainer.data_collator([trl_features(p) for p in pairs])
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(s.policy, batch, "train")
    return loss.item(), metrics


def our_result(s, args, pairs, layout: str = "shared"):
    """Our trainer's loss (mean over pairs) and metrics on ``pairs`` in ``layout``."""
    trainer = ReferenceFreeTrainer(model=s.policy, args=args, data_collator=PairCollator())
    batch = PairCollator(layout, s.pad, score_context=True)(pairs)
    with packed(s.policy, enabled=layout != "padded"), torch.no_grad():
        total, count, metrics = trainer.batch_loss(s.policy, batch)
    assert count == len(pairs)
    return total.item() / count, metrics


def assert_matches_trl(s, args, trainer, names, loss_rel=2e-6, **attrs):
    for pairs, compared in ((s.ragged, set(names) - set(LOGITS)), (s.uniform, set(names))):
        (loss, metrics), (trl_loss, trl_metrics) = (
            our_result(s, args, pairs),
            trl_result(s, trainer, pairs, **attrs),
        )
        assert set(metrics) == set(names) == set(trl_metrics)
        assert metrics["logps/chosen"] != pytest.approx(metrics["logps/rejected"], abs=1e-4)
        assert loss == pytest.approx(trl_loss, abs=1e-5, rel=loss_rel)
        for name in compared:
            assert metrics[name] == pytest.approx(trl_metrics[name], abs=1e-5, rel=1e-5), name


# ----------------------------------------------------------------------------------------- TRL parity


@pytest.mark.parametrize("beta", [0.1, 0.05])
def test_orpo_matches_trl(setup, beta):
    assert_matches_trl(setup, config(setup, ORPOConfig, beta=beta), setup.orpo, ORPO_METRICS, beta=beta)


CPO_CASES = [
    (loss_type, cpo_alpha) for loss_type in ("sigmoid", "hinge", "ipo", "simpo") for cpo_alpha in (0.0, 1.0)
]


@pytest.mark.parametrize(("loss_type", "cpo_alpha"), CPO_CASES, ids=[f"{t}-alpha{a:g}" for t, a in CPO_CASES])
def test_cpo_loss_types_match_trl(setup, loss_type, cpo_alpha):
    beta = 2.0 if loss_type == "simpo" else 0.1
    keys = dict(loss_type=loss_type, cpo_alpha=cpo_alpha, beta=beta, label_smoothing=EPS, simpo_gamma=0.5)
    args = config(setup, CPOConfig, **keys)
    assert_matches_trl(setup, args, setup.cpo, COMMON_METRICS, **keys, alpha=0.0)


def test_alphapo_matches_trl(setup):
    """`loss_type: alphapo` is simpo with cpo_alpha 0 (TRL's shorthand); alpha reshapes the rewards."""
    args = config(setup, CPOConfig, loss_type="alphapo", alpha=0.1, beta=2.0, cpo_alpha=1.0)
    assert (args.loss_type, args.cpo_alpha) == ("simpo", 0.0)
    attrs = dict(loss_type="simpo", cpo_alpha=0.0, alpha=0.1, beta=2.0, label_smoothing=0.0, simpo_gamma=0.5)
    # AlphaPO's rewards are ~-100 here (TRL raises exp(logp) to a power, we take one exp): fp32 rounding of
    # those reaches the loss at ~1e-5 relative.
    assert_matches_trl(setup, args, setup.cpo, COMMON_METRICS, loss_rel=1e-5, **attrs)


def test_simpo_command_defaults_are_pure_simpo(setup):
    args = config(setup, SimPOConfig)
    assert (args.loss_type, args.cpo_alpha, args.beta, args.simpo_gamma) == ("simpo", 0.0, 2.0, 0.5)
    assert args.learning_rate == pytest.approx(1e-6)  # TRL's default for CPO and ORPO
    loss, metrics = our_result(setup, args, setup.ragged)
    assert metrics["nll_loss"] == 0.0  # TRL computes no NLL when cpo_alpha is 0
    attrs = dict(loss_type="simpo", cpo_alpha=0.0, alpha=0.0, beta=2.0, label_smoothing=0.0, simpo_gamma=0.5)
    assert loss == pytest.approx(trl_result(setup, setup.cpo, setup.ragged, **attrs)[0], abs=1e-5)


def test_orpo_nll_covers_the_prompt_and_cpo_nll_does_not(setup):
    """TRL's ORPO takes the chosen sequence's NLL over prompt and completion; CPO over the completion only."""
    orpo = our_result(setup, config(setup, ORPOConfig), setup.ragged)[1]["nll_loss"]
    cpo = our_result(setup, config(setup, CPOConfig), setup.ragged)[1]["nll_loss"]
    assert orpo != pytest.approx(cpo, abs=1e-3)


# --------------------------------------------------------------------------------------------- layouts

LAYOUT_CASES = {
    "orpo": (ORPOConfig, {}),
    "cpo": (CPOConfig, {"label_smoothing": EPS}),
    "cpo-ipo": (CPOConfig, {"loss_type": "ipo"}),
    "simpo": (SimPOConfig, {}),
    "cpo-simpo": (SimPOConfig, {"cpo_alpha": 1.0, "label_smoothing": EPS}),
    "alphapo": (CPOConfig, {"loss_type": "alphapo", "alpha": 0.1, "beta": 2.0}),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layouts_agree_on_loss_metrics_and_gradients(setup, case):
    cls, keys = LAYOUT_CASES[case]
    args = config(setup, cls, **keys)
    trainer = ReferenceFreeTrainer(model=setup.policy, args=args, data_collator=PairCollator())
    results = {}
    for layout in LAYOUTS:
        batch = PairCollator(layout, setup.pad, score_context=True)(setup.ragged)
        setup.policy.zero_grad()
        with packed(setup.policy, enabled=layout != "padded"):
            total, count, metrics = trainer.batch_loss(setup.policy, batch)
            (total / count).backward()
        grads = {n: p.grad.clone() for n, p in setup.policy.named_parameters()}
        results[layout] = (total.item() / count, metrics, grads)
    setup.policy.zero_grad()
    loss, metrics, grads = results["padded"]
    assert any(g.abs().max() > 0 for g in grads.values())
    for layout in ("packed", "shared"):
        other_loss, other_metrics, other_grads = results[layout]
        assert other_loss == pytest.approx(loss, abs=1e-5, rel=1e-6), layout
        assert other_metrics == pytest.approx(metrics, abs=1e-5, rel=1e-5), layout
        for name, grad in other_grads.items():
            torch.testing.assert_close(grad, grads[name], atol=1e-5, rtol=1e-4, msg=f"{layout} {name}")


def test_context_targets_cover_each_prompt_once(setup):
    """score_context scores each prompt's tokens after its first once per pair, and every completion's end."""
    for layout in LAYOUTS:
        batch = PairCollator(layout, setup.pad, score_context=True)(setup.ragged)
        prompts = torch.bincount(batch["prompt_target_seq"], minlength=len(setup.ragged)).tolist()
        assert prompts == [len(p["prompt_ids"]) - 1 for p in setup.ragged], layout
        assert batch["end_seq"].tolist() == sorted(batch["end_seq"].tolist()) or layout == "padded"
        assert sorted(batch["end_seq"].tolist()) == list(range(2 * len(setup.ragged)))
        plain = PairCollator(layout, setup.pad)(setup.ragged)
        assert "prompt_target_col" not in plain and "end_col" not in plain  # DPO batches are unchanged


# ------------------------------------------------------------------------------------ no reference model


def test_one_policy_forward_per_batch_and_no_reference(setup):
    for args in (config(setup, ORPOConfig), config(setup, SimPOConfig)):
        trainer = ReferenceFreeTrainer(model=setup.policy, args=args, data_collator=PairCollator())
        assert not hasattr(trainer, "ref_model")
        calls: list[int] = []
        handle = setup.policy.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        try:
            with packed(setup.policy):
                trainer.batch_loss(
                    setup.policy, PairCollator("shared", setup.pad, score_context=True)(setup.ragged)
                )
        finally:
            handle.remove()
        assert len(calls) == 1


def test_disable_dropout_reaches_lora_adapters_as_in_trl():
    from peft import LoraConfig, get_peft_model

    from zephyr.train.preference import disable_dropout

    model = get_peft_model(
        make_tiny_model(), LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj"], task_type="CAUSAL_LM")
    )
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and any(m.p > 0 for m in dropouts)
    disable_dropout(model)
    assert all(m.p == 0 for m in dropouts)


# ---------------------------------------------------------------------------------------------- the CLI


def write_pairs(path: Path, n: int = 8) -> Path:
    rows = [
        {
            "prompt": f"q: what is {i} times {i}?",
            "chosen": f"{i} times {i} is {i * i}.",
            "rejected": f"I am not sure, maybe {i + 1}?",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cli_args(command, model_dir, out, data, *extra):
    return [
        command,
        f"--model_name_or_path={model_dir}",
        f"--dataset_mixer={{{data}: 1.0}}",
        "--dataset_splits=[train]",
        f"--output_dir={out}",
        "--torch_dtype=float32",
        "--per_device_train_batch_size=4",
        "--learning_rate=1e-2",
        "--lr_scheduler_type=constant",
        "--max_length=64",
        "--max_prompt_length=32",
        "--max_steps=6",
        "--logging_steps=1",
        "--save_strategy=no",
        "--report_to=none",
        "--seed=1",
        "--use_cpu=true",
        *extra,
    ]


@pytest.mark.parametrize(("command", "metrics"), [("orpo", ORPO_METRICS), ("simpo", COMMON_METRICS)])
def test_cli_trains_logs_and_saves_without_a_reference(
    command, metrics, tiny_model_dir, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    import zephyr.train.preference as preference
    import zephyr.train.reference as reference
    import zephyr.train.reference_free as reference_free
    from zephyr.cli import main

    loads, forwards, batches = [], [], []
    real_load = preference.load_model

    def counting_load(*a, **k):
        loads.append(a[0])
        return real_load(*a, **k)

    def boom(*a, **k):
        raise AssertionError("a reference-free run touched the reference machinery")

    class Recording(ReferenceFreeTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            assert not hasattr(self, "ref_model")
            self.model.register_forward_pre_hook(lambda *a: forwards.append(1))

        def batch_loss(self, model, batch):
            batches.append(1)
            return super().batch_loss(model, batch)

    monkeypatch.setattr(preference, "load_model", counting_load)
    monkeypatch.setattr(reference_free, "ReferenceFreeTrainer", Recording)
    monkeypatch.setattr(reference, "precompute_reference_logps", boom)
    monkeypatch.setattr(reference, "reference_mode", boom)
    out = tmp_path / "out"
    assert main(cli_args(command, tiny_model_dir, out, write_pairs(tmp_path / "pairs.jsonl"))) == 0

    assert loads == [str(tiny_model_dir)]  # the policy only: no reference copy
    assert len(batches) == 6 and len(forwards) == 6  # one policy forward per batch
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logs = [h for h in history if "loss" in h]
    assert len(logs) == 6 and all(set(metrics) <= set(h) for h in logs)
    if command == "orpo":
        assert logs[-1]["loss"] < logs[0]["loss"] - 0.5 and logs[-1]["nll_loss"] < logs[0]["nll_loss"]
    else:
        assert all(h["nll_loss"] == 0.0 for h in logs)
        assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    card = (out / "README.md").read_text()
    assert f"zephyr {command}" in card and "learning_rate: 0.01" in card


def test_recipe_for_another_method_fails_naming_its_command(tmp_path, capsys):
    from zephyr.cli import main

    recipe = tmp_path / "simpo.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\nbeta: 2.0\nsimpo_gamma: 0.5\n")
    assert main(["dpo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "`simpo_gamma`" in err and "a CPO/SimPO setting; run this recipe with `zephyr cpo`" in err


def recipe_file(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\nuse_cpu: true\nreport_to: none\n{text}", encoding="utf-8"
    )
    return path


@pytest.mark.parametrize(
    ("cls", "text", "match"),
    [
        (ORPOConfig, "beta: -0.1\n", r"`beta` must be positive; got -0.1"),
        (CPOConfig, "beta: 0\n", r"`beta` must be positive"),
        (
            CPOConfig,
            "loss_type: simpoo\n",
            r"`loss_type` must be one of sigmoid, hinge, ipo, simpo.*did you mean `simpo`\?",
        ),
        (SimPOConfig, "loss_type: hinje\n", r"did you mean `hinge`\?"),
        (CPOConfig, "cpo_alpha: -1\n", r"`cpo_alpha` must be at least 0"),
        (CPOConfig, "simpo_gamma: -0.5\n", r"`simpo_gamma` must be at least 0"),
        (CPOConfig, "label_smoothing: 0.5\n", r"`label_smoothing` must be at least 0 and less than 0.5"),
        (
            CPOConfig,
            "loss_type: robust\n",
            r"'robust' is not a `zephyr cpo` loss; run this recipe with `zephyr dpo`",
        ),
        (CPOConfig, "loss_type: orpo\n", r"run this recipe with `zephyr orpo`"),
        (
            DPOConfig,
            "loss_type: orpo\n",
            r"'orpo' is not a `zephyr dpo` loss; run this recipe with `zephyr orpo`",
        ),
        (
            DPOConfig,
            "loss_type: [sigmoid, simpo]\n",
            r"'simpo' is not a `zephyr dpo` loss; run .* `zephyr cpo`",
        ),
        (DPOConfig, "loss_type: kto\n", r"KTO's: it trains on unpaired .* run this recipe with `zephyr kto`"),
        (
            DPOConfig,
            "cpo_alpha: 1.0\n",
            r"`cpo_alpha` in .* is a CPO/SimPO setting; run this recipe with `zephyr cpo`",
        ),
        (ORPOConfig, "loss_type: sigmoid\n", r"`loss_type` .* is not an ORPO setting"),
        (ORPOConfig, "ref_model: x\n", r"`ref_model` .* is a DPO setting .*`zephyr dpo`"),
        (SimPOConfig, "precompute_ref_log_probs: true\n", r"a DPO setting .*`zephyr dpo`"),
        (CPOConfig, "ld_alpha: 0.5\n", r"`ld_alpha` .* is a DPO setting; run this recipe with `zephyr dpo`"),
        (
            ORPOConfig,
            "max_length: 64\nmax_prompt_length: 64\n",
            r"`max_prompt_length` \(64\) must be positive and below",
        ),
    ],
)
def test_bad_settings_fail_when_the_recipe_is_parsed(tmp_path, cls, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config([cls], recipe_file(tmp_path, text))


def test_label_smoothing_on_hinge_or_ipo_is_noted(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="zephyr.train.config"):
        parse_config([CPOConfig], recipe_file(tmp_path, "loss_type: ipo\nlabel_smoothing: 0.1\n"))
    assert "has no effect on the ipo loss" in caplog.text


HANDBOOK_ORPO = """\
# recipes/zephyr-141b-A35b/orpo/config_full.yaml of the alignment-handbook (data keys as given below)
model_name_or_path: mistral-community/Mixtral-8x22B-v0.1
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2
chat_template: "{{% for message in messages %}}{{{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}}}{{% endfor %}}"
{data}
dataset_num_proc: 8
bf16: true
beta: 0.05
gradient_accumulation_steps: 1
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: true
hub_model_id: zephyr-orpo-141b-A35b
learning_rate: 5.0e-6
log_level: info
logging_steps: 10
lr_scheduler_type: inverse_sqrt
max_length: 2048
max_prompt_length: 1792
num_train_epochs: 3
optim: adamw_bnb_8bit
output_dir: {out}
per_device_train_batch_size: 1
per_device_eval_batch_size: 1
push_to_hub: true
report_to:
- tensorboard
- wandb
save_strategy: "no"
eval_strategy: "no"
seed: 42
warmup_steps: 100
"""
HANDBOOK_DATA = {
    "dataset_name": "dataset_name: argilla/distilabel-capybara-dpo-7k-binarized\ndataset_train_split: train",
    "dataset_mixer": "dataset_mixer:\n  argilla/distilabel-capybara-dpo-7k-binarized: 1.0\ndataset_splits:\n- train",
}


@pytest.mark.parametrize("data", list(HANDBOOK_DATA))
def test_handbook_orpo_recipe_parses(tmp_path, data):
    from dataclasses import fields

    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments

    if data not in {f.name for f in fields(DataArguments)}:
        pytest.skip(f"DataArguments has no `{data}` yet")
    path = tmp_path / "orpo.yaml"
    path.write_text(HANDBOOK_ORPO.format(data=HANDBOOK_DATA[data], out=tmp_path / "out"), encoding="utf-8")
    overrides = [] if torch.cuda.is_available() else ["--use_cpu=true", "--bf16=false"]
    m, d, a = parse_config([ModelArguments, DataArguments, ORPOConfig], path, overrides)
    assert m.model_name_or_path == "mistral-community/Mixtral-8x22B-v0.1"
    assert (a.beta, a.learning_rate, a.max_length, a.max_prompt_length) == (0.05, 5e-6, 2048, 1792)
    assert a.lr_scheduler_type == "inverse_sqrt" and a.warmup_steps == 100 and a.num_train_epochs == 3
    assert a.METHOD == "orpo" and a.pair_layout == "shared"


# -------------------------------------------------------------------------------------------- pipeline


def test_pipeline_alignment_stage_may_be_orpo_cpo_or_simpo(tmp_path, tiny_model_dir):
    from zephyr.pipeline import run_pipeline

    recipe = pipeline_with_alignment_stage(tmp_path, tiny_model_dir, "simpo")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_pipeline(path, dry_run=True)
    assert list(summary) == ["sft", "simpo", "export"]
    assert summary["simpo"]["state"] == "would run"
    with pytest.raises(ConfigError, match="stage `simpo`.*`ld_alpha`.*`zephyr dpo`"):
        run_pipeline(path, dry_run=True, overrides={"simpo.ld_alpha": 0.5})
    with pytest.raises(ConfigError, match="one alignment stage per pipeline.*dpo, simpo"):
        run_pipeline(path, dry_run=True, overrides={"dpo": {"max_steps": 1}})


def test_pipeline_wires_the_alignment_model_downstream(tmp_path):
    from zephyr.pipeline.stages import ALIGNMENT_STAGES, STAGES, PipelineContext

    ctx = PipelineContext(tmp_path)
    ctx.outputs = {"sft": {"model": "runs/sft/model"}, "binarize": {"data": "runs/binarize/data"}}
    for name in ("orpo", "cpo", "simpo"):
        assert STAGES[name].trains and STAGES[name].inputs == STAGES["dpo"].inputs
        section = STAGES[name].wire({}, ctx)
        assert section["model_name_or_path"] == "runs/sft/model"
        assert section["dataset_mixer"] == {"runs/binarize/data": 1.0}
        assert section["output_dir"] == str(tmp_path / name / "model")
    ctx.outputs["orpo"] = {"model": "runs/orpo/model"}
    assert STAGES["export"].wire({}, ctx)["model"] == "runs/orpo/model"
    evaluated = STAGES["eval"].wire({"prefs": {}}, ctx)["prefs"]
    assert evaluated["model"] == "runs/orpo/model" and evaluated["ref_model"] == "runs/sft/model"
    assert set(ALIGNMENT_STAGES) <= set(STAGES["report"].reads)


def test_a_recipe_filed_under_orpo_is_not_trained_by_zephyr_dpo(tmp_path, capsys):
    """The handbook's ORPO recipe has no ORPO-only key; its `orpo/` directory says which command it is for."""
    from zephyr.cli import main
    from zephyr.cli.common import check_method_directory

    recipe = tmp_path / "zephyr-141b" / "orpo" / "config_full.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("beta: 0.05\nmax_length: 64\nmax_prompt_length: 32\n")
    assert main(["dpo", str(recipe), f"--output_dir={tmp_path / 'out'}"]) == 2
    assert "run it with `zephyr orpo`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    check_method_directory(recipe, "zephyr orpo", [])  # the right command
    check_method_directory(recipe, "zephyr dpo", ["--loss_type=sigmoid"])  # a stated loss says it is meant
