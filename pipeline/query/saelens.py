"""Stored activations for sparse-autoencoder trainers: SAE metadata, and SAELens' cached layout.

``sae_metadata(store, site)`` says what an SAE trained on a site's vectors was trained on,
under the names SAELens (``model_name``, ``hook_name``, ``d_in`` ...) and dictionary_learning
(``lm_name``, ``submodule_name``, ``activation_dim`` ...) use, so that the trained SAE can be
matched with its model and hook later. ``export_saelens(store, site, path)`` writes the
site's vectors in the layout SAELens' ``ActivationsStore(cached_activations_path=...)``
reads: a ``datasets.Dataset`` saved to disk with one row per sequence, the column named
by the TransformerLens hook holding ``Array2D(context_size, d_in)`` and ``token_ids``
holding the sequence's tokens.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from embwalk.models.sites import parse_sites
from embwalk.query.errors import QueryError
from embwalk.query.export import check_dataset_target, datasets_module, save_dataset

SEQUENCES_PER_PIECE = 64  # sequences read from the store at once


def sae_metadata(store, site: str) -> dict:
    """What an SAE trained on ``site``'s vectors of ``store`` (a QueryStore) should record."""
    manifest = store.manifest
    (resolved,) = store.sites(site)
    if resolved.array == "router_logits":
        raise QueryError(f"{resolved.name} is a router's logits, not a residual-stream vector an SAE reads")
    (parsed,) = parse_sites([resolved.name], manifest["model"]["n_layers"])
    model = manifest["model"]
    name = manifest["config"]["model"]["name"]
    hook = parsed.transformer_lens_name
    return {
        # SAELens (SAE.cfg.metadata / the training runner's config)
        "model_name": name,
        "hook_name": hook,
        "hook_head_index": None,
        "d_in": int(model["d_model"]),
        "context_size": int(manifest["seq_len"]),
        "dtype": manifest["dtype"],
        "prepend_bos": False,  # the store's sequences are the tokenizer's own, packed or per document
        # dictionary_learning (trainer config)
        "lm_name": name,
        "submodule_name": hook,
        "layer": parsed.layer,
        "activation_dim": int(model["d_model"]),
        # embwalk: where the vectors came from
        "embwalk_store": str(store.location),
        "embwalk_site": resolved.name,
        "embwalk_model_id": model["id"],
        "embwalk_weights_fingerprint": model["weights_fingerprint"],
    }


def export_saelens(store, site: str, path: str | Path, hook_name: str | None = None) -> Path:
    """Write ``site``'s vectors of every full-length committed sequence of ``store`` (a QueryStore)
    as SAELens' cached activations at ``path``; returns the path.

    Pack-mode stores qualify whole (every sequence is ``seq_len`` tokens but perhaps the last);
    in document mode only the sequences that fill ``seq_len`` do. ``hook_name`` names the column
    (default: the site's TransformerLens hook, which SAELens' config must name too).
    """
    datasets = datasets_module("exporting for SAELens")
    meta = sae_metadata(store, site)
    hook, ctx, d = hook_name or meta["hook_name"], meta["context_size"], meta["d_in"]
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise QueryError(f"cannot write {path}: its directory does not exist")
    check_dataset_target(path)
    features = datasets.Features({
        hook: datasets.Array2D(shape=(ctx, d), dtype=np.dtype(meta["dtype"]).name),
        "token_ids": datasets.Sequence(datasets.Value("int32"), length=ctx),
    })
    sequences = _full_sequences(store, ctx)
    first = next(sequences, None)  # known before anything is written
    if first is None:
        raise QueryError(f"store {store.location} has no committed sequence of {ctx} tokens to export")

    def pieces():  # datasets encodes each piece's Array2D column; memory holds one piece
        for rows, ids in itertools.chain([first], sequences):
            for a in range(0, len(rows), SEQUENCES_PER_PIECE):
                r, t = rows[a : a + SEQUENCES_PER_PIECE], ids[a : a + SEQUENCES_PER_PIECE]
                vectors = store.vectors(r.reshape(-1), meta["embwalk_site"]).reshape(len(r), ctx, d)
                yield datasets.Dataset.from_dict({hook: vectors, "token_ids": t}, features=features).data.table

    info = datasets.DatasetInfo(description=json.dumps({"embwalk": meta}), features=features)
    save_dataset(pieces(), features.arrow_schema, info, path)
    return path


def _full_sequences(store, ctx: int):
    """(rows [k, ctx], token ids [k, ctx] int32) of the committed sequences of ``ctx`` tokens,
    one shard's token table at a time (a sequence may run on into the next shard)."""
    carry = None  # the unfinished last sequence of the previous shard
    committed = set(store.committed)
    for index in store.committed:
        t = store.reader.read_tokens(index, ["row", "seq_id", "token_id"])
        cols = [t.column(c).to_numpy() for c in ("row", "seq_id", "token_id")]
        if carry is not None and index - 1 in committed:
            cols = [np.concatenate([c0, c1]) for c0, c1 in zip(carry, cols, strict=True)]
        row, seq, tok = cols
        starts = np.flatnonzero(np.diff(seq, prepend=-1))
        stops = np.append(starts[1:], len(seq))
        full = starts[stops - starts == ctx]
        carry = None
        if len(starts) and stops[-1] - starts[-1] < ctx and index + 1 in committed:
            carry = [c[starts[-1]:] for c in cols]
        if len(full):
            index_ = full[:, None] + np.arange(ctx)[None, :]
            yield row[index_], tok[index_].astype(np.int32)
