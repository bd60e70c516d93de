"""What the figures share: the Figure record, saving, the finish of a line plot by layer, the
layer axes' names, the compared run's dashed lines and their legend, and binned quantiles with
the marking of those that are only bounds (encoding, logit lens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from embwalk.report.data import ReportData

DPI = 110
RESID = "residual index (0 = embeddings, L = last block's output)"
ATTN = "attention layer (block) L, reads residual L"
UNRESOLVED = dict(facecolor="none", edgecolor="0.55", hatch="///", lw=0)  # below/above the bins


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str  # how to read it, and what it shows on this run
    table: str = ""  # HTML shown under the figure (the strategies' numbers), already escaped


def save(fig, out: Path, name: str) -> None:
    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def finish(ax, title: str, xlabel: str = RESID, ylabel: str | None = None, legend: bool = True) -> None:
    """The finish every line plot by layer shares: title, axis labels, light grid, small legend."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def layers_text(layers) -> str:
    """Residual indices for a caption: a range where they are consecutive."""
    layers = [int(v) for v in layers]
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"residual {layers[0]}–{layers[-1]}"
    return "residual " + ", ".join(map(str, layers))


# ---------------------------------------------------------------------------------------------
# The compared run (report.compare): dashed, darker, named once above the figure

def dark(color: str) -> tuple[float, float, float]:
    """A darker shade of ``color``: the compared run's dashed line stays visible on top of this
    run's solid one where the two agree."""
    return tuple(0.55 * v for v in to_rgb(color))


def dashed(ax, x, y, color: str) -> None:
    """The compared run's line of a quantity drawn in ``color``: dashed, darker, on top."""
    ax.plot(x, y, color=dark(color), ls="--", lw=1.3, zorder=5)  # named by the figure's run legend


def run_legend(fig, data: ReportData, cmp: ReportData | None) -> None:
    """With a compared run: one legend above the figure for the line styles (solid: this run,
    dashed: the compared one), naming each statistics directory and its exclusion options; the
    panels' legends name the quantities."""
    if cmp is None:
        return
    handles = [Line2D([], [], color="k", lw=1.5), Line2D([], [], color="k", lw=1.3, ls="--")]
    top = max(ax.get_position().y1 for ax in fig.axes) + 0.04  # above the panels' titles
    fig.legend(handles, [f"solid: {data.label}", f"dashed: {cmp.label}"], loc="lower center",
               bbox_to_anchor=(0.5, top), ncol=2, fontsize=9, frameon=False)


def dashed_note(cmp: ReportData | None, what: str = "") -> str:
    """Caption text: what the dashed lines are, ``what`` of the compared run (nothing without one)."""
    if cmp is None:
        return ""
    return f" Dashed: {what} {cmp.label}." if what else f" Dashed: {cmp.label}."


def notes_text(notes: list[str]) -> str:
    """Caption text: the notes (on quantiles that are only bounds), if any."""
    return " Note: " + "; ".join(notes) + "." if notes else ""


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


def quantile_band(ax, q: Quantiles, color: str, label: str, shift: float = 0.0, log: bool = False) -> list:
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


def bound_notes(q: Quantiles, what: str) -> list[str]:
    """Caption text: which layers' median is only a bound (below the bins, above them)."""
    notes = []
    for side, edge, word in ((-1, q.lo_edge, "below"), (+1, q.hi_edge, "above")):
        m = q.bounded("median", side)
        if m.any():
            notes.append(f"the median {what} lies {word} the histogram's range ({edge:.0e}) at "
                         f"{layers_text(q.layer[m])}: drawn as an open triangle at that edge, a bound, not a value")
    return notes


def overlay(ax, cmp: ReportData | None, table: str, stat: str, color: str, shift: float = 0.0,
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
    dashed(ax, q.layer, y, color)
