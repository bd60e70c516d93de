"""Package attributes imported on first use, so that importing a package (or a light module in
it, such as its config) does not import torch, pyarrow or transformers."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_attributes(
    package: str, modules: dict[str, list[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``modules`` maps each module to the names it
    defines (a module name relative to ``package`` starts with a dot)."""
    where = {name: (package + module if module.startswith(".") else module)
             for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
