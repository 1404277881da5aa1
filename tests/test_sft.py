"""dSFT: packed == unpacked, parity with TRL's SFTTrainer, resume, learning, CLI, multi-process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.models import enable_checkpointing, make_tiny_model
from zephyr.chat import tokenize_conversation
from zephyr.train.attention import restore_attention, use_packed_attention
from zephyr.train.collate import PackedCollator, PaddedCollator, pack_best_fit
from zephyr.train.logps import sft_loss_sum

CONVERSATIONS = [
    [
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "Seven is prime."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy, please, with a short explanation?"},
        {"role": "assistant", "content": "Rome, which has been the capital since 1871."},
    ],
    [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi there! How can I help you today?"},
    ],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
]


def _examples(tokenizer):
    out = []
    for messages in CONVERSATIONS:
        tok = tokenize_conversation(tokenizer, messages)
        out.append({"input_ids": tok.input_ids, "assistant_mask": tok.assistant_mask})
    return out


def _loss_and_grads(model, batch):
    model.zero_grad()
    total, count = sft_loss_sum(model, batch)
    loss = total / count
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _per_conversation_loss(model, examples):
    """The reference: each conversation alone, unpadded, plain SDPA; token-weighted mean."""
    total, count = 0.0, 0
    for ex in examples:
        t, c = sft_loss_sum(model, PaddedCollator(pad_token_id=0)([ex]))
        total, count = total + t, count + c
    return total / count


def test_packed_loss_and_grads_equal_padded_and_unpacked(tokenizer):
    model = make_tiny_model()
    examples = _examples(tokenizer)
    padded_loss, padded_grads = _loss_and_grads(model, PaddedCollator(tokenizer.pad_token_id)(examples))
    with torch.no_grad():
        reference = _per_conversation_loss(model, examples).item()
    previous = use_packed_attention(model)
    try:
        packed_loss, packed_grads = _loss_and_grads(model, PackedCollator()(examples))
    finally:
        restore_attention(model, previous)
    assert padded_loss == pytest.approx(reference, abs=1e-5)
    assert packed_loss == pytest.approx(reference, abs=1e-5)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_packed_gradients(tokenizer, reentrant):
    model = make_tiny_model().train()
    batch = PackedCollator()(_examples(tokenizer))
    previous = use_packed_attention(model)
    try:
        plain = _loss_and_grads(model, batch)
        calls = enable_checkpointing(model, reentrant)
        checkpointed = _loss_and_grads(model, batch)
    finally:
        restore_attention(model, previous)
    assert calls[0] == 2  # forward, then the recomputation during backward
    assert checkpointed[0] == pytest.approx(plain[0], abs=1e-6)
    assert checkpointed[1].keys() == plain[1].keys()
    for name, grad in checkpointed[1].items():
        torch.testing.assert_close(grad, plain[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_prepacked_rows_keep_conversations_apart(tokenizer):
    """Conversations packed into one example (packing=True) see nothing of each other."""
    model = make_tiny_model()
    examples = _examples(tokenizer)
    packed_example = {
        "input_ids": sum((e["input_ids"] for e in examples), []),
        "assistant_mask": sum((e["assistant_mask"] for e in examples), []),
        "seq_lengths": [len(e["input_ids"]) for e in examples],
    }
    with torch.no_grad():
        reference = _per_conversation_loss(model, examples).item()
        previous = use_packed_attention(model)
        total, count = sft_loss_sum(model, PackedCollator()([packed_example]))
        restore_attention(model, previous)
    assert (total / count).item() == pytest.approx(reference, abs=1e-5)


def test_model_left_on_packed_attention_handles_padded_batches_and_generation(tokenizer):
    """Evaluation and generation can run while a model is still switched to packed attention."""
    model = make_tiny_model().eval()
    batch = PaddedCollator(tokenizer.pad_token_id)(_examples(tokenizer))
    prompt = batch["input_ids"][:2, :6]
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected_gen = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
        previous = use_packed_attention(model)
        try:
            got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            got_gen = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
        finally:
            restore_attention(model, previous)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)
    assert torch.equal(got_gen, expected_gen)


def test_best_fit_packing_respects_capacity_and_keeps_everything():
    lengths = [700, 300, 1024, 20, 500, 480, 1, 999]
    bins = pack_best_fit(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert len(bins) == 4  # 4023 tokens cannot fit in fewer than 4 bins of 1024
    with pytest.raises(ValueError, match="more than the packing capacity"):
        pack_best_fit([2000], 1024)


def test_loss_matches_trl_sft_trainer(tokenizer, tmp_path):
    """Same unpacked batch, same model: TRL 1.16's SFTTrainer loss equals ours."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model = make_tiny_model()
    examples = _examples(tokenizer)
    dataset = Dataset.from_list(
        [{"input_ids": e["input_ids"], "assistant_masks": e["assistant_mask"]} for e in examples]
    )
    config = trl.SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True
    )
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch).item()
        total, count = sft_loss_sum(model, PaddedCollator(tokenizer.pad_token_id)(examples))
    assert (total / count).item() == pytest.approx(trl_loss, abs=1e-5)
    assert count == int((batch["labels"][:, 1:] != -100).sum())


def _write_conversations(path: Path, n: int = 48) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            messages = [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} equals {2 * i}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _sft_args(model_dir, data, out, *extra):
    return [
        "sft",
        f"--model_name_or_path={model_dir}",
        f"--dataset_mixer={{{data}: 1.0}}",
        "--dataset_splits=[train]",
        "--packing=false",  # one conversation per example, so each step sees 4 of them
        f"--output_dir={out}",
        "--per_device_train_batch_size=4",
        "--learning_rate=3e-3",
        "--lr_scheduler_type=constant",
        "--logging_steps=1",
        "--report_to=none",
        "--seed=1",
        "--use_cpu=true",
        *extra,
    ]


@pytest.mark.parametrize(
    ("data", "stated", "packs"),
    [
        ("--dataset_mixer={d.jsonl: 1.0}", None, True),  # the 2023 script this form was written for packed
        ("--dataset_mixture={datasets: [{id: d.jsonl}]}", None, False),  # today's script: TRL's default
        ("--dataset_name=d.jsonl", None, False),
        ("--dataset_mixer={d.jsonl: 1.0}", "false", False),  # a stated value always wins
        ("--dataset_name=d.jsonl", "true", True),
    ],
)
def test_unset_packing_follows_the_handbook_script_of_the_recipe_form(tmp_path, data, stated, packs):
    from zephyr.config import parse_config
    from zephyr.data.config import DataArguments
    from zephyr.train.config import SFTConfig
    from zephyr.train.sft import resolve_packing

    overrides = [data, f"--output_dir={tmp_path}"] + ([f"--packing={stated}"] if stated else [])
    data_args, args = parse_config([DataArguments, SFTConfig], None, overrides)
    resolve_packing(args, data_args)
    assert args.packing is packs


def _log_history(out) -> list[dict]:
    state = (
        json.loads((Path(out) / "trainer_state.json").read_text())
        if (Path(out) / "trainer_state.json").exists()
        else None
    )
    if state is None:
        ckpts = sorted(Path(out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    return state["log_history"]


def test_cli_sft_learns_and_saves_loadable_model(tiny_model_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zephyr.cli import main

    data = _write_conversations(tmp_path / "conv.jsonl")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="zephyr"):
        assert main(_sft_args(tiny_model_dir, data, out, "--num_train_epochs=2", "--save_strategy=no")) == 0
    assert "Packed attention kernel: sdpa_blocks (attention_kernel: auto" in caplog.text
    metrics = json.loads((out / "all_results.json").read_text())
    # The log history is kept beside the model even without checkpoints: `zephyr report` plots it.
    history = [
        h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h
    ]
    assert metrics["train_loss"] < 10.8  # ln(49152) = 10.80 is the loss of a uniform guess
    assert history[-1] < history[0] - 1.0
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.use_cache is True
    card = (out / "README.md").read_text()
    assert "train_loss" in card and "learning_rate" in card


def test_resume_from_checkpoint_gives_identical_training(tiny_model_dir, tmp_path):
    from zephyr.cli import main

    data = _write_conversations(tmp_path / "conv.jsonl", n=24)
    common = ("--max_steps=6", "--save_strategy=steps", "--save_steps=3")
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_sft_args(tiny_model_dir, data, full, *common)) == 0
    assert (
        main(
            _sft_args(tiny_model_dir, data, part, "--max_steps=6", "--save_strategy=steps", "--save_steps=3")
        )
        == 0
    )
    # Interrupted run: drop the final checkpoint and the finished model, then resume from step 3.
    import shutil

    shutil.rmtree(part / "checkpoint-6")
    for f in part.glob("*.safetensors"):
        f.unlink()
    assert main(_sft_args(tiny_model_dir, data, part, *common, "--resume_from_checkpoint=true")) == 0
    full_losses = [h["loss"] for h in _log_history(full / "checkpoint-6") if "loss" in h]
    part_losses = [h["loss"] for h in _log_history(part / "checkpoint-6") if "loss" in h]
    assert part_losses == pytest.approx(full_losses, abs=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_cli_unknown_key_is_a_clear_error(tmp_path, capsys):
    from zephyr.cli import main

    assert main(["sft", "--learnig_rate=1e-5", f"--output_dir={tmp_path}"]) == 2
    assert "did you mean `learning_rate`" in capsys.readouterr().err


DDP_SCRIPT = """
import json, sys
from zephyr.cli import main
sys.exit(main(json.loads(sys.argv[1])))
"""


def test_two_process_ddp_matches_single_process(tiny_model_dir, tmp_path):
    """2 CPU processes (gloo) x 2 conversations == 1 process x 4 conversations, same global batch."""
    data = _write_conversations(tmp_path / "conv.jsonl", n=16)
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    # Sequential order: rank r of 2 takes rows r, r+2, ... so each step sees the same 4 rows as one process.
    common = (
        "--max_steps=3",
        "--save_strategy=no",
        "--dataloader_drop_last=true",
        "--train_sampling_strategy=sequential",
    )
    single = _sft_args(tiny_model_dir, data, tmp_path / "single", *common)
    double = _sft_args(tiny_model_dir, data, tmp_path / "ddp", *common)
    double[double.index("--per_device_train_batch_size=4")] = "--per_device_train_batch_size=2"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), json.dumps(single)], check=True, env=env, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    subprocess.run([*torchrun, str(script), json.dumps(double)], check=True, env=env, timeout=600)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "single" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "model.safetensors")
    # Tolerance: the two runs differ only in float summation order (gradients all-reduced over gloo).
    # (Trainer's `train_loss` is rank 0's own average, so the weights are what we compare.)
    drift = max((a[k] - b[k]).abs().max().item() for k in a)
    assert drift < 1e-4, f"weights differ by up to {drift}"


@pytest.mark.slow
def test_embedded_model_sft_then_generate(tmp_path):
    from zephyr.chat import encode_prompt, tokenize_conversation
    from zephyr.cli import main
    from zephyr.models import load_model, load_tokenizer

    data = _write_conversations(tmp_path / "conv.jsonl", n=8)
    out = tmp_path / "smol"
    args = _sft_args(
        "smollm2-135m-instruct", data, out, "--max_steps=4", "--save_strategy=no", "--learning_rate=1e-4"
    )
    assert main(args) == 0
    tokenizer = load_tokenizer(str(out))
    model = load_model(str(out)).eval()
    # It learned something: the trained replies (assistant tokens, what SFT trains) are more likely under
    # the trained model than under the base model.
    convo = [
        {"role": "user", "content": "What is 3 plus 3?"},
        {"role": "assistant", "content": "3 plus 3 equals 6."},
    ]
    tok = tokenize_conversation(tokenizer, convo)
    ids = torch.tensor([tok.input_ids])
    labels = torch.tensor(
        [[t if m else -100 for t, m in zip(tok.input_ids, tok.assistant_mask, strict=True)]]
    )
    base = load_model("smollm2-135m-instruct").eval()
    with torch.no_grad():
        before = base(input_ids=ids, labels=labels).loss.item()
        after = model(input_ids=ids, labels=labels).loss.item()
    assert after < before, f"loss on a trained reply went {before:.3f} -> {after:.3f}"
    ids = torch.tensor([encode_prompt(tokenizer, [{"role": "user", "content": "What is 3 plus 3?"}])])
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    assert len(reply.strip()) > 0
