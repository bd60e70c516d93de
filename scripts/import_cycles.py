"""Print the import cycles between the modules of pipeline/ (none expected): ``python scripts/import_cycles.py``.

Every import counts: at module level, under ``TYPE_CHECKING`` and inside
functions, because a function-local import that closes a circle only hides it.
Exit status 1 when there is a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "embwalk"  # installed name of the checkout's pipeline/ folder (pyproject.toml)
FOLDER = "pipeline"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT / FOLDER).with_suffix("").parts)
    return ".".join([PACKAGE] + (parts[:-1] if parts[-1] == "__init__" else parts))


def imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of the package that ``path`` imports (a package's ``__init__`` counts for
    ``from package import name`` only when ``name`` is not a module of it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif node.module in modules:
                    found.add(node.module)
    # Importing a.b.c first runs a/__init__ and a/b/__init__: edges to those packages too,
    # except the importer's own packages (they are initialised before the importer runs).
    me = module_name(path)
    own = {me.rsplit(".", k)[0] for k in range(1, me.count(".") + 1)}
    for name in list(found):
        parts = name.split(".")
        found |= {p for p in (".".join(parts[:k]) for k in range(1, len(parts))) if p in modules} - own
    found.discard(me)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted((ROOT / FOLDER).rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    found = cycles(graph())
    for component in found:
        print("cycle: " + " <-> ".join(component))
    if not found:
        print(f"no import cycles among the modules of {PACKAGE} ({FOLDER}/)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
