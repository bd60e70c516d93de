"""SAELens reads an embwalk export as its own cached activations (run in an environment with sae-lens):

    VENV=.venv-sae EXTRA=sae-lens bash scripts/setup.sh
    .venv-sae/bin/python scripts/check_saelens.py [--store STORE] [--site resid_post.3]

Extracts a small store (bundled SmolLM2, built-in corpus) unless --store is given, exports a
site with ``export_saelens``, builds SAELens' ``ActivationsStore`` over it
(``cached_activations_path``) and checks that every batch it loads, activations and token ids,
equals the store's own vectors. Prints the SAE metadata embwalk fills in; exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    from sae_lens.training.activations_store import ActivationsStore

    import embwalk
    from embwalk.query.saelens import export_saelens, sae_metadata

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path)
    p.add_argument("--site", default="resid_post.3")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embwalk-saelens-"))
    if args.store is None:
        args.store = work / "store"
        cfg = embwalk.ExtractConfig.from_dict({
            "corpus": {"max_tokens": 2048, "seq_len": 128}, "store": {"path": str(args.store), "shard_tokens": 1024},
            "cluster": {"progress": False},
        })
        embwalk.extract(cfg)
    store = embwalk.open_store(args.store)
    meta = sae_metadata(store, args.site)
    print(json.dumps(meta, indent=1))
    cache = export_saelens(store, args.site, work / "cache")
    n_seq = store.n_tokens // meta["context_size"]
    acts = ActivationsStore(
        model=None, dataset=None, streaming=False, hook_name=meta["hook_name"], hook_head_index=None,
        context_size=meta["context_size"], d_in=meta["d_in"], n_batches_in_buffer=2,
        total_training_tokens=store.n_tokens, store_batch_size_prompts=4, train_batch_size_tokens=256,
        prepend_bos=False, normalize_activations="none", device=torch.device("cpu"),
        dtype="float32",  # SAELens casts token_ids to this dtype too: float16 would round ids above 2048
        cached_activations_path=str(cache),
    )
    checked = 0
    for b in range(n_seq // 4):
        got, token_ids = acts._load_raw_llm_batch_from_cached(raise_on_epoch_end=True)
        rows = np.arange(b * 4 * meta["context_size"], (b + 1) * 4 * meta["context_size"])
        want = store.vectors(rows, args.site).astype(np.float32)  # float16 -> float32 is exact
        tokens = store.select(row=f"{rows[0]}:{rows[-1] + 1}").table.column("token_id").to_numpy()
        if not (np.array_equal(got.numpy(), want) and np.array_equal(token_ids.numpy(), tokens)):
            print(f"embwalk: error: batch {b} differs from the store", file=sys.stderr)
            return 1
        checked += len(rows)
    print(f"SAELens {ActivationsStore.__module__}: {checked} tokens of {meta['hook_name']} read from the cache "
          f"equal the store's {args.site} ({meta['d_in']} x {meta['dtype']}), token ids too")
    return 0


if __name__ == "__main__":
    sys.exit(main())
