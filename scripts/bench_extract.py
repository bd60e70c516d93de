"""Benchmark: extraction against the bare forward pass and what users do today, in one run.

    .venv/bin/python scripts/bench_extract.py [--tokens 4096] [--reps 3] [--model smollm2-135m]
    HF_HUB_OFFLINE=1 .venv-bench/bin/python scripts/bench_extract.py --peers   # + nnsight, TransformerLens
    .venv/bin/python scripts/bench_extract.py --model t5-small-random [--t5-tokenizer all-minilm-l6-v2] [--t5-dir DIR]
    .venv/bin/python scripts/bench_extract.py --model t5-small-random --t5-stack dec \
        [--t5-input-tokens 64] [--t5-target-tokens 32]

Measures, on the same batches and interleaved over ``--reps`` rounds (the
median is reported, so a noisy neighbour hurts less):

- bare:               the transformer body's forward pass, SDPA, no hooks, no LM head
                      (the least work that produces the same hidden states);
- embwalk:            every residual layer + final to a store (conf/capture/residual.yaml;
                      float16, fsynced, committed), through the ShardRunner the jobs use;
- embwalk_attention:  the same plus every layer's attention probabilities, SDPA path
                      (conf/capture/attention.yaml);
- embwalk_stats_only: in-pass walk statistics, no arrays stored (conf/capture/stats_only.yaml);
- hf_loop:            ``output_hidden_states=True`` and ``np.save`` of float16 arrays;
- hf_eager_attention: eager attention with ``output_attentions=True``, hidden states and
                      probabilities saved likewise (the attention case's peer);
- with ``--peers`` (in .venv-bench): nnsight ``.save()`` of every layer and
  TransformerLens ``run_with_cache`` with a names filter, each saved likewise.

``--model t5-small-random`` is the T5 case: a T5 checkpoint with t5-small's shapes and random
weights (there is no network here; throughput does not depend on the weight values), built once
by scripts/t5_small_random.py (under $EMBWALK_CACHE or ~/.cache/embwalk, or ``--t5-dir``) with an
offline tokenizer, and reused. By default (``--t5-stack enc``) it is the encoder store: every
method runs the encoder (T5EncoderModel) and bare is the encoder's forward; the decoder is not
part of the measurement. With ``--peers`` TransformerLens is skipped for it (not wired: it
boots a whole model by its hub architecture, while the model here is the encoder alone).

``--t5-stack dec`` is the T5 decoder store (docs/seq2seq.md): the script writes a pairs corpus
(``pairs.jsonl`` in its work dir, random words of the tokenizer's vocabulary, inputs of about
``--t5-input-tokens`` and targets of about ``--t5-target-tokens`` tokens, each drawn within
+-25%, enough pairs for ``--tokens`` decoder tokens) and every method runs the encoder as
context, then the decoder teacher-forced on decoder_start_token_id + the target:

- bare:               T5ForConditionalGeneration's encoder then decoder bodies on the same batches
                      (each shard's pairs longest first, as the runner batches them), SDPA, no hooks,
                      no LM head;
- embwalk:            the decoder store through the normal code path (TeacherForcedForward in the
                      ShardRunner): the residual preset's sites as ``dec.*`` (dec.resid_pre.0, every
                      dec.resid_post, dec.final);
- embwalk_attention:  the same plus every dec.attn_pattern and dec.cross_pattern;
- embwalk_two_stacks: the two-stack store of the same pairs (docs/seq2seq.md): embwalk's decoder
                      job, then the encoder's job (the encoder loaded alone) storing resid_pre.0,
                      every resid_post and final of the encoder: the encoder's forward runs twice.

Tokens/s counts decoder tokens (the store's token axis); the encoder's tokens are computed by
every method and stored by none but embwalk_two_stacks. A pair that straddles two shards is computed by both (alone in
its batch), as the runner does: that is in embwalk's time, while bare computes each pair once.
stats_only, hf_loop, hf_eager_attention and the peers are not wired for the decoder case.

For each: tokens/s, MB/s written (the bytes each method left on disk), peak
extra memory (resident-set high-water mark above the level at the method's
start on CPU; peak allocated on CUDA), and the ratios to bare in wall time and
in CPU time. Prints a Markdown table; ``--out FILE`` appends it, with the
machine description, to FILE and ``--csv FILE`` writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embwalk.corpus import CorpusConfig  # noqa: E402
from embwalk.executors.config import ClusterConfig  # noqa: E402
from embwalk.extraction.allocator import keep_freed_memory  # noqa: E402
from embwalk.extraction.config import CaptureConfig, ExtractConfig  # noqa: E402
from embwalk.extraction.job import PreparedJob, prepare  # noqa: E402
from embwalk.models.config import ModelConfig  # noqa: E402
from embwalk.models.loading import load_model  # noqa: E402
from embwalk.stats.partials import merge_store_stats  # noqa: E402
from embwalk.store.config import StoreConfig  # noqa: E402
from embwalk.store.writer import StoreWriter  # noqa: E402
from scripts import peers, t5_small_random  # noqa: E402

# TransformerLens picks its adapter by name; the weights are ours (hf_model=).
HUB_NAMES = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}
# embwalk methods: the capture presets users pick with capture=NAME.
EMBWALK_PRESETS = {"embwalk": "residual", "embwalk_attention": "attention", "embwalk_stats_only": "stats_only"}


def batches(job: PreparedJob, batch_size: int) -> list[torch.Tensor]:
    seqs = []
    for shard in job.plan.shards:  # each sequence once: from the shard that stores its first token
        tokens = job.tokens_for(shard)
        for s in range(*shard.pattern_seqs):
            rows = tokens.rows(*tokens.sequence_rows(s))
            seqs.append(torch.from_numpy(tokens.token_ids[rows].astype(np.int64)))
    return [torch.stack(seqs[i : i + batch_size]) for i in range(0, len(seqs), batch_size)]


def bare(loaded, inputs) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            loaded.trunk(input_ids=x.to(loaded.device), use_cache=False)
    _sync(loaded.device)
    return time.perf_counter() - start


def pair_batches(job: PreparedJob, batch_size: int, pad_id: int) -> list[tuple]:
    """A decoder store's batches, each pair once (from the shard that stores its first token), each
    shard's pairs longest first as the runner batches them: (decoder ids, mask, encoder ids, mask)."""
    out = []
    for shard in job.plan.shards:
        win = job.tokens_for(shard)
        seqs = sorted(range(*shard.pattern_seqs), key=lambda s: np.subtract(*win.sequence_rows(s)))
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i : i + batch_size]
            dec = [win.token_ids[win.rows(*win.sequence_rows(s))] for s in batch]
            enc = [win.inputs[s - win.seq0] for s in batch]
            out.append((*_padded(dec, pad_id), *_padded(enc, pad_id)))
    return out


def _padded(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-padded ids and their mask (None when every sequence has the batch's length)."""
    lengths = [len(x) for x in seqs]
    ids = torch.full((len(seqs), max(lengths)), pad_id, dtype=torch.long)
    for j, x in enumerate(seqs):
        ids[j, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
    if min(lengths) == max(lengths):
        return ids, None
    return ids, (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()


def bare_seq2seq(loaded, inputs) -> float:
    """The encoder then the decoder, teacher-forced (T5ForConditionalGeneration's bodies, no LM head)."""
    model, device = loaded.model, loaded.device
    start = time.perf_counter()
    with torch.inference_mode():
        for dec, dec_mask, enc, enc_mask in inputs:
            enc_mask = None if enc_mask is None else enc_mask.to(device)
            encoded = model.encoder(input_ids=enc.to(device), attention_mask=enc_mask)
            model.decoder(
                input_ids=dec.to(device), attention_mask=None if dec_mask is None else dec_mask.to(device),
                encoder_hidden_states=encoded.last_hidden_state, encoder_attention_mask=enc_mask, use_cache=False,
            )
    _sync(loaded.device)
    return time.perf_counter() - start


def write_pairs(path: Path, tokenizer, n_tokens: int, input_tokens: int, target_tokens: int, seed: int = 0) -> int:
    """A jsonl of input-target pairs of random vocabulary words, about ``input_tokens`` and
    ``target_tokens`` tokens each (uniform within +-25%), until the decoder inputs (start token +
    the target's tokens) reach ``n_tokens``. Returns the number of pairs."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_tokens)
    # whole lowercase words (a BPE's word-initial mark stripped; WordPiece's ## continuations left out)
    pieces = {w.lstrip("\u0120\u2581") for w in tokenizer.get_vocab() if w not in special}
    words = sorted(w for w in pieces if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 10)
    kwargs = dict(add_special_tokens=False, return_attention_mask=False, verbose=False)
    sample = " ".join(rng.choice(words, 2000))
    per_word = len(tokenizer(sample, **kwargs)["input_ids"]) / 2000  # tokens per word, to size the texts

    def text(tokens: int) -> str:
        n = max(1, round(rng.integers(round(tokens * 0.75), round(tokens * 1.25) + 1) / per_word))
        return " ".join(rng.choice(words, n))

    n_pairs = stored = 0
    with open(path, "w") as f:
        while stored < n_tokens:
            batch = [(text(input_tokens), text(target_tokens)) for _ in range(256)]
            lengths = [1 + len(ids) for ids in tokenizer([t for _, t in batch], verbose=False)["input_ids"]]
            for (a, b), n in zip(batch, lengths, strict=True):
                if stored >= n_tokens:
                    break
                f.write(json.dumps({"text": a, "target": b}) + "\n")
                n_pairs, stored = n_pairs + 1, stored + n
    return n_pairs


def embwalk(loaded, job: PreparedJob, store: Path) -> float:
    """The local executor's work on an already prepared job (tokenizing is not timed, as for the peers)."""
    cfg = job.config
    writer = StoreWriter.open(store, job.manifest, job.specs, cfg.store.compressor)
    runner = job.runner(loaded, writer)
    start = time.perf_counter()
    try:
        commits = [runner.run(shard) for shard in job.plan.shards]
    finally:
        runner.close()  # waits for the last writes and commits, removes the hooks
    for commit in commits:
        commit.result()
    writer.finish()
    if cfg.capture.stats is not None:
        merge_store_stats(writer.fs)
    _sync(loaded.device)
    return time.perf_counter() - start


@dataclass
class Measurement:
    wall: float
    cpu: float  # CPU seconds of this process, all threads
    written: int  # bytes the method left on disk
    peak_extra: int  # bytes of memory above the level at the method's start


def measure(method, out_dir: Path, device: torch.device) -> Measurement:
    out_dir.mkdir(parents=True)
    base = memory_start(device)
    cpu_start = time.process_time()
    wall = method(out_dir)
    cpu = time.process_time() - cpu_start
    peak = memory_peak(device) - base
    written = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    shutil.rmtree(out_dir)
    return Measurement(wall, cpu, written, peak)


_HWM_RESETS = os.path.exists("/proc/self/clear_refs")


def memory_start(device: torch.device) -> int:
    """Bytes in use now, and the peak reset to it (on CUDA; on Linux through /proc)."""
    global _HWM_RESETS
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if _HWM_RESETS:
        try:  # writing 5 to clear_refs resets the kernel's high-water mark (VmHWM) to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _proc_status_kb("VmRSS") * 1024
        except OSError:
            _HWM_RESETS = False
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_peak(device: torch.device) -> int:
    """The peak bytes since ``memory_start`` (without /proc: the process's, never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if _HWM_RESETS:
        return _proc_status_kb("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


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


def prepared_jobs(loaded, args, work: Path) -> dict[str, PreparedJob]:
    jobs = {}
    for method, preset in EMBWALK_PRESETS.items():
        capture = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "capture" / f"{preset}.yaml"))
        if args.decoder:  # the decoder store: the preset's sites on the decoder, pairs as the corpus
            if capture.get("stats") is not None:
                continue  # not wired: statistics in the pass are not run on a decoder store yet
            capture["sites"] = [f"dec.{site}" for site in capture["sites"]]
            if "dec.attn_pattern" in capture["sites"]:
                capture["sites"].append("dec.cross_pattern")
            corpus = CorpusConfig(path=str(args.pairs), mode="document", seq_len=args.seq_len, target_field="target")
        else:
            # A whole number of packed sequences: every batch is full, no method pads.
            corpus = CorpusConfig(max_tokens=args.tokens // args.seq_len * args.seq_len, seq_len=args.seq_len)
        cfg = ExtractConfig(
            model=model_config(args),
            corpus=corpus,
            capture=CaptureConfig(**capture),
            store=StoreConfig(path=str(work / method), shard_tokens=args.shard_tokens),
            cluster=ClusterConfig(batch_size=args.batch_size, progress=False),
        )
        jobs[method] = prepare(cfg, loaded)
    return jobs


def encoder_job(enc_loaded, dec_job: PreparedJob, work: Path) -> PreparedJob:
    """The encoder's job of the two-stack store whose decoder's job is ``dec_job`` (ExtractConfig.stack_jobs):
    the same sites on the encoder, over the decoder store's records' inputs."""
    cfg = copy.deepcopy(dec_job.config)
    cfg.capture.sites = [site.removeprefix("dec.") for site in cfg.capture.sites]
    cfg.corpus.target_field, cfg.corpus.max_documents = None, dec_job.corpus.n_documents
    cfg.model.stack, cfg.store.path = None, str(work / "two_stacks_encoder")
    return prepare(cfg, enc_loaded)


def model_config(args) -> ModelConfig:
    return ModelConfig(name=str(args.model_path), dtype=args.dtype, device=args.device,
                       stack="dec" if args.decoder else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2-135m",
        help=f"a model embwalk loads (bundled name, directory, hub id), or {t5_small_random.NAME!r}: "
        "the T5 case (t5-small's shapes, random weights, the encoder only)",
    )
    parser.add_argument(
        "--t5-tokenizer", choices=list(t5_small_random.TOKENIZERS), default="all-minilm-l6-v2",
        help=f"the tokenizer {t5_small_random.NAME} carries (vocab_size is its length)",
    )
    parser.add_argument(
        "--t5-dir", type=Path,
        help=f"where {t5_small_random.NAME} is built once and reused (default: under $EMBWALK_CACHE or "
        "~/.cache/embwalk, bench/t5-small-random-TOKENIZER)",
    )
    parser.add_argument(
        "--t5-stack", choices=["enc", "dec"], default="enc",
        help=f"with {t5_small_random.NAME}: the encoder store (enc) or the decoder store, teacher-forced on "
        "generated input-target pairs (dec; --tokens counts decoder tokens)",
    )
    parser.add_argument("--t5-input-tokens", type=int, default=64, help="--t5-stack dec: mean encoder input length")
    parser.add_argument("--t5-target-tokens", type=int, default=32, help="--t5-stack dec: mean target length")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument(
        "--seq-len", type=int,
        help="default 256; --t5-stack dec: 128 (both sides of a pair are cut to it, and each pattern file "
        "is [layer, head, seq_len, seq_len]), or more for pairs longer than the defaults",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--shard-tokens", type=int, default=2048,
        help="shard size: writes overlap the next shard's compute, except the last shard's",
    )
    parser.add_argument("--methods", help="comma-separated subset of the methods (default: all available)")
    parser.add_argument("--peers", action="store_true", help="also nnsight and TransformerLens (.venv-bench)")
    parser.add_argument("--out", type=Path, help="append the results (Markdown) to this file")
    parser.add_argument("--csv", type=Path, help="write the results as CSV to this file")
    parser.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    args = parser.parse_args()
    t5 = args.model == t5_small_random.NAME
    args.decoder = t5 and args.t5_stack == "dec"
    if args.t5_stack == "dec" and not t5:
        parser.error(f"--t5-stack dec needs --model {t5_small_random.NAME}")
    if args.seq_len is None:  # a decoder store's pairs are short: patterns padded to 256 would be mostly zeros
        longest = round(1.25 * max(args.t5_input_tokens, args.t5_target_tokens)) + 4  # + special tokens
        args.seq_len = max(128, 1 << (longest - 1).bit_length()) if args.decoder else 256
    args.model_path = t5_small_random.build(args.t5_tokenizer, args.t5_dir) if t5 else args.model

    work = Path(tempfile.mkdtemp(prefix="embwalk-bench-", dir=args.workdir))
    # Every method runs in this process with the allocator setting embwalk's runner
    # makes (pipeline/extraction/allocator.py): set it first, so that no method runs without it.
    keep_freed_memory()
    loaded = load_model(model_config(args))
    if args.decoder:
        args.pairs = work / "pairs.jsonl"
        args.n_pairs = write_pairs(args.pairs, loaded.tokenizer, args.tokens, args.t5_input_tokens,
                                   args.t5_target_tokens)
    jobs = prepared_jobs(loaded, args, work)
    job = jobs["embwalk"]
    if args.decoder:
        inputs = pair_batches(job, args.batch_size, int(loaded.config.pad_token_id or 0))
        n_tokens = sum(int(dec.numel() if m is None else m.sum()) for dec, m, _, _ in inputs)
        args.n_encoder_tokens = sum(int(enc.numel() if m is None else m.sum()) for _, _, enc, m in inputs)
        run_bare = bare_seq2seq
    else:
        inputs = batches(job, args.batch_size)
        n_tokens = sum(x.numel() for x in inputs)
        run_bare = bare
    assert all(j.plan.n_tokens == n_tokens for j in jobs.values()), "every method must see the same tokens"

    run_bare(loaded, inputs[:1])  # warm-up: first-call allocations and kernel selection
    methods = {"bare": lambda out: run_bare(loaded, inputs)}
    for name, prepared in jobs.items():
        methods[name] = lambda out, prepared=prepared: embwalk(loaded, prepared, out / "store")
    if args.decoder:  # both token axes: the decoder's job, then the encoder's (loaded alone, as its store loads it)
        enc_loaded = load_model(replace(model_config(args), stack=None))
        enc_job = encoder_job(enc_loaded, job, work)
        methods["embwalk_two_stacks"] = lambda out: (embwalk(loaded, job, out / "decoder")
                                                     + embwalk(enc_loaded, enc_job, out / "encoder"))
    if not args.decoder:
        methods["hf_loop"] = lambda out: peers.hf_loop(loaded, inputs, out)
        eager = peers.hf_eager_attention_method(loaded)
        methods["hf_eager_attention"] = lambda out: eager(inputs, out)
    if args.peers and args.decoder:
        print("peers: not wired for the T5 decoder case (bare, embwalk, embwalk_attention only)", file=sys.stderr)
    elif args.peers:
        nnsight = peers.nnsight_method(loaded)
        tlens = None if t5 else peers.transformer_lens_method(loaded, HUB_NAMES.get(args.model, args.model))
        if nnsight:
            methods["nnsight"] = lambda out: nnsight(inputs, out)
        if tlens:
            methods["transformer_lens"] = lambda out: tlens(inputs, out)
        if t5:
            print("transformer_lens: skipped for T5 (not wired: it boots a whole model by its hub "
                  "architecture, the model here is the encoder alone)", file=sys.stderr)
        if not nnsight or not (tlens or t5):
            print("peers missing: run with the .venv-bench environment (see scripts/peers.py)", file=sys.stderr)
    if args.methods:
        wanted = {"bare", *args.methods.split(",")}
        methods = {k: v for k, v in methods.items() if k in wanted}
    results: dict[str, list[Measurement]] = {name: [] for name in methods}
    for _ in range(args.reps):
        for name, method in methods.items():
            results[name].append(measure(method, work / f"out-{name}", loaded.device))
    shutil.rmtree(work, ignore_errors=True)

    rows = summarise(results, n_tokens)
    report = markdown(rows, results, args, loaded, job, n_tokens)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n\n")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def summarise(results: dict[str, list[Measurement]], n_tokens: int) -> list[dict]:
    def median(name: str, attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in results[name])

    base_wall, base_cpu = median("bare", "wall"), median("bare", "cpu")
    rows = []
    for name in results:
        wall = median(name, "wall")
        rows.append({
            "method": name,
            "tokens_per_s": n_tokens / wall,
            "mb_written_per_s": median(name, "written") / wall / 1e6,
            "peak_extra_mb": max(m.peak_extra for m in results[name]) / 1e6,
            "ratio_wall": base_wall / wall,
            "ratio_cpu": base_cpu / median(name, "cpu"),
        })
    return rows


def markdown(rows: list[dict], results, args, loaded, job: PreparedJob, n_tokens: int) -> str:
    t5 = args.model == t5_small_random.NAME
    case = "T5 encoder (t5-small shapes, random weights): extraction vs the bare encoder forward, " if t5 else ""
    counted = f"{n_tokens} tokens"
    notes = []
    if args.decoder:
        case = ("T5 decoder (t5-small shapes, random weights), teacher-forced: extraction vs the bare "
                "encoder + decoder forward, ")
        counted = (f"{n_tokens} decoder tokens ({args.n_pairs} pairs, {args.n_encoder_tokens} encoder tokens as "
                   f"context; inputs ~{args.t5_input_tokens}, targets ~{args.t5_target_tokens} tokens)")
        notes = [
            f"Tokens/s counts decoder tokens (the store's token axis: decoder_start_token_id then each target's "
            f"tokens, EOS included). The encoder runs as context in every method, bare included: its "
            f"{args.n_encoder_tokens} tokens are computed, not stored. Pairs: random words of the tokenizer's "
            f"vocabulary written by the script (pairs.jsonl), input and target lengths uniform within +-25% of "
            f"~{args.t5_input_tokens} and ~{args.t5_target_tokens} tokens. embwalk stores dec.resid_pre.0, every "
            "dec.resid_post and dec.final; embwalk_attention adds every dec.attn_pattern and dec.cross_pattern; "
            "embwalk_two_stacks is embwalk's decoder job then the encoder's job storing the same sites of the "
            "encoder (its tokens/s still counts decoder tokens). "
            "A pair that straddles two shards is computed by both shards (the runner's way), once by bare.",
            "",
        ]
    lines = [
        f"### {case}{args.model} ({args.dtype}, {loaded.device}), {counted}, "
        f"seq_len {args.seq_len}, batch {args.batch_size}, shards of {job.plan.shard_tokens}, median of {args.reps}",
        "",
        *([t5_small_random.describe(args.t5_tokenizer, Path(args.model_path), args.t5_stack), ""] if t5 else []),
        *notes,
        f"Machine: {machine()}",
        "",
        "| method | tokens/s | MB/s written | peak extra MB | ratio to bare (wall) | ratio to bare (CPU time) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['tokens_per_s']:,.0f} | {r['mb_written_per_s']:,.1f} | {r['peak_extra_mb']:,.0f} "
            f"| {r['ratio_wall']:.3f} | {r['ratio_cpu']:.3f} |"
        )
    for label, attr in (("wall (s)", "wall"), ("CPU (s)", "cpu")):
        per_method = "; ".join(
            f"{name} " + ", ".join(f"{getattr(m, attr):.2f}" for m in ms) for name, ms in results.items()
        )
        lines += ["", f"{label}: {per_method}"]
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
