"""The report's figures, one function each: ``fig_*(data, out, ...) -> Figure | None``.

Each reads the merged statistics tables (merge_store_stats, pipeline/stats/partials.py) and
writes one PNG; it returns None when the statistics it needs were not computed (build.py
shows why: the summary's ``skipped`` reason), so a report of a partial run still shows
everything it can. The layer-wise figures take a second statistics directory of the same
store (``cmp``) and draw its medians dashed over this run's.

Two layer axes, named on every figure: the *residual index* of the residual families
(encoding, logit_lens, geometry: 0 = embeddings, l = output of block l-1, L = the last
block's output) and the *attention layer* of the attention tables (block L, whose input is
residual index L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, to_rgb  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from embwalk.report.data import Document, ReportData  # noqa: E402
from embwalk.report.vocab import Vocabulary  # noqa: E402

DPI = 110
RESID = "residual index (0 = embeddings, L = last block's output)"
ATTN = "attention layer (block) L, reads residual L"
SINK_EPSILON = 0.3  # the headline attention-sink threshold (Gu et al. 2024; stats/partials.py)
UNRESOLVED = dict(facecolor="none", edgecolor="0.55", hatch="///", lw=0)  # below/above the bins


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str  # how to read it, and what it shows on this run


def _save(fig, out: Path, name: str) -> None:
    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _finish(ax, title: str, xlabel: str = RESID, ylabel: str | None = None, legend: bool = True) -> None:
    """The finish every line plot by layer shares: title, axis labels, light grid, small legend."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def _dark(color: str) -> tuple[float, float, float]:
    """A darker shade of ``color``: the compared run's dashed line stays visible on top of this
    run's solid one where the two agree."""
    return tuple(0.55 * v for v in to_rgb(color))


def _run_legend(fig, data: ReportData, cmp: ReportData | None) -> None:
    """With a compared run: one legend above the figure for the line styles (solid: this run,
    dashed: the compared one), naming each statistics directory and its exclusion options; the
    panels' legends name the quantities."""
    if cmp is None:
        return
    handles = [Line2D([], [], color="k", lw=1.5), Line2D([], [], color="k", lw=1.3, ls="--")]
    top = max(ax.get_position().y1 for ax in fig.axes) + 0.04  # above the panels' titles
    fig.legend(handles, [f"solid: {data.label}", f"dashed: {cmp.label}"], loc="lower center",
               bbox_to_anchor=(0.5, top), ncol=2, fontsize=9, frameon=False)


# ---------------------------------------------------------------------------------------------
# Binned quantiles and what is known of them

@dataclass
class Quantiles:
    """A binned stat's quartiles by layer, and where each lies against the histogram's range:
    ``side[q]`` is -1 where quantile q fell in the underflow bin (the table's number is then an
    upper bound: the first edge, or the group's largest value when that is below it), +1 in the
    overflow bin (a lower bound), 0 inside the bins (a value to within one bin). ``exact``:
    every value of the layer is the same (std 0), so its quantiles are that value, bins or not."""

    layer: np.ndarray
    values: dict[str, np.ndarray]  # q25, median, q75 as the table has them
    side: dict[str, np.ndarray]
    exact: np.ndarray
    lo_edge: float | None  # the first and last finite bin edges
    hi_edge: float | None

    def known(self, q: str) -> np.ndarray:
        """Quantile ``q`` where it is a value (inside the bins, or exact), NaN where a bound."""
        return np.where((self.side[q] == 0) | self.exact, self.values[q], np.nan)

    def bounded(self, q: str, side: int) -> np.ndarray:
        """Where quantile ``q`` is only bounded on ``side`` (-1 below the first edge, +1 above
        the last): a boolean mask over the layers."""
        return (self.side[q] == side) & ~self.exact


def quantiles(data: ReportData, table: str, stat: str) -> Quantiles | None:
    r = data.rows(table, stat=stat)
    if not r:
        return None
    layer = r["layer"] if "layer" in r else np.zeros(len(r["count"]), np.int64)
    values, side = {}, {}
    for q, level in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        sides = data.quantile_side(table, stat, level)
        values[q] = r[q].astype(np.float64)
        side[q] = np.array([sides.get(int(v), 0) for v in layer], np.int64)
    exact = (r["count"] > 0) & (r["std"] == 0)
    return Quantiles(layer, values, side, exact, data.hist_edge(table, stat, -1), data.hist_edge(table, stat, +1))


def _quantile_band(ax, q: Quantiles, color: str, label: str, shift: float = 0.0, log: bool = False) -> list:
    """Median line and quartile band where they are values; open triangles at the edge where a
    quantile is only a bound (pointing away: below the first edge / above the last), over a
    hatched band beyond the edge. Exact zeros cannot sit on a log axis: they are left out and
    returned, for the caption. Returns the layers whose median is an exact 0 on a log axis."""
    x = q.layer
    med = q.known("median") + shift
    lo = np.where(q.bounded("q25", -1), q.lo_edge if q.lo_edge is not None else np.nan, q.values["q25"]) + shift
    hi = np.where(q.bounded("q75", +1), q.hi_edge if q.hi_edge is not None else np.nan, q.values["q75"]) + shift
    zeros = []
    if log:
        zeros = [int(v) for v in x[q.exact & (q.values["median"] + shift <= 0)]]
        for arr in (med, lo, hi):
            arr[arr <= 0] = np.nan
    ax.plot(x, med, color=color, label=f"{label} median".strip())
    ax.fill_between(x, lo, hi, color=color, alpha=0.22, lw=0, label="quartiles (q25–q75)")
    for side, edge, marker in ((-1, q.lo_edge, "v"), (+1, q.hi_edge, "^")):
        any_bound = False
        for name, size in (("median", 46), ("q25", 22), ("q75", 22)):
            m = q.bounded(name, side)
            if m.any() and edge is not None:
                any_bound = True
                ax.scatter(x[m], np.full(m.sum(), edge + shift), marker=marker, s=size, facecolors="none",
                           edgecolors=color, zorder=4, lw=1.1,
                           label=f"{name} {'<' if side < 0 else '>'} {edge:.0e} (beyond the bins: a bound)")
        if any_bound:
            if side < 0:
                bottom = (edge + shift) / 100 if log else edge - 0.05 * abs(edge or 1)
                ax.axhspan(bottom, edge + shift, **UNRESOLVED, label=f"below the first bin edge {edge:.0e}: unresolved")
                ax.set_ylim(bottom=bottom)
            else:
                top = (edge + shift) * 100 if log else edge + 0.05 * abs(edge or 1)
                ax.axhspan(edge + shift, top, **UNRESOLVED, label=f"above the last bin edge {edge:.0e}: unresolved")
                ax.set_ylim(top=top)
    if log:
        ax.set_yscale("log")
    return zeros


def _bound_note(q: Quantiles, what: str) -> str:
    """Caption text: which layers' median is only a bound."""
    notes = []
    for side, edge, word in ((-1, q.lo_edge, "below"), (+1, q.hi_edge, "above")):
        m = q.bounded("median", side)
        if m.any():
            notes.append(f"the median {what} lies {word} the histogram's range ({edge:.0e}) at "
                         f"{_layers_text(q.layer[m])}: drawn as an open triangle at that edge, a bound, not a value")
    return "; ".join(notes)


def _layers_text(layers) -> str:
    layers = [int(v) for v in layers]
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"residual {layers[0]}–{layers[-1]}"
    return "residual " + ", ".join(map(str, layers))


def _overlay(ax, cmp: ReportData | None, table: str, stat: str, color: str, shift: float = 0.0,
             column: str = "median", log: bool = False) -> None:
    """The compared run's median (of a binned ``stat``) dashed, where it is a value."""
    if cmp is None:
        return
    q = quantiles(cmp, table, stat)
    if q is None:
        return
    y = q.known(column) + shift
    if log:
        y[y <= 0] = np.nan
    ax.plot(q.layer, y, color=_dark(color), ls="--", lw=1.3, zorder=5)  # named by the figure's run legend


# ---------------------------------------------------------------------------------------------

def fig_encoding(data: ReportData, out: Path, cmp: ReportData | None = None) -> Figure | None:
    panels = [("norm", "norm ‖x_l‖", "norm (log)", True),
              ("step", "step out of residual l: ‖x_{l+1} − x_l‖", "step length (log)", True),
              ("cos_last", "cos(x_l, x_L): cosine to the last residual", "cosine", False)]
    if not data.rows("encoding"):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3), gridspec_kw={"wspace": 0.28})
    notes = []
    for ax, (stat, title, ylabel, log) in zip(axes, panels, strict=True):
        q = quantiles(data, "encoding", stat)
        if q is None:
            ax.axis("off")
            continue
        _quantile_band(ax, q, "C0", "", log=log)
        _overlay(ax, cmp, "encoding", stat, "C0", log=log)
        _finish(ax, title, ylabel=ylabel, legend=ax is axes[0])
        note = _bound_note(q, stat)
        if note:
            notes.append(note)
    _run_legend(fig, data, cmp)
    _save(fig, out, "encoding")
    n = data.rows("encoding", stat="norm")
    c = data.rows("encoding", stat="cos_last")
    text = ("Median and quartiles over all tokens (from the binned histograms: within one bin) by residual index; "
            "the step panel's residual l is the step from l to l+1, the cosine panel stops at L−1. "
            f"The median norm goes from {n['median'][0]:.3g} (embeddings) to {n['median'][-1]:.3g} "
            f"(residual {int(n['layer'][-1])}); the median cosine to the last residual from "
            f"{c['median'][0]:.2f} to {c['median'][-1]:.2f} (residual {int(c['layer'][-1])}).")
    if cmp is not None:
        text += f" Dashed: the medians of {cmp.label}."
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return Figure("encoding", "Encoding walk: norm, step length and cosine to the last residual", text)


def fig_logit_lens(data: ReportData, out: Path, cmp: ReportData | None = None) -> Figure | None:
    rank = quantiles(data, "logit_lens", "rank")
    if rank is None:
        return None
    r = data.rows("logit_lens", stat="rank")
    h = data.rows("logit_lens_hist", stat="rank", bin=1)  # bin 1 = [0, 1): rank 0, the top-1 hits
    top1 = h["count"] / r["count"] if h and len(h["count"]) == len(r["count"]) else None
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6), gridspec_kw={"wspace": 0.42})
    ax = axes[0]
    x = r["layer"]
    _quantile_band(ax, rank, "C1", "rank + 1", shift=1.0, log=True)
    _overlay(ax, cmp, "logit_lens", "rank", "C1", shift=1.0, log=True)
    ax.set_ylabel("rank of the actual next token + 1 (1 = top-1)")
    handles, labels = ax.get_legend_handles_labels()
    if top1 is not None:
        tw = ax.twinx()
        tw.plot(x, top1, color="C2", ls=":", lw=1.5)
        tw.set_ylim(0, 1)
        tw.set_ylabel("top-1 accuracy (dotted)", color="C2")
        handles.append(Line2D([], [], color="C2", ls=":"))
        labels.append("top-1 accuracy (right axis)")
    _finish(ax, "next-token rank by residual index", legend=False)
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    notes = []
    prob = quantiles(data, "logit_lens", "prob")
    if prob is not None:
        _quantile_band(axes[1], prob, "C0", "p_l(next)", log=True)
        _finish(axes[1], "probability of the actual next token", ylabel="p_l(next) (log)")
        axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        if _bound_note(prob, "p_l(next)"):
            notes.append(_bound_note(prob, "p_l(next)"))
    else:
        axes[1].axis("off")
    kl = quantiles(data, "logit_lens", "kl")
    zeros: list[int] = []
    if kl is not None:
        zeros = _quantile_band(axes[2], kl, "C3", "KL", log=True)
        _finish(axes[2], "KL(p_L ‖ p_l) to the last residual's distribution", ylabel="nats (log)")
        for z in zeros:
            axes[2].annotate(f"0 at residual {z}\n(p_L itself)", (z, 0), xycoords=("data", "axes fraction"),
                             xytext=(-6, 18), textcoords="offset points", ha="right", fontsize=7, color="C3",
                             arrowprops=dict(arrowstyle="-|>", color="C3", lw=0.8))
        axes[2].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        if _bound_note(kl, "KL"):
            notes.append(_bound_note(kl, "KL"))
    else:
        axes[2].axis("off")
    _run_legend(fig, data, cmp)
    _save(fig, out, "logit_lens")
    med = r["median"]
    first_low = next((int(x[i]) for i in range(len(med)) if med[i] < 10), None)
    text = ("Every residual index decoded with the model's final norm and unembedding, "
            "p_l = softmax(W · norm(x_l) + b): "
            "median and quartiles over tokens with a next token (from binned histograms: ranks exact up to 256, "
            "within a factor of 2 above; probabilities and KL within one log bin). "
            f"Median rank falls from {med[0]:.4g} at the embeddings to {med[-1]:.4g} at residual {int(x[-1])}")
    text += f"; it first drops below 10 at residual {first_low}." if first_low is not None else "."
    if top1 is not None:
        text += f" Top-1 accuracy (the share of rank 0): {top1[0]:.2f} → {top1[-1]:.2f}."
    if zeros:
        text += (f" KL is 0 at residual {', '.join(map(str, zeros))} by definition (p_L is that layer's own "
                 "distribution): a log axis cannot show 0, so it is marked by an arrow.")
    if cmp is not None:
        text += f" Dashed: the median rank of {cmp.label}."
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return Figure("logit_lens", "Logit lens: rank, probability and KL of the next token by residual index", text)


def _kernel_grid(k: dict, keep: np.ndarray, column: str):
    """Rows (layer, head) in order, columns the kept offsets: ``column`` of the kernel table."""
    layers, heads = np.unique(k["layer"]), np.unique(k["head"])
    offsets = np.unique(k["offset"][keep])
    grid = np.full((len(layers) * len(heads), len(offsets)), np.nan)
    row = np.searchsorted(layers, k["layer"][keep]) * len(heads) + np.searchsorted(heads, k["head"][keep])
    grid[row, np.searchsorted(offsets, k["offset"][keep])] = k[column][keep]
    return layers, heads, offsets, grid


def fig_kernels(data: ReportData, out: Path, max_offset: int = 256) -> Figure | None:
    k = data.rows("attention_kernel")
    if not k:
        return None
    causal = bool((k["offset"] >= 0).all())
    # causal: offsets 0..S-1 on a log axis (offset + 1), so local heads and far offsets both show;
    # bidirectional: |offset| < max_offset / 2 on a linear axis
    keep = (k["offset"] < max_offset) if causal else (np.abs(k["offset"]) < max_offset // 2)
    has_ratio = "ratio_to_uniform" in k
    panels = [("mean_weight", "raw mean weight A[i, i − o]")]
    if has_ratio:
        panels.append(("ratio_to_uniform", "ratio to uniform attention at that offset"))
    layers, heads, offsets, _ = _kernel_grid(k, keep, "mean_weight")
    n_rows = len(layers) * len(heads)
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels), max(4.5, 0.032 * n_rows + 2)), squeeze=False)
    x_edges = (np.concatenate([offsets, [offsets[-1] + 1]]) + (0.5 if causal else -0.5))
    y_edges = np.arange(n_rows + 1) - 0.5
    for ax, (column, title) in zip(axes[0], panels, strict=True):
        _, _, _, grid = _kernel_grid(k, keep, column)
        if column == "mean_weight":
            vals = grid[np.isfinite(grid) & (grid > 0)]
            norm = LogNorm(vmin=max(float(vals.min()) if vals.size else 1e-5, 1e-5), vmax=1.0)
            cmap, label = "magma", "mean attention weight (log)"
        else:
            finite = np.abs(np.log10(grid[np.isfinite(grid) & (grid > 0)]))
            span = float(np.clip(np.percentile(finite, 99) if finite.size else 1.0, np.log10(2), 3))
            norm = LogNorm(vmin=10 ** -span, vmax=10**span)
            cmap, label = "RdBu_r", "mean weight / uniform weight (log; 1 = no preference)"
        im = ax.pcolormesh(x_edges, y_edges, np.clip(grid, norm.vmin, norm.vmax), norm=norm, cmap=cmap)
        if causal:
            ax.set_xscale("log")
        ax.set_ylim(n_rows - 0.5, -0.5)
        for b in range(1, len(layers)):
            ax.axhline(b * len(heads) - 0.5, color="w", lw=0.4)
        step = max(1, math.ceil(len(layers) / 30))
        ticks = np.arange(0, len(layers), step)
        ax.set_yticks(ticks * len(heads) + (len(heads) - 1) / 2, [str(int(layers[i])) for i in ticks], fontsize=7)
        ax.set_ylabel(f"{ATTN}; within a layer: heads {int(heads[0])}–{int(heads[-1])} top to bottom", fontsize=8)
        ax.set_xlabel("offset i − j + 1 (query − key, + 1; log scale)" if causal
                      else "offset i − j (query − key)")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.6, label=label)
    _save(fig, out, "position_kernels")
    if causal:
        text = (f"For each attention layer and head (rows) and offset o = i − j of the key behind the query, "
                f"{offsets[0]}..{offsets[-1]} (columns), the mean of A[i, j] over every visible pair at that offset, "
                "pooled over queries and sequences. Left, the raw mean: it mixes in the causal baseline (uniform "
                "attention gives a query i 1/(i+1) per key, so offsets near the sequence length, reached only by "
                "late queries, look small)")
    else:
        text = (f"For each attention layer and head (rows) and offset o = i − j (negative: the key after the query), "
                f"{offsets[0]}..{offsets[-1]} (columns), the mean of A[i, j] over every pair at that offset, pooled "
                "over queries and sequences. Left, the raw mean (uniform attention gives 1/S per key in a sequence "
                "of S tokens)")
    text += (". Right, that mean over the mean uniform weight of the same pairs (ratio of means; red: more weight "
             "than uniform, blue: less). Offset 0 is a token's own position." if has_ratio else ".")
    if 0 in _excluded(data):
        text += " Pairs with a left-out position (stats.exclude_positions, here including 0) are not counted."
    elif causal:
        text += (" The largest offsets are reached by few pairs, one per sequence with key 0 (query i = offset), "
                 "so heads that attend to position 0 light up there.")
    one = k["offset"] == 1
    if one.any():
        order = np.argsort(-k["mean_weight"][one])[:6]
        text += (" Highest mean weight on the previous token (offset 1): " + ", ".join(
            f"L{int(k['layer'][one][i])}H{int(k['head'][one][i])} ({k['mean_weight'][one][i]:.2f})" for i in order)
            + ".")
    return Figure("position_kernels", "Position kernels: raw mean weight and ratio to uniform, per layer and head",
                  text)


def _excluded(data: ReportData) -> list[int]:
    """The sequence positions these statistics left out (summary config; [] before the option)."""
    return [int(v) for v in data.summary.get("config", {}).get("exclude_positions") or []]


def _layer_head_grid(a: dict, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layers, heads = np.unique(a["layer"]), np.unique(a["head"])
    grid = np.full((len(layers), len(heads)), np.nan)
    grid[np.searchsorted(layers, a["layer"]), np.searchsorted(heads, a["head"])] = a[column]
    return layers, heads, grid


def _head_axes(ax, layers, heads) -> None:
    ax.set_xlabel("head")
    ax.set_ylabel(ATTN)
    step = max(1, math.ceil(len(layers) / 40))
    ax.set_yticks(range(0, len(layers), step), [str(int(v)) for v in layers[::step]], fontsize=7)
    ax.set_xticks(range(len(heads)), [str(int(v)) for v in heads], fontsize=7)


def fig_self_bias(data: ReportData, out: Path) -> Figure | None:
    a = data.rows("attention")
    if not a:
        return None
    baseline = float(a["uniform_baseline"][0])
    layers, heads, bias = _layer_head_grid(a, "self_bias")
    _, _, weight = _layer_head_grid(a, "self_weight")
    per_query = "self_ratio" in a
    # per query as a multiple of uniform (self_ratio); stores merged before it existed: pooled ratio
    _, _, ratio = _layer_head_grid(a, "self_ratio") if per_query else (None, None, weight / baseline)
    pooled = weight / baseline
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4.5, 0.2 * len(layers) + 1.8)),
                             gridspec_kw={"width_ratios": [1.1, 1]})
    shown = ratio[np.isfinite(ratio) & (ratio > 0)]
    span = float(np.clip(np.nanmax(np.abs(np.log10(shown))) if shown.size else 1.0, np.log10(2), 3))
    norm = LogNorm(vmin=10 ** -span, vmax=10**span)
    im = axes[0].imshow(np.clip(ratio, norm.vmin, norm.vmax), aspect="auto", cmap="RdBu_r", norm=norm,
                        interpolation="nearest")
    _head_axes(axes[0], layers, heads)
    for i, j in zip(*np.nonzero(ratio < 1), strict=True):
        axes[0].text(j, i, "−", ha="center", va="center", fontsize=7, color="k")
    name = "self_ratio = mean_i A[i,i]·n_vis(i)" if per_query else "pooled self-weight / uniform baseline"
    axes[0].set_title(f"{name}\n(× uniform; blue and '−': below 1, negative self-bias)", fontsize=10)
    fig.colorbar(im, ax=axes[0], shrink=0.8, label=f"{name.split(' =')[0]} (log; 1 = uniform)")
    ax = axes[1]
    for j in range(len(heads)):
        ax.scatter(layers, ratio[:, j], s=12, color="C0", alpha=0.7,
                   label=("per query (self_ratio), one dot per head" if per_query else "pooled ratio") if j == 0
                   else None)
        if per_query:
            ax.scatter(layers, pooled[:, j], s=14, marker="x", color="C1", alpha=0.6, lw=0.8,
                       label="pooled: self_weight / uniform_baseline" if j == 0 else None)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="1 = uniform attention")
    ax.set_yscale("log")
    _finish(ax, "self weight as a multiple of uniform, by layer", ATTN, "× uniform (log)")
    _save(fig, out, "self_bias")
    below = sorted((float(ratio[i, j]), int(layers[i]), int(heads[j])) for i, j in zip(*np.nonzero(ratio < 1),
                                                                                        strict=True))
    if per_query:
        text = ("self_ratio averages, over all queries, the weight a query puts on its own position divided by what "
                "uniform attention would put there (1/n_vis(i)), so every query counts the same; the pooled "
                "self_bias, self_weight − uniform_baseline (mean over queries of A[i, i] − mean of 1/n_vis(i)), is "
                "dominated by the first queries, whose uniform weight is large. ")
        text += (f"{len(below)} of {ratio.size} (layer, head) pairs have self_ratio < 1 (negative self-bias per "
                 f"query); {int((bias < 0).sum())} have a negative pooled self_bias (uniform baseline "
                 f"{baseline:.3f}).")
    else:
        text = (f"{len(below)} of {ratio.size} (layer, head) pairs put less weight on their own position than "
                f"uniform attention's {baseline:.3f} on average (pooled over queries; these statistics predate "
                "self_ratio).")
    if below:
        text += " Lowest: " + ", ".join(f"L{lay}H{h} ({v:.2g}x)" for v, lay, h in below[:8]) + "."
    above = np.nanmax(ratio)
    if np.isfinite(above):
        i, j = np.unravel_index(np.nanargmax(ratio), ratio.shape)
        text += f" Highest: L{int(layers[i])}H{int(heads[j])} ({above:.1f}x)."
    return Figure("self_bias", "Self-bias: weight on a token's own position against uniform attention", text)


def fig_sink(data: ReportData, out: Path, cmp: ReportData | None = None) -> Figure | None:
    a = data.rows("attention")
    if not a:
        return None
    layers, heads, sink = _layer_head_grid(a, "sink_mass")
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4.5, 0.2 * len(layers) + 1.8)),
                             gridspec_kw={"width_ratios": [1.1, 1]})
    im = axes[0].imshow(sink, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    _head_axes(axes[0], layers, heads)
    axes[0].set_title("sink mass: mean over queries of A[i, 0]", fontsize=10)
    fig.colorbar(im, ax=axes[0], shrink=0.8, label="mean weight on position 0")
    ax = axes[1]
    uniform0 = float(a["uniform_baseline"][0])  # uniform attention's weight on key 0: mean_i 1/n_vis(i)

    def lines(d: ReportData, ls: str) -> None:
        b = d.rows("attention")
        if not b:
            return
        lay, _, s = _layer_head_grid(b, "sink_mass")
        solid = ls == "-"
        ax.plot(lay, np.nanmean(s, 1), color="C0" if solid else _dark("C0"), ls=ls, marker="o" if solid else None,
                ms=3, zorder=2 if solid else 5, label="mean over heads" if solid else None)
        ax.plot(lay, (s > SINK_EPSILON).mean(1), color="C1" if solid else _dark("C1"), ls=ls, zorder=2 if solid else 5,
                label=f"sink rate: share of heads with sink mass > {SINK_EPSILON}" if ls == "-" else None)
        if ls == "-":
            ax.plot(lay, np.nanmax(s, 1), color="C2", ls=":", label="max over heads")

    lines(data, "-")
    if cmp is not None:
        lines(cmp, "--")
    ax.axhline(uniform0, color="k", ls="--", lw=1, label=f"uniform attention ({uniform0:.3f})")
    ax.set_ylim(0, 1.02)
    _finish(ax, "sink mass and sink rate by layer", ATTN, "weight on position 0 / share of heads", legend=False)
    ax.legend(fontsize=7, loc="upper left")
    _run_legend(fig, data, cmp)
    _save(fig, out, "sink")
    mean = np.nanmean(sink, 1)
    big = [int(layers[i]) for i in np.flatnonzero(mean > 0.5)]
    rate = data.summary.get("headline", {}).get("attention_sink_rate")
    k = data.rows("attention_kernel")
    causal = not k or bool((k["offset"] >= 0).all())  # a bidirectional kernel has negative offsets
    query0 = ("query 0, whose weight there is always 1, is left out (stats.exclude_positions)" if 0 in _excluded(data)
              else "query 0 always puts 1 there" if causal else "every query sees it")
    text = (f"Sink mass: the mean over queries of A[i, 0], the weight on the sequence's first position ({query0}); "
            "uniform attention gives mean_i 1/n_vis(i) "
            f"= {uniform0:.3f}. Mean over heads ranges {np.nanmin(mean):.2f}–{np.nanmax(mean):.2f} by layer; "
            f"layers with mean sink mass above 0.5: {big if big else 'none'}.")
    if rate is not None:
        text += (f" Attention sink rate (Gu et al. 2024: share of heads with sink mass > {SINK_EPSILON}): "
                 f"{rate:.3f} over all heads.")
    if cmp is not None:
        text += f" Dashed: {cmp.label}."
        if 0 in _excluded(cmp):
            text += (" That run counts no query at position 0; the weight "
                     "the other queries put on key 0 still counts (a left-out key keeps its weight in each "
                     "kept query's row).")
    return Figure("sink", "Attention sink: weight on position 0", text)


def fig_geometry(data: ReportData, out: Path, cmp: ReportData | None = None) -> Figure | None:
    g = data.rows("geometry")
    if not g:
        return None
    c = cmp.rows("geometry") if cmp is not None else {}
    fig, axes = plt.subplots(2, 2, figsize=(14, 8.6), gridspec_kw={"hspace": 0.38})
    x = g["layer"]

    def line(ax, col, label, color, marker=None, has=None, overlay=True):
        m = np.isfinite(g[col]) if has is None else has
        ax.plot(x[m], g[col][m], color=color, marker=marker, ms=3, label=label)
        if c and overlay and col in c:
            mc = np.isfinite(c[col])
            ax.plot(c["layer"][mc], c[col][mc], color=_dark(color), ls="--", lw=1.3, zorder=5)

    ax = axes[0, 0]
    line(ax, "anisotropy", "anisotropy: mean cos over pairs of tokens", "C0", "o")
    if np.isfinite(g["intra_sim"]).any():
        line(ax, "intra_sim", "intra-sequence similarity", "C1")
    if np.isfinite(g["self_sim"]).any():
        line(ax, "self_sim", f"self-similarity ({int(np.nanmax(g['n_types']))} token types)", "C2", overlay=False)
    _finish(ax, "anisotropy and contextual similarity", ylabel="mean cosine")
    ax = axes[0, 1]
    has = np.isfinite(g["eff_dim"])  # layers with a covariance (stats.cov_layers / cov_every)
    if has.any():
        line(ax, "eff_dim", "effective dimension exp(H(λ/Σλ))", "C0", "o", has)
        line(ax, "participation_ratio", "participation ratio (Σλ)²/Σλ²", "C1", None, has, overlay=False)
        ax.set_yscale("log")
        _finish(ax, "covariance: effective dimension", ylabel=f"dimensions (of d = {data.summary.get('d_model', '?')})")
    else:
        ax.text(0.5, 0.5, "no covariance kept (stats.cov_layers=[])", ha="center", transform=ax.transAxes)
        ax.axis("off")
    ax = axes[1, 0]
    line(ax, "mean_norm", "mean norm ‖x‖", "C0", "o")
    line(ax, "norm_of_mean", "norm of the mean ‖Σx‖/n", "C1", overlay=False)
    ax.set_yscale("log")
    _finish(ax, "norms", ylabel="norm (log)")
    ax = axes[1, 1]
    if "massive_share" in g:
        line(ax, "massive_share", "share of tokens with a massive activation", "C3", "o")
        ax.set_ylim(bottom=0)
        _finish(ax, "massive activations (Sun et al. 2024)", ylabel="share of tokens")
    else:
        ax.axis("off")
    _run_legend(fig, data, cmp)
    _save(fig, out, "geometry")
    a = g["anisotropy"]
    text = ("Per residual index over all tokens: anisotropy, the mean cosine between two different tokens' vectors "
            "(Ethayarajh 2019); intra-sequence similarity, the mean over sequences of the mean cosine of a token to "
            "its sequence's mean vector; self-similarity, the mean cosine between occurrences of one token type, "
            "averaged over the tracked types (the corpus's most frequent); the effective dimension and "
            "participation ratio of the covariance's eigenvalues λ; mean norm and norm of the mean; and the share "
            "of tokens whose largest |x_k| exceeds 100x their own vector's median |x_k| (a massive activation). "
            f"Anisotropy goes {a[0]:.3f} → {np.nanmax(a):.3f} (max, residual {int(x[np.nanargmax(a)])}) → "
            f"{a[-1]:.3f}. ")
    if has.any():
        e, xe = g["eff_dim"][has], x[has]
        text += (f"Effective dimension {e[0]:.3g} → {e.min():.3g} (min, residual {int(xe[np.argmin(e)])}) → "
                 f"{e[-1]:.3g} of d = {data.summary.get('d_model', '?')}, at {int(has.sum())} residual indices. ")
    else:
        text += "No covariance was kept (stats.cov_layers=[]): no effective dimension. "
    if "massive_share" in g:
        share = np.nan_to_num(g["massive_share"].astype(np.float64))
        if share.max() > 0:
            i = int(np.argmax(share))
            dim = int(g["massive_dim"][i]) if "massive_dim" in g else -1
            text += (f"Massive activations at {int((share > 0).sum())} residual indices, at most "
                     f"{share[i]:.2%} of tokens (residual {int(x[i])}" + (f", mostly in dimension {dim}" if dim >= 0
                                                                             else "") + "); where they occur they "
                     "can dominate the effective dimension, the mean norm and the intra-sequence similarity.")
        else:
            text += "No token has a massive activation at any residual index."
    if cmp is not None:
        text += f" Dashed: {cmp.label}."
    return Figure("geometry", "Geometry by residual index: anisotropy, effective dimension, norms, massive "
                  "activations", text)


def fig_trajectory(doc: Document | None, vocab: Vocabulary | None, out: Path, n_walks: int = 4) -> Figure | None:
    if doc is None or len(doc.token_ids) < 2:
        return None
    x = doc.resid  # [n, layers, d]
    n, n_layers, _ = x.shape
    u = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)  # directions: decoding reads angles
    pts = u.reshape(-1, u.shape[-1]).astype(np.float64)
    mean = pts.mean(0)
    _, sv, vt = np.linalg.svd(pts - mean, full_matrices=False)
    share = sv**2 / max(float((sv**2).sum()), 1e-300)
    proj = ((u - mean) @ vt[:2].T)  # [n, layers, 2]
    picks = np.unique(np.linspace(1, n - 1, min(n_walks, n - 1)).round().astype(int))
    fig, ax = plt.subplots(figsize=(10, 7.5))
    layer_ids = np.asarray(doc.resid_layers[:n_layers])
    norm = plt.Normalize(layer_ids.min(), layer_ids.max())
    bg = ax.scatter(proj[..., 0].ravel(), proj[..., 1].ravel(), c=np.tile(layer_ids, n), cmap="viridis", norm=norm,
                    s=4, alpha=0.15)
    label_layers = sorted({0, n_layers // 3, 2 * n_layers // 3, n_layers - 1})
    for c, t in enumerate(picks):
        p = proj[t]
        name = repr(doc.tokens[t][:14]) if doc.tokens else f"id {doc.token_ids[t]}"
        ax.plot(p[:, 0], p[:, 1], color=f"C{c}", lw=1.5, alpha=0.9, label=f"token {t}: {name}")
        ax.scatter(p[:, 0], p[:, 1], c=layer_ids, cmap="viridis", norm=norm, s=14, zorder=3, edgecolors="none")
        if vocab is not None:
            near = vocab.nearest(x[t, label_layers])
            for layer, word in zip(label_layers, near, strict=True):
                ax.annotate(f"L{doc.resid_layers[layer]}: {word[:14]!r}", p[layer], fontsize=7, color=f"C{c}",
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"PC 1 of the document's unit vectors at all residual indices ({share[0]:.0%} of their variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%})" if len(share) > 1 else "PC 2")
    ax.legend(fontsize=8, loc="best", title="walks (lines)", title_fontsize=8)
    sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(sm, ax=ax, shrink=0.8, label=RESID)
    del bg
    ax.set_title(f"Document {doc.doc_id}: encoding walks through {n_layers} residual indices (colour)", fontsize=10)
    _save(fig, out, "trajectory")
    text = (f"The first {n} tokens of document {doc.doc_id} (in sequence {doc.seq_id}, vectors from the "
            f"{doc.source}), each "
            "vector scaled to unit length and projected on the first two principal components of all of them; "
            f"faint dots: every token at every residual index; lines: the walks of {len(picks)} tokens from the "
            "embeddings (dark) to the last block's output (yellow). The two components hold "
            f"{share[:2].sum():.0%} of the variance: distances in other directions are not shown.")
    if vocab is not None:
        text += (" Labels (Ln = residual index n): the vocabulary token whose unembedding vector is nearest in angle "
                 "to the vector after the final norm. This is not the logit lens's top-1, which ranks the logits "
                 "(dot products, so the unembedding rows' norms and biases count too); the two can differ.")
    return Figure("trajectory", "One document's encoding walks (PCA of unit vectors)", text)


def _token_text(token: str, width: int = 12) -> str:
    """A token as a tick label: escapes visible (\\n), spaces as '·', at most ``width`` characters."""
    text = repr(token)[1:-1].replace(" ", "·")
    return text if len(text) <= width else text[: width - 1] + "…"


def fig_similarity(doc: Document | None, out: Path) -> Figure | None:
    if doc is None or len(doc.token_ids) < 2:
        return None
    n_layers = doc.resid.shape[1]
    n = len(doc.token_ids)
    picks = sorted({0, n_layers // 3, (2 * n_layers) // 3, n_layers - 1})
    cols = 2 if len(picks) > 2 else len(picks)
    rows = math.ceil(len(picks) / cols)
    side = min(7.5, max(4.5, 0.13 * n + 1.5))
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.25, "wspace": 0.3})
    names = [_token_text(t) for t in doc.tokens] if doc.tokens else [str(int(t)) for t in doc.token_ids]
    step = max(1, math.ceil(n / 64))
    size = 7 if n <= 40 else 6
    means = []
    for ax, layer in zip(axes.flat, picks, strict=False):
        v = doc.resid[:, layer].astype(np.float64)
        un = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
        sim = un @ un.T
        means.append(float(sim[~np.eye(n, dtype=bool)].mean()))
        im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"residual {doc.resid_layers[layer]}: mean off-diagonal cos {means[-1]:.2f}", fontsize=10)
        ticks = range(0, n, step)
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=size, family="monospace")
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=size, family="monospace")
    for ax in axes.flat[len(picks):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine between the two tokens' vectors")
    _save(fig, out, "similarity")
    shown = ", ".join(f"{doc.resid_layers[p]} ({m:.2f})" for p, m in zip(picks, means, strict=True))
    every = f", every {step}th" if step > 1 else ""
    return Figure("similarity", "Similarity map of one document",
                  f"Cosine between the vectors of every pair of the first {n} tokens of document {doc.doc_id} "
                  f"(in its sequence {doc.seq_id}, in order; tick labels are the tokens, '·' a space{every}) at "
                  f"residual indices {shown}: "
                  "the mean off-diagonal cosine in brackets.")


def _log2_groups(rows: dict) -> tuple[list[str], np.ndarray]:
    """Histogram bins of an integer stat grouped 0, 1, 2–3, 4–7, ... (exact bins up to 256 and
    power-of-two bins above both fall into whole groups); under/overflow bins by themselves."""
    lo, hi, count = rows["lo"], rows["hi"], rows["count"].astype(np.float64)
    groups: dict[int, list] = {}
    for a, b, c in zip(lo, hi, count, strict=True):
        if not np.isfinite(a):
            key, name = -1, f"< {b:.0f}"
        elif not np.isfinite(b):
            key, name = 10**9, f"≥ {a:.0f}"
        else:
            key = 0 if a < 1 else int(math.floor(math.log2(a))) + 1
            g_lo, g_hi = (0, 0) if key == 0 else (2 ** (key - 1), 2**key - 1)
            name = f"{g_lo}" if g_lo == g_hi else f"{g_lo}–{g_hi}"
        groups.setdefault(key, [name, 0.0])[1] += c
    keys = sorted(groups)
    while keys and groups[keys[-1]][1] == 0:
        keys.pop()
    while keys and groups[keys[0]][1] == 0:
        keys.pop(0)
    total = count.sum()
    return [groups[k][0] for k in keys], np.array([groups[k][1] for k in keys]) / max(total, 1)


def fig_decoding(data: ReportData, out: Path) -> Figure | None:
    h = data.rows("decoding_hist", stat="rank")
    if not h:
        return None
    nuc = data.rows("decoding_hist", stat="nucleus")
    p = data.summary.get("config", {}).get("nucleus_p")
    p_text = f"p = {p:g}" if p is not None else "p: not recorded"
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    panels = ((axes[0], h, "rank of the actual next token (final layer)",
               "rank (0 = the most probable token), grouped in powers of two"),
              (axes[1], nuc, f"nucleus size (top-p, {p_text})",
               f"tokens in the smallest set holding ≥ {p if p is not None else 'p'} of the probability, grouped"))
    for ax, rows, title, xlabel in panels:
        if not rows:
            ax.axis("off")
            continue
        labels, share = _log2_groups(rows)
        ax.bar(range(len(labels)), share, color="C0")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of tokens")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    _save(fig, out, "decoding")
    s = data.summary.get("headline", {})
    r = data.rows("decoding", stat="rank")
    top1 = float(h["count"][h["bin"] == 1].sum() / r["count"][0]) if r and r["count"][0] else float("nan")
    nm = data.rows("decoding", stat="nucleus")
    text = (f"From the final context vector (after the final norm), over tokens with a next token (rank) and all "
            f"tokens (nucleus, {p_text}). Mean log-probability of the actual next token "
            f"{s.get('decoding_mean_logprob', float('nan')):.3f} nats (perplexity "
            f"{s.get('decoding_perplexity', float('nan')):.2f}); {top1:.0%} of them rank first")
    if nm:
        text += f"; median nucleus size {nm['median'][0]:.0f} tokens"
    return Figure("decoding", "Decoding walk: next-token rank and nucleus size at the final layer", text + ".")
