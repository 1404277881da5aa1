"""Recipes: handbook YAML files and `--key=value` overrides parsed into typed settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zephyr.config import parse_config, parse_overrides, read_recipe, to_dict
from zephyr.data.config import DataArguments
from zephyr.errors import ConfigError
from zephyr.models import ModelArguments
from zephyr.train.config import SFTConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[1]
SFT = [ModelArguments, DataArguments, SFTConfig]

# Keys from recipes/zephyr-7b-beta/sft/config_full.yaml plus the older handbook names.
HANDBOOK_YAML = """\
# Model arguments
model_name_or_path: mistralai/Mistral-7B-v0.1
model_revision: main
torch_dtype: bfloat16
use_flash_attention_2: true

# Data arguments
chat_template: zephyr
dataset_mixer:
  HuggingFaceH4/ultrachat_200k: 1.0
dataset_splits:
- train_sft
- test_sft
preprocessing_num_workers: 12

# Training arguments
use_cpu: true
bf16: false
do_eval: true
evaluation_strategy: epoch
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: zephyr-7b-sft-full
learning_rate: 2.0e-05
log_level: info
logging_steps: 5
logging_strategy: steps
lr_scheduler_type: cosine
max_seq_length: 2048
packing: true
max_steps: -1
num_train_epochs: 1
output_dir: {output_dir}
overwrite_output_dir: true
per_device_eval_batch_size: 16
per_device_train_batch_size: 32
push_to_hub: false
report_to:
- tensorboard
save_strategy: no
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
"""


@pytest.fixture
def handbook_recipe(tmp_path) -> Path:
    path = tmp_path / "config_full.yaml"
    path.write_text(HANDBOOK_YAML.format(output_dir=tmp_path / "out"))
    return path


def write(tmp_path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_handbook_recipe_parses(handbook_recipe, tmp_path):
    m, d, s = parse_config(SFT, handbook_recipe)
    assert isinstance(m, ModelArguments) and isinstance(d, DataArguments) and isinstance(s, SFTConfig)
    # model
    assert m.model_name_or_path == "mistralai/Mistral-7B-v0.1"
    assert m.model_revision == "main"
    assert m.torch_dtype == "bfloat16"
    assert m.use_flash_attention_2 is True
    assert m.attn_implementation == "flash_attention_2"  # old key mapped to the new setting
    assert m.use_peft is False
    # data
    assert d.chat_template == "zephyr"
    assert d.dataset_mixer == {"HuggingFaceH4/ultrachat_200k": 1.0}
    assert d.dataset_splits == ["train_sft", "test_sft"]
    assert d.dataset_num_proc == 12  # preprocessing_num_workers
    # training
    assert s.eval_strategy == "epoch"  # evaluation_strategy
    assert s.max_length == 2048  # max_seq_length
    assert s.warmup_steps == pytest.approx(0.1)  # warmup_ratio, a fraction of the total steps
    assert isinstance(s.learning_rate, float) and s.learning_rate == pytest.approx(2e-5)
    assert s.lr_scheduler_type == "cosine"
    assert s.gradient_accumulation_steps == 2
    assert s.gradient_checkpointing is True
    assert s.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert s.per_device_train_batch_size == 32 and s.per_device_eval_batch_size == 16
    assert s.num_train_epochs == 1 and s.max_steps == -1
    assert s.packing is True
    assert s.seed == 42
    assert s.logging_steps == 5
    assert s.report_to == ["tensorboard"]
    assert s.save_strategy == "no"  # YAML 1.1 reads `no` as False; it must come back as the string
    assert s.save_total_limit == 1
    assert s.hub_model_id == "zephyr-7b-sft-full"
    assert s.do_eval is True and s.bf16 is False and s.use_cpu is True
    assert Path(s.output_dir) == tmp_path / "out"
    assert s.remove_unused_columns is False


def test_overrides_win_and_are_coerced(handbook_recipe):
    m, d, s = parse_config(
        SFT,
        handbook_recipe,
        [
            "--learning_rate=1e-5",
            "--lora_target_modules=[q_proj,v_proj]",
            "--save_strategy=no",
            "--num_train_epochs=3",
            "--max_seq_length",
            "1024",
            "--lora_r=8",
            "--lora_dropout=.1",
            "--use-peft",
            "--chat_template=chatml",
            "--warmup_ratio=0.05",
        ],
    )
    assert isinstance(s.learning_rate, float) and s.learning_rate == pytest.approx(1e-5)
    assert m.lora_target_modules == ["q_proj", "v_proj"]
    assert s.save_strategy == "no" and s.save_strategy is not False
    assert s.num_train_epochs == 3
    assert s.max_length == 1024
    assert m.lora_r == 8 and isinstance(m.lora_r, int)
    assert m.lora_dropout == pytest.approx(0.1)
    assert m.use_peft is True  # a bare flag, dashes read as underscores
    assert d.chat_template == "chatml"
    assert s.warmup_steps == pytest.approx(0.05)
    # Untouched keys keep the file's values.
    assert s.per_device_train_batch_size == 32 and d.dataset_num_proc == 12


def test_overrides_as_dict_and_without_a_file(tmp_path):
    m, d, s = parse_config(
        SFT, None, {"model_name_or_path": "x/y", "max_steps": 3, "output_dir": str(tmp_path)}
    )
    assert m.model_name_or_path == "x/y" and s.max_steps == 3
    m, d, s = parse_config(SFT, None, [f"--output_dir={tmp_path}"])
    assert m.model_name_or_path == "smollm2-135m-instruct"  # the defaults
    assert d.train_on == "assistant" and s.max_length == 2048


def test_parse_overrides_values_are_yaml():
    out = parse_overrides(["--a=1e-5", "--b=[x,y]", "--c", "--d", "4", "--e=", "--f-g=true", "--h=no"])
    assert out == {"a": "1e-5", "b": ["x", "y"], "c": True, "d": 4, "e": "", "f_g": True, "h": False}


@pytest.mark.parametrize("bad", [["lr=1"], ["-x"], ["--"]])
def test_malformed_override_is_config_error(bad):
    with pytest.raises(ConfigError, match="--key=value"):
        parse_overrides(bad)


def test_save_strategy_no_in_yaml_and_overrides(tmp_path):
    recipe = write(tmp_path, f"save_strategy: no\neval_strategy: no\noutput_dir: {tmp_path}\n")
    _, _, s = parse_config(SFT, recipe)
    assert s.save_strategy == "no" and s.eval_strategy == "no"


def test_bool_str_field_keeps_its_bool(tmp_path):
    """`include_num_input_tokens_seen: true` means "all"; it must not become the string "yes"."""
    _, _, s = parse_config(SFT, None, ["--include_num_input_tokens_seen=true", f"--output_dir={tmp_path}"])
    assert s.include_num_input_tokens_seen == "all"
    _, _, s = parse_config(SFT, None, ["--include_num_input_tokens_seen=false", f"--output_dir={tmp_path}"])
    assert s.include_num_input_tokens_seen == "no"


def test_whole_float_for_int_field(tmp_path):
    _, _, s = parse_config(SFT, None, ["--max_steps=1e3", "--save_steps=50", f"--output_dir={tmp_path}"])
    assert s.max_steps == 1000 and isinstance(s.max_steps, int)


def test_old_handbook_ignored_keys_are_accepted(tmp_path, caplog):
    recipe = write(tmp_path, f"overwrite_output_dir: true\nhub_private_repo: true\noutput_dir: {tmp_path}\n")
    with caplog.at_level("INFO", logger="zephyr.config"):
        configs = parse_config(SFT, recipe)
    # Dropped, not passed on (transformers 5 has no such argument) ...
    assert not any(hasattr(c, "overwrite_output_dir") for c in configs)
    # ... and the user is told why.
    assert "Ignoring `overwrite_output_dir`" in caplog.text and "transformers 5 removed it" in caplog.text


@pytest.mark.parametrize(
    "text, bad, suggestion",
    [
        ("learning_rat: 1.0e-5\n", "learning_rat", "learning_rate"),
        ("lora_rr: 8\n", "lora_rr", "lora_r"),
        ("chat_templat: zephyr\n", "chat_templat", "chat_template"),
        ("evaluation_strateg: epoch\n", "evaluation_strateg", "evaluation_strategy"),
    ],
)
def test_unknown_key_suggests_closest(tmp_path, text, bad, suggestion):
    recipe = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_config(SFT, recipe)
    msg = str(info.value)
    assert f"`{bad}`" in msg
    assert f"did you mean `{suggestion}`" in msg
    assert str(recipe) in msg


def test_unknown_override_is_config_error():
    with pytest.raises(
        ConfigError, match=r"Unknown key `per_device_train_batch`.*per_device_train_batch_size"
    ):
        parse_config(SFT, None, ["--per_device_train_batch=4"])
    with pytest.raises(ConfigError, match="Unknown key `zzzzzz`"):
        parse_config(SFT, None, ["--zzzzzz=1"])


def test_key_of_another_stage_is_unknown():
    """A DPO key in an SFT recipe is a mistake, not something to drop silently."""
    with pytest.raises(ConfigError, match="beta"):
        parse_config(SFT, None, ["--beta=0.1"])


def test_bad_yaml_names_the_file(tmp_path):
    recipe = write(tmp_path, "learning_rate: [1, 2\nseed: 3\n", name="broken.yaml")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        parse_config(SFT, recipe)
    assert str(recipe) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope" / "recipe.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        parse_config(SFT, missing)
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError):
        read_recipe(tmp_path)  # a directory is not a recipe


def test_non_mapping_recipe(tmp_path):
    recipe = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping") as info:
        read_recipe(recipe)
    assert str(recipe) in str(info.value)
    assert read_recipe(write(tmp_path, "# only a comment\n", "empty.yaml")) == {}


@pytest.mark.parametrize(
    "text, key",
    [
        ("learning_rate: abc\n", "learning_rate"),
        ("lora_r: eight\n", "lora_r"),
        ("per_device_train_batch_size: many\n", "per_device_train_batch_size"),
        ("bf16: maybe\n", "bf16"),
        ("packing: sometimes\n", "packing"),
        ("lora_r: 2.5\n", "lora_r"),
        ("lora_r: [1, 2]\n", "lora_r"),
        ("per_device_train_batch_size: [4, 8]\n", "per_device_train_batch_size"),
        ("learning_rate: true\n", "learning_rate"),
        ("gradient_checkpointing: {a: 1}\n", "gradient_checkpointing"),
        ("warmup_ratio: 1.5\n", "warmup_ratio"),
        ("warmup_ratio: lots\n", "warmup_ratio"),
    ],
)
def test_bad_value_type_names_the_key(tmp_path, text, key):
    recipe = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_config(SFT, recipe)
    assert f"`{key}`" in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("--lora_dropout=1.5", "lora_dropout"),
        ("--lora_r=0", "lora_r"),
        ("--bnb_4bit_quant_type=int4", "bnb_4bit_quant_type"),
        ("--train_on=everything", "train_on"),
        ("--on_error=ignore", "on_error"),
        ("--max_seq_length=1", "max_length"),
        ("--dataset_mixer={a: -1}", "dataset_mixer"),
    ],
)
def test_invalid_values_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        parse_config(SFT, None, [override])


def test_mixer_and_mixture_are_exclusive():
    with pytest.raises(ConfigError, match="dataset_mixer.*dataset_mixture"):
        parse_config(SFT, None, {"dataset_mixer": {"a": 1.0}, "dataset_mixture": {"datasets": []}})


def test_training_arguments_errors_are_config_errors():
    with pytest.raises(ConfigError, match="Invalid settings"):
        parse_config(SFT, None, ["--lr_scheduler_type=bogus_schedule"])


def test_to_dict_is_json_serializable(handbook_recipe):
    merged = to_dict(*parse_config(SFT, handbook_recipe))
    json.dumps(merged)
    assert merged["model_name_or_path"] == "mistralai/Mistral-7B-v0.1"
    assert merged["max_length"] == 2048
    assert merged["save_strategy"] == "no"


# ---------------------------------------------------------------------------------------------- shipped recipes


def _sft_recipes() -> list[Path]:
    found = set(REPO.glob("recipes/**/sft*.yaml")) | set(REPO.glob("recipes/*/sft/*.yaml"))
    return sorted(found)


def test_there_are_sft_recipes():
    names = {p.relative_to(REPO).as_posix() for p in _sft_recipes()}
    assert "recipes/zephyr-7b-beta/sft/config_full.yaml" in names
    assert "recipes/demo/sft.yaml" in names


@pytest.mark.parametrize("recipe", _sft_recipes(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_sft_recipe_parses(recipe, tmp_path):
    raw = read_recipe(recipe)
    overrides = [f"--output_dir={tmp_path}"]
    if (raw.get("bf16") or raw.get("fp16")) and not torch.cuda.is_available():
        overrides += ["--use_cpu=true", "--bf16=false", "--fp16=false"]
    m, d, s = parse_config(SFT, recipe, overrides)
    assert m.model_name_or_path
    assert s.learning_rate > 0
    assert s.max_length >= 2
    assert d.dataset_mixer or d.dataset_mixture, "an SFT recipe names its data"
    assert d.train_on == "assistant"


def test_zephyr_full_recipe_matches_the_paper(tmp_path):
    recipe = REPO / "recipes/zephyr-7b-beta/sft/config_full.yaml"
    if not recipe.is_file():
        pytest.skip("recipe not shipped")
    overrides = [f"--output_dir={tmp_path}"]
    if not torch.cuda.is_available():
        overrides += ["--use_cpu=true", "--bf16=false"]
    m, d, s = parse_config(SFT, recipe, overrides)
    assert m.model_name_or_path == "mistralai/Mistral-7B-v0.1"
    assert d.chat_template == "zephyr"
    assert s.learning_rate == pytest.approx(2e-5)
    assert s.lr_scheduler_type == "cosine" and s.warmup_steps == pytest.approx(0.1)
    assert s.num_train_epochs == 1 and s.seed == 42 and s.max_length == 2048 and s.packing
    assert s.per_device_train_batch_size * s.gradient_accumulation_steps * 8 == 512
    assert s.weight_decay == 0.0


# ------------------------------------------------------------- keys of the alignment-handbook at its head


def test_trl_single_dataset_keys_load_the_named_splits(tmp_path):
    """smollm2's SFT recipes: `dataset_name` + `dataset_config` + `dataset_train_split` / `dataset_test_split`."""
    import json

    from zephyr.data.mixture import load_datasets

    data = tmp_path / "smoltalk"
    data.mkdir()
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    for split, n in (("train", 5), ("test", 2)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"messages": conv}) + "\n" for _ in range(n)))
    text = (
        f"dataset_name: {data}\ndataset_config: all\ndataset_train_split: train\ndataset_test_split: test\n"
    )
    (d,) = parse_config([DataArguments], write(tmp_path, text))
    splits = load_datasets(d, "conversation")
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "test": 2}
    (no_test,) = parse_config(
        [DataArguments], None, [f"--dataset_name={data}", "--dataset_test_split=validation"]
    )
    assert list(load_datasets(no_test, "conversation")) == [
        "train"
    ]  # a missing test split only means no eval
    with pytest.raises(ConfigError, match="not both"):
        parse_config([DataArguments], None, [f"--dataset_name={data}", f"--dataset_mixer={{{data}: 1.0}}"])


def test_eos_token_replaces_the_tokenizers_end_of_turn(tmp_path, tokenizer_dir):
    """smollm3's recipes set `eos_token: <|im_end|>`; it must be a real token, and pad must stay distinct."""
    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir), eos_token="<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    with pytest.raises(ConfigError, match="`eos_token` '<\\|not_a_token\\|>' is not a token"):
        load_tokenizer(str(tokenizer_dir), eos_token="<|not_a_token|>")


@pytest.mark.parametrize(
    ("override", "field", "value"),
    [
        ("--hub_model_revision=dpo-beta-0.01", "hub_revision", "dpo-beta-0.01"),  # pref_align_scan
        ("--assistant_only_loss=false", "train_on", "all"),  # smollm3 (true is zephyr's default)
        ("--assistant_only_loss=true", "train_on", "assistant"),
        ("--packing_strategy=ffd", "packing_strategy", "ffd"),  # smollm3's older name for best-fit
        ("--use_liger_kernel=true", "use_liger_kernel", True),
    ],
)
def test_handbook_head_keys_are_taken(tmp_path, override, field, value):
    configs = parse_config(SFT, None, [f"--output_dir={tmp_path}", "--use_cpu=true", override])
    assert any(getattr(c, field, None) == value for c in configs)


def test_packing_strategy_that_splits_conversations_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="packing_strategy"):
        parse_config(SFT, None, [f"--output_dir={tmp_path}", "--packing_strategy=wrapped"])


def test_smollm3_apo_recipe_loss_parses(tmp_path):
    from zephyr.train.config import DPOConfig

    (args,) = parse_config(
        [DPOConfig], None, [f"--output_dir={tmp_path}", "--loss_type=apo_zero", "--beta=0.1"]
    )
    assert args.loss_type == ["apo_zero"]
