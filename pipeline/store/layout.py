"""The store's on-disk layout (format version 2) and its array schema.

    STORE/manifest.json
    STORE/plan.parquet                  (document mode) each shard's sequences: what cannot be derived
    STORE/activations.zarr/{resid,final,resid_mid,attn_out,mlp_out}   + coordinates layer, ...
    STORE/attention.zarr/pattern (T5: cross_pattern, score, content, position_bias, cross_score) + coordinates
    STORE/commits/shard-00000.json      a shard's commit record, written just before ...
    STORE/tokens/shard-00000.parquet    ... its token table, whose appearance commits the shard
    STORE/stats/
    STORE/staging/tokens/               the corpus tokenized part by part, before the plan
    STORE/.tmp/                         temporary files of atomic writes (removed on the next run)

docs/store-format.md is the reader's version of this page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

FORMAT = "embwalk-store"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
GROUPS = {"activations": "activations.zarr", "attention": "attention.zarr"}
TOKENS_DIR, COMMITS_DIR, STATS_DIR = "tokens", "commits", "stats"
TMP_DIR = ".tmp"  # hidden, beside the data: a rename from here into place is atomic
PLAN_FILE = "plan.parquet"  # document mode: each shard's sequences (pack mode derives them)
STAGING_DIR = "staging"  # the corpus's token rows, tokenized part by part (pipeline/corpus/staged.py)

TOKEN_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # index on the token axis of every per-token array
        ("doc_id", pa.int64()),
        ("seq_id", pa.int64()),
        ("pos", pa.int32()),  # position within the sequence
        ("doc_pos", pa.int32()),  # position within the document
        ("token_id", pa.int32()),
        ("token", pa.string()),  # the token's text, decoded alone
    ]
)


# The token-table column a T5 decoder store adds (last): each row's pair's encoder input length,
# the key length of its cross-attention arrays (cross_pattern, cross_score).
INPUT_LEN = "input_len"

# The token-table columns a generation store adds (embwalk generate, pipeline/generation/), in
# order after TOKEN_SCHEMA's: which continuation and step a row is, and each step's record
# (null on prompt rows). docs/generation.md describes them.
GENERATION_COLUMNS = pa.schema(
    [
        ("prompt_id", pa.int64()),
        ("sample", pa.int32()),
        ("step", pa.int32()),  # 0 = the first generated token; null on the prompt
        ("generated", pa.bool_()),
        ("prob", pa.float32()),  # of the chosen token under the model's distribution softmax(logits)
        ("rank", pa.int32()),  # of the chosen token under it (0 = the top token)
        ("entropy", pa.float32()),  # of that distribution, nats
        ("sample_prob", pa.float32()),  # of the chosen token under the distribution it was drawn from
        ("path_logprob", pa.float64()),  # sum of log prob over the steps so far
        ("top_ids", pa.list_(pa.int32())),  # the most probable tokens (fixed-size lists)
        ("top_probs", pa.list_(pa.float32())),
        ("beam", pa.int32()),  # beam search: the path's rank among the live beams after this step (0 = best)
    ]
)
# What the token tables of generation stores written before the ``beam`` column hold (the
# manifest's ``generation.columns`` lists a store's own).
GENERATION_COLUMNS_V1 = tuple(n for n in GENERATION_COLUMNS.names if n != "beam")


def generation_columns(manifest: dict) -> tuple[str, ...]:
    """The generation columns a store's token table holds; () for an extraction store."""
    gen = manifest.get("generation")
    if gen is None:
        return ()
    return tuple(gen.get("columns", GENERATION_COLUMNS_V1))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def tokens_file(index: int) -> str:
    """A shard's token table, relative to the store's root."""
    return f"{TOKENS_DIR}/{shard_name(index)}.parquet"


def commit_file(index: int) -> str:
    """A shard's commit marker, relative to the store's root."""
    return f"{COMMITS_DIR}/{shard_name(index)}.json"


def tokens_path(root: Path, index: int) -> Path:
    return root / tokens_file(index)


def chunk_file(array_path: str, key: tuple[int, ...]) -> str:
    """The file of one Zarr shard (default ``/`` chunk key encoding), relative to the store's root."""
    return f"{array_path}/c/" + "/".join(str(k) for k in key)


def shard_files(manifest: dict, index: int) -> dict[str, str]:
    """Every array file shard ``index`` of a store owns, mapped to its array's name: one Zarr
    shard of each per-token array, and one pattern file per sequence it stores attention for."""
    shard = manifest["shards"][index]
    files = {}
    for name, spec in manifest["arrays"].items():
        if spec["dims"][0] == "token":
            files[chunk_file(spec["path"], (index,) + (0,) * (len(spec["dims"]) - 1))] = name
        else:  # attention: one Zarr shard per sequence
            for seq in range(*shard["pattern_seqs"]):
                files[chunk_file(spec["path"], (seq,) + (0,) * (len(spec["dims"]) - 1))] = name
    return files


def shard_index_of(name: str) -> int | None:
    """The index in a file name ``shard-NNNNN.ext``; None for anything else (temporary files)."""
    stem, dot, _ = name.partition(".")
    head, dash, digits = stem.partition("-")
    if head != "shard" or not dash or not dot or not digits.isdigit():
        return None
    return int(digits)


def layer_dim(name: str) -> str:
    """The dimension name of an array's layer axis: ``layer`` for resid (residual indices),
    ``<array>_layer`` for the block-indexed arrays, so that arrays capturing different
    layers never claim one dimension with two lengths (xarray would refuse the group)."""
    return "layer" if name == "resid" else f"{name}_layer"


@dataclass(frozen=True)
class ArraySpec:
    """One Zarr array: its shape, labelled axes, and how it is cut into files."""

    name: str
    group: str  # key of GROUPS
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    chunks: tuple[int, ...]  # inner chunk: the unit a reader decodes
    shards: tuple[int, ...]  # Zarr shard: the unit one writer owns (one file)
    dtype: str = "float16"
    attributes: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{GROUPS[self.group]}/{self.name}"


def array_specs(
    *,
    n_tokens: int,
    n_sequences: int,
    seq_len: int,
    d_model: int,
    shard_tokens: int,
    chunk_tokens: int,
    per_token_layers: dict[str, tuple[int, ...]],
    final: bool,
    pattern_layers: tuple[int, ...],
    heads: tuple[int, ...],
    dtype: str = "float16",
    sequence_layers: dict[str, tuple[int, ...]] | None = None,
    widths: dict[str, int] | None = None,
) -> list[ArraySpec]:
    """Specs of every array a capture produces.

    Per-token arrays chunk one layer at a time (a reader training on one layer
    decodes only that layer) and shard on ``shard_tokens`` rows, the plan's
    unit. Attention shards one sequence per file, so a shard's sequences are
    its own files whatever their count. ``sequence_layers``: a T5 store's other per-sequence
    arrays by name (SEQUENCE_AXES: cross_pattern, score, content, position_bias, cross_score),
    laid out like ``pattern``; a decoder store's cross-attention is [pair, layer, head, decoder
    query, encoder key] (both stacks' inputs are cut to ``seq_len``). ``widths``: a per-token
    array's last axis where it is not ``d_model`` (a router's logits: one per expert).
    """
    chunk = chunk_tokens  # divides shard_tokens (plan.shard_tokens_for)
    specs = []
    for name, layers in per_token_layers.items():
        width = (widths or {}).get(name, d_model)
        last = "expert" if name == "router_logits" else "d_model"
        specs.append(
            ArraySpec(
                name, "activations", (n_tokens, len(layers), width), ("token", layer_dim(name), last),
                chunks=(chunk, 1, width), shards=(shard_tokens, len(layers), width), dtype=dtype,
                attributes={"layers": list(layers), "layer_axis": _LAYER_AXIS[name]},
            )
        )
    if final:
        specs.append(
            ArraySpec(
                "final", "activations", (n_tokens, d_model), ("token", "d_model"),
                chunks=(chunk, d_model), shards=(shard_tokens, d_model), dtype=dtype,
            )
        )
    for name, layers in {"pattern": pattern_layers, **(sequence_layers or {})}.items():
        if layers:
            n_l, n_h = len(layers), len(heads)
            layer_axis, meaning = SEQUENCE_AXES[name]
            specs.append(
                ArraySpec(
                    name, "attention", (n_sequences, n_l, n_h, seq_len, seq_len),
                    ("seq", layer_axis, "head", "query", "key"),
                    chunks=(1, 1, n_h, seq_len, seq_len), shards=(1, n_l, n_h, seq_len, seq_len), dtype=dtype,
                    attributes={"layers": list(layers), "heads": list(heads), "values": meaning},
                )
            )
    return specs


# Per-sequence site kind -> its capture buffer and store array [seq, layer, head, query, key]
# (attn_pattern is the store's ``pattern``; the score terms are a T5 store's, docs/seq2seq.md).
SEQUENCE_ARRAYS = {"attn_pattern": "pattern", "cross_pattern": "cross_pattern", "attn_score": "score",
                   "attn_content": "content", "attn_bias": "position_bias", "cross_score": "cross_score"}
# The kinds whose keys are the encoder's inputs (a T5 decoder's cross-attention), not the sequence's own tokens.
CROSS_KINDS = ("cross_pattern", "cross_score")
# Per-sequence arrays: the dimension name of the layer axis, and what the values are.
_UNSEEN = "; 0 where the query does not see the key and past the sequence's end"
SEQUENCE_AXES = {
    "pattern": ("layer", "attention probabilities: softmax of the score over the keys" + _UNSEEN),
    "cross_pattern": ("cross_layer", "cross-attention probabilities, decoder queries over the encoder's inputs"
                      + _UNSEEN),
    "score": ("score_layer", "pre-softmax score: content + position_bias" + _UNSEEN),
    "content": ("content_layer", "content term of the score: q·k times the attention's scaling (1 in T5)" + _UNSEEN),
    "position_bias": ("bias_layer", "learned relative position bias of the score at offset key - query" + _UNSEEN),
    "cross_score": ("cross_score_layer", "cross-attention pre-softmax score: q·k (no position bias)" + _UNSEEN),
}


def coordinates(specs: list[ArraySpec]) -> dict[str, dict[str, list[int]]]:
    """Coordinate arrays per group: each layer or head axis labelled with the indices it holds,
    so ``xarray.open_zarr(...).resid.sel(layer=7)`` means residual index 7, not position 7."""
    coords: dict[str, dict[str, list[int]]] = {}
    for spec in specs:
        group = coords.setdefault(spec.group, {})
        for dim in spec.dims:
            if dim == "head":
                group[dim] = list(spec.attributes["heads"])
            elif dim.endswith("layer"):
                group[dim] = list(spec.attributes["layers"])
    return coords


_LAYER_AXIS = {
    "resid": "residual index: 0 = embeddings (resid_pre.0), i = output of block i-1 (resid_post.{i-1})",
    "resid_mid": "block index: after the block's attention, before its MLP",
    "resid_cross": "block index: after the block's cross-attention, before its MLP (a T5 decoder)",
    "attn_out": "block index: what the block's attention adds to the residual stream",
    "mlp_out": "block index: what the block's MLP adds to the residual stream",
    "router_logits": "block index: the block's mixture-of-experts router, one logit per expert (its top "
                     "num_experts_per_tok are the experts the token is sent to)",
}
