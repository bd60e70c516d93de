"""Build a report: every figure the statistics allow, then the page that shows them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from embwalk.report import figures as F
from embwalk.report.data import load_document, load_report_data
from embwalk.report.html import write_page
from embwalk.report.options import ReportOptions
from embwalk.report.vocab import load_vocabulary

log = logging.getLogger(__name__)

REPORT_DIR = "report"


def build_report(store: str | Path, options: ReportOptions | None = None, loaded=None) -> Path:
    """Write the figures and ``index.html`` for the store's statistics; returns the page's path."""
    opts = options or ReportOptions()
    data = load_report_data(store)
    out = Path(opts.out).expanduser() if opts.out else data.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    doc = load_document(data, opts.doc, opts.max_tokens)
    vocab = load_vocabulary(data.store, loaded) if opts.labels and doc is not None else None
    # figure: (what it needs, for the reason shown when it is missing; how it is drawn)
    makers = {
        "encoding": ("encoding", lambda: F.fig_encoding(data, out)),
        "logit_lens": ("logit_lens", lambda: F.fig_logit_lens(data, out)),
        "position_kernels": ("attention", lambda: F.fig_kernels(data, out, opts.max_offset)),
        "self_bias": ("attention", lambda: F.fig_self_bias(data, out)),
        "sink": ("attention", lambda: F.fig_sink(data, out)),
        "geometry": ("geometry", lambda: F.fig_geometry(data, out)),
        "trajectory": ("the store's resid (or a sample kept by the statistics)",
                       lambda: F.fig_trajectory(doc, vocab, out, opts.walks)),
        "similarity": ("the same", lambda: F.fig_similarity(doc, out)),
        "decoding": ("decoding", lambda: F.fig_decoding(data, out)),
    }
    skipped = data.summary.get("skipped", {})  # family: why the statistics left it out
    figures, missing = [], {}
    for name, (needs, make) in makers.items():
        fig = make()
        if fig is None:
            missing[name] = skipped.get(needs, f"needs {needs}, not computed")
            (out / f"{name}.png").unlink(missing_ok=True)  # never show a stale figure
        else:
            figures.append(fig)
    s = data.summary
    m = data.store.manifest
    facts = [
        ("store", str(data.root.resolve())),
        ("model", f"{m['model']['id']} ({m['model']['n_layers']} layers, d_model {m['model']['d_model']})"),
        ("corpus", f"{s['n_tokens']} tokens, {s['n_sequences']} sequences ({m['mode']} mode, seq_len {m['seq_len']})"),
        ("statistics", ", ".join(f"{f} ({n} shards)" for f, n in sorted(s["families"].items()))),
        ("written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    page = out / "index.html"
    write_page(page, f"embwalk report: {Path(data.root).name}", facts, figures, missing, s)
    return page
