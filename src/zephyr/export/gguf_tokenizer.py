"""The tokenizer as GGUF metadata: the vocabulary, merges, scores and token types llama.cpp tokenizes with.

A GGUF carries no ``tokenizer.json``; llama.cpp rebuilds the tokenizer from ``tokenizer.ggml.*`` keys.
Two kinds are written, read from the fast tokenizer's own JSON description:

- **byte-level BPE** (GPT-2 style, as in SmolLM2 and Llama 3): ``tokenizer.ggml.model = "gpt2"``, tokens
  spelled in the byte-to-unicode alphabet, merges as ``"left right"``, and ``tokenizer.ggml.pre``, the
  name of the pre-tokenizer (the regex that cuts text before merging). llama.cpp knows pre-tokenizers
  by name only, so we name the ones whose behaviour we can recognise from the JSON and refuse the rest:
  a wrong name would tokenize differently without any error;
- **SentencePiece BPE** (Llama 2, Mistral: BPE with byte fallback and a ``▁`` word prefix):
  ``tokenizer.ggml.model = "llama"``, ``<0xNN>`` byte tokens, and scores. llama.cpp merges adjacent
  pieces highest score first, so a piece's score is minus the rank of the merge that makes it: the
  same order the HF merges list applies.

Token ids are kept: ``tokens[i]`` is token ``i``, padded with ``[PADi]`` up to the embedding rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from zephyr.errors import ModelError

log = logging.getLogger(__name__)

# GGUF token types (the spec's `tokenizer.ggml.token_type` values).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Byte-level pre-tokenizers we can name for llama.cpp. The GPT-2 split is what ByteLevel(use_regex=True)
# applies; "smollm" is that split after cutting every digit alone (Digits(individual_digits=True)).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class GGUFVocab:
    """Everything ``tokenizer.ggml.*`` holds, ready to write."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    token_types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    pre: str | None = None  # byte-level only
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False

    def write(self, writer) -> None:
        """Add the ``tokenizer.ggml.*`` keys to a ``gguf.GGUFWriter``."""
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
        }
        for name, token_id in self.special_ids.items():
            adders[name](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        writer.add_add_space_prefix(self.add_space_prefix)


def gguf_vocab(tokenizer, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a fast tokenizer, with ``vocab_size`` entries (the model's embedding rows)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(
            f"GGUF export needs a fast tokenizer (a tokenizer.json); {type(tokenizer).__name__} has none. "
            "Save the tokenizer with transformers' fast tokenizer first."
        )
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ModelError(
            f"Cannot write a `{model.get('type')}` tokenizer to GGUF: zephyr writes byte-level BPE (GPT-2, "
            "SmolLM2, Llama 3) and SentencePiece BPE (Llama 2, Mistral) vocabularies"
        )
    if len(tokenizer) > vocab_size:
        raise ModelError(
            f"The tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embedding rows; "
            "the checkpoint and its tokenizer do not belong together"
        )
    if model.get("byte_fallback"):
        vocab = _sentencepiece_vocab(spec, vocab_size)
    else:
        vocab = _byte_level_vocab(spec, vocab_size)
    vocab.special_ids = _special_ids(tokenizer)
    vocab.add_bos, vocab.add_eos = _adds_specials(tokenizer)
    return vocab


def _byte_level_vocab(spec: dict, vocab_size: int) -> GGUFVocab:
    if spec.get("normalizer") is not None:
        raise ModelError(
            f"Cannot write this byte-level tokenizer to GGUF: llama.cpp applies no normalizer, and this "
            f"one has `{_kind(spec['normalizer'])}`"
        )
    pre = byte_level_pre_name(spec.get("pre_tokenizer"))
    tokens, types = _tokens_and_types(spec, vocab_size)
    merges = _merges(spec)
    return GGUFVocab(model="gpt2", tokens=tokens, token_types=types, merges=merges, pre=pre)


def byte_level_pre_name(pre: dict | None) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer, recognised from its tokenizer.json form."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [_kind(s) for s in steps]
    last = steps[-1] if steps and steps[-1] else {}
    if kinds and kinds[-1] == "ByteLevel" and last.get("add_prefix_space"):
        raise ModelError(
            "Cannot write this byte-level tokenizer to GGUF: it adds a prefix space (`add_prefix_space`), "
            "which llama.cpp's BPE tokenizer never does"
        )
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        if pattern == LLAMA3_SPLIT and steps[0].get("behavior") == "Isolated":
            return "llama-bpe"
    raise ModelError(
        "Cannot write this byte-level tokenizer to GGUF: llama.cpp names its pre-tokenizers, and this one "
        f"({json.dumps(pre)[:300]}) matches none zephyr knows (GPT-2, SmolLM2, Llama 3)"
    )


def _sentencepiece_vocab(spec: dict, vocab_size: int) -> GGUFVocab:
    """A SentencePiece-style BPE (byte fallback, ``▁`` for spaces) as llama.cpp's SPM vocabulary."""
    prefix = _sentencepiece_prefix(spec)
    tokens, types = _tokens_and_types(spec, vocab_size)
    unk = spec["model"].get("unk_token")
    for i, token in enumerate(tokens):
        if types[i] == NORMAL and _is_byte_token(token):
            types[i] = BYTE
        elif token == unk:
            types[i] = UNKNOWN
    merges = _merges(spec)
    # A piece's score is minus the rank of the first merge that makes it: llama.cpp merges the
    # best-scored adjacent pair first, which is the order HF applies its merges list in.
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), r)
    scores = [float(-rank[t]) if t in rank else 0.0 for t in tokens]
    return GGUFVocab(
        model="llama",
        tokens=tokens,
        token_types=types,
        merges=merges,
        scores=scores,
        add_space_prefix=prefix,
    )


def _sentencepiece_prefix(spec: dict) -> bool:
    """Whether text gets a leading ``▁`` (llama.cpp's add_space_prefix); refuse what llama.cpp cannot do."""
    norm, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    steps = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    prefix = False
    for step in steps:
        if _kind(step) == "Prepend" and step.get("prepend") == "▁":
            prefix = True
        elif _kind(step) == "Replace" and step.get("content") == "▁":
            pass  # spaces spelled as ▁: llama.cpp does the same
        else:
            raise ModelError(
                f"Cannot write this SentencePiece tokenizer to GGUF: its normalizer `{_kind(step)}` has no "
                "llama.cpp equivalent"
            )
    if pre is not None:
        if _kind(pre) != "Metaspace" or pre.get("split", False):
            raise ModelError(
                f"Cannot write this SentencePiece tokenizer to GGUF: its pre-tokenizer `{_kind(pre)}` "
                "(split into words) has no llama.cpp equivalent"
            )
        scheme = pre.get("prepend_scheme", "always")
        prefix = prefix or scheme != "never"
        if scheme == "first":
            log.warning(
                "The tokenizer adds its leading space only at the start of the text; llama.cpp also adds "
                "one after each special token, so text right after one may tokenize differently"
            )
    return prefix


def _tokens_and_types(spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their GGUF types; ids nobody uses become ``[PADi]`` (unused)."""
    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for token, i in spec["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i] = token
    for added in spec.get("added_tokens", []):
        i = added["id"]
        if i >= vocab_size:
            continue  # checked by the caller against len(tokenizer); extra rows never reach here
        tokens[i] = added["content"]
        # Special tokens are control tokens (never produced from text by the merges); other added
        # tokens are matched whole in text, which is what llama.cpp's user-defined type means.
        types[i] = CONTROL if added.get("special") else USER_DEFINED
    for i, token in enumerate(tokens):
        if token is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    return tokens, types  # type: ignore[return-value]


def _merges(spec: dict) -> list[str]:
    merges = []
    for merge in spec["model"].get("merges", []):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        if " " in left or " " in right:
            raise ModelError(
                f"Cannot write the merge {merge!r} to GGUF: a merge is stored as `left right`, so its "
                "halves may not contain spaces"
            )
        merges.append(f"{left} {right}")
    return merges


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return {name: int(i) for name, i in ids.items() if i is not None}


def _adds_specials(tokenizer) -> tuple[bool, bool]:
    """Whether plain text gets BOS in front / EOS behind, as the tokenizer's post-processor decides."""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bool(ids) and bos is not None and ids[0] == bos, bool(ids) and eos is not None and ids[-1] == eos


def _is_byte_token(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def _kind(step: dict | None) -> str:
    return step.get("type", "?") if step else "none"
