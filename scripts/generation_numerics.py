"""What the KV cache's numerics allow: stored vectors of `embwalk generate` against a
teacher-forced forward pass over prompt + continuation, batched like the generation.

    .venv/bin/python scripts/generation_numerics.py [--new-tokens 6 24] [--prompts 3] [--samples 2]

Prints, per number of new tokens, the largest per-vector relative difference on prompt rows
and on generated rows (float32 store; SmolLM2-135M from the bundled GGUF).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from embwalk.corpus import CorpusConfig
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig
from embwalk.generation.config import DecodeConfig
from embwalk.jobs.generate import GenerateConfig
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.store.config import StoreConfig
from embwalk.store.reader import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[6, 24])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, default=3)
    args = ap.parse_args()
    loaded = load_model(ModelConfig(name="smollm2-135m", device="cpu"))
    for n_new in args.new_tokens:
        root = Path(tempfile.mkdtemp(prefix="embwalk-numerics-"))
        cfg = GenerateConfig(
            corpus=CorpusConfig(max_tokens=args.prompts * args.prompt_tokens, seq_len=args.prompt_tokens),
            capture=CaptureConfig(sites=["resid_pre.0", "resid_post"]),
            store=StoreConfig(path=str(root / "store"), dtype="float32", shard_tokens=4096, chunk_tokens=2),
            cluster=ClusterConfig(batch_size=args.batch, progress=False),
            decode=DecodeConfig(strategy="sample", samples=args.samples, max_new_tokens=n_new),
        )
        extract_local(cfg, loaded)
        store = Store(cfg.store.path)
        table = store.tokens().to_pandas()
        resid = store.array("resid")[:]
        seqs = [rows for _, rows in table.groupby("seq_id")]
        worst = {"prompt": 0.0, "generated": 0.0}
        for b0 in range(0, len(seqs), args.batch):  # the runner's batches: consecutive continuations
            group = seqs[b0 : b0 + args.batch]
            ids = torch.tensor(np.stack([g.token_id.to_numpy() for g in group]), dtype=torch.long)
            with torch.no_grad():
                out = loaded.model(ids, output_hidden_states=True)
            want = np.stack([h.numpy() for h in out.hidden_states], 2)[:, :, :-1]  # the last is after the norm
            for j, rows in enumerate(group):
                got = resid[rows.row.to_numpy()][:, :-1]
                rel = np.linalg.norm(got - want[j], axis=-1) / np.linalg.norm(want[j], axis=-1)
                gen = rows.generated.to_numpy()
                worst["prompt"] = max(worst["prompt"], float(rel[~gen].max()))
                worst["generated"] = max(worst["generated"], float(rel[gen].max()))
        print(f"{n_new} new tokens: prompt rows {worst['prompt']:.2e}, generated rows {worst['generated']:.2e} "
              f"(per-vector relative difference, {len(seqs)} continuations, batch {args.batch})")


if __name__ == "__main__":
    main()
