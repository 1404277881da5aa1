"""Checkpoints for the GGUF export tests: tiny Llamas of any width and vocabulary, and a small
SentencePiece-style tokenizer (Llama 2 / Mistral shape: BPE with byte fallback, ``▁`` for spaces)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from support.models import make_tiny_model

SPM_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there, how are you today? I am fine, thank you.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Numbers like 1234 and 56 are written with digits.",
    "A short answer is often the best answer.",
] * 20


def make_llama(vocab_size: int, hidden: int = 64, *, tie: bool = True, seed: int = 0, **overrides):
    """A random fp32 Llama with ``vocab_size`` embedding rows (2 layers, 4 query and 2 KV heads)."""
    overrides = {"max_position_embeddings": 1024, **overrides}
    model = make_tiny_model(seed, hidden=hidden, vocab_size=vocab_size, tie_word_embeddings=tie, **overrides)
    with torch.no_grad():  # norms start at exactly 1; perturb them so a misplaced norm shows up
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def sharpen_attention(model, scale: float = 30.0):
    """Scale the query and key projections so attention is far from uniform: then the logits depend on
    the positions, and a rope laid out or scaled wrongly shows."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)
    return model


def save_checkpoint(model, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def make_spm_tokenizer(out: Path, vocab_size: int = 600) -> Path:
    """Save a Llama-2-shaped tokenizer: ``<unk> <s> </s>``, the 256 ``<0xNN>`` byte tokens, then pieces
    learned from SPM_CORPUS, with merges listed as SentencePiece-born tokenizer.json files list them."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizer
    learner.train_from_iterator(
        SPM_CORPUS, trainers.BpeTrainer(vocab_size=vocab_size - 256, show_progress=False)
    )
    learned = json.loads(learner.to_str())["model"]["vocab"]
    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in sorted(learned.items(), key=lambda kv: kv[1]) if p not in specials]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    # SentencePiece ranks pieces by score (here: later learned = lower), and tokenizer.json lists every
    # pair that forms a piece, best piece first; generate_merges is how transformers builds that list.
    merges = generate_merges(vocab, {p: -float(i) for p, i in vocab.items() if i >= len(specials) + 256})
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    wrapped.add_special_tokens({"additional_special_tokens": []})
    wrapped.save_pretrained(out)
    return out
