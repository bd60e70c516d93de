"""Benchmark: extraction against the bare forward pass, on the same batches, in one run.

    .venv/bin/python scripts/bench_extract.py [--tokens 4096] [--reps 3] [--model smollm2-135m]

Measures, interleaved over ``--reps`` rounds (the median is reported, so a
noisy neighbour hurts less):

- bare:     the transformer body's forward pass, no hooks, no LM head (the
            least work that produces the same hidden states);
- embwalk:  full extraction of every residual layer + final to a store
            (float16, fsynced, committed), through the same ShardRunner the jobs use;
- hf_loop:  what users write today: ``output_hidden_states=True`` and
            ``np.save`` of float16 arrays;
- with ``--peers`` (in .venv-bench): nnsight ``.save()`` of every layer and
  TransformerLens ``run_with_cache`` with a names filter, each saved likewise.

Prints a Markdown table of tokens/s and the ratio to bare; ``--out FILE``
appends it, with the machine description, to FILE.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.corpus import CorpusConfig, vocabulary_strings  # noqa: E402
from pipeline.extract import ShardRunner  # noqa: E402
from pipeline.job import CaptureConfig, ClusterConfig, ExtractConfig, StoreConfig, prepare  # noqa: E402
from pipeline.models.loading import ModelConfig, load_model  # noqa: E402
from pipeline.store.writer import StoreWriter  # noqa: E402
from scripts import peers  # noqa: E402

# TransformerLens picks its adapter by name; the weights are ours (hf_model=).
HUB_NAMES = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}


def batches(job, batch_size: int) -> list[torch.Tensor]:
    offsets, ids = job.corpus.seq_offsets, job.corpus.token_ids
    seqs = [torch.from_numpy(ids[offsets[i] : offsets[i + 1]].astype(np.int64)) for i in range(len(offsets) - 1)]
    return [torch.stack(seqs[i : i + batch_size]) for i in range(0, len(seqs), batch_size)]


def bare(loaded, inputs) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            loaded.trunk(input_ids=x.to(loaded.device), use_cache=False)
    _sync(loaded.device)
    return time.perf_counter() - start


def embwalk(loaded, job, cfg: ExtractConfig, store: Path) -> float:
    shutil.rmtree(store, ignore_errors=True)
    writer = StoreWriter.open(store, job.manifest, job.specs, cfg.store.compressor)
    runner = ShardRunner(
        loaded, job.layout, job.corpus, writer, vocabulary_strings(loaded.tokenizer),
        dtype=job.dtype, batch_size=cfg.cluster.batch_size, seq_len=cfg.corpus.seq_len,
    )
    start = time.perf_counter()
    commits = [runner.run(shard) for shard in job.plan.shards]
    runner.close()  # waits for the last writes and commits
    for commit in commits:
        commit.result()
    _sync(loaded.device)
    return time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--shard-tokens", type=int, default=2048,
        help="shard size: writes overlap the next shard's compute, except the last shard's",
    )
    parser.add_argument("--peers", action="store_true", help="also nnsight and TransformerLens (.venv-bench)")
    parser.add_argument("--out", type=Path, help="append the results (Markdown) to this file")
    parser.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embwalk-bench-", dir=args.workdir))
    cfg = ExtractConfig(
        model=ModelConfig(name=args.model, dtype=args.dtype, device=args.device),
        # A whole number of packed sequences: every batch is full, no method pads.
        corpus=CorpusConfig(max_tokens=args.tokens // args.seq_len * args.seq_len, seq_len=args.seq_len),
        capture=CaptureConfig(),
        store=StoreConfig(path=str(work / "store"), shard_tokens=args.shard_tokens),
        cluster=ClusterConfig(batch_size=args.batch_size, progress=False),
    )
    loaded = load_model(cfg.model)
    job = prepare(cfg, loaded)
    inputs = batches(job, args.batch_size)
    n_tokens = sum(x.numel() for x in inputs)
    assert n_tokens == job.plan.n_tokens, "every method must see the same tokens"

    bare(loaded, inputs[:1])  # warm-up: first-call allocations and kernel selection
    loop_dir = work / "loop"
    methods = {
        "bare": lambda: bare(loaded, inputs),
        "embwalk": lambda: embwalk(loaded, job, cfg, work / "store"),
        "hf_loop": lambda: peers.hf_loop(loaded, inputs, loop_dir),
    }
    if args.peers:
        nnsight = peers.nnsight_method(loaded)
        tlens = peers.transformer_lens_method(loaded, HUB_NAMES.get(args.model, args.model))
        if nnsight:
            methods["nnsight"] = lambda: nnsight(inputs, loop_dir)
        if tlens:
            methods["transformer_lens"] = lambda: tlens(inputs, loop_dir)
        if not (nnsight and tlens):
            print("peers missing: run with the .venv-bench environment (see scripts/peers.py)", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.reps):
        for name, method in methods.items():
            loop_dir.mkdir(exist_ok=True)
            cpu_start = time.process_time()
            times[name].append(method())
            # CPU seconds of this process (all threads): the work done, less
            # sensitive than wall time to other jobs on a shared machine.
            cpu[name].append(time.process_time() - cpu_start)
            shutil.rmtree(loop_dir)
    shutil.rmtree(work, ignore_errors=True)

    bytes_per_token = sum(np.prod(s.shape[1:]) * np.dtype(s.dtype).itemsize for s in job.specs)
    base = n_tokens / statistics.median(times["bare"])
    lines = [
        f"### {args.model} ({args.dtype}, {loaded.device}), {n_tokens} tokens, "
        f"seq_len {args.seq_len}, batch {args.batch_size}, shards of {job.plan.shard_tokens}, median of {args.reps}",
        "",
        f"Machine: {machine()}",
        "",
        "| method | tokens/s | MB/s written | ratio to bare (wall) | ratio to bare (CPU time) |",
        "|---|---:|---:|---:|---:|",
    ]
    base_cpu = statistics.median(cpu["bare"])
    for name, ts in times.items():
        rate = n_tokens / statistics.median(ts)
        written = rate * bytes_per_token / 1e6 if name != "bare" else 0
        cpu_ratio = base_cpu / statistics.median(cpu[name])
        lines.append(f"| {name} | {rate:,.0f} | {written:,.1f} | {rate / base:.3f} | {cpu_ratio:.3f} |")
    lines.append("")
    lines.append("wall (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    lines.append("")
    lines.append("CPU (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in cpu.items()))
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
