"""One way to build any job's config from plain data: dataclasses, unknown keys rejected.

Every component keeps its options in a small dataclass beside its code
(``ModelConfig`` in models/config.py, ``CorpusConfig`` in corpus/config.py,
``StoreConfig``, ``ClusterConfig``, ``StatsOptions`` ...), and a job's config is
a dataclass of those (``ExtractConfig`` in extract/config.py). ``from_dict``
builds one from what Hydra resolved (or a test wrote), section by section, and
names the first unknown key in one line with the closest known one. The same
dataclasses are Hydra's schemas (``register_schemas``), so the YAML files in
conf/ hold only what differs from these defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

from pipeline.errors import EmbwalkError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict | None, section: str = "") -> T:
    """``cls`` built from ``data``; nested dataclass fields from nested dicts.

    ``section`` names where ``data`` sits (``store``, ``capture.stats``) for the
    error message. Values are not converted: each dataclass checks its own.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise EmbwalkError(f"{section or cls.__name__} must be a mapping of options, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise EmbwalkError(unknown_message(section, unknown, known))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        nested = _dataclass_of(hints[name])
        if nested is not None and value is not None:
            value = from_dict(nested, value, f"{section}.{name}" if section else name)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise EmbwalkError(f"bad {section or cls.__name__} options: {exc}") from exc


def unknown_message(section: str, unknown: list[str], known) -> str:
    """``unknown store option(s): shard_tokns (did you mean shard_tokens?)``."""
    where = f"{section} " if section else ""
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return f"unknown {where}option(s): {', '.join(named)}; known: {', '.join(sorted(known))}"


def to_dict(config) -> dict:
    """Plain data (JSON and YAML ready) of a config dataclass."""
    return dataclasses.asdict(config)


def _dataclass_of(hint) -> type | None:
    """The dataclass in ``X`` or ``X | None`` (None for anything else)."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None
