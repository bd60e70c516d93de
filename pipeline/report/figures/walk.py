"""The walk by residual index and at its end: encoding (norm, step, cosine to the last residual),
the logit lens (rank, probability, KL of the next token) and decoding at the final layer."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from embwalk.report.data import ReportData
from embwalk.report.figures.common import (
    Figure,
    bound_notes,
    dashed_note,
    finish,
    notes_text,
    overlay,
    quantile_band,
    quantiles,
    run_legend,
    save,
)


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
        quantile_band(ax, q, "C0", "", log=log)
        overlay(ax, cmp, "encoding", stat, "C0", log=log)
        finish(ax, title, ylabel=ylabel, legend=ax is axes[0])
        notes += bound_notes(q, stat)
    run_legend(fig, data, cmp)
    save(fig, out, "encoding")
    n = data.rows("encoding", stat="norm")
    c = data.rows("encoding", stat="cos_last")
    text = ("Median and quartiles over all tokens (from the binned histograms: within one bin) by residual index; "
            "the step panel's residual l is the step from l to l+1, the cosine panel stops at L−1. "
            f"The median norm goes from {n['median'][0]:.3g} (embeddings) to {n['median'][-1]:.3g} "
            f"(residual {int(n['layer'][-1])}); the median cosine to the last residual from "
            f"{c['median'][0]:.2f} to {c['median'][-1]:.2f} (residual {int(c['layer'][-1])}).")
    text += dashed_note(cmp, "the medians of") + notes_text(notes)
    return Figure("encoding", "Encoding walk: norm, step length and cosine to the last residual", text)


def _legend_below(ax, *handles_labels) -> None:
    """A panel's legend under its axis, two columns: the logit lens's panels are too full inside."""
    ax.legend(*handles_labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


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
    quantile_band(ax, rank, "C1", "rank + 1", shift=1.0, log=True)
    overlay(ax, cmp, "logit_lens", "rank", "C1", shift=1.0, log=True)
    ax.set_ylabel("rank of the actual next token + 1 (1 = top-1)")
    handles, labels = ax.get_legend_handles_labels()
    if top1 is not None:
        tw = ax.twinx()
        tw.plot(x, top1, color="C2", ls=":", lw=1.5)
        tw.set_ylim(0, 1)
        tw.set_ylabel("top-1 accuracy (dotted)", color="C2")
        handles.append(Line2D([], [], color="C2", ls=":"))
        labels.append("top-1 accuracy (right axis)")
    finish(ax, "next-token rank by residual index", legend=False)
    _legend_below(ax, handles, labels)
    notes = []
    prob = quantiles(data, "logit_lens", "prob")
    if prob is not None:
        quantile_band(axes[1], prob, "C0", "p_l(next)", log=True)
        finish(axes[1], "probability of the actual next token", ylabel="p_l(next) (log)", legend=False)
        _legend_below(axes[1])
        notes += bound_notes(prob, "p_l(next)")
    else:
        axes[1].axis("off")
    kl = quantiles(data, "logit_lens", "kl")
    zeros: list[int] = []
    if kl is not None:
        zeros = quantile_band(axes[2], kl, "C3", "KL", log=True)
        finish(axes[2], "KL(p_L ‖ p_l) to the last residual's distribution", ylabel="nats (log)", legend=False)
        for z in zeros:
            axes[2].annotate(f"0 at residual {z}\n(p_L itself)", (z, 0), xycoords=("data", "axes fraction"),
                             xytext=(-6, 18), textcoords="offset points", ha="right", fontsize=7, color="C3",
                             arrowprops=dict(arrowstyle="-|>", color="C3", lw=0.8))
        _legend_below(axes[2])
        notes += bound_notes(kl, "KL")
    else:
        axes[2].axis("off")
    run_legend(fig, data, cmp)
    save(fig, out, "logit_lens")
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
    text += dashed_note(cmp, "the median rank of") + notes_text(notes)
    return Figure("logit_lens", "Logit lens: rank, probability and KL of the next token by residual index", text)


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
    save(fig, out, "decoding")
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
