"""One self-contained HTML page: headings, captions and <img> tags to the PNGs beside it."""

from __future__ import annotations

import html
import json
from pathlib import Path

from embwalk.report.figures import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; border: 1px solid #eee; } p.caption { color: #444; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 2px 10px; text-align: left; }
code, pre { background: #f5f5f5; padding: 1px 4px; } .missing { color: #999; }
"""


def write_page(path: Path, title: str, facts: list[tuple[str, str]], figures: list[Figure],
               missing: dict[str, str], summary: dict) -> None:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", "<table>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts]
    parts.append("</table>")
    for fig in figures:
        parts += [f"<h2 id='{fig.name}'>{html.escape(fig.title)}</h2>",
                  f"<p class='caption'>{html.escape(fig.caption)}</p>",
                  f"<img src='{fig.name}.png' alt='{html.escape(fig.title)}'>"]
    if missing:
        parts.append("<h2>Not shown</h2><ul>")
        parts += [f"<li class='missing'>{html.escape(k)}: {html.escape(v)}</li>" for k, v in missing.items()]
        parts.append("</ul>")
    parts += ["<h2>Summary (stats/summary.json)</h2>",
              f"<pre>{html.escape(json.dumps(summary, indent=1)[:20000])}</pre>", "</body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")
