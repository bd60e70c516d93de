"""Generated walks (a store of ``embwalk generate``): one store's per-step curves, repetition,
self-bias and nearest-token decoding (``fig_generation``), and several stores side by side
(``fig_strategies``, ``report.stores``: e.g. the same prompts decoded greedy, sampled, by beams).

Everything drawn comes from the generation family's tables (pipeline/stats/generation.py,
docs/statistics.md "Generated walks"): step j = the j-th generated token, chosen by the context
vector c of the row before it, p = softmax(c Wᵀ + b) the model's distribution and q the one the
token was drawn from (after repetition penalty and warpers). The one number not in the tables,
the mean log p of the chosen tokens, is read from the store's token table (its ``prob`` column,
one value per generated token): exact, where the binned ``prob`` statistic only has quantiles.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from embwalk.report.data import ReportData, has_generation, quantile_sides
from embwalk.report.figures.common import RESID, Figure, Quantiles, bound_notes, notes_text, quantile_band, save
from embwalk.report.summary import Row

STEP = "step (0 = the first generated token)"
STRATEGIES_FILE = "strategies"  # strategies.png, strategies.csv
STRATEGIES_TITLE = "Decoding strategies side by side (report.stores)"


# ---------------------------------------------------------------------------------------------
# What a store's manifest says of its decoding

def decode_options(data: ReportData) -> dict:
    return (data.store.manifest.get("generation") or {}).get("decode") or {}


def decode_label(decode: dict) -> str:
    """The strategy and the parameters that shape it, as a legend names it: "greedy",
    "greedy rp=1.3", "sample T=0.8 top_p=0.9", "beam K=4". Parameters at their "off" value
    are left out; the seed and length penalty (which never reorders equal-length beams) too."""
    strategy = decode.get("strategy", "?")
    parts = [strategy]
    if strategy == "sample":
        if decode.get("temperature", 1.0) != 1.0:
            parts.append(f"T={decode['temperature']:g}")
        if decode.get("top_k", 0):
            parts.append(f"top_k={decode['top_k']}")
        if decode.get("top_p", 1.0) != 1.0:
            parts.append(f"top_p={decode['top_p']:g}")
        if decode.get("min_p") is not None:
            parts.append(f"min_p={decode['min_p']:g}")
    if strategy == "beam":
        parts.append(f"K={decode.get('num_beams', '?')}")
        if decode.get("samples", 1) > 1:
            parts.append(f"best {decode['samples']} kept")
    if decode.get("repetition_penalty", 1.0) != 1.0:
        parts.append(f"rp={decode['repetition_penalty']:g}")
    return " ".join(parts)


def decode_text(decode: dict) -> str:
    """Every decoding option that applies to the strategy, for a caption."""
    s = decode.get("strategy", "?")
    keys = {"greedy": ("repetition_penalty",),
            "sample": ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"),
            "beam": ("num_beams", "length_penalty", "repetition_penalty")}.get(s, tuple(decode))
    opts = ", ".join(f"{k}={'None' if decode.get(k) is None else format(decode[k], 'g')}" for k in keys if k in decode)
    return f"{s} ({opts})" if opts else s


def prompts_text(data: ReportData) -> str:
    """"16 prompts of 32 tokens × 2 continuations of 48 tokens" (the manifest's generation)."""
    g = data.store.manifest.get("generation") or {}
    s = int(g.get("samples", 1))
    length = g.get("prompt_len") or f"up to {g.get('max_prompt_len', '?')}"  # None: one prompt per document
    return (f"{g.get('n_prompts', '?')} prompts of {length} tokens × {s} "
            f"continuation{'s' if s != 1 else ''} of {g.get('new_tokens', '?')} tokens")


# ---------------------------------------------------------------------------------------------
# The chosen tokens, from the token table

@dataclass(frozen=True)
class Chosen:
    """The store's generated tokens: how many, the mean log p(chosen) (nats, under the model's
    distribution p, as the token table's ``prob``), and a digest of its prompts' token ids."""

    n: int
    mean_logprob: float
    prompts: int  # sum mod 2**64 of a hash of (prompt_id, pos, token_id) over the prompts' rows

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean_logprob) if math.isfinite(self.mean_logprob) else math.nan


def chosen(data: ReportData) -> Chosen:
    """Read once per store (its path, committed shards and generation options) in a process."""
    key = json.dumps(data.store.manifest.get("generation"), sort_keys=True, default=str)
    return _chosen(str(data.root.resolve()), tuple(data.store.committed), key)


@lru_cache(maxsize=32)
def _chosen(root: str, committed: tuple[int, ...], _generation: str) -> Chosen:
    """One pass over the token tables, shard by shard: memory is one shard's table whatever the
    store holds (the prompts are compared by a digest, summed row by row, so a prompt split
    between two shards hashes as it would whole)."""
    from embwalk.store.reader import Store

    store = Store(root)
    n, total, digest = 0, 0.0, np.uint64(0)
    for index in committed:
        t = store.read_tokens(index, columns=["prompt_id", "sample", "generated", "pos", "token_id", "prob"])
        gen = t.column("generated").to_numpy(zero_copy_only=False).astype(bool)
        p = t.column("prob").to_numpy(zero_copy_only=False).astype(np.float64)[gen]
        n += int(p.size)
        total += float(np.log(np.maximum(p, 1e-45)).sum())  # a float32 underflow counts as 1e-45
        first = (t.column("sample").to_numpy() == 0) & ~gen  # the prompt's rows of its first continuation
        rows = [t.column(c).to_numpy()[first].astype(np.uint64) for c in ("prompt_id", "pos", "token_id")]
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps: the digest is a sum mod 2**64
            digest += _mix(_mix(rows[0]) ^ rows[1] * np.uint64(0x9E3779B97F4A7C15) ^ rows[2]).sum(dtype=np.uint64)
    return Chosen(n, total / n if n else math.nan, int(digest))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (wrapping)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


# ---------------------------------------------------------------------------------------------
# The tables' numbers

def step_quantiles(data: ReportData, stat: str) -> Quantiles | None:
    """A per-step binned stat of the ``generation`` table (steps >= 0; -1, the pooled row, left
    out) as the layer-wise figures' Quantiles, with the step as its x."""
    r = data.rows("generation", stat=stat)
    if not r:
        return None
    keep = r["step"] >= 0
    step = r["step"][keep]
    h = data.rows("generation_hist", stat=stat)
    h = {("layer" if k == "step" else k): v for k, v in h.items()}  # quantile_sides groups by "layer"
    values, side = {}, {}
    for q, level in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        sides = quantile_sides(h, level)
        values[q] = r[q][keep].astype(np.float64)
        side[q] = np.array([sides.get(int(v), 0) for v in step], np.int64)
    exact = (r["count"][keep] > 0) & (r["std"][keep] == 0)
    return Quantiles(step, values, side, exact, data.hist_edge("generation", stat, -1),
                     data.hist_edge("generation", stat, +1))


def pooled(data: ReportData, stat: str, column: str = "median") -> float:
    """``column`` of ``stat`` over every step (the ``generation`` table's step -1)."""
    r = data.rows("generation", stat=stat, step=-1)
    return float(r[column][0]) if r and len(r[column]) else math.nan


def top1_share(data: ReportData) -> tuple[np.ndarray, np.ndarray, float]:
    """Per step, the share of chosen tokens that were the model's top token (rank 0: the rank
    histogram's bin [0, 1)); and that share pooled over the steps."""
    h = data.rows("generation_hist", stat="rank")
    if not h:
        return np.array([]), np.array([]), math.nan
    steps = np.unique(h["step"])
    total = np.array([h["count"][h["step"] == s].sum() for s in steps], np.float64)
    top = np.array([h["count"][(h["step"] == s) & (h["bin"] == 1)].sum() for s in steps], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps, top / total, float(top.sum() / total.sum()) if total.sum() else math.nan


def _at(rows: dict, key: str, column: str, value) -> float:
    sel = rows[key] == value if rows else []
    return float(rows[column][sel][0]) if rows and np.any(sel) else math.nan


@dataclass
class StrategyRow:
    """One store's line of the strategies table."""

    store: str  # the store's directory name
    path: str
    label: str  # decode_label
    continuations: str  # "16 × 2"
    mean_logprob: float  # mean log p(chosen), nats (token table)
    perplexity: float  # exp(−mean_logprob)
    top1: float  # share of chosen tokens that were the model's top token
    distinct2: float  # distinct_share at n = 2
    repeated4: float  # repeated_share at n = 4
    loop_share: float  # share of continuations ending in a loop
    looped_tokens: float  # looped_token_share
    self_bias: float  # generation_self, step -1
    in_recent: float  # chosen_in_recent_share, step -1


COLUMNS = (  # (attribute, header, format)
    ("store", "store", ""), ("label", "strategy", ""), ("continuations", "prompts × continuations", ""),
    ("mean_logprob", "mean log p(chosen), nats", ".3f"), ("perplexity", "perplexity exp(−mean log p)", ".3g"),
    ("top1", "top-1 share (rank 0)", ".3f"), ("distinct2", "distinct-2", ".3f"),
    ("repeated4", "repeated 4-gram share", ".3f"), ("loop_share", "loop share", ".3f"),
    ("looped_tokens", "looped-token share", ".3f"), ("self_bias", "self-bias (pooled)", ".4f"),
    ("in_recent", "chosen in last 8 (pooled)", ".3f"),
)


def strategy_row(data: ReportData) -> StrategyRow:
    rep, loops, me = data.rows("generation_repetition"), data.rows("generation_loops"), data.rows("generation_self")
    c = chosen(data)
    return StrategyRow(
        store=data.root.name, path=str(data.root.resolve()), label=decode_label(decode_options(data)),
        continuations=_continuations(data),
        mean_logprob=c.mean_logprob, perplexity=c.perplexity, top1=top1_share(data)[2],
        distinct2=_at(rep, "n", "distinct_share", 2), repeated4=_at(rep, "n", "repeated_share", 4),
        loop_share=float(loops["share"][0]) if loops else math.nan,
        looped_tokens=float(loops["looped_token_share"][0]) if loops else math.nan,
        self_bias=_at(me, "step", "self_bias", -1), in_recent=_at(me, "step", "chosen_in_recent_share", -1),
    )


def _fmt(value, fmt: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    return format(value, fmt) if fmt else str(value)


def strategies_table(rows: list[StrategyRow]) -> str:
    """The strategies table as HTML (one row per store, this store first)."""
    e = html.escape
    parts = ["<table class='summary strategies'>",
             "<tr>" + "".join(f"<th>{e(h)}</th>" for _, h, _ in COLUMNS) + "</tr>"]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = _fmt(getattr(r, key), fmt)
            cells.append(f"<td class='num'>{e(value)}</td>" if fmt else f"<td>{e(value)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def write_strategies_csv(rows: list[StrategyRow], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [key for key, _, _ in COLUMNS])
        for r in rows:
            w.writerow([r.path] + [getattr(r, key) for key, _, _ in COLUMNS])


def generation_rows(data: ReportData) -> list[Row]:
    """The summary table's rows of a generation store (none without the generation tables)."""
    if not has_generation(data):
        return []
    r = strategy_row(data)
    return [
        Row("gen_decode", "generation: decoding", r.label, False),
        Row("gen_logprob", "generation: mean log p(chosen token), nats", r.mean_logprob, fmt=".3f"),
        Row("gen_top1", "generation: share of chosen tokens ranked first by the model", r.top1, fmt=".3f"),
        Row("gen_distinct2", "generation: distinct-2 (distinct / generated bigrams)", r.distinct2, fmt=".3f"),
        Row("gen_repeated4", "generation: repeated 4-gram share", r.repeated4, fmt=".3f"),
        Row("gen_loops", "generation: share of continuations ending in a loop", r.loop_share, fmt=".3f"),
        Row("gen_self_bias", "generation: self-bias recent_cos − vocab_cos (pooled)", r.self_bias, fmt=".4f"),
    ]


# ---------------------------------------------------------------------------------------------
# One store

def _below(ax, ncol: int = 2) -> None:
    """A panel's legend under its axis (the panels are full inside)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False)


def _finish(ax, title: str, xlabel: str, ylabel: str, integer: bool = True) -> None:
    """Title, labels, light grid; integer ticks on x (steps, n-gram sizes, residual indices)."""
    if integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _plain_log(ax) -> None:
    """A log y axis labelled in plain numbers (0.1, 1, 100), with minor labels where it spans
    few decades (2, 3, 5 under 1.5 decades; 2, 5 under 3); call once the limits are set."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    lo, hi = ax.get_ylim()
    span = hi / lo if lo > 0 else math.inf
    leads = (2, 3, 5) if span < 30 else (2, 5) if span < 1000 else ()

    def minor(v, _):
        lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9)) if v > 0 else 0
        return f"{v:g}" if lead in leads else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor) if leads else NullFormatter())


def fig_generation(data: ReportData, out: Path) -> Figure | None:
    if not has_generation(data):
        return None
    fig, axes = plt.subplots(2, 4, figsize=(21, 9.6), gridspec_kw={"wspace": 0.32, "hspace": 0.62})
    notes: list[str] = []
    # row 1: how each step chose
    ent = step_quantiles(data, "entropy")
    ax = axes[0, 0]
    if ent is not None:
        quantile_band(ax, ent, "C0", "H(p)")
        _pooled_mark(ax, ent.layer, pooled(data, "entropy"), "C0")
        notes += bound_notes(ent, "entropy")
    _finish(ax, "entropy H(p) of the model's distribution (◀ pooled median)", STEP, "nats")
    _below(ax)
    ax = axes[0, 1]
    prob = step_quantiles(data, "prob")
    if prob is not None:
        quantile_band(ax, prob, "C1", "p(chosen)", log=True)
        _pooled_mark(ax, prob.layer, pooled(data, "prob"), "C1")
        notes += bound_notes(prob, "p(chosen)")
    sq = step_quantiles(data, "sample_prob")
    p_mean, q_mean = pooled(data, "prob", "mean"), pooled(data, "sample_prob", "mean")
    draws_differ = sq is not None and not math.isclose(p_mean, q_mean, rel_tol=1e-6, abs_tol=1e-9)
    if draws_differ:
        ax.plot(sq.layer, np.where(sq.known("median") > 0, sq.known("median"), np.nan), color="C4", ls="--",
                label="q(chosen) median (the distribution it was drawn from)")
    _finish(ax, "probability of the chosen token (◀ pooled median)", STEP, "probability (log)")
    _plain_log(ax)
    _below(ax)
    ax = axes[0, 2]
    nuc = step_quantiles(data, "nucleus")
    p_nuc = data.summary.get("config", {}).get("nucleus_p")
    p_text = f"p = {p_nuc:g}" if p_nuc is not None else "p: not recorded"
    if nuc is not None:
        quantile_band(ax, nuc, "C2", "nucleus", log=True)
        _pooled_mark(ax, nuc.layer, pooled(data, "nucleus"), "C2")
        notes += bound_notes(nuc, "nucleus size")
    _finish(ax, f"nucleus size of p (top-p, {p_text}; ◀ pooled median)", STEP, "tokens (log)")
    _plain_log(ax)
    _below(ax)
    ax = axes[0, 3]
    steps, top1, top1_all = top1_share(data)
    ax.plot(steps, top1, color="C3", marker=".", label="chosen token = the model's top token (rank 0)")
    ax.set_ylim(-0.03, 1.03)
    _finish(ax, "share of steps choosing the model's top token", STEP, "share of continuations")
    _below(ax, 1)
    # row 2: what the continuations became
    ax = axes[1, 0]
    rep = data.rows("generation_repetition")
    n = rep["n"]
    ax.plot(n, rep["repeated_share"], color="C3", marker="o",
            label="repeated share: n-gram seen earlier in the sequence")
    ax.plot(n, rep["distinct_share"], color="C0", marker="s", label="distinct-n: distinct / generated n-grams")
    ax.set_xticks(n)
    ax.set_ylim(-0.03, 1.03)
    _finish(ax, "repetition by n-gram size", "n (n-gram size)", "share")
    _below(ax, 1)
    me = data.rows("generation_self")
    sel = me["step"] >= 0
    x = me["step"][sel]
    ax = axes[1, 1]
    ax.plot(x, me["recent_cos"][sel], color="C1", label="recent_cos: mean cos(c, W[x_s]), last 8 tokens")
    ax.plot(x, me["vocab_cos"][sel], color="0.45", label="vocab_cos: mean cos(c, W_v) over the vocabulary")
    ax.fill_between(x, me["vocab_cos"][sel], me["recent_cos"][sel], color="C1", alpha=0.18, lw=0,
                    label="self_bias = recent_cos − vocab_cos")
    ax.axhline(0, color="0.7", lw=0.8)
    _finish(ax, "self-bias: context vector c towards its recent tokens", STEP, "mean cosine")
    _below(ax, 1)
    ax = axes[1, 2]
    ax.plot(x, me["chosen_in_recent_share"][sel], color="C5", marker=".", label="chosen token is one of the last 8")
    ax.set_ylim(-0.03, 1.03)
    _finish(ax, "chosen token repeats one of the last 8 tokens", STEP, "share of continuations")
    _below(ax, 1)
    ax = axes[1, 3]
    near = data.rows("generation_nearest")
    layers = _nearest_layers(data, near)
    if near and len(near["layer"]):
        ax.plot(layers, near["share_nearest"], color="C0", marker=".",
                label="share: chosen token is the nearest by cosine (rank 0)")
        ax.set_ylim(-0.03, 1.03)
        tw = ax.twinx()
        tw.plot(layers, near["median_rank"] + 1, color="C7", ls=":", lw=1.5)
        tw.set_yscale("log")
        _plain_log(tw)
        tw.set_ylabel("median rank by cosine + 1 (dotted)", color="C7")
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="C7", ls=":"))
        labels.append("median cosine rank + 1 (right axis)")
        _finish(ax, "nearest-token decoding of resid[l] at the step's context", RESID, "share of steps")
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1,
                  frameon=False)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "nearest-token decoding: not computed\n(the store holds no resid)", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    label = decode_label(decode_options(data))
    fig.suptitle(f"{data.root.name}: {label} decoding, {prompts_text(data)}", fontsize=12, y=0.995)
    save(fig, out, "generation")
    return Figure("generation", "Generated walks: per-step decoding, repetition, self-bias, nearest-token decoding",
                  _caption(data, draws_differ, top1_all, p_text) + notes_text(notes))


def _nearest_layers(data: ReportData, near: dict) -> np.ndarray:
    """The residual indices of the nearest table's rows: its ``layer`` counts along the store's
    resid axis, which is the residual index when the store keeps every layer."""
    if not near:
        return np.array([])
    held = data.summary.get("resid_layers") or []
    pos = near["layer"].astype(np.int64)
    if len(held) == len(pos):
        return np.asarray(held, np.int64)[pos]
    return pos


def _caption(data: ReportData, draws_differ: bool, top1: float, p_text: str) -> str:
    g = data.store.manifest.get("generation") or {}
    c = chosen(data)
    rep, loops = data.rows("generation_repetition"), data.rows("generation_loops")
    me = data.rows("generation_self")
    n_steps = data.rows("generation", stat="entropy")
    per_step = int(n_steps["count"][n_steps["step"] >= 0].max()) if n_steps else 0
    text = (f"Decoding: {decode_text(decode_options(data))}; {prompts_text(data)} "
            f"({c.n} generated tokens; up to {per_step} continuations per step). "
            "Top row, per step j (the j-th generated token, chosen by the context vector c of the row before it; "
            "p = softmax(c Wᵀ + b), the model's distribution): median and quartiles over continuations of the "
            "entropy H(p), of p(chosen) (log axis)"
            + (", with the median of q(chosen), the probability under the distribution the token was drawn "
               "from (after repetition penalty / temperature / top-k / top-p), dashed" if draws_differ else "")
            + f", and of the nucleus size (the fewest most-probable tokens holding ≥ {p_text.split('= ')[-1]} of p); "
            "quantiles from binned histograms (within one bin), and the share of steps whose token was p's top one. "
            "Bottom row: repeated share (n-grams ending in the continuation that also end earlier in the sequence, "
            "prompt included) and distinct-n (distinct / all n-grams inside the continuation), pooled over "
            "continuations; per step, the mean cosine of c to the token vectors W[x_s] of the 8 previous tokens "
            "(recent_cos) against its mean cosine to the whole vocabulary (vocab_cos), and the share of steps whose "
            "token is one of those 8; nearest-token decoding: the share of steps whose chosen token has the "
            "largest cosine with resid[l] of the context row. ")
    distinct2, repeated4 = _at(rep, "n", "distinct_share", 2), _at(rep, "n", "repeated_share", 4)
    text += (f"On this run: pooled median entropy {pooled(data, 'entropy'):.3g} nats, median p(chosen) "
             f"{pooled(data, 'prob'):.3g}, mean log p(chosen) {c.mean_logprob:.3f} nats "
             f"(perplexity {c.perplexity:.3g}, from the token table); {top1:.0%} of the tokens were p's top token; "
             f"distinct-2 {distinct2:.3f}, repeated 4-gram share {repeated4:.3f}; "
             f"{loops['looping'][0]} of {loops['n_sequences'][0]} continuations end in a loop "
             f"(share {loops['share'][0]:.3f}; period ≤ 16 repeated at least twice to the end), "
             f"{loops['looped_token_share'][0]:.3f} of the generated tokens are inside a loop; pooled self-bias "
             f"{_at(me, 'step', 'self_bias', -1):.4f} (recent_cos {_at(me, 'step', 'recent_cos', -1):.4f}, vocab_cos "
             f"{_at(me, 'step', 'vocab_cos', -1):.4f}), chosen token among the last 8 in "
             f"{_at(me, 'step', 'chosen_in_recent_share', -1):.3f} of the steps.")
    ld = data.rows("generation_loop_dist")
    if ld and loops["looping"][0]:
        text += (f" Loops start at median step {_at(ld, 'stat', 'median', 'loop_start'):.0f} with median period "
                 f"{_at(ld, 'stat', 'median', 'loop_period'):.0f}.")
    near = data.rows("generation_nearest")
    if near and len(near["layer"]):
        layers = _nearest_layers(data, near)
        best = int(np.nanargmax(near["share_nearest"]))
        share = near["share_nearest"]
        text += (f" The chosen token is the nearest one by cosine in {share[-1]:.2f} of the steps at "
                 f"residual {int(layers[-1])} (most: {share[best]:.2f} at residual {int(layers[best])}).")
    if g.get("samples", 1) > 1 and decode_options(data).get("strategy") == "beam":
        text += f" The {g['samples']} stored beams of each prompt are pooled (best first)."
    return text


# ---------------------------------------------------------------------------------------------
# Several stores: report.stores

def _width(i: int, k: int) -> float:
    """Line width of store i of k: from 2.4 down to 1.1."""
    return 2.4 - (1.3 * i / (k - 1) if k > 1 else 0.0)


def _pooled_mark(ax, steps: np.ndarray, value: float, color: str) -> None:
    """The pooled value (every step together) as a ◀ just right of the last step."""
    if len(steps) and math.isfinite(value):
        ax.scatter([steps.max() + 0.04 * max(steps.max(), 1) + 0.5], [value], marker="<", s=70, color=color,
                   edgecolors="k", linewidths=0.5, zorder=6, clip_on=False)


def _continuations(d: ReportData) -> str:
    g = d.store.manifest.get("generation") or {}
    return f"{g.get('n_prompts', '?')} × {g.get('samples', '?')}"


def store_labels(stores: list[ReportData]) -> list[str]:
    """Each store's legend entry: its decoding; the model where the stores' models differ, the
    store's name where two entries would still read the same."""
    labels = [decode_label(decode_options(d)) for d in stores]
    models = [d.store.manifest.get("model", {}).get("id", "?") for d in stores]
    if len(set(models)) > 1:
        labels = [f"{lab} ({m})" for lab, m in zip(labels, models, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{d.root.name}]" for lab, d in zip(labels, stores, strict=True)]
    return labels


def prompts_note(stores: list[ReportData]) -> str:
    """Caption text: whether the stores continue the same prompts (their token ids)."""
    first = chosen(stores[0]).prompts
    same = [chosen(d).prompts == first for d in stores[1:]]
    if all(same):
        return "Every store continues the same prompts (token ids compared)."
    differ = ", ".join(d.root.name for d, s in zip(stores[1:], same, strict=True) if not s)
    return (f"The prompts differ from {stores[0].root.name}'s in {differ} (token ids compared): "
            "differences there are not the decoding's alone.")


def fig_strategies(stores: list[ReportData], out: Path) -> tuple[Figure, list[StrategyRow]]:
    """``stores[0]`` (this store) and the others, side by side: one colour each."""
    labels = store_labels(stores)
    colors = [f"C{i % 10}" for i in range(len(stores))]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.4), gridspec_kw={"wspace": 0.27, "hspace": 0.42})
    k = len(stores)
    for i, (d, color) in enumerate(zip(stores, colors, strict=True)):
        lw = _width(i, k)  # the first store widest: equal curves stay visible under the later ones
        dx = (i - (k - 1) / 2) * min(0.06, 0.3 / k)  # n-gram panels: each store a little aside
        ent, prob = step_quantiles(d, "entropy"), step_quantiles(d, "prob")
        if ent is not None:
            axes[0, 0].plot(ent.layer, ent.known("median"), color=color, lw=lw, alpha=0.9)
            _pooled_mark(axes[0, 0], ent.layer, pooled(d, "entropy"), color)
        if prob is not None:
            y = prob.known("median")
            axes[0, 1].plot(prob.layer, np.where(y > 0, y, np.nan), color=color, lw=lw, alpha=0.9)
            _pooled_mark(axes[0, 1], prob.layer, pooled(d, "prob"), color)
        rep = d.rows("generation_repetition")
        axes[0, 2].plot(rep["n"] + dx, rep["distinct_share"], color=color, marker="s", lw=1.2)
        axes[1, 0].plot(rep["n"] + dx, rep["repeated_share"], color=color, marker="o", lw=1.2)
        me = d.rows("generation_self")
        sel = me["step"] >= 0
        axes[1, 2].plot(me["step"][sel], me["self_bias"][sel], color=color, lw=lw, alpha=0.9)
        _pooled_mark(axes[1, 2], me["step"][sel], _at(me, "step", "self_bias", -1), color)
    _finish(axes[0, 0], "entropy H(p): median per step (◀ pooled over steps)", STEP, "nats")
    _finish(axes[0, 1], "p(chosen token): median per step (◀ pooled)", STEP, "probability (log)")
    axes[0, 1].set_yscale("log")
    _plain_log(axes[0, 1])
    for ax, title in ((axes[0, 2], "distinct-n: distinct / generated n-grams"),
                      (axes[1, 0], "repeated share: n-grams seen earlier in the sequence")):
        _finish(ax, title, "n (n-gram size)", "share")
        ax.set_xticks(range(1, 5))
        ax.set_ylim(-0.03, 1.03)
    ax = axes[1, 1]
    width = 0.8 / len(stores)
    for i, (d, color) in enumerate(zip(stores, colors, strict=True)):
        loops = d.rows("generation_loops")
        vals = [float(loops["share"][0]), float(loops["looped_token_share"][0])]
        xs = np.arange(2) - 0.4 + width * (i + 0.5)
        ax.bar(xs, vals, width=width * 0.92, color=color)
        for xv, v in zip(xs, vals, strict=True):
            ax.text(xv, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([0, 1], ["continuations\nending in a loop", "generated tokens\ninside a loop"])
    ax.set_ylim(0, 1.08)
    _finish(ax, "loops (period ≤ 16, repeated at least twice to the end)", "", "share", integer=False)
    ax.grid(alpha=0.3, axis="y")
    ax.grid(False, axis="x")
    ax = axes[1, 2]
    ax.axhline(0, color="0.7", lw=0.8)
    _finish(ax, "self-bias: recent_cos − vocab_cos per step (◀ pooled)", STEP, "mean cosine difference")
    handles = [Line2D([], [], color=c, lw=2.5) for c in colors]
    top = max(a.get_position().y1 for a in fig.axes) + 0.035
    fig.legend(handles, [f"{lab}   [{d.root.name}: {_continuations(d)} continuations]"
                         for lab, d in zip(labels, stores, strict=True)],
               loc="lower center", bbox_to_anchor=(0.5, top), ncol=2 if len(stores) > 2 else len(stores),
               fontsize=9, frameon=False)
    save(fig, out, STRATEGIES_FILE)
    rows = [strategy_row(d) for d in stores]
    for r, lab in zip(rows, labels, strict=True):
        r.label = lab
    write_strategies_csv(rows, out / f"{STRATEGIES_FILE}.csv")
    text = (f"This store ({stores[0].root.name}, first colour) and {len(stores) - 1} other generation "
            f"store{'s' if len(stores) > 2 else ''} (report.stores), each a colour named by its decoding. "
            "Per step (the j-th generated token): the median over continuations of the entropy H(p) and of "
            "p(chosen) under the model's distribution p (binned: within one bin); by n-gram size: distinct-n "
            "(distinct / all n-grams inside the continuation) and the repeated share (n-grams that also end earlier "
            "in the sequence, prompt included), pooled; the share of continuations ending in a loop and of "
            "generated tokens inside one; per step, the self-bias recent_cos − vocab_cos of the context vector "
            "(> 0: it leans towards the token vectors of its last 8 tokens). " + prompts_note(stores)
            + " The table: mean log p(chosen) from each store's token table (perplexity = exp(−mean)), the other "
            "columns from its generation tables (self-bias and 'chosen in last 8' pooled over steps); also in "
            f"{STRATEGIES_FILE}.csv. ")
    text += "; ".join(f"{r.label}: distinct-2 {r.distinct2:.2f}, repeated 4-gram {r.repeated4:.2f}, loops "
                      f"{r.loop_share:.2f}, mean log p {r.mean_logprob:.2f}" for r in rows) + "."
    return Figure(STRATEGIES_FILE, STRATEGIES_TITLE, text), rows
