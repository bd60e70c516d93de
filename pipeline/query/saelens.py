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

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embwalk.models.sites import parse_sites
from embwalk.query.errors import QueryError
from embwalk.query.export import _is_saved_dataset, _replace_dir

SEQUENCES_PER_PIECE = 64  # sequences read from the store at once


def sae_metadata(store, site: str) -> dict:
    """What an SAE trained on ``site``'s vectors of ``store`` (a QueryStore) should record."""
    manifest = store.manifest
    (resolved,) = store.sites(site)
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
    try:
        import datasets
    except ImportError as exc:
        raise QueryError("exporting for SAELens needs the datasets package: pip install datasets") from exc
    meta = sae_metadata(store, site)
    hook, ctx, d = hook_name or meta["hook_name"], meta["context_size"], meta["d_in"]
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise QueryError(f"cannot write {path}: its directory does not exist")
    if path.exists() and not _is_saved_dataset(path):
        raise QueryError(f"cannot write a dataset to {path}: it exists and is not an earlier datasets export")
    tokens = store.sql("select row, seq_id, token_id from tokens order by row")
    seq = tokens.column("seq_id").to_numpy()
    starts = np.flatnonzero(np.diff(seq, prepend=-1))
    lengths = np.diff(np.append(starts, len(seq)))
    full = starts[lengths == ctx]
    if not len(full):
        raise QueryError(f"store {store.location} has no committed sequence of {ctx} tokens to export")
    rows = tokens.column("row").to_numpy()
    ids = pc.cast(tokens.column("token_id"), "int32").to_numpy()
    dtype = np.dtype(meta["dtype"])
    features = datasets.Features({
        hook: datasets.Array2D(shape=(ctx, d), dtype=dtype.name),
        "token_ids": datasets.Sequence(datasets.Value("int32"), length=ctx),
    })

    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    stream = work / "rows.arrow"
    try:
        # Piece by piece into one Arrow stream (datasets encodes each piece's Array2D column), which
        # datasets memory-maps and saves in its own layout: memory holds one piece.
        writer, sink = None, pa.OSFile(str(stream), "wb")
        for a in range(0, len(full), SEQUENCES_PER_PIECE):
            first = full[a : a + SEQUENCES_PER_PIECE]
            index = (first[:, None] + np.arange(ctx)[None, :]).reshape(-1)
            vectors = store.vectors(rows[index], meta["embwalk_site"]).reshape(len(first), ctx, d)
            piece = datasets.Dataset.from_dict({hook: vectors, "token_ids": ids[index].reshape(len(first), ctx)},
                                               features=features).data.table
            if writer is None:
                writer = pa.ipc.new_stream(sink, piece.schema)
            writer.write_table(piece)
        writer.close()
        sink.close()
        info = datasets.DatasetInfo(description=json.dumps({"embwalk": meta}), features=features)
        datasets.Dataset.from_file(str(stream), info=info).save_to_disk(str(work / "out"))
        _replace_dir(work / "out", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
