"""Build a report: every figure the statistics allow, then the page that shows them."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from embwalk.errors import EmbwalkError
from embwalk.report import figures as F
from embwalk.report.data import ReportData, has_generation, load_document, load_generation_data, load_report_data
from embwalk.report.html import write_page
from embwalk.report.options import ReportOptions
from embwalk.report.summary import Row, compare_rows, headline_rows, survive_caption
from embwalk.report.vocab import load_vocabulary
from embwalk.stats.partials import STATS

log = logging.getLogger(__name__)

REPORT_DIR = "report"
SUMMARY_FILE = "summary.json"


def report_dir(root: Path, stats: str = STATS) -> Path:
    """The default place of a report: STORE/report, or STORE/report-<stats> for another statistics directory."""
    return root / (REPORT_DIR if stats == STATS else f"{REPORT_DIR}-{stats}")


def build_report(store: str | Path, options: ReportOptions | None = None, loaded=None) -> Path:
    """Write the figures and ``index.html`` for the store's statistics (``options.stats``, and
    ``options.compare`` beside them; ``options.stores``: other generation stores beside this one
    in strategies.png); returns the page's path."""
    opts = options or ReportOptions()
    opts.validate()
    data = load_report_data(store, opts.stats)
    cmp = _compared(data, opts)
    stores = strategy_stores(data, opts)  # [] without report.stores; fails in one line before drawing
    out = Path(opts.out).expanduser() if opts.out else report_dir(data.root, opts.stats)
    out.mkdir(parents=True, exist_ok=True)
    doc = load_document(data, opts.doc, opts.max_tokens)
    vocab = load_vocabulary(data.store, loaded) if opts.labels and doc is not None else None
    if doc is not None and not doc.tokens and vocab is not None:  # the sample keeps ids only
        doc.tokens = [vocab.tokens[int(i)] if int(i) < len(vocab.tokens) else f"<{int(i)}>" for i in doc.token_ids]
    # figure: (what it needs, for the reason shown when it is missing; how it is drawn)
    makers = {}
    if "generation" in data.store.manifest:  # a generation store (embwalk generate): its continuations first
        makers["generation"] = ("generation", lambda: F.fig_generation(data, out))
    if stores:
        makers["strategies"] = ("generation", lambda: _strategies(stores, out))
    # a learned relative position bias (T5 family): drawn from its weights' table, beside the measured kernels
    learned = {"position_kernel": ("the model's position bias", lambda: F.fig_position_bias(data, out))}
    shares = {"bias_share": ("bias_share", lambda: F.fig_bias_share(data, out))}
    skipped = data.summary.get("skipped", {})  # family: why the statistics left it out
    makers |= {
        "encoding": ("encoding", lambda: F.fig_encoding(data, out, cmp)),
        "logit_lens": ("logit_lens", lambda: F.fig_logit_lens(data, out, cmp)),
        **(learned if "position_kernel" in data.tables else {}),
        "position_kernels": ("attention", lambda: F.fig_kernels(data, out, opts.max_offset)),
        **(shares if "bias_share" in data.tables or "bias_share" in skipped else {}),
        "self_bias": ("attention", lambda: F.fig_self_bias(data, out)),
        "sink": ("attention", lambda: F.fig_sink(data, out, cmp)),
        "geometry": ("geometry", lambda: F.fig_geometry(data, out, cmp)),
        "trajectory": ("the store's resid (or a sample kept by the statistics)",
                       lambda: F.fig_trajectory(doc, vocab, out, opts.walks)),
        "similarity": ("the same", lambda: F.fig_similarity(doc, out)),
        "decoding": ("decoding", lambda: F.fig_decoding(data, out)),
    }
    if not stores:  # never a stale comparison from an earlier report.stores
        for suffix in (".png", ".csv"):
            (out / f"{F.STRATEGIES_FILE}{suffix}").unlink(missing_ok=True)
    for name in ("generation", "position_kernel", "bias_share"):  # figures of other kinds of store: never stale
        if name not in makers:
            (out / f"{name}.png").unlink(missing_ok=True)
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
    ]
    if "generation" in m:
        facts.append(("generation", f"{F.prompts_text(data)}; {F.decode_text(F.decode_options(data))}"))
    facts.append(("statistics", f"{data.label}: " + ", ".join(
        f"{f} ({n} shards)" for f, n in sorted(s["families"].items()))))
    if len(stores) > 1:
        facts.append(("compared stores", "; ".join(
            f"{d.root.resolve()} ({F.decode_label(F.decode_options(d))})" for d in stores[1:])))
    if cmp is not None:
        facts.append(("compared with", f"{cmp.label}: " + ", ".join(
            f"{f} ({n} shards)" for f, n in sorted(cmp.summary["families"].items()))))
    facts.append(("written", time.strftime("%Y-%m-%d %H:%M:%S")))
    mine = _headline(data)
    table = mine if cmp is None else compare_rows(mine, _headline(cmp), opts.survive_factor,
                                                  data.summary.get("skipped"), cmp.summary.get("skipped"))
    links = [(f"{d.name}/{SUMMARY_FILE}", _href(d.root / d.name / SUMMARY_FILE, out)) for d in (data, cmp) if d]
    page = out / "index.html"
    title = f"embwalk report: {Path(data.root).name}" + (f" ({data.name})" if data.name != STATS else "")
    write_page(page, title, facts, figures, missing, table,
               columns=(data.label, cmp.label) if cmp is not None else (data.label,),
               survive_rule=survive_caption(opts.survive_factor) if cmp is not None else None, links=links)
    return page


def _compared(data: ReportData, opts: ReportOptions) -> ReportData | None:
    """The statistics drawn beside this store's: ``report.compare`` of this store, or of
    ``report.compare_store`` (its ``stats`` by default), named by store and model in legends."""
    if opts.compare_store is None:
        return load_report_data(data.root, opts.compare) if opts.compare else None
    other = load_report_data(opts.compare_store, opts.compare or STATS)
    if other.root.resolve() == data.root.resolve() and other.name == data.name:
        raise EmbwalkError(f"report.compare_store={opts.compare_store} is this store and these statistics: "
                           "name report.compare=NAME for another statistics directory of it")
    same_name = other.root.name == data.root.name
    for run in (data, other):  # legends name both stores: by directory (and its parent where both agree) and model
        name = f"{run.root.parent.name}/{run.root.name}" if same_name else run.root.name
        run.origin = f"{name} ({run.store.manifest.get('model', {}).get('id', '?')})"
    return other


def strategy_stores(data: ReportData, opts: ReportOptions) -> list[ReportData]:
    """With ``report.stores``: this store and the others (each once, in the given order), every
    one with its generation statistics in ``<report.stats>``; else []. A store without them is a
    one-line StoreError naming it and the stats command that computes them."""
    if not opts.stores:
        return []
    if not has_generation(data):
        load_generation_data(data.root, opts.stats, role="report.stores compares generation stores: this store")
    seen = {data.root.resolve()}
    stores = [data]
    for path in opts.stores:
        other = load_generation_data(path, opts.stats)
        if other.root.resolve() not in seen:
            seen.add(other.root.resolve())
            stores.append(other)
    if len(stores) == 1:
        log.warning("report.stores names only this store: the strategies figure shows it alone")
    return stores


def _strategies(stores: list[ReportData], out: Path) -> F.Figure:
    """strategies.png, with the stores' numbers as a table under it."""
    fig, rows = F.fig_strategies(stores, out)
    return dataclasses.replace(fig, table=F.strategies_table(rows))


def _headline(data: ReportData) -> list[Row]:
    """The summary table's rows: the headline numbers, a generation store's before the last
    (context) row of the skipped families."""
    rows = headline_rows(data)
    return rows[:-1] + F.generation_rows(data) + rows[-1:]


def _href(target: Path, page_dir: Path) -> str:
    """A link from the page's directory to ``target``: relative where it can be."""
    try:
        return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()
    except ValueError:  # another drive
        return target.resolve().as_uri()
