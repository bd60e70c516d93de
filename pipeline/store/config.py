"""The store's options (the Hydra ``store`` group): where, in what dtype, cut how, checked how."""

from __future__ import annotations

from dataclasses import dataclass

from embwalk.errors import EmbwalkError

DTYPES = ("float16", "float32")  # bfloat16 is not a Zarr v3 data type
COMPRESSORS = ("none", "zstd")
VERIFY_LEVELS = ("quick", "full")


@dataclass
class StoreConfig:
    """Where the store goes and how it is cut, stored and checked."""

    path: str = "stores/default"  # a directory or an fsspec URL
    dtype: str = "float16"  # float16 | float32
    shard_tokens: int = 4096  # the unit of scheduling, writing, commit and retry
    chunk_tokens: int = 256  # rows per Zarr chunk (what a reader decodes at once)
    compressor: str = "none"  # none | zstd
    verify: str = "quick"  # how a rerun checks committed shards before skipping them: quick | full

    def validate(self) -> None:
        """Raise one line for an option value the store cannot honour."""
        if self.dtype not in DTYPES:
            raise EmbwalkError(f"unknown store.dtype {self.dtype!r}; choose float16 or float32")
        check_compressor(self.compressor)
        check_level(self.verify)


def check_compressor(compressor: str) -> str:
    if compressor not in COMPRESSORS:
        raise EmbwalkError(f"unknown store.compressor {compressor!r}; choose one of {', '.join(COMPRESSORS)}")
    return compressor


def check_level(level: str) -> str:
    if level not in VERIFY_LEVELS:
        raise EmbwalkError(f"unknown store.verify {level!r}; choose quick or full")
    return level
