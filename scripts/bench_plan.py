"""Tokenize + plan at scale: throughput with 1 and 2 workers, the driver's peak memory, bytes shipped.

    .venv/bin/python scripts/bench_plan.py [--tokens 10000000] [--files 16] [--dir /tmp/bench_plan]

1. A corpus of at least ``--tokens`` SmolLM2 tokens is generated once from text
   on the machine (the Python installation's own ``.py`` sources, as jsonl files).
2. Tokenize + plan (``embwalk.extraction.job.prepare``, which tokenizes the corpus's parts
   into a store's staging area and plans from their counts) with a local pool of
   1 and of 2 worker processes, each in a fresh driver process: wall time, tokens/s.
3. The driver's peak RSS (its own, not its workers') at 1M and at the full corpus,
   and with a ~400M-parameter model against a tiny one (random weights saved as
   safetensors once): the driver reads the config, tokenizer and a fingerprint
   of the weight files, never the weights.
4. What a worker receives: the pickled PreparedJob (the plan, the parts' offsets)
   and the tokenizer sent once to each tokenizing process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One measured driver: prepare() on a corpus, tokenized by a pool of N processes; prints JSON.
DRIVER = r"""
import json, pickle, sys, time
sys.path.insert(0, sys.argv[1])
from embwalk.corpus import CorpusConfig
from embwalk.executors.units import process_pool
from embwalk.executors.config import ClusterConfig
from embwalk.extraction.config import ExtractConfig
from embwalk.extraction.job import prepare
from embwalk.store.config import StoreConfig
from embwalk.models.config import ModelConfig
from embwalk.models.spec import load_spec
model, corpus, store, workers = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
max_tokens = None if sys.argv[6] == "none" else int(sys.argv[6])
started = time.perf_counter()
spec = load_spec(ModelConfig(name=model, device="cpu"))
spec_s = time.perf_counter() - started
cfg = ExtractConfig(
    model=ModelConfig(name=model, device="cpu"),
    corpus=CorpusConfig(path=corpus, format="jsonl", seq_len=256, max_tokens=max_tokens),
    store=StoreConfig(path=store, shard_tokens=4096), cluster=ClusterConfig(progress=False),
)
job = prepare(cfg, spec, process_pool(workers))
seconds = time.perf_counter() - started
print(json.dumps({
    "tokens": job.plan.n_tokens, "shards": len(job.plan.shards), "seconds": seconds, "spec_seconds": spec_s,
    # VmHWM, not ru_maxrss: Linux carries a parent's high-water mark across fork + exec into ru_maxrss
    "peak_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024,
    "job_bytes": len(pickle.dumps(job)), "tokenizer_bytes": len(pickle.dumps(spec.tokenizer)),
    "parts": len(job.corpus.parts),
}))
"""


def make_corpus(out: Path, tokens: int, files: int) -> Path:
    """jsonl files of the installation's Python sources, ~4 characters per token, repeated to size."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out.parent / f"corpus-done-{tokens}-{files}"
    if marker.exists():
        return out
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    texts = []
    for path in sources:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    need_chars, written, i = tokens * 4, 0, 0
    handles = [open(out / f"part-{k:03d}.jsonl", "w") for k in range(files)]
    try:
        while written < need_chars:
            text = texts[i % len(texts)]
            handles[i % files].write(json.dumps({"text": text}) + "\n")
            written += len(text)
            i += 1
    finally:
        for h in handles:
            h.close()
    marker.touch()
    return out


def big_model(out: Path) -> Path:
    """A ~400M-parameter Llama with random weights, saved once (bfloat16 safetensors, ~0.8 GB)."""
    if (out / "config.json").exists():
        return out
    import torch
    import transformers as T

    from embwalk.models.config import ModelConfig
    from embwalk.models.loading import load_model

    tokenizer = load_model(ModelConfig(name="smollm2-135m", device="cpu")).tokenizer
    config = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                           max_position_embeddings=2048, torch_dtype="bfloat16")
    model = T.LlamaForCausalLM(config).to(torch.bfloat16)
    print(f"random model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def tiny_model(out: Path) -> Path:
    if (out / "config.json").exists():
        return out
    import transformers as T

    from embwalk.models.config import ModelConfig
    from embwalk.models.loading import load_model

    tokenizer = load_model(ModelConfig(name="smollm2-135m", device="cpu")).tokenizer
    config = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    T.LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def drive(model: Path, corpus: Path, store: Path, workers: int, max_tokens: int | None) -> dict:
    subprocess.run(["rm", "-rf", str(store)], check=True)
    result = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), str(model), str(corpus), str(store),
                             str(workers), str(max_tokens or "none")],
                            capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/bench_plan")
    args = ap.parse_args()
    work = Path(args.dir)
    corpus = make_corpus(work / "corpus", args.tokens, args.files)
    tiny, big = tiny_model(work / "tiny"), big_model(work / "big")
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}); corpus: {corpus}, {args.files} files")
    rows = []
    for label, model, workers, cut in (
        ("1 worker, full corpus", tiny, 1, None),
        ("2 workers, full corpus", tiny, 2, None),
        ("2 workers, cut at 1M tokens", tiny, 2, 1_000_000),
        ("2 workers, full corpus, ~400M-parameter model", big, 2, None),
    ):
        r = drive(model, corpus, work / "store", workers, cut)
        rows.append((label, r))
        print(label, json.dumps(r), flush=True)
    one, two = rows[0][1], rows[1][1]
    print("\n| run | tokens | shards | seconds | tokens/s | driver peak RSS (MB) | job pickled (KB) | "
          "tokenizer pickled (KB) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['tokens']:,} | {r['shards']:,} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} "
              f"| {r['peak_rss_mb']:.0f} | {r['job_bytes'] / 1e3:.1f} | {r['tokenizer_bytes'] / 1e3:.0f} |")
    print(f"\n2 workers / 1 worker: {one['seconds'] / two['seconds']:.2f}x; driver RSS growth 1M -> full: "
          f"{two['peak_rss_mb'] - rows[2][1]['peak_rss_mb']:.0f} MB; ~400M model vs tiny: "
          f"{rows[3][1]['peak_rss_mb'] - two['peak_rss_mb']:+.0f} MB")


if __name__ == "__main__":
    main()
