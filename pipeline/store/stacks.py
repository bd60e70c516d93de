"""A two-stack store: an encoder-decoder model's encoder tokens and decoder tokens in one directory.

    STORE/manifest.json    {"format": "embwalk-two-stack-store", "stacks": {"enc": "encoder", "dec": "decoder"}, ...}
    STORE/encoder/         a store (docs/store-format.md) whose token axis is the encoder's tokens
    STORE/decoder/         a store whose token axis is the decoder's tokens (pairs, or inputs alone)

Each stack's store is a whole store of format version 2, written, committed, verified and read
as any other: query, dataset, xarray and the statistics work on either unchanged. The pair id
links them: sequence s of one (``seq_id`` in its token table, and its attention's seq axis) is
the same record as sequence s of the other (one pair per sequence, document mode). The stacks
are two token axes cut into shards of their own rows, so each is its own job
(pipeline/extraction/stacks.py); this manifest only names them.
"""

from __future__ import annotations

import json

from embwalk.errors import StoreError
from embwalk.store import layout
from embwalk.store.fs import StoreFS, open_fs

TWO_STACK_FORMAT = "embwalk-two-stack-store"
STACK_DIRS = {"enc": "encoder", "dec": "decoder"}


def stack_store_path(location: str, stack: str) -> str:
    """Where a two-stack store at ``location`` (a path or URL) keeps ``stack``'s store."""
    return f"{str(location).rstrip('/')}/{STACK_DIRS[stack]}"


def is_two_stack(manifest: dict) -> bool:
    return manifest.get("format") == TWO_STACK_FORMAT


def two_stack_error(location: str) -> StoreError:
    """What a reader of one store says when handed a two-stack store's root."""
    enc, dec = (stack_store_path(location, s) for s in ("enc", "dec"))
    return StoreError(f"{location} is a two-stack store (an encoder-decoder model's encoder and decoder tokens); "
                      f"read one of its stacks: {enc} or {dec}")


def read_stacks(store: StoreFS | str, storage_options: dict | None = None) -> dict[str, str] | None:
    """``{"enc": location, "dec": location}`` of a two-stack store; None for anything else."""
    fs = open_fs(store, storage_options)
    if not fs.is_file(layout.MANIFEST):
        return None
    try:
        manifest = json.loads(fs.read_bytes(layout.MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not is_two_stack(manifest):
        return None
    return {stack: stack_store_path(fs.location, stack) for stack in manifest["stacks"]}


def stack_manifest(config: dict) -> dict:
    """The root manifest of a two-stack store written by the job of ``config`` (its options)."""
    return {
        "format": TWO_STACK_FORMAT,
        "format_version": layout.FORMAT_VERSION,
        "stacks": dict(STACK_DIRS),
        "pair_id": "seq_id: sequence s of either stack's store is record s of the corpus",
        "config": config,
    }
