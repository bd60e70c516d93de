"""One document's vectors: its tokens' encoding walks (PCA of unit vectors) and the cosine
similarity map of its tokens at a few residual indices."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from embwalk.report.data import Document
from embwalk.report.figures.common import RESID, Figure, save
from embwalk.report.vocab import Vocabulary


def _drawable(doc: Document | None) -> bool:
    """A document to draw: loaded, with at least two tokens."""
    return doc is not None and len(doc.token_ids) >= 2


def _unit(v: np.ndarray) -> np.ndarray:
    """Each vector (last axis) scaled to unit length: the figures read directions, as decoding does."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)


def _picked_layers(n_layers: int) -> list[int]:
    """The residual positions (of the document's kept layers) a figure labels or shows: the first,
    the last and two between."""
    return sorted({0, n_layers // 3, 2 * n_layers // 3, n_layers - 1})


def fig_trajectory(doc: Document | None, vocab: Vocabulary | None, out: Path, n_walks: int = 4) -> Figure | None:
    if not _drawable(doc):
        return None
    x = doc.resid  # [n, layers, d]
    n, n_layers, _ = x.shape
    u = _unit(x)
    pts = u.reshape(-1, u.shape[-1]).astype(np.float64)
    mean = pts.mean(0)
    _, sv, vt = np.linalg.svd(pts - mean, full_matrices=False)
    share = sv**2 / max(float((sv**2).sum()), 1e-300)
    proj = ((u - mean) @ vt[:2].T)  # [n, layers, 2]
    picks = np.unique(np.linspace(1, n - 1, min(n_walks, n - 1)).round().astype(int))
    fig, ax = plt.subplots(figsize=(10, 7.5))
    layer_ids = np.asarray(doc.resid_layers[:n_layers])
    norm = plt.Normalize(layer_ids.min(), layer_ids.max())
    ax.scatter(proj[..., 0].ravel(), proj[..., 1].ravel(), c=np.tile(layer_ids, n), cmap="viridis", norm=norm,
               s=4, alpha=0.15)
    label_layers = _picked_layers(n_layers)
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
    ax.set_title(f"Document {doc.doc_id}: encoding walks through {n_layers} residual indices (colour)", fontsize=10)
    save(fig, out, "trajectory")
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
    if not _drawable(doc):
        return None
    n_layers = doc.resid.shape[1]
    n = len(doc.token_ids)
    picks = _picked_layers(n_layers)
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
        un = _unit(doc.resid[:, layer].astype(np.float64))
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
    save(fig, out, "similarity")
    shown = ", ".join(f"{doc.resid_layers[p]} ({m:.2f})" for p, m in zip(picks, means, strict=True))
    every = f", every {step}th" if step > 1 else ""
    return Figure("similarity", "Similarity map of one document",
                  f"Cosine between the vectors of every pair of the first {n} tokens of document {doc.doc_id} "
                  f"(in its sequence {doc.seq_id}, in order; tick labels are the tokens, '·' a space{every}) at "
                  f"residual indices {shown}: "
                  "the mean off-diagonal cosine in brackets.")
