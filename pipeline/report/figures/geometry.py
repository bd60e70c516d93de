"""The geometry of the residuals by residual index: anisotropy and contextual similarity, the
covariance's effective dimension, norms, and massive activations."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from embwalk.report.data import ReportData
from embwalk.report.figures.common import Figure, dashed, dashed_note, finish, run_legend, save


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
            dashed(ax, c["layer"][mc], c[col][mc], color)

    ax = axes[0, 0]
    line(ax, "anisotropy", "anisotropy: mean cos over pairs of tokens", "C0", "o")
    if np.isfinite(g["intra_sim"]).any():
        line(ax, "intra_sim", "intra-sequence similarity", "C1")
    if np.isfinite(g["self_sim"]).any():
        line(ax, "self_sim", f"self-similarity ({int(np.nanmax(g['n_types']))} token types)", "C2", overlay=False)
    finish(ax, "anisotropy and contextual similarity", ylabel="mean cosine")
    ax = axes[0, 1]
    has = np.isfinite(g["eff_dim"])  # layers with a covariance (stats.cov_layers / cov_every)
    if has.any():
        line(ax, "eff_dim", "effective dimension exp(H(λ/Σλ))", "C0", "o", has)
        line(ax, "participation_ratio", "participation ratio (Σλ)²/Σλ²", "C1", None, has, overlay=False)
        ax.set_yscale("log")
        finish(ax, "covariance: effective dimension", ylabel=f"dimensions (of d = {data.summary.get('d_model', '?')})")
    else:
        ax.text(0.5, 0.5, "no covariance kept (stats.cov_layers=[])", ha="center", transform=ax.transAxes)
        ax.axis("off")
    ax = axes[1, 0]
    line(ax, "mean_norm", "mean norm ‖x‖", "C0", "o")
    line(ax, "norm_of_mean", "norm of the mean ‖Σx‖/n", "C1", overlay=False)
    ax.set_yscale("log")
    finish(ax, "norms", ylabel="norm (log)")
    ax = axes[1, 1]
    if "massive_share" in g:
        line(ax, "massive_share", "share of tokens with a massive activation", "C3", "o")
        ax.set_ylim(bottom=0)
        finish(ax, "massive activations (Sun et al. 2024)", ylabel="share of tokens")
    else:
        ax.axis("off")
    run_legend(fig, data, cmp)
    save(fig, out, "geometry")
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
    text += dashed_note(cmp)
    return Figure("geometry", "Geometry by residual index: anisotropy, effective dimension, norms, massive "
                  "activations", text)
