"""Chat templates, rendering, assistant-token masks, BOS handling, pad tokens and message validation."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from zephyr.chat import (
    CHATML_TEMPLATE,
    PAD_TOKEN,
    TEMPLATES,
    ZEPHYR_TEMPLATE,
    encode,
    encode_prompt,
    prepare_tokenizer,
    render,
    resolve_template,
    tokenize_conversation,
    validate_messages,
    with_empty_system,
)
from zephyr.errors import ConfigError, DataError

# The published Jinja source, as the Python literal given in REFERENCE.md section 1 (two spaces
# before `+ message` in the assistant branch).
REFERENCE_TEMPLATE = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"

REFERENCE_MESSAGES = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]
REFERENCE_RENDERED = "<|system|>\nSYS</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nHow are you?</s>\n<|assistant|>\n"

# A conversation with awkward content: leading space, newlines, code fence, non-ASCII, emoji.
CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What's 2+2?\nThink."},
    {"role": "assistant", "content": " Four \u2014 4 \u2713.\n```py\nprint(2+2)\n```"},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome \U0001f60a"},
]
NO_SYSTEM = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, or maybe teal."},
]


# ---------------------------------------------------------------------------------------------- helpers


_BASE = {}


def _fresh(tokenizer_dir):
    """An unprepared copy of the embedded tokenizer, as saved (loaded once per directory, then copied)."""
    from transformers import AutoTokenizer

    key = str(tokenizer_dir)
    if key not in _BASE:
        _BASE[key] = AutoTokenizer.from_pretrained(tokenizer_dir)
    return copy.deepcopy(_BASE[key])


@pytest.fixture(scope="module")
def s_tokenizer(tokenizer_dir):
    """The embedded tokenizer with `</s>` as its EOS (Mistral/Zephyr style) and the Zephyr template.
    Shared by the module: tests must not modify it."""
    tok = _fresh(tokenizer_dir)
    tok.add_special_tokens({"eos_token": "</s>"})
    assert tok.eos_token == "</s>"
    return prepare_tokenizer(tok, "zephyr")


@pytest.fixture
def bos_tokenizer(tokenizer_dir):
    """A Llama-style tokenizer: `<s>` BOS added by the post-processor to plain text, `</s>` EOS."""
    from tokenizers.processors import TemplateProcessing

    tok = _fresh(tokenizer_dir)
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    tok = prepare_tokenizer(tok, "zephyr")
    # The fixture is only meaningful if the tokenizer really prepends BOS to plain text.
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    assert tok("x", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def ztok(tokenizer_dir):
    """Read-only: the embedded tokenizer (EOS <|im_end|>) prepared with the Zephyr template."""
    return prepare_tokenizer(_fresh(tokenizer_dir), "zephyr")


@pytest.fixture(scope="module")
def own_tok(tokenizer_dir):
    """Read-only: the embedded tokenizer prepared with its own (ChatML) template."""
    return prepare_tokenizer(_fresh(tokenizer_dir))


def masked_runs(tokenizer, tc) -> list[str]:
    """Each contiguous run of trained tokens, decoded."""
    runs, cur = [], []
    for tid, m in zip(tc.input_ids, tc.assistant_mask, strict=True):
        if m:
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


def unmasked_text(tokenizer, tc) -> str:
    return tokenizer.decode([t for t, m in zip(tc.input_ids, tc.assistant_mask, strict=True) if not m])


def assistant_targets(tokenizer, messages) -> list[str]:
    return [m["content"] + tokenizer.eos_token for m in messages if m["role"] == "assistant"]


# ---------------------------------------------------------------------------------------------- template


def test_template_constant_is_the_published_source():
    assert ZEPHYR_TEMPLATE == REFERENCE_TEMPLATE
    assert "'<|assistant|>\\n'  + message['content']".replace("\\n", "\n") in ZEPHYR_TEMPLATE
    assert TEMPLATES["zephyr"] is ZEPHYR_TEMPLATE
    assert TEMPLATES["chatml"] is CHATML_TEMPLATE


def test_reference_example_renders_byte_exact(s_tokenizer):
    assert s_tokenizer.chat_template == REFERENCE_TEMPLATE
    out = s_tokenizer.apply_chat_template(REFERENCE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert out == REFERENCE_RENDERED
    assert render(s_tokenizer, REFERENCE_MESSAGES, add_generation_prompt=True) == REFERENCE_RENDERED


def test_published_source_set_directly_renders_the_same(tokenizer_dir):
    """Independent of our constant: the literal from the reference, set by hand, gives the reference bytes."""
    tok = _fresh(tokenizer_dir)
    tok.add_special_tokens({"eos_token": "</s>"})
    tok.chat_template = REFERENCE_TEMPLATE
    out = tok.apply_chat_template(REFERENCE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert out == REFERENCE_RENDERED


@pytest.mark.parametrize(
    "messages, add_generation_prompt, expected",
    [
        ([{"role": "user", "content": "Hi"}], False, "<|user|>\nHi</s>\n"),
        ([{"role": "user", "content": "Hi"}], True, "<|user|>\nHi</s>\n<|assistant|>\n"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
            False,
            "<|user|>\nHi</s>\n<|assistant|>\nYo</s>\n",
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo"},
                {"role": "user", "content": "?"},
            ],
            True,
            "<|user|>\nHi</s>\n<|assistant|>\nYo</s>\n<|user|>\n?</s>\n<|assistant|>\n",
        ),
        (
            [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"}],
            False,
            "<|system|>\nS</s>\n<|user|>\na\nb</s>\n",
        ),
        (REFERENCE_MESSAGES, False, REFERENCE_RENDERED[: -len("<|assistant|>\n")]),
    ],
)
def test_zephyr_renders_byte_exact(s_tokenizer, messages, add_generation_prompt, expected):
    out = s_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert out == expected


def test_zephyr_role_tags_are_plain_text(s_tokenizer):
    specials = set(s_tokenizer.all_special_tokens)
    for tag in ("<|user|>", "<|assistant|>", "<|system|>"):
        assert tag not in specials
        assert len(s_tokenizer(tag, add_special_tokens=False)["input_ids"]) > 1


@pytest.mark.parametrize("name", ["zephyr", "chatml"])
def test_chat_template_by_name(tokenizer_dir, name):
    from zephyr.models import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir), chat_template=name)
    assert tok.chat_template == TEMPLATES[name]
    text = render(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    if name == "zephyr":
        assert text == f"<|user|>\nHi{tok.eos_token}\n<|assistant|>\n"
    else:
        assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_by_jinja_source(tokenizer_dir):
    from zephyr.models import load_tokenizer

    source = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    tok = load_tokenizer(str(tokenizer_dir), chat_template=source)
    assert tok.chat_template == source
    assert render(tok, [{"role": "user", "content": "Hi"}]) == "[user]Hi"
    assert resolve_template("{{ 'x' }}") == "{{ 'x' }}"


def test_default_keeps_the_models_own_template(tokenizer_dir, tokenizer):
    own = _fresh(tokenizer_dir).chat_template
    assert own and own != ZEPHYR_TEMPLATE
    assert tokenizer.chat_template == own
    assert resolve_template(None) is None
    assert resolve_template("") is None


def test_model_without_template_gets_zephyr(tokenizer_dir, tmp_path):
    from zephyr.models import load_tokenizer

    bare = tmp_path / "bare"
    shutil.copytree(tokenizer_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    assert not _fresh(bare).chat_template  # the copy really has no template
    tok = load_tokenizer(str(bare))
    assert tok.chat_template == ZEPHYR_TEMPLATE
    # Same through prepare_tokenizer on an in-memory tokenizer.
    t2 = _fresh(tokenizer_dir)
    t2.chat_template = None
    assert prepare_tokenizer(t2).chat_template == ZEPHYR_TEMPLATE


def test_unknown_template_name_is_a_config_error(tokenizer_dir):
    from zephyr.models import load_tokenizer

    for bad in ("vicuna", "Zephyr-7b", "llama2"):
        with pytest.raises(ConfigError, match="chat_template"):
            resolve_template(bad)
    with pytest.raises(ConfigError, match="vicuna"):
        load_tokenizer(str(tokenizer_dir), chat_template="vicuna")


# ---------------------------------------------------------------------------------------------- masks


def _check_masks(tok, messages):
    tc = tokenize_conversation(tok, messages)
    assert len(tc.input_ids) == len(tc.assistant_mask) == len(tc)
    assert set(tc.assistant_mask) <= {0, 1}
    # Trained tokens decode to exactly the assistant contents, each followed by its end-of-turn token.
    assert masked_runs(tok, tc) == assistant_targets(tok, messages)
    # Nothing of the system/user turns, and no role tag, is trained.
    rest = unmasked_text(tok, tc)
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in rest
    return tc


@pytest.mark.parametrize(
    "messages", [CONVERSATION, NO_SYSTEM, REFERENCE_MESSAGES + [{"role": "assistant", "content": "Fine."}]]
)
def test_masks_zephyr_template(ztok, messages):
    tok = ztok
    tc = _check_masks(tok, messages)
    rest = unmasked_text(tok, tc)
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    assert rest.count("<|assistant|>\n") == n_assistant
    assert rest.count("<|user|>\n") == sum(m["role"] == "user" for m in messages)

    # One EOS per message; trained exactly when it closes an assistant turn; the newline after it never.
    eos_positions = [i for i, t in enumerate(tc.input_ids) if t == tok.eos_token_id]
    assert len(eos_positions) == len(messages)
    for pos, m in zip(eos_positions, messages, strict=True):
        assert tc.assistant_mask[pos] == int(m["role"] == "assistant")
        assert pos + 1 < len(tc.input_ids)
        assert tok.decode([tc.input_ids[pos + 1]]).startswith("\n")
        assert tc.assistant_mask[pos + 1] == 0


@pytest.mark.parametrize("messages", [CONVERSATION, NO_SYSTEM])
def test_masks_tokenizer_own_chatml_template(own_tok, messages):
    tok = own_tok
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    tc = _check_masks(tok, messages)
    rest = unmasked_text(tok, tc)
    assert rest.count("<|im_start|>assistant\n") == sum(m["role"] == "assistant" for m in messages)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for pos in (i for i, t in enumerate(tc.input_ids) if t == end):
        assert tc.assistant_mask[pos + 1] == 0  # the newline after <|im_end|>


def test_masks_chatml_by_name(tokenizer_dir):
    from zephyr.models import load_tokenizer

    _check_masks(load_tokenizer(str(tokenizer_dir), chat_template="chatml"), CONVERSATION)


def test_masks_reference_format(s_tokenizer):
    messages = REFERENCE_MESSAGES + [{"role": "assistant", "content": "Great, thanks."}]
    tc = tokenize_conversation(s_tokenizer, messages)
    assert masked_runs(s_tokenizer, tc) == ["Hello!</s>", "Great, thanks.</s>"]
    assert s_tokenizer.decode(tc.input_ids) == render(s_tokenizer, messages)


def test_mask_tokens_are_the_inference_tokens(zephyr_tokenizer):
    """Training sees the same tokens as generation: the prompt's tokens are a prefix of the conversation's."""
    tok = zephyr_tokenizer
    tc = tokenize_conversation(tok, NO_SYSTEM)
    assert tc.input_ids == encode(tok, render(tok, NO_SYSTEM))
    assert tok.decode(tc.input_ids) == render(tok, NO_SYSTEM)
    prompt = encode_prompt(tok, NO_SYSTEM[:-1])
    assert tc.input_ids[: len(prompt)] == prompt
    # Everything after the generation prompt is the last reply and its EOS (trained), then a newline (not).
    tail = tc.assistant_mask[len(prompt) :]
    assert all(tail[:-1]) and tail[-1] == 0
    assert tok.decode(tc.input_ids[len(prompt) : -1]) == NO_SYSTEM[-1]["content"] + tok.eos_token


def test_train_on_all(ztok):
    a = tokenize_conversation(ztok, CONVERSATION)
    b = tokenize_conversation(ztok, CONVERSATION, train_on="all")
    assert b.input_ids == a.input_ids
    assert b.assistant_mask == [1] * len(b.input_ids)
    assert sum(a.assistant_mask) < len(a.input_ids)


def test_train_on_unknown_is_config_error(ztok):
    with pytest.raises(ConfigError, match="train_on"):
        tokenize_conversation(ztok, CONVERSATION, train_on="completion")


# ---------------------------------------------------------------------------------------------- BOS


def test_no_bos_added_when_tokenizer_has_none(ztok):
    tok = ztok
    text = render(tok, NO_SYSTEM)
    plain = tok(text, add_special_tokens=False)["input_ids"]
    assert tokenize_conversation(tok, NO_SYSTEM).input_ids == plain
    assert encode(tok, text) == plain


def test_bos_added_exactly_once(bos_tokenizer):
    tok = bos_tokenizer
    bos = tok.bos_token_id
    tc = tokenize_conversation(tok, CONVERSATION)
    assert tc.input_ids[0] == bos
    assert tc.input_ids.count(bos) == 1
    assert tc.assistant_mask[0] == 0
    assert masked_runs(tok, tc) == assistant_targets(tok, CONVERSATION)
    # Inference encodings agree: one BOS, and the prompt is a prefix of the training tokens.
    prompt = encode_prompt(tok, NO_SYSTEM[:-1])
    assert prompt[0] == bos and prompt.count(bos) == 1
    full = tokenize_conversation(tok, NO_SYSTEM).input_ids
    assert full[: len(prompt)] == prompt
    assert encode(tok, render(tok, NO_SYSTEM)) == full


def test_template_that_writes_bos_gets_no_second_bos(bos_tokenizer):
    tok = bos_tokenizer
    tok.chat_template = "{{ bos_token }}" + ZEPHYR_TEMPLATE
    text = render(tok, CONVERSATION)
    assert text.startswith("<s><|system|>\n")
    tc = tokenize_conversation(tok, CONVERSATION)
    assert tc.input_ids[0] == tok.bos_token_id
    assert tc.input_ids.count(tok.bos_token_id) == 1
    assert masked_runs(tok, tc) == assistant_targets(tok, CONVERSATION)
    prompt = encode_prompt(tok, NO_SYSTEM[:-1])
    assert prompt.count(tok.bos_token_id) == 1


# ---------------------------------------------------------------------------------------------- pad token


def test_pad_uses_unk_when_distinct(tokenizer_dir, tiny_model):
    from zephyr.models import fit_embeddings_to_tokenizer

    raw = _fresh(tokenizer_dir)
    assert raw.pad_token_id == raw.eos_token_id  # the shipped tokenizer pads with EOS: the bug to avoid
    n = len(raw)
    tok = prepare_tokenizer(raw)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token == tok.unk_token
    assert len(tok) == n  # nothing added
    rows = tiny_model.get_input_embeddings().weight.shape[0]
    assert fit_embeddings_to_tokenizer(tiny_model, tok) is False
    assert tiny_model.get_input_embeddings().weight.shape[0] == rows


def test_pad_set_when_missing(tokenizer_dir):
    raw = _fresh(tokenizer_dir)
    raw.pad_token = None
    assert raw.pad_token is None
    tok = prepare_tokenizer(raw)
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id


def test_new_pad_token_when_unk_is_eos(tokenizer_dir, tiny_model):
    """GPT-2 style: unk == eos == pad. A new `<|pad|>` is added and the model's embeddings must grow."""
    from zephyr.models import fit_embeddings_to_tokenizer

    raw = _fresh(tokenizer_dir)
    raw.eos_token = raw.unk_token  # <|endoftext|>
    raw.pad_token = raw.eos_token
    n = len(raw)
    tok = prepare_tokenizer(raw)
    assert tok.pad_token == PAD_TOKEN
    assert tok.pad_token_id not in (tok.eos_token_id, tok.unk_token_id, tok.bos_token_id)
    assert len(tok) == n + 1

    emb = tiny_model.get_input_embeddings().weight
    rows = emb.shape[0]
    assert tok.pad_token_id >= rows  # the model has no row for it yet
    before = emb.detach().clone()
    assert fit_embeddings_to_tokenizer(tiny_model, tok) is True
    after = tiny_model.get_input_embeddings().weight
    assert after.shape[0] >= len(tok) and after.shape[0] % 64 == 0
    assert torch.equal(after[:rows].detach(), before)  # existing rows kept
    out = tiny_model(input_ids=torch.tensor([[5, tok.pad_token_id]]))
    assert out.logits.shape[-1] == after.shape[0]
    assert fit_embeddings_to_tokenizer(tiny_model, tok) is False  # idempotent


def test_prepare_without_eos_is_config_error(tokenizer_dir):
    raw = _fresh(tokenizer_dir)
    raw.eos_token = None
    with pytest.raises(ConfigError, match="EOS"):
        prepare_tokenizer(raw)


# ---------------------------------------------------------------------------------------------- empty system


def test_with_empty_system_renders_handbook_prefix(s_tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    out = with_empty_system(messages)
    assert out[0] == {"role": "system", "content": ""}
    assert out[1:] == messages
    assert len(messages) == 2  # the input list is not modified
    text = render(s_tokenizer, out)
    assert text == "<|system|>\n</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
    tc = tokenize_conversation(s_tokenizer, out)
    assert masked_runs(s_tokenizer, tc) == ["Hello!</s>"]


def test_with_empty_system_keeps_an_existing_system():
    assert with_empty_system(REFERENCE_MESSAGES) == REFERENCE_MESSAGES
    assert with_empty_system([]) == [{"role": "system", "content": ""}]


# ---------------------------------------------------------------------------------------------- validation


def _u(c="q"):
    return {"role": "user", "content": c}


def _a(c="a"):
    return {"role": "assistant", "content": c}


def test_valid_conversations_pass():
    validate_messages([_u(), _a()])
    validate_messages([{"role": "system", "content": ""}, _u(), _a(), _u(), _a()])
    validate_messages([_u()], need_assistant=False)
    validate_messages([_a()], first="assistant", field="chosen")


@pytest.mark.parametrize(
    "messages, field, reason",
    [
        ([_u(), _u()], "messages[1].role", "alternate"),
        ([_a(), _u()], "messages[0].role", "alternate"),
        ([_u(), _a(), _a()], "messages[2].role", "alternate"),
        ([_u(), _a("")], "messages[1].content", "empty"),
        ([_u("   \n"), _a()], "messages[0].content", "empty"),
        ([_u(), {"role": "assistant", "content": None}], "messages[1].content", "string"),
        ([{"role": "user", "content": ["a", "b"]}, _a()], "messages[0].content", "string"),
        ([_u(), {"role": "tool", "content": "x"}], "messages[1].role", "one of"),
        ([{"content": "x"}, _a()], "messages[0].role", "one of"),
        ([_u(), {"role": "system", "content": "late"}, _a()], "messages[1].role", "first"),
        ([_u(), "hello"], "messages[1]", "object"),
    ],
)
def test_validation_errors_name_the_field(messages, field, reason):
    with pytest.raises(DataError) as info:
        validate_messages(messages, source="train.jsonl", line=7)
    err = info.value
    assert err.field == field
    assert reason in err.reason
    assert str(err).startswith(f"train.jsonl, line 7, field `{field}`: ")


@pytest.mark.parametrize("bad", [[], None, "hi", {"role": "user", "content": "x"}])
def test_validation_rejects_non_lists(bad):
    with pytest.raises(DataError) as info:
        validate_messages(bad, row=3)
    assert info.value.field == "messages"
    assert "row 3" in str(info.value)


def test_validation_needs_an_assistant_turn():
    with pytest.raises(DataError, match="assistant"):
        validate_messages([{"role": "system", "content": "s"}, _u()])


def test_validation_custom_field_and_first_role():
    with pytest.raises(DataError) as info:
        validate_messages([_u()], field="chosen", first="assistant")
    assert info.value.field == "chosen[0].role"
