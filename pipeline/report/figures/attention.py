"""The attention tables by layer and head: position kernels (weight by offset), self-bias (weight
on a token's own position) and the attention sink (weight on position 0); and a T5-family
model's learned position bias by offset (its weights' position_kernel table)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, LogNorm
from matplotlib.ticker import MaxNLocator

from embwalk.report.data import ReportData
from embwalk.report.figures.common import ATTN, Figure, dark, dashed_note, finish, run_legend, save

SINK_EPSILON = 0.3  # the headline attention-sink threshold (Gu et al. 2024; stats/partials.py)


def _excluded(data: ReportData) -> list[int]:
    """The sequence positions these statistics left out (summary config; [] before the option)."""
    return [int(v) for v in data.summary.get("config", {}).get("exclude_positions") or []]


def _ratio_norm(ratio: np.ndarray, spread) -> LogNorm:
    """A log colour scale symmetric about 1 for a ratio to uniform attention: ``spread`` of the
    |log10| of the finite positive ratios (1 decade where there are none), kept within 2x..1000x."""
    logs = np.abs(np.log10(ratio[np.isfinite(ratio) & (ratio > 0)]))
    span = float(np.clip(spread(logs) if logs.size else 1.0, np.log10(2), 3))
    return LogNorm(vmin=10 ** -span, vmax=10**span)


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
            norm = _ratio_norm(grid, lambda logs: np.percentile(logs, 99))
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
    save(fig, out, "position_kernels")
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


def _layer_head_grid(a: dict, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layers, heads = np.unique(a["layer"]), np.unique(a["head"])
    grid = np.full((len(layers), len(heads)), np.nan)
    grid[np.searchsorted(layers, a["layer"]), np.searchsorted(heads, a["head"])] = a[column]
    return layers, heads, grid


def _head_map(layers, heads, grid: np.ndarray, title: str, label: str, **style):
    """Two panels: left, ``grid`` as a map of layers (rows) by heads (columns) drawn with imshow
    ``style``, with its colour bar; right, free for the figure's plot by layer. Returns fig, axes."""
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4.5, 0.2 * len(layers) + 1.8)),
                             gridspec_kw={"width_ratios": [1.1, 1]})
    ax = axes[0]
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", **style)
    ax.set_xlabel("head")
    ax.set_ylabel(ATTN)
    step = max(1, math.ceil(len(layers) / 40))
    ax.set_yticks(range(0, len(layers), step), [str(int(v)) for v in layers[::step]], fontsize=7)
    ax.set_xticks(range(len(heads)), [str(int(v)) for v in heads], fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    return fig, axes


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
    norm = _ratio_norm(ratio, np.nanmax)
    name = "self_ratio = mean_i A[i,i]·n_vis(i)" if per_query else "pooled self-weight / uniform baseline"
    fig, axes = _head_map(layers, heads, np.clip(ratio, norm.vmin, norm.vmax),
                          f"{name}\n(× uniform; blue and '−': below 1, negative self-bias)",
                          f"{name.split(' =')[0]} (log; 1 = uniform)", cmap="RdBu_r", norm=norm)
    for i, j in zip(*np.nonzero(ratio < 1), strict=True):
        axes[0].text(j, i, "−", ha="center", va="center", fontsize=7, color="k")
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
    finish(ax, "self weight as a multiple of uniform, by layer", ATTN, "× uniform (log)")
    save(fig, out, "self_bias")
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
    fig, axes = _head_map(layers, heads, sink, "sink mass: mean over queries of A[i, 0]",
                          "mean weight on position 0", cmap="viridis", vmin=0, vmax=1)
    ax = axes[1]
    uniform0 = float(a["uniform_baseline"][0])  # uniform attention's weight on key 0: mean_i 1/n_vis(i)

    def lines(d: ReportData, ls: str) -> None:
        b = d.rows("attention")
        if not b:
            return
        lay, _, s = _layer_head_grid(b, "sink_mass")
        solid = ls == "-"
        ax.plot(lay, np.nanmean(s, 1), color="C0" if solid else dark("C0"), ls=ls, marker="o" if solid else None,
                ms=3, zorder=2 if solid else 5, label="mean over heads" if solid else None)
        ax.plot(lay, (s > SINK_EPSILON).mean(1), color="C1" if solid else dark("C1"), ls=ls, zorder=2 if solid else 5,
                label=f"sink rate: share of heads with sink mass > {SINK_EPSILON}" if ls == "-" else None)
        if ls == "-":
            ax.plot(lay, np.nanmax(s, 1), color="C2", ls=":", label="max over heads")

    lines(data, "-")
    if cmp is not None:
        lines(cmp, "--")
    ax.axhline(uniform0, color="k", ls="--", lw=1, label=f"uniform attention ({uniform0:.3f})")
    ax.set_ylim(0, 1.02)
    finish(ax, "sink mass and sink rate by layer", ATTN, "weight on position 0 / share of heads", legend=False)
    ax.legend(fontsize=7, loc="upper left")
    run_legend(fig, data, cmp)
    save(fig, out, "sink")
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
    text += dashed_note(cmp)
    if cmp is not None and 0 in _excluded(cmp):
        text += (" That run counts no query at position 0; the weight "
                 "the other queries put on key 0 still counts (a left-out key keeps its weight in each "
                 "kept query's row).")
    return Figure("sink", "Attention sink: weight on position 0", text)


_STACK_NAMES = {"enc": "encoder", "dec": "decoder"}


def fig_position_bias(data: ReportData, out: Path) -> Figure | None:
    """The learned relative position bias (T5 family) from ``position_kernel.parquet``: one panel
    per stack and bias-learning layer, one line per head, coloured by head."""
    k = data.rows("position_kernel")
    if not k:
        return None
    panels = sorted({(str(s), int(v)) for s, v in zip(k["stack"], k["layer"], strict=True)},
                    key=lambda p: (list(_STACK_NAMES).index(p[0]), p[1]))
    owners = {s: sum(p[0] == s for p in panels) for s in _STACK_NAMES}
    n_heads = int(k["head"].max()) + 1
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols + 1.2, 3.0 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    cmap = plt.get_cmap("viridis", n_heads)  # one colour per head
    norm = BoundaryNorm(np.arange(n_heads + 1) - 0.5, n_heads)
    previous = []  # (bias at offset −1 above the head's median, label): the caption's most local heads
    for ax, (stack, layer) in zip(axes.flat, panels, strict=False):
        sel = (k["stack"] == stack) & (k["layer"] == layer)
        for h in range(n_heads):
            m = sel & (k["head"] == h)
            order = np.argsort(k["offset"][m])
            x, y = k["offset"][m][order], k["bias"][m][order]
            ax.plot(x, y, color=cmap(h), lw=1, drawstyle="steps-mid")
            if (x == -1).any():
                previous.append((float(y[x == -1][0] - np.median(y)), f"{stack} L{layer}H{h}"))
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        shared = " (used by every layer)" if owners[stack] == 1 else ""
        finish(ax, f"{_STACK_NAMES[stack]}, layer {layer}{shared}", "offset key − query",
               "bias b (added to q·k)" if ax in axes[:, 0] else None, legend=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=0.8, label="head",
                 ticks=range(0, n_heads, max(1, n_heads // 16)))
    save(fig, out, "position_kernel")
    reach = int(np.abs(k["offset"]).max())
    text = ("Each head's learned relative position bias b(key − query), added to its attention score before the "
            "softmax (a T5 score is q·k + b, unscaled), read from the model's weights (stats/position_kernel.parquet), "
            f"at every offset up to {reach} tokens away: beyond that every offset shares the last bucket's value, and "
            "the steps are the log-spaced buckets. The encoder sees both directions (negative offsets: keys before "
            "the query); the decoder only keys at or before it (later ones are masked). Note the sign: offsets "
            "here are key − query, the opposite of the position kernels' i − j.")
    top = [(v, label) for v, label in sorted(previous, reverse=True)[:5] if v > 0]
    if top:
        text += (" Strongest preference for the previous token (bias at −1 above the head's median): "
                 + ", ".join(f"{label} (+{v:.2f})" for v, label in top) + ".")
    return Figure("position_kernel", "Learned position bias by offset (T5 family), per head", text)


def fig_bias_share(data: ReportData, out: Path) -> Figure | None:
    """How much of each head's score variance its learned position bias explains (family
    ``bias_share``, T5 family): a layer × head map of the within-query share, and by layer."""
    b = data.rows("bias_share", kind="within_query")
    if not b:
        return None
    pooled = data.rows("bias_share", kind="pooled")
    layers, heads, share = _layer_head_grid(b, "bias_share")
    top = max(0.05, float(np.nanmax(share)))
    fig, axes = _head_map(layers, heads, np.clip(share, 0, top),
                          "bias share of the score's variance within each query's row\n"
                          "(var(b) + cov(q·k, b)) / var(q·k + b)", "bias share (0 = content only)",
                          cmap="viridis", vmin=0, vmax=top)
    axes[0].set_ylabel("encoder layer")
    ax = axes[1]
    for j in range(len(heads)):
        ax.scatter(layers, share[:, j], s=12, color="C0", alpha=0.7, label="within query, one dot per head" if j == 0
                   else None)
    if pooled:
        pl, _, ps = _layer_head_grid(pooled, "bias_share")
        ax.plot(pl, np.nanmean(ps, axis=1), color="C1", marker="x", lw=1, label="pooled over queries: mean over heads")
    ax.axhline(0, color="k", lw=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish(ax, "bias share by layer", "encoder layer", "bias share")
    save(fig, out, "bias_share")
    order = sorted(((float(share[i, j]), int(layers[i]), int(heads[j])) for i in range(len(layers))
                    for j in range(len(heads)) if np.isfinite(share[i, j])), reverse=True)
    text = ("A T5 score is q·k + b(key − query). Within each query's row (what the softmax sees: a constant added "
            "to a row changes nothing), the share of the score's variance that goes with the learned bias b is "
            "(var(b) + cov(q·k, b)) / var(score), over every visible key of every stored query, recomputed from "
            "the stored layer inputs with the layer's own norm and projections (docs/statistics.md, bias share). "
            "0: the head attends by content alone; near 1: by position alone. The orange line pools the rows "
            "(differences between queries included).")
    if order:
        text += " Most positional: " + ", ".join(f"L{lay}H{h} ({v:.2f})" for v, lay, h in order[:5]) + "."
    return Figure("bias_share", "How much of each head's score the learned position bias explains", text)
