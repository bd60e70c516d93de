"""The report's figures, one function each: ``fig_*(data, out, ...) -> Figure | None``.

Each reads the merged statistics tables (merge_store_stats, pipeline/stats/partials.py) and
writes one PNG; it returns None when the statistics it needs were not computed (build.py
shows why: the summary's ``skipped`` reason), so a report of a partial run still shows
everything it can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, TwoSlopeNorm  # noqa: E402

from embwalk.report.data import Document, ReportData  # noqa: E402
from embwalk.report.vocab import Vocabulary  # noqa: E402

DPI = 110


@dataclass
class Figure:
    name: str  # file stem
    title: str
    caption: str  # how to read it, and what it shows on this run


def _save(fig, out: Path, name: str) -> None:
    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _by_layer(ax, title: str, xlabel: str = "layer") -> None:
    """The finish every line plot by layer shares: title, x label, light grid, small legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _band(ax, x, rows, label, color, log=False):
    ax.plot(x, rows["median"], color=color, label=f"{label} (median)")
    ax.fill_between(x, rows["q25"], rows["q75"], color=color, alpha=0.25, label="quartiles")
    if log:
        ax.set_yscale("log")


def fig_encoding(data: ReportData, out: Path) -> Figure | None:
    panels = [("norm", "‖x_l‖ (norm)", True), ("step", "‖x_{l+1} − x_l‖ (step out of layer l)", True),
              ("cos_last", "cos(x_l, x_L) (cos to final layer)", False)]
    if not data.rows("encoding"):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (stat, title, log) in zip(axes, panels, strict=True):
        r = data.rows("encoding", stat=stat)
        _band(ax, r["layer"], r, stat, "C0", log)
        ax.set_title(title)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, out, "encoding")
    n = data.rows("encoding", stat="norm")
    c = data.rows("encoding", stat="cos_last")
    return Figure("encoding", "Encoding walk: norm, step length and cos to the final layer",
                  f"Median and quartiles over all tokens by residual layer. The median norm goes from "
                  f"{n['median'][0]:.3g} (embeddings) to {n['median'][-1]:.3g} (last block); the median "
                  f"cosine to the last layer from {c['median'][0]:.2f} to {c['median'][-1]:.2f}.")


def fig_logit_lens(data: ReportData, out: Path) -> Figure | None:
    r = data.rows("logit_lens", stat="rank")
    if not r:
        return None
    h = data.rows("logit_lens_hist", stat="rank", bin=1)  # bin 1 = [0, 1): rank 0, the top-1 hits
    top1 = h["count"] / r["count"] if h else None
    kl = data.rows("logit_lens", stat="kl")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    ax = axes[0]
    x = r["layer"]
    ax.plot(x, r["median"] + 1, color="C1", label="median rank + 1")
    ax.fill_between(x, r["q25"] + 1, r["q75"] + 1, color="C1", alpha=0.25, label="quartiles")
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("rank of the actual next token + 1")
    ax.set_title("Logit lens: next-token rank by layer")
    ax.grid(alpha=0.3)
    if top1 is not None:
        tw = ax.twinx()
        tw.plot(x, top1, color="C2", ls="--", label="top-1 accuracy")
        tw.set_ylim(0, 1)
        tw.set_ylabel("top-1 accuracy", color="C2")
    ax.legend(fontsize=8, loc="upper right")
    if kl:
        _band(axes[1], kl["layer"], kl, "KL", "C3", log=True)
        _by_layer(axes[1], "KL(p_L ‖ p_l) in nats, by layer")
    _save(fig, out, "logit_lens")
    med = r["median"]
    first_low = next((int(x[i]) for i in range(len(med)) if med[i] < 10), None)
    text = (f"Each layer decoded with the model's final norm and unembedding. Median rank falls from "
            f"{med[0]:.3g} at the embeddings to {med[-1]:.3g} at the last layer")
    text += f"; it first drops below 10 at layer {first_low}." if first_low is not None else "."
    if top1 is not None:
        text += f" Top-1 accuracy: {top1[0]:.2f} → {top1[-1]:.2f}."
    return Figure("logit_lens", "Logit lens: rank of the next token by layer", text)


def fig_kernels(data: ReportData, out: Path, max_offset: int = 256) -> Figure | None:
    k = data.rows("attention_kernel")
    if not k:
        return None
    layers = np.unique(k["layer"])
    heads = np.unique(k["head"])
    causal = bool((k["offset"] >= 0).all())
    # causal: offsets 0..S-1 on a log axis (offset + 1), so local heads and the far sink both show;
    # bidirectional: |offset| < max_offset on a linear axis
    keep = (k["offset"] < max_offset) if causal else (np.abs(k["offset"]) < max_offset // 2)
    offsets = np.unique(k["offset"][keep])
    cols = min(6, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols, 2.1 * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.45, "wspace": 0.25})
    vals = k["mean_weight"][keep]
    norm = LogNorm(vmin=max(np.nanmin(vals[vals > 0]), 1e-5), vmax=1.0)
    x_edges = (np.concatenate([offsets, [offsets[-1] + 1]]) + (0.5 if causal else -0.5))
    for ax, layer in zip(axes.flat, layers, strict=False):
        grid = np.full((len(heads), len(offsets)), np.nan)
        sel = (k["layer"] == layer) & keep
        grid[np.searchsorted(heads, k["head"][sel]), np.searchsorted(offsets, k["offset"][sel])] = \
            k["mean_weight"][sel]
        im = ax.pcolormesh(x_edges, np.arange(len(heads) + 1) - 0.5, np.clip(grid, norm.vmin, None), norm=norm,
                           cmap="magma")
        if causal:
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    fig.supxlabel("offset i − j + 1 (query − key; log scale)" if causal else "offset i − j (query − key)")
    fig.supylabel("head")
    fig.colorbar(im, ax=axes, shrink=0.6, label="mean attention weight")
    _save(fig, out, "position_kernels")
    return Figure("position_kernels", "Position kernels per layer (heads as rows)",
                  f"Mean weight a query puts on the key at each offset {offsets[0]}..{offsets[-1]} behind it, over "
                  "every visible pair (log colour). Uniform causal attention would give 1/(i+1) per key. A bright "
                  "first column is self-attention, bright short offsets are local (previous-token) heads; at large "
                  "offsets the mean is dominated by the weight on position 0 (the sink).")


def _layer_head_grid(a: dict, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layers, heads = np.unique(a["layer"]), np.unique(a["head"])
    grid = np.full((len(layers), len(heads)), np.nan)
    grid[np.searchsorted(layers, a["layer"]), np.searchsorted(heads, a["head"])] = a[column]
    return layers, heads, grid


def fig_self_bias(data: ReportData, out: Path) -> Figure | None:
    a = data.rows("attention")
    if not a:
        return None
    layers, heads, bias = _layer_head_grid(a, "self_bias")
    _, _, weight = _layer_head_grid(a, "self_weight")
    baseline = float(a["uniform_baseline"][0])
    ratio = np.log2(np.maximum(weight, 1e-6) / baseline)
    fig, axes = plt.subplots(1, 2, figsize=(13, max(4, 0.2 * len(layers) + 1.5)),
                             gridspec_kw={"width_ratios": [1.3, 1]})
    lim = max(float(np.nanmax(np.abs(ratio))), 0.5)
    im = axes[0].imshow(ratio, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim),
                        interpolation="nearest")
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_yticks(range(len(layers)), [str(v) for v in layers], fontsize=6)
    axes[0].set_xticks(range(len(heads)), [str(v) for v in heads], fontsize=7)
    for i, j in zip(*np.nonzero(bias < 0), strict=True):
        axes[0].text(j, i, "−", ha="center", va="center", fontsize=7, color="k")
    axes[0].set_title("log2(self-weight / uniform baseline); blue, '−': negative self-bias")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    for j in range(len(heads)):
        axes[1].scatter(np.repeat(j, len(layers)) + np.linspace(-0.3, 0.3, len(layers)), weight[:, j],
                        c=layers, cmap="viridis", s=10)
    axes[1].axhline(baseline, color="k", ls="--", label=f"uniform baseline {baseline:.3f}")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(heads)), [str(v) for v in heads])
    axes[1].set_xlabel("head (dots: layers, dark = early)")
    axes[1].set_ylabel("self-weight mean_i A[i, i]")
    axes[1].legend(fontsize=8)
    axes[1].set_title("self-weight per head and layer")
    _save(fig, out, "self_bias")
    neg = sorted(((float(bias[i, j]), int(layers[i]), int(heads[j])) for i, j in zip(*np.nonzero(bias < 0),
                                                                                      strict=True)))
    text = (f"{len(neg)} of {bias.size} (layer, head) pairs have negative self-bias: they put less weight on their "
            f"own position than uniform attention's {baseline:.3f} on average")
    if neg:
        text += "; the most negative (self-weight − baseline): " + ", ".join(
            f"L{lay}H{h} ({b:+.3f})" for b, lay, h in neg[:8])
    return Figure("self_bias", "Self-weight against the uniform baseline, per layer and head", text + ".")


def fig_sink(data: ReportData, out: Path) -> Figure | None:
    a = data.rows("attention")
    if not a:
        return None
    layers, heads, sink = _layer_head_grid(a, "sink_mass")
    fig, axes = plt.subplots(1, 2, figsize=(13, max(4, 0.2 * len(layers) + 1.5)),
                             gridspec_kw={"width_ratios": [1.3, 1]})
    im = axes[0].imshow(sink, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[0].set_xlabel("head")
    axes[0].set_ylabel("layer")
    axes[0].set_yticks(range(len(layers)), [str(v) for v in layers], fontsize=6)
    axes[0].set_title("sink mass: mean weight on position 0")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    axes[1].plot(layers, np.nanmean(sink, 1), marker="o", ms=3, label="mean over heads")
    axes[1].plot(layers, np.nanmax(sink, 1), ls=":", label="max over heads")
    # what uniform attention would put on position 0: mean over queries of 1/n_visible(i)
    uniform0 = float(a["uniform_baseline"][0])
    axes[1].axhline(uniform0, color="k", ls="--", label=f"uniform attention ({uniform0:.3f})")
    axes[1].set_ylim(0, 1)
    _by_layer(axes[1], "sink mass by layer")
    _save(fig, out, "sink")
    mean = np.nanmean(sink, 1)
    big = [int(layers[i]) for i in np.flatnonzero(mean > 0.5)]
    return Figure("sink", "Attention sink: weight on position 0",
                  f"Mean over queries of A[i, 0] (query 0 always puts 1 there). Mean over heads ranges "
                  f"{np.nanmin(mean):.2f}–{np.nanmax(mean):.2f} by layer against {uniform0:.3f} for uniform "
                  f"attention; layers with mean sink mass above 0.5: {big if big else 'none'}.")


def fig_geometry(data: ReportData, out: Path) -> Figure | None:
    g = data.rows("geometry")
    if not g:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    x = g["layer"]
    axes[0].plot(x, g["anisotropy"], marker="o", ms=3, label="anisotropy (mean cos over all pairs of tokens)")
    if np.isfinite(g["intra_sim"]).any():
        axes[0].plot(x, g["intra_sim"], ls="--", label="intra-sequence similarity")
    if np.isfinite(g["self_sim"]).any():
        axes[0].plot(x, g["self_sim"], ls=":", label="self-similarity (same token type)")
    _by_layer(axes[0], "Anisotropy and contextual similarity", "layer (0 = embeddings)")
    has = np.isfinite(g["eff_dim"])  # layers with a covariance (stats.cov_layers / cov_every)
    axes[1].plot(x[has], g["eff_dim"][has], marker="o", ms=3, label="effective dimension exp(H(λ/Σλ))")
    axes[1].plot(x[has], g["participation_ratio"][has], ls="--", label="participation ratio (Σλ)²/Σλ²")
    axes[1].set_yscale("log")
    _by_layer(axes[1], "Effective dimension of the covariance")
    _save(fig, out, "geometry")
    a = g["anisotropy"]
    text = (f"Anisotropy goes {a[0]:.3f} → {np.nanmax(a):.3f} (max, layer {int(x[np.nanargmax(a)])}) → {a[-1]:.3f}. ")
    if has.any():
        e, xe = g["eff_dim"][has], x[has]
        text += (f"Effective dimension {e[0]:.1f} → {e.min():.1f} (min, layer {int(xe[np.argmin(e)])}) → {e[-1]:.1f} "
                 f"of d = {data.summary.get('d_model', '?')}, at {int(has.sum())} layers.")
    else:
        text += "No covariance was kept (stats.cov_layers=[]): no effective dimension."
    return Figure("geometry", "Anisotropy and effective dimension by layer", text)


def fig_trajectory(doc: Document | None, vocab: Vocabulary | None, out: Path, n_walks: int = 4) -> Figure | None:
    if doc is None or len(doc.token_ids) < 2:
        return None
    x = doc.resid  # [n, layers, d]
    n, n_layers, _ = x.shape
    u = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)  # directions: decoding reads angles
    pts = u.reshape(-1, u.shape[-1]).astype(np.float64)
    mean = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - mean, full_matrices=False)
    proj = ((u - mean) @ vt[:2].T)  # [n, layers, 2]
    picks = np.unique(np.linspace(1, n - 1, min(n_walks, n - 1)).round().astype(int))
    fig, ax = plt.subplots(figsize=(9, 7))
    ax.scatter(proj[..., 0].ravel(), proj[..., 1].ravel(), c=np.tile(np.arange(n_layers), n), cmap="viridis",
               s=4, alpha=0.15)
    label_layers = sorted({0, n_layers // 3, 2 * n_layers // 3, n_layers - 1})
    for c, t in enumerate(picks):
        p = proj[t]
        name = repr(doc.tokens[t][:14]) if doc.tokens else f"id {doc.token_ids[t]}"
        ax.plot(p[:, 0], p[:, 1], color=f"C{c}", lw=1.5, alpha=0.9, label=f"token {t}: {name}")
        ax.scatter(p[:, 0], p[:, 1], c=np.arange(n_layers), cmap="viridis", s=14, zorder=3, edgecolors="none")
        if vocab is not None:
            near = vocab.nearest(x[t, label_layers])
            for layer, word in zip(label_layers, near, strict=True):
                ax.annotate(f"L{doc.resid_layers[layer]}: {word[:14]!r}", p[layer], fontsize=7, color=f"C{c}",
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1 (of the document's unit vectors, all layers)")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"Document {doc.doc_id}: encoding walks through {n_layers} layers (colour: layer)")
    _save(fig, out, "trajectory")
    text = (f"{n} tokens of document {doc.doc_id} (sequence {doc.seq_id}, vectors from the {doc.source}); "
            f"faint dots: every token at every layer; lines: the walks of {len(picks)} tokens from the embeddings "
            "(dark) to the last block (yellow).")
    if vocab is not None:
        text += (" Labels: the vocabulary token whose unembedding vector is nearest in angle to the layer's "
                 "vector after the final norm. This is not the logit lens's top-1: that ranks the logits "
                 "(dot products, so the unembedding rows' norms and biases count too), and the two agree "
                 "for only part of the tokens.")
    return Figure("trajectory", "One document's trajectory through the layers", text)


def fig_similarity(doc: Document | None, out: Path) -> Figure | None:
    if doc is None or len(doc.token_ids) < 2:
        return None
    n_layers = doc.resid.shape[1]
    picks = sorted({0, n_layers // 2, n_layers - 1})
    fig, axes = plt.subplots(1, len(picks), figsize=(5.2 * len(picks), 4.6), squeeze=False)
    for ax, layer in zip(axes[0], picks, strict=True):
        v = doc.resid[:, layer].astype(np.float64)
        un = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
        sim = un @ un.T
        im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"layer {doc.resid_layers[layer]}")
        if doc.tokens and len(doc.tokens) <= 64:
            names = [repr(t)[1:-1][:10] for t in doc.tokens]
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
            ax.set_yticks(range(len(names)), names, fontsize=5)
    fig.colorbar(im, ax=axes, shrink=0.8, label="cosine")
    _save(fig, out, "similarity")
    return Figure("similarity", "Similarity map of one document",
                  f"Cosine between every pair of the document's {len(doc.token_ids)} tokens at the embeddings, "
                  "a middle layer and the last block: how contextual mixing and the shared (anisotropic) "
                  "direction make vectors alike with depth.")


def fig_decoding(data: ReportData, out: Path) -> Figure | None:
    h = data.rows("decoding_hist", stat="rank")
    if not h:
        return None
    nuc = data.rows("decoding_hist", stat="nucleus")
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    for ax, rows, title in ((axes[0], h, "rank of the next token (final layer)"),
                            (axes[1], nuc, "nucleus size (top-p)")):
        keep = rows["count"] > 0
        lo, hi = rows["lo"][keep], rows["hi"][keep]
        labels = [f"{a:.0f}" if b - a <= 1 else f"{a:.0f}–{b - 1:.0f}" for a, b in zip(lo, hi, strict=True)]
        ax.bar(range(int(keep.sum())), rows["count"][keep] / rows["count"].sum())
        ax.set_xticks(range(int(keep.sum())), labels, rotation=60, fontsize=7)
        ax.set_ylabel("fraction of tokens")
        ax.set_title(title)
    _save(fig, out, "decoding")
    s = data.summary.get("headline", {})
    return Figure("decoding", "Decoding walk: next-token rank and nucleus size at the final layer",
                  f"Mean log-probability of the actual next token {s.get('decoding_mean_logprob', float('nan')):.3f} "
                  f"nats (perplexity {s.get('decoding_perplexity', float('nan')):.2f}).")
