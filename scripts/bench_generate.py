"""Benchmark: capture during generation (embwalk generate) against bare ``model.generate``, in one run.

    .venv/bin/python scripts/bench_generate.py [--prompts 16] [--prompt-tokens 32] [--new-tokens 32]
        [--batch 8] [--strategy greedy|sample] [--reps 3] [--shard-tokens 4096] [--model smollm2-135m]
        [--methods embwalk,...] [--no-split] [--profile] [--out docs/benchmarks.md]

Measures, on the same prompts (the built-in corpus's packed sequences of
``--prompt-tokens`` tokens) and the same batches, interleaved over ``--reps``
rounds after one warm-up round (the median is reported):

- bare:            ``model.generate`` per batch, KV cache, SDPA, no hooks (the
                   ``GenerationConfig`` that makes ``generate`` pick what embwalk picks:
                   no EOS, no top-k unless asked);
- embwalk:         the whole job, ``extract_local(GenerateConfig(...))`` into a fresh store
                   per round: tokenize and stage the prompts, decode with the residual capture
                   (resid_pre.0, resid_post, final: every residual layer), float16 arrays and
                   the token table written, fsynced and committed;
- embwalk_forward: ``GenerationForward`` alone on the same batches with a ``Capturer`` of the
                   same sites into scratch buffers: the decoding loop and the hooks' copies,
                   no store (embwalk_forward vs embwalk is what the job and its writes cost);
- embwalk_nohooks: ``GenerationForward`` with nothing captured: the decoding loop's own cost
                   (vs bare: the extra forward step per continuation for the last token's
                   vectors, the per-step records, one seeded generator per continuation);

Tokens/s counts generated tokens only (prompts x new tokens), for every method.
For each: peak RSS (the process's resident-set high-water mark during the method;
/proc's VmHWM is reset at the method's start, getrusage's ru_maxrss where it cannot
be), its rise above the level at the start, the store's bytes per generated token
(embwalk; the store also holds the prompts' rows) and the ratios to bare in wall
and CPU time. Then one instrumented round (not in the medians) splits each method's
time: forward passes, hooks and copies, decoding steps, staging, writes.
``--profile`` adds torch.profiler's top operators for one embwalk_forward batch.
Prints Markdown; ``--out FILE`` appends it, with the machine and the command, to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import embwalk.extraction.driver as driver  # noqa: E402
from embwalk.corpus import CorpusConfig  # noqa: E402
from embwalk.executors.config import ClusterConfig  # noqa: E402
from embwalk.executors.local import extract_local  # noqa: E402
from embwalk.extraction.allocator import keep_freed_memory  # noqa: E402
from embwalk.extraction.config import CaptureConfig  # noqa: E402
from embwalk.extraction.job import PreparedJob, prepare  # noqa: E402
from embwalk.extraction.runner import ShardRunner  # noqa: E402
from embwalk.generation.config import DecodeConfig  # noqa: E402
from embwalk.generation.forward import GenerationForward  # noqa: E402
from embwalk.jobs.generate import GenerateConfig  # noqa: E402
from embwalk.models.capture import CaptureLayout, Capturer  # noqa: E402
from embwalk.models.config import ModelConfig  # noqa: E402
from embwalk.models.loading import load_model  # noqa: E402
from embwalk.store.config import StoreConfig  # noqa: E402
from embwalk.store.writer import StoreWriter  # noqa: E402
from scripts.bench_extract import machine, memory_peak, memory_start  # noqa: E402

SITES = ["resid_pre.0", "resid_post", "final"]  # conf/capture/residual.yaml: every residual layer + final
METHODS = ("bare", "embwalk", "embwalk_forward", "embwalk_nohooks")
CPU = torch.device("cpu")
TARGET = 0.9  # the issue's target: embwalk (every residual layer stored) at 0.9x of bare or better


@dataclass
class Batch:
    """One batch of prompts, as the shard runner cuts it (what GenerationForward is called with)."""

    ids: torch.Tensor  # [B, P] int64
    seqs: list[int]
    starts: list[int]
    win: object  # the shard's ShardTokens window (GenerationForward fills its generated rows)


@dataclass
class Measurement:
    wall: float
    cpu: float  # CPU seconds of this process, all threads
    peak_rss: int  # bytes: the resident-set high-water mark during the method
    peak_extra: int  # bytes of it above the level at the method's start
    written: int = 0  # bytes the method left on disk
    tokens: np.ndarray | None = None  # the generated token ids [prompts, N] (a check: greedy methods must agree)
    run_seconds: float | None = None  # embwalk: the driver's run_seconds (the job less validating and staging)


# -- the methods -------------------------------------------------------------------------------


def generation_config(args) -> GenerationConfig:
    """``generate``'s options equal to DecodeConfig's defaults: no EOS (every continuation runs
    --new-tokens long, as in embwalk), no top-k / top-p / temperature unless sampling asks."""
    opts = {"do_sample": args.strategy == "sample", "max_new_tokens": args.new_tokens, "eos_token_id": None,
            "pad_token_id": 0}
    if args.strategy == "sample":
        opts.update(top_k=0, top_p=1.0, temperature=1.0)
    return GenerationConfig(**opts)


def bare(loaded, batches: list[Batch], gen: GenerationConfig, n_prompt: int) -> list:
    """``model.generate`` per batch; an explicit all-ones mask, so that ``generate`` does not
    take the prompts' token 0 for padding (embwalk feeds no mask: no prompt is padded).

    ``generate`` fills the options a GenerationConfig leaves at their defaults from the model's
    own: ``eos_token_id=None`` would become the model's EOS, and a continuation could stop
    early. The model's default is unset for the call, so that every one runs N tokens."""
    defaults = loaded.model.generation_config
    saved, defaults.eos_token_id = defaults.eos_token_id, None
    tokens = []
    try:
        with torch.inference_mode():
            for b in batches:
                out = loaded.model.generate(b.ids, attention_mask=torch.ones_like(b.ids), generation_config=gen)
                assert out.shape[1] == n_prompt + gen.max_new_tokens, "generate stopped early"
                tokens.append(out[:, n_prompt:].numpy())
    finally:
        defaults.eos_token_id = saved
    return tokens


def embwalk_job(loaded, args, store: Path) -> dict:
    return extract_local(job_config(args, store), loaded)  # the manifest, with run_seconds


def job_config(args, store: Path) -> GenerateConfig:
    return GenerateConfig(
        model=ModelConfig(name=args.model, device="cpu"),
        corpus=CorpusConfig(max_tokens=args.prompts * args.prompt_tokens, seq_len=args.prompt_tokens),
        capture=CaptureConfig(sites=list(SITES)),
        store=StoreConfig(path=str(store), dtype="float16", shard_tokens=args.shard_tokens),
        cluster=ClusterConfig(batch_size=args.batch, progress=False),
        decode=DecodeConfig(strategy=args.strategy, max_new_tokens=args.new_tokens, max_prompts=args.prompts),
    )


def forward_only(loaded, job: PreparedJob, batches: list[Batch], sites: list[str] | None) -> list:
    """GenerationForward on the batches, hooks writing into the Capturer's scratch buffers
    (``sites=None``: nothing captured, no hooks); returns each batch's generated tokens."""
    layout = job.layout if sites else CaptureLayout()
    forward = GenerationForward(loaded, job.config.decode, job.generation)
    capturer = Capturer(loaded, layout, job.dtype, run_to_end=True)
    p = job.generation.prompt_len
    tokens = []
    try:
        for b in batches:
            forward(capturer, b.ids, None, None, b.seqs, b.starts, b.win)
            rows = np.concatenate([np.arange(a + p, a + job.generation.max_seq_len) for a in b.starts]) - b.win.row0
            tokens.append(b.win.token_ids[rows].reshape(len(b.starts), -1))
    finally:
        capturer.close()  # the hooks: no other method runs with them
    return tokens


def prompt_batches(job: PreparedJob, batch_size: int) -> list[Batch]:
    """The batches the shard runner forms (its sequences in order, ``batch_size`` at a time)."""
    p = job.generation.prompt_len
    out = []
    for shard in job.plan.shards:
        win = job.tokens_for(shard)
        seqs = list(range(*shard.seqs))
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i : i + batch_size]
            starts = [win.sequence_rows(s)[0] for s in chunk]
            ids = torch.from_numpy(np.stack([win.token_ids[win.rows(a, a + p)] for a in starts]).astype(np.int64))
            out.append(Batch(ids, chunk, starts, win))
    return out


# -- measuring ---------------------------------------------------------------------------------


def measure(method, out_dir: Path) -> Measurement:
    out_dir.mkdir(parents=True)
    base = memory_start(CPU)
    cpu_start, start = time.process_time(), time.perf_counter()
    result = method(out_dir)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = memory_peak(CPU)
    written = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    shutil.rmtree(out_dir)
    tokens = np.concatenate(result) if isinstance(result, list) else None
    run_seconds = result.get("run_seconds") if isinstance(result, dict) else None
    return Measurement(wall, cpu, peak, peak - base, written, tokens, run_seconds)


# -- where the time goes: one instrumented round -------------------------------------------------


@dataclass
class Split:
    generate_calls: int  # model calls per batch that generate also makes (the prefill + N - 1 steps)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: float = 0.0

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] += dt
        self.counts[name] += 1


HOOKS = "hooks: copies into the buffers"
DECODE = "decode step (logits -> token + records)"
PREPARE = "job: validate, tokenize, stage, plan"
COMPUTE = "job: shard compute"
WRITE = "job: write + fsync + commit the shard (writer thread)"
RUNNER = "job: build the shard runner (vocabulary strings, hooks)"


@contextlib.contextmanager
def patched(obj, name: str, wrapper):
    """``obj.name`` wrapped for the block; restored as it was (a classmethod stays one)."""
    raw = vars(obj).get(name) if isinstance(obj, type) else None
    setattr(obj, name, wrapper(getattr(obj, name)))
    try:
        yield
    finally:
        if raw is not None:
            setattr(obj, name, raw)
        else:
            setattr(obj, name, getattr(obj, name).__wrapped__)


def timed(split: Split, label: str):
    def wrap(fn):
        def inner(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                split.add(label, time.perf_counter() - t)
        inner.__wrapped__ = fn
        return inner
    return wrap


@contextlib.contextmanager
def forward_timer(model: torch.nn.Module, split: Split, calls_per_batch: int):
    """Time every call of the whole model, less the hooks' copies inside it: per batch, call 0 is
    the prefill, calls 1 .. N-1 the decoding steps ``generate`` also runs, call N (embwalk's
    ``calls_per_batch`` = N + 1) the extra step for the last token's vectors."""
    state = {"t": 0.0, "hooks": 0.0, "i": 0}
    n = calls_per_batch

    def pre(module, args, kwargs):
        state["t"], state["hooks"] = time.perf_counter(), split.seconds[HOOKS]

    def post(module, args, kwargs, output):
        dt = time.perf_counter() - state["t"] - (split.seconds[HOOKS] - state["hooks"])
        i = state["i"]
        kind = "prefill" if i == 0 else "decoding steps" if i < split.generate_calls else "extra last step"
        split.add(f"forward: {kind}", dt)
        state["i"] = (i + 1) % n

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True),
               model.register_forward_hook(post, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def split_round(loaded, args, job: PreparedJob, batches: list[Batch], gen: GenerationConfig, work: Path) -> dict:
    """One round of each method with timers around its parts (timers cost a little: not in the medians)."""
    n = args.new_tokens
    splits = {}

    split = Split(generate_calls=n)  # generate: the prefill + N - 1 steps per batch
    t = time.perf_counter()
    with forward_timer(loaded.model, split, n):
        bare(loaded, batches, gen, args.prompt_tokens)
    split.total = time.perf_counter() - t
    splits["bare"] = split

    for name, sites in (("embwalk_forward", SITES), ("embwalk_nohooks", None)):
        split = Split(generate_calls=n)
        t = time.perf_counter()
        with forward_timer(loaded.model, split, n + 1), \
             patched(GenerationForward, "__call__", _decoder_timer(split)), \
             patched(Capturer, "_write", timed(split, HOOKS)):
            forward_only(loaded, job, batches, sites)
        split.total = time.perf_counter() - t
        splits[name] = split

    split = Split(generate_calls=n)
    t = time.perf_counter()
    with forward_timer(loaded.model, split, n + 1), \
         patched(driver, "prepare", timed(split, PREPARE)), \
         patched(StoreWriter, "open", timed(split, "job: open the store")), \
         patched(PreparedJob, "runner", timed(split, RUNNER)), \
         patched(ShardRunner, "_compute", timed(split, COMPUTE)), \
         patched(StoreWriter, "write_shard", timed(split, WRITE)), \
         patched(ShardRunner, "close", timed(split, "job: wait for the writes (runner.close)")), \
         patched(StoreWriter, "finish", timed(split, "job: finish (manifest)")), \
         patched(GenerationForward, "__call__", _decoder_timer(split)), \
         patched(Capturer, "_write", timed(split, HOOKS)):
        embwalk_job(loaded, args, work / "split-store")
    split.total = time.perf_counter() - t
    shutil.rmtree(work / "split-store", ignore_errors=True)
    splits["embwalk"] = split
    return splits


def _decoder_timer(split: Split):
    """GenerationForward.__call__ timed, with its decoder's steps timed too."""
    def wrap(call):
        def inner(self, *a, **kw):
            self.decoder.step = timed(split, DECODE)(self.decoder.step)
            t = time.perf_counter()
            try:
                return call(self, *a, **kw)
            finally:
                split.add("GenerationForward", time.perf_counter() - t)
                del self.decoder.step  # the class's method again
        inner.__wrapped__ = call
        return inner
    return wrap


def split_parts(method: str, split: Split) -> list[tuple[str, float, str]]:
    """(part, seconds, calls); indented parts are inside the part above them."""
    s, c = split.seconds, split.counts
    fwd = [(k, s[k], c[k]) for k in ("forward: prefill", "forward: decoding steps", "forward: extra last step")
           if k in s]
    if method == "bare":
        return [*fwd, ("generate's own loop (logits processing, cache, stopping)",
                       split.total - sum(v for _, v, _ in fwd), "")]
    loop = [*fwd]
    if HOOKS in s:
        loop.append((HOOKS, s[HOOKS], c[HOOKS]))
    loop.append((DECODE, s[DECODE], c[DECODE]))
    gen = s["GenerationForward"]
    loop.append(("the loop's rest (history, per-step records into the table)", gen - sum(v for _, v, _ in loop), ""))
    if method != "embwalk":
        return [*loop, ("outside GenerationForward (capturer, hooks on and off)", split.total - gen, "")]
    parts = [(PREPARE, s[PREPARE], ""), ("job: open the store", s["job: open the store"], ""),
             (RUNNER, s[RUNNER], ""), (COMPUTE, s[COMPUTE], c[COMPUTE])]
    parts += [("  " + k, v, n) for k, v, n in loop]
    parts.append(("  the rest of the shard (windows, batching, token table)", s[COMPUTE] - gen, ""))
    wait = s["job: wait for the writes (runner.close)"]
    parts += [("job: wait for the writes (runner.close)", wait, ""), ("  " + WRITE, s[WRITE], c[WRITE]),
              ("job: finish (manifest)", s["job: finish (manifest)"], "")]
    top = sum(v for k, v, _ in parts if not k.startswith(" "))
    parts.append(("job: the rest (driver, executor)", split.total - top, ""))
    return parts


def split_lines(splits: dict[str, Split]) -> list[str]:
    lines = ["| method | part | seconds | share of the method | calls |", "|---|---|---:|---:|---:|"]
    for method, split in splits.items():
        for part, v, calls in split_parts(method, split):
            name = part if not part.startswith(" ") else "&nbsp;&nbsp;" + part.strip()
            lines.append(f"| {method} | {name} | {v:.2f} | {v / split.total:.1%} | {calls} |")
        lines.append(f"| {method} | **total** | **{split.total:.2f}** | | |")
    return lines


def profile_lines(loaded, job: PreparedJob, batches: list[Batch], rows: int = 15) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_only(loaded, job, batches[:1], SITES)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return ["torch.profiler, one embwalk_forward batch, by self CPU time:", "", "```", table, "```"]


# -- reporting ---------------------------------------------------------------------------------


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def summarise(results: dict[str, list[Measurement]], n_generated: int) -> list[dict]:
    def median(name: str, attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in results[name])

    base_wall, base_cpu = median("bare", "wall"), median("bare", "cpu")
    rows = []
    for name in results:
        wall = median(name, "wall")
        written = median(name, "written")
        rows.append({
            "method": name,
            "tokens_per_s": n_generated / wall,
            "ratio_wall": base_wall / wall,
            "ratio_cpu": base_cpu / median(name, "cpu"),
            "peak_rss_mb": max(m.peak_rss for m in results[name]) / 1e6,
            "peak_extra_mb": max(m.peak_extra for m in results[name]) / 1e6,
            "bytes_per_token": written / n_generated if written else None,
        })
        runs = [m.run_seconds for m in results[name] if m.run_seconds is not None]
        if runs:  # the job less what runs once per job before the decoding (validate, tokenize, stage, plan)
            run = statistics.median(runs)
            rows.append({"method": f"{name}, less staging (driver's run_seconds)", "tokens_per_s": n_generated / run,
                         "ratio_wall": base_wall / run, "ratio_cpu": None, "peak_rss_mb": None,
                         "peak_extra_mb": None, "bytes_per_token": None})
    return rows


def markdown(rows, results, splits, args, loaded, job: PreparedJob, command: str, extra: list[str]) -> str:
    n_prompts, n = job.generation.n_prompts, args.new_tokens
    lines = [
        f"### {args.model} ({loaded.dtype}, {loaded.device}): {n_prompts} prompts of {args.prompt_tokens} tokens, "
        f"{n} new tokens each ({args.strategy}), batch {args.batch}, {len(job.plan.shards)} shard(s), "
        f"median of {args.reps} after one warm-up round",
        "",
        f"Machine: {machine()} (load average at the start: {args.load_at_start}, at the end: {load_average()})",
        "",
        f"    {command}",
        "",
        f"Tokens/s counts generated tokens only ({n_prompts} x {n} = {n_prompts * n} per round), for every method. "
        f"embwalk stores {', '.join(SITES)} ({len(job.layout.residual)} residual layers + final, float16) "
        f"for the prompts' rows too ({job.generation.max_seq_len} rows per continuation).",
        "",
        "| method | generated tokens/s | ratio to bare (wall) | ratio to bare (CPU time) | peak RSS MB "
        "| peak extra MB | store bytes / generated token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for r in rows:
        lines.append(
            f"| {r['method']} | {r['tokens_per_s']:,.1f} | {r['ratio_wall']:.3f} | {cell(r['ratio_cpu'], '.3f')} "
            f"| {cell(r['peak_rss_mb'], ',.0f')} | {cell(r['peak_extra_mb'], ',.0f')} "
            f"| {cell(r['bytes_per_token'], ',.0f')} |"
        )
    for label, attr in (("wall (s)", "wall"), ("CPU (s)", "cpu")):
        per_method = "; ".join(
            f"{name} " + ", ".join(f"{getattr(m, attr):.2f}" for m in ms) for name, ms in results.items()
        )
        lines += ["", f"{label}: {per_method}"]
    ratio = next((r["ratio_wall"] for r in rows if r["method"] == "embwalk"), None)
    if ratio is not None:
        lines += ["", f"Target {TARGET}x of bare with every residual layer stored: "
                      f"**{'met' if ratio >= TARGET else 'not met'}** ({ratio:.3f}x, wall, the whole job)."]
    if splits:
        lines += ["", "Where the time goes (one instrumented round, not in the medians; hooks' copies are "
                      "shown apart from the forward passes they run in):", "", *split_lines(splits)]
    return "\n".join(lines + extra)


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16, help="prompts (the corpus's first packed sequences)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="tokens per prompt (corpus.seq_len)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--batch", type=int, default=8, help="prompts per batch (cluster.batch_size)")
    parser.add_argument("--strategy", choices=("greedy", "sample"), default="greedy")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--shard-tokens", type=int, default=StoreConfig.shard_tokens,
                        help="store.shard_tokens: rows per shard (each shard's write overlaps the next one's compute)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (bare always runs)")
    parser.add_argument("--no-split", action="store_true", help="skip the instrumented round")
    parser.add_argument("--profile", action="store_true", help="add torch.profiler's top ops of one batch")
    parser.add_argument("--out", type=Path, help="append the results (Markdown) to this file")
    parser.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "scripts/bench_generate.py", *sys.argv[1:]])
    args.load_at_start = load_average()

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # the allocator setting embwalk's runner makes: every method runs with it
    work = Path(tempfile.mkdtemp(prefix="embwalk-bench-gen-", dir=args.workdir))
    loaded = load_model(ModelConfig(name=args.model, device="cpu"))
    job = prepare(job_config(args, work / "prompts"), loaded)  # the prompts' staging area, read once
    batches = prompt_batches(job, args.batch)
    n_generated = job.generation.n_prompts * args.new_tokens
    gen = generation_config(args)

    methods = {
        "bare": lambda out: bare(loaded, batches, gen, args.prompt_tokens),
        "embwalk": lambda out: embwalk_job(loaded, args, out / "store"),
        "embwalk_forward": lambda out: forward_only(loaded, job, batches, SITES),
        "embwalk_nohooks": lambda out: forward_only(loaded, job, batches, None),
    }
    if args.methods:
        wanted = {"bare", *args.methods.split(",")}
        methods = {k: v for k, v in methods.items() if k in wanted}
    results: dict[str, list[Measurement]] = {name: [] for name in methods}
    warm = {name: measure(method, work / f"warm-{name}") for name, method in methods.items()}
    for rep in range(args.reps):
        for name, method in methods.items():
            results[name].append(measure(method, work / f"out-{name}-{rep}"))
            print(f"round {rep + 1}/{args.reps} {name}: {results[name][-1].wall:.2f} s", file=sys.stderr)

    extra = []
    if args.strategy == "greedy":  # the same work: every greedy method generated the same tokens
        ref = warm["bare"].tokens
        for name in ("embwalk_forward", "embwalk_nohooks"):
            if name in warm and not np.array_equal(warm[name].tokens, ref):
                extra += ["", f"WARNING: {name}'s greedy tokens differ from generate's."]
    splits = None if args.no_split else split_round(loaded, args, job, batches, gen, work)
    if args.profile:
        extra += ["", *profile_lines(loaded, job, batches)]
    shutil.rmtree(work, ignore_errors=True)

    rows = summarise(results, n_generated)
    report = markdown(rows, results, splits, args, loaded, job, command, extra)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
