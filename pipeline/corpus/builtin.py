"""Built-in corpora: real text that is on every machine, so a run needs no data download.

``stdlib_docstrings`` is the docstrings of the Python standard library, read
with ``ast`` from the installed sources. Nothing is imported (some stdlib
modules act on import: ``antigravity`` opens a browser, ``this`` prints) and
nothing is cached on disk. The text depends on the Python version, which the
store's manifest records with the other package versions.
"""

from __future__ import annotations

import ast
import gc
import os
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

# Test suites and vendored or tool code are not the library's prose.
SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "ensurepip", "__pycache__"}
)
# Shorter docstrings are mostly one-liners ("Return the foo."): little context per token.
MIN_DOC_CHARS = 200

_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Docstrings sit only in statement bodies; skipping expression subtrees keeps the walk fast.
_BLOCKS = (ast.stmt, ast.excepthandler, ast.match_case)


def stdlib_docstrings(files: slice = slice(None)) -> Iterator[tuple[str, str]]:
    """Yield ``(source, docstring)`` for the stdlib, e.g. ``json/__init__.py:JSONEncoder.encode``.

    Files in sorted relative-path order (``files`` picks a range of them: a part
    of the corpus); in each file the module docstring, then classes and
    functions (nested ones too) in source order.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    for rel in _stdlib_sources(root)[files]:
        yield from _file_docstrings(root, rel)


def stdlib_file_count() -> int:
    """How many source files ``stdlib_docstrings`` reads (parts of the built-in corpus are ranges of them)."""
    return len(_stdlib_sources(Path(sysconfig.get_paths()["stdlib"])))


def _file_docstrings(root: Path, rel: str) -> list[tuple[str, str]]:
    # ast.parse allocates millions of nodes; in a process that has imported torch and
    # transformers the cyclic GC then runs often over a big heap and doubles the time.
    # Syntax trees hold no reference cycles, so pausing the GC here leaks nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for odd escapes
            tree = ast.parse((root / rel).read_bytes(), filename=rel)
        return list(_docstrings(tree, rel))
    except (SyntaxError, ValueError, OSError):
        return []  # e.g. a file for another Python version: not worth failing a run
    finally:
        if gc_was_enabled:
            gc.enable()


def _stdlib_sources(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        found.extend((rel_dir / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(found)


def _docstrings(tree: ast.Module, rel: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(tree, clean=True)  # clean=True is inspect.cleandoc
    if doc and len(doc) >= MIN_DOC_CHARS:
        yield rel, doc
    yield from _walk(tree, rel, "")


def _walk(node: ast.AST, rel: str, prefix: str) -> Iterator[tuple[str, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFS):
            qualname = prefix + child.name
            doc = ast.get_docstring(child, clean=True)
            if doc and len(doc) >= MIN_DOC_CHARS:
                yield f"{rel}:{qualname}", doc
            yield from _walk(child, rel, qualname + ".")
        elif isinstance(child, _BLOCKS):
            yield from _walk(child, rel, prefix)


# name -> (read the documents of a range of its files, how many files it has)
BUILTIN_CORPORA: dict[str, tuple[Callable[[slice], Iterator[tuple[str, str]]], Callable[[], int]]] = {
    "stdlib_docstrings": (stdlib_docstrings, stdlib_file_count),
}
