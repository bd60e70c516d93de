"""Tiny random T5-family checkpoints saved as a user's would be: safetensors weights of the whole
encoder-decoder model and a T5 (Unigram) tokenizer, so ``model.name=DIR`` loads them by path."""

from __future__ import annotations

from pathlib import Path

import transformers as T

from tests.models.test_seq2seq import TINY, tiny_seq2seq

T5_NAMES = tuple(TINY)  # t5, t5_v1_1 (gated GELU), mt5, umt5 (a bias in every layer)
WORDS = ("the cat dog sat on a mat while it slept by door walks through layer residual stream vector space "
         "token model every step moves far near small large red blue green old new short one").split()


def t5_tokenizer() -> T.T5Tokenizer:
    """T5's layout (<pad> 0, </s> 1, <unk> 2, then pieces; </s> appended to every text) over a
    few words and single characters, so any ASCII sentence tokenizes without <unk>."""
    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in WORDS] + [(c, -6.0) for c in chars] + [(f"▁{c}", -5.0) for c in chars]
    return T.T5Tokenizer(vocab=vocab, extra_ids=0)


def save_t5(root: Path, name: str, encoder_only: bool = False) -> Path:
    """A tiny ``name`` checkpoint (its position bias scaled up, tiny_seq2seq) in ``root/name``;
    ``encoder_only``: the encoder model's weights alone, as a T5EncoderModel saves them."""
    tokenizer = t5_tokenizer()
    model = tiny_seq2seq(name, vocab_size=len(tokenizer))
    if encoder_only:
        encoder = T.AutoModelForTextEncoding.from_config(model.config)
        encoder.load_state_dict(model.state_dict(), strict=False)
        model = encoder
    out = root / name
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
