"""One self-contained HTML page: headings, captions and <img> tags to the PNGs beside it."""

from __future__ import annotations

import html
from pathlib import Path

from embwalk.report.figures import Figure
from embwalk.report.summary import Compared, Row

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; border: 1px solid #eee; } p.caption { color: #444; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 2px 10px; text-align: left; }
table.summary td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary tr:nth-child(even) { background: #fafafa; } td.yes { color: #176d2c; } td.no { color: #b3261e; }
code, pre { background: #f5f5f5; padding: 1px 4px; } .missing { color: #999; }
"""


def _cell(text: str, cls: str = "") -> str:
    return f"<td class='{cls}'>{html.escape(text)}</td>" if cls else f"<td>{html.escape(text)}</td>"


def summary_table(rows: list[Row] | list[Compared], columns: tuple[str, ...]) -> list[str]:
    """The compact summary: one value column per statistics directory, and with two a verdict."""
    e = html.escape
    head = "<tr><th>headline</th>" + "".join(f"<th>{e(c)}</th>" for c in columns)
    head += "<th>survives</th></tr>" if len(columns) > 1 else "</tr>"
    parts = ["<table class='summary'>", head]
    for r in rows:
        if isinstance(r, Compared):
            verdict = r.verdict_text()
            other = Row(r.row.key, r.row.label, r.other, r.row.finding, r.row.fmt).text()
            parts.append("<tr>" + _cell(r.row.label) + _cell(r.row.text(), "num") + _cell(other, "num")
                         + _cell(verdict, verdict) + "</tr>")
        else:
            parts.append("<tr>" + _cell(r.label) + _cell(r.text(), "num") + "</tr>")
    parts.append("</table>")
    return parts


def write_page(path: Path, title: str, facts: list[tuple[str, str]], figures: list[Figure],
               missing: dict[str, str], summary: list[Row] | list[Compared], columns: tuple[str, ...] = ("stats",),
               survive_rule: str | None = None, links: list[tuple[str, str]] | None = None) -> None:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>", "<table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts]
    parts.append("</table>")
    parts.append("<h2 id='summary'>Summary</h2>")
    parts += summary_table(summary, columns)
    if survive_rule:
        parts.append(f"<p class='caption'>{e(survive_rule)}</p>")
    if links:
        parts.append("<p class='caption'>The statistics' full summary (JSON): "
                     + ", ".join(f"<a href='{e(href)}'>{e(name)}</a>" for name, href in links) + ".</p>")
    for fig in figures:
        parts += [f"<h2 id='{fig.name}'>{e(fig.title)}</h2>",
                  f"<p class='caption'>{e(fig.caption)}</p>",
                  f"<img src='{fig.name}.png' alt='{e(fig.title)}'>"]
        if fig.table:
            parts.append(fig.table)
    if missing:
        parts.append("<h2>Not shown</h2><ul>")
        parts += [f"<li class='missing'>{e(k)}: {e(v)}</li>" for k, v in missing.items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
