"""Chat templates, rendering, and tokenization with assistant-token masks.

Everything that turns a list of messages into model tokens goes through here, so training,
evaluation and serving agree byte for byte on what the model sees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from zephyr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# The template of zephyr-7b-beta (alignment-handbook). Note the two spaces before `+ message` in the
# assistant branch: they are part of the published source, and harmless in the output.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES = {"zephyr": ZEPHYR_TEMPLATE, "chatml": CHATML_TEMPLATE}
ROLES = ("system", "user", "assistant")
PAD_TOKEN = "<|pad|>"


def resolve_template(template: str | None) -> str | None:
    """A template name from TEMPLATES, Jinja source, or None (keep the tokenizer's own)."""
    if template is None or template == "":
        return None
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{%" in template or "{{" in template:
        return template
    raise ConfigError(
        f"`chat_template` must be one of {', '.join(TEMPLATES)} or Jinja source; got {template!r}"
    )


def prepare_tokenizer(tokenizer, chat_template: str | None = None):
    """Set the chat template and a pad token that is not EOS.

    A model with no template gets the Zephyr one. When pad == EOS, masking padding by token id would
    also mask every EOS label and the model would never learn to stop, so we pick another pad: the
    unknown token if the vocabulary has a distinct one, else a new ``<|pad|>`` token (the model's
    embeddings must then grow: see ``zephyr.models.fit_embeddings_to_tokenizer``).
    """
    source = resolve_template(chat_template)
    if source is not None:
        tokenizer.chat_template = source
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = ZEPHYR_TEMPLATE
    if tokenizer.eos_token is None:
        raise ConfigError("The tokenizer has no EOS token; set `eos_token` in its tokenizer_config.json")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        unk = tokenizer.unk_token_id
        if unk is not None and unk not in (tokenizer.eos_token_id, tokenizer.bos_token_id):
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def with_empty_system(messages: Sequence[dict]) -> list[dict]:
    """The original handbook behaviour: every conversation starts with a (possibly empty) system turn."""
    messages = list(messages)
    if not messages or messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ""})
    return messages


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as the chat template writes it."""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _adds_bos(tokenizer) -> bool:
    """Whether this tokenizer puts BOS in front of plain text (Llama/Mistral do, GPT-2 style BPEs don't)."""
    cached = getattr(tokenizer, "_zephyr_adds_bos", None)
    if cached is None:
        bos = tokenizer.bos_token_id
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        cached = bos is not None and len(ids) > 0 and ids[0] == bos
        tokenizer._zephyr_adds_bos = cached
    return cached


def _bos_prefix(tokenizer, ids: Sequence[int]) -> list[int]:
    """[BOS] if the tokenizer wants one and the text does not already start with it (no double BOS)."""
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        return [tokenizer.bos_token_id]
    return []


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of rendered chat text, with exactly one BOS where the tokenizer uses one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return _bos_prefix(tokenizer, ids) + ids


def encode_prompt(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of a conversation followed by the generation prompt (what the model continues)."""
    return encode(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


@dataclass
class TokenizedConversation:
    """A conversation as tokens. ``assistant_mask[i]`` is 1 where token i belongs to an assistant reply
    (its text and its end-of-turn token), 0 for system/user text, role tags and template glue."""

    input_ids: list[int]
    assistant_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def assistant_spans(tokenizer, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of each assistant reply in it.

    Works for any template without `{% generation %}` markers: the reply of turn i starts where the
    rendering of the turns before it plus the generation prompt ends, and stops at the end of the
    rendering of turns 0..i with trailing whitespace removed, so the end-of-turn token (EOS for
    Zephyr, <|im_end|> for ChatML) is trained but the newline after it is not.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(head)):
            raise ConfigError(
                "The chat template does not render conversations prefix by prefix (an earlier turn changes "
                "when a later one is added), so assistant tokens cannot be located; use `chat_template: zephyr`"
            )
        start, end = len(head), len(upto.rstrip())
        if message["content"] and upto.find(message["content"], start) < 0:
            raise ConfigError(
                "The chat template rewrites assistant content; assistant tokens cannot be located"
            )
        spans.append((start, max(start, end)))
    return text, spans


def tokenize_conversation(
    tokenizer, messages: Sequence[dict], train_on: str = "assistant"
) -> TokenizedConversation:
    """Tokenize a conversation and mark which tokens are trained.

    ``train_on="assistant"`` trains assistant replies only (the Zephyr recipe); ``"all"`` trains every
    token (plain language modelling). The mask is computed from character offsets on the whole
    rendered text, so tokens are the same as at inference and a token that straddles a boundary
    belongs to the side where it starts.
    """
    if train_on not in ("assistant", "all"):
        raise ConfigError(f"`train_on` must be 'assistant' or 'all'; got {train_on!r}")
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if train_on == "all":
        mask = [1] * len(ids)
    else:
        mask, s = [], 0
        for begin, _ in offsets:
            while s < len(spans) and begin >= spans[s][1]:
                s += 1
            mask.append(int(s < len(spans) and spans[s][0] <= begin < spans[s][1]))
    bos = _bos_prefix(tokenizer, ids)
    return TokenizedConversation(bos + list(ids), [0] * len(bos) + mask)


def validate_messages(
    messages, *, source=None, line=None, row=None, field="messages", need_assistant=True, first="user"
):
    """Check a message list's shape: dicts with a known role and non-empty string content, a system turn
    only first, user and assistant alternating from the first turn, which must have role ``first``
    (``"assistant"`` checks a completion that continues a prompt). Raises DataError naming the field."""

    def fail(reason, sub=""):
        raise DataError(reason, source=source, line=line, row=row, field=f"{field}{sub}")

    if not isinstance(messages, list) or not messages:
        fail(f"must be a non-empty list of messages, got {type(messages).__name__}")
    expected = first
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            fail(f"must be an object with `role` and `content`, got {type(m).__name__}", f"[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            fail(f"must be one of {', '.join(ROLES)}, got {role!r}", f"[{i}].role")
        if not isinstance(content, str):
            fail(f"must be a string, got {type(content).__name__}", f"[{i}].content")
        if role == "system":
            if i != 0:
                fail("a system message may only come first", f"[{i}].role")
            continue  # an empty system prompt is legitimate (the handbook inserts one)
        if not content.strip():
            fail("is empty", f"[{i}].content")
        if role != expected:
            fail(f"roles must alternate user/assistant; expected {expected!r}, got {role!r}", f"[{i}].role")
        expected = "assistant" if role == "user" else "user"
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        fail("has no assistant message to train on")
