"""A random-initialised T5 checkpoint with t5-small's shapes, for the benchmarks (no network here).

Throughput does not depend on the weight values, so the benchmark needs t5-small's shapes only:
d_model 512, d_kv 64, d_ff 2048 (ReLU), 6 encoder + 6 decoder layers, 8 heads, 32 relative
position buckets over a max distance of 128. The whole encoder-decoder model is saved, as
t5-small is shipped (safetensors), with a tokenizer that is available offline: all-MiniLM's
BERT WordPiece (30,522 pieces, the closest to t5-small's 32,128) or SmolLM2's BPE (49,152);
``vocab_size`` is the tokenizer's length. embwalk loads such a directory as its encoder only for an
encoder store, as the whole model for a decoder store (``dec.*`` sites).

Built once into ``default_dir(tokenizer)`` (or a directory of your choice) and reused:

    .venv/bin/python scripts/t5_small_random.py [--tokenizer all-minilm-l6-v2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers as T

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embwalk.models.config import ModelConfig  # noqa: E402
from embwalk.models.loading import load_model  # noqa: E402

NAME = "t5-small-random"
# The bundled models whose tokenizer the checkpoint can carry, and how the output names it.
TOKENIZERS = {
    "all-minilm-l6-v2": "all-MiniLM-L6-v2's BERT WordPiece tokenizer",
    "smollm2-135m": "SmolLM2-135M's BPE tokenizer",
}
SHAPES = dict(
    d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
    n_positions=512,  # as in t5-small's config.json
)
SEED = 0
_STAMP = "embwalk-bench.json"  # what was built, so a directory built otherwise is rebuilt


def default_dir(tokenizer: str) -> Path:
    root = Path(os.environ.get("EMBWALK_CACHE") or "~/.cache/embwalk").expanduser()
    return root / "bench" / f"{NAME}-{tokenizer}"


def _stamp(tokenizer: str) -> dict:
    return {"name": NAME, "tokenizer": tokenizer, "shapes": SHAPES, "seed": SEED}


def build(tokenizer: str, out: Path | None = None) -> Path:
    """The checkpoint directory: ``out`` (default ``default_dir``), built there unless already built."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    out = Path(out) if out else default_dir(tokenizer)
    stamp = out / _STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == _stamp(tokenizer):
        return out
    print(f"building {NAME} with {TOKENIZERS[tokenizer]} in {out} (once) ...", file=sys.stderr)
    tok = load_model(ModelConfig(name=tokenizer, device="cpu")).tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    config = T.T5Config(vocab_size=len(tok), pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
                        **SHAPES)
    torch.manual_seed(SEED)
    model = T.T5ForConditionalGeneration(config).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps(_stamp(tokenizer), indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def describe(tokenizer: str, path: Path, stack: str = "enc") -> str:
    """One Markdown paragraph: what the model is, which tokenizer, and what is measured (``stack``:
    the encoder store, enc, or the decoder store, dec)."""
    s = SHAPES
    if stack == "dec":
        measured = (
            "The decoder store: embwalk loads the whole T5ForConditionalGeneration, runs the encoder as context "
            "and the decoder teacher-forced under the capture hooks; bare is the encoder then the decoder "
            "(embeddings, blocks, final norms; no LM head; SDPA, no hooks) on the same decoder inputs."
        )
    else:
        measured = (
            "The decoder is not part of the measurement: an encoder store loads a T5 checkpoint's encoder alone "
            "(AutoModelForTextEncoding, the decoder's weights never loaded; `--t5-stack dec` measures a decoder "
            "store), so bare is the "
            "encoder's forward (T5EncoderModel: embeddings, blocks, final norm; SDPA, no hooks)."
        )
    layers = f"{s['num_layers']} + {s['num_decoder_layers']}" if stack == "dec" else f"{s['num_layers']}"
    return (
        f"Model: `{NAME}`, a T5 checkpoint with t5-small's shapes (d_model {s['d_model']}, d_ff {s['d_ff']} ReLU, "
        f"{layers} layers, {s['num_heads']} heads, relative_attention_num_buckets "
        f"{s['relative_attention_num_buckets']}, max_distance {s['relative_attention_max_distance']}) and "
        f"**random weights** (torch seed {SEED}; throughput does not depend on the weight values), "
        f"with {TOKENIZERS[tokenizer]} (vocab_size {_vocab_size(path)}); built by scripts/t5_small_random.py "
        f"in `{path}`. {measured}"
    )


def _vocab_size(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["vocab_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", choices=list(TOKENIZERS), default="all-minilm-l6-v2")
    parser.add_argument("--dir", type=Path, help=f"where to build it (default {default_dir('TOKENIZER')})")
    args = parser.parse_args()
    print(build(args.tokenizer, args.dir))


if __name__ == "__main__":
    main()
