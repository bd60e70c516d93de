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
import importlib.util
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from embwalk.errors import EmbwalkError

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


def conf_dir() -> Path:
    """The Hydra config files: the installed package's ``embwalk/conf``, or a checkout's ``conf/``."""
    spec = importlib.util.find_spec("embwalk.conf")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "conf"


def option_groups(job: str) -> dict[str, list[str]]:
    """The presets of each config group the job's YAML file chooses from (``model: [hub, minilm, ...]``)."""
    root = conf_dir()
    text = (root / f"{job}.yaml").read_text()
    groups = re.findall(r"^\s+-\s+(\w+):", text, flags=re.M)
    return {g: sorted(p.stem for p in (root / g).glob("*.yaml")) for g in groups if (root / g).is_dir()}


def describe_options(cls: type) -> list[tuple[str, Any, str, type | None]]:
    """(key, default, its comment in the source, the section's dataclass or None) per field of ``cls``:
    what a job's ``--help`` prints, read from the dataclass without importing anything heavy."""
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        section = _dataclass_of(hints[f.name])
        if section is not None:
            out.append((f.name, None, comments.get(f.name) or _summary(section), section))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        out.append((f.name, _yaml(default), comments.get(f.name, ""), None))
    return out


def _summary(cls: type) -> str:
    """The first line of a class's own docstring (a dataclass without one gets its signature)."""
    doc = (cls.__doc__ or "").strip()
    return "" if not doc or doc.startswith(cls.__name__ + "(") else doc.splitlines()[0].rstrip(".")


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` -> {name: comment}, from the class's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip()
    return found


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)
