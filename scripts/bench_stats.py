"""What in-pass statistics cost next to the bare forward pass, family by family.

    .venv/bin/python scripts/bench_stats.py [--model smollm2-135m] [--batch 8] [--seq-len 256] [--reps 3]
                                            [--families encoding,geometry] [--cov-every 3] [--threads 2]

Runs the model over packed sequences of the built-in corpus: the bare forward pass
(no hooks, SDPA), then the capture of every residual layer, ``final`` and the attention
probabilities (not timed), and times ``WalkStats.update_sequence`` per family on those
captures rounded to float16, as the in-pass route feeds them. The two-step route's rates
(read vs statistics) are printed by ``python -m jobs.stats`` itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embwalk.stats.config import FAMILIES, StatsOptions  # noqa: E402
from embwalk.stats.head import ModelHead  # noqa: E402
from embwalk.stats.walk import WalkStats  # noqa: E402


def _tokens(loaded, n_tokens: int) -> np.ndarray:
    from embwalk.corpus import CorpusConfig, read_documents, tokenize_corpus

    cfg = CorpusConfig(max_tokens=n_tokens)
    return tokenize_corpus(read_documents(cfg), loaded.tokenizer, cfg).token_ids[:n_tokens]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--cov-every", type=int, default=None, help="geometry: covariance every k-th layer")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from embwalk.models.capture import CaptureLayout, Capturer
    from embwalk.models.config import ModelConfig
    from embwalk.models.loading import load_model

    loaded = load_model(ModelConfig(name=args.model, device="cpu"))
    n = args.batch * args.seq_len
    ids = torch.from_numpy(_tokens(loaded, n).astype(np.int64)).view(args.batch, args.seq_len)
    with torch.inference_mode():
        loaded.trunk(input_ids=ids[:1], use_cache=False)  # warm-up
        forward = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            loaded.trunk(input_ids=ids, use_cache=False)
            forward.append(time.perf_counter() - t0)
    t_fwd = statistics.median(forward)
    print(f"{loaded.model_id}: batch {args.batch} x {args.seq_len} tokens, {torch.get_num_threads()} threads")
    print(f"bare forward pass: {t_fwd:.2f} s ({n / t_fwd:.0f} tokens/s, median of {args.reps})")
    layers = loaded.n_layers
    layout = CaptureLayout(residual=tuple(range(layers + 1)), final=True, pattern_layers=tuple(range(layers)))
    with Capturer(loaded, layout, torch.float32) as cap:
        got = {k: v.clone() for k, v in cap.run(ids).items()}
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    config = StatsOptions(families=families, cov_every=args.cov_every).stats_config(ids.numpy().ravel(), layers + 1)
    head = ModelHead.from_loaded(loaded, "cpu")
    seconds: dict[str, list[float]] = {f: [] for f in families}
    rounding = []
    for _ in range(args.reps):
        ws = WalkStats(config, head, "bench", pattern_layers=list(range(layers)))
        t0 = time.perf_counter()
        seqs = [(got["resid"][j].half(), got["final"][j].half(), got["pattern"][j].half())
                for j in range(args.batch)]  # the in-pass caller rounds to the store dtype
        rounding.append(time.perf_counter() - t0)
        docs = torch.zeros(args.seq_len, dtype=torch.long)
        for j, (resid, final, pattern) in enumerate(seqs):
            ws.update_sequence(resid, final, ids[j], docs, pattern)
        for f in families:
            seconds[f].append(ws.seconds[f])
    print(f"rounding captures to float16: {statistics.median(rounding):.3f} s "
          f"({100 * statistics.median(rounding) / t_fwd:.1f}% of the forward pass)")
    total = 0.0
    for f in families:
        t = statistics.median(seconds[f])
        total += t
        print(f"  {f:11s} {t:8.3f} s  {n / t:9.0f} tokens/s  {100 * t / t_fwd:7.1f}% of the forward pass")
    print(f"  {'all':11s} {total:8.3f} s  {n / total:9.0f} tokens/s  {100 * total / t_fwd:7.1f}% of the forward pass")


if __name__ == "__main__":
    main()
