"""Tables as aligned text for a terminal: token text quoted so spaces and newlines show."""

from __future__ import annotations

import pyarrow as pa


def format_table(table: pa.Table, max_rows: int = 20, total: int | None = None) -> str:
    """The first ``max_rows`` rows; ``total`` is the full count when ``table`` is already a slice."""
    n = table.num_rows if total is None else total
    columns = table.column_names
    head = table.slice(0, max(0, max_rows)).to_pylist()
    cells = [[_cell(row[c]) for c in columns] for row in head]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    if n > len(head):
        lines.append(f"... {n - len(head)} more rows ({n} in all)")
    else:
        lines.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} values]"
    return str(value)
