"""The report's compact summary table: headline numbers of one statistics directory, and with
a compared directory a second column and whether each finding survives there.

A finding *survives* when the compared value has the same sign and is within ``factor`` of it
(both ways: 1/factor <= b/a <= factor), or equals it; a finding missing on either side is
"n/a". Context rows (token counts, options, skipped families) are shown, never judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embwalk.report.data import ReportData

SURVIVE_FACTOR = 2.0  # ReportOptions.survive_factor's default


@dataclass
class Row:
    key: str  # stable id (tests, comparison)
    label: str  # what the number is
    value: float | str | None  # None: not computed in this run
    finding: bool = True  # judged by the survive rule when compared
    fmt: str = ".3g"
    family: str | None = None  # the statistics family it comes from, where a run may not apply it

    def text(self) -> str:
        return format_value(self.value, self.fmt)


def format_value(value: float | str | None, fmt: str = ".3g") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    return format(value, fmt)


def survives(a: float | None, b: float | None, factor: float = SURVIVE_FACTOR) -> bool | None:
    """The survive rule (module docstring); None when either value is missing or not finite."""
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return None
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    if a == b:
        return True
    if np.sign(a) != np.sign(b) or a == 0 or b == 0:
        return False
    ratio = abs(b / a)
    return 1.0 / factor <= ratio <= factor


def survive_caption(factor: float = SURVIVE_FACTOR) -> str:
    return (f"survives: the compared value has the same sign as this run's and is within {factor:g}x of it "
            f"(1/{factor:g} ≤ compared / this ≤ {factor:g}), or equal to it; n/a: missing in one of the runs. "
            "Rows without a verdict are context, not findings.")


def _pick_layers(layers: np.ndarray) -> list[int]:
    """Positions of the first, middle and last entries."""
    n = len(layers)
    return sorted({0, n // 2, n - 1}) if n else []


def headline_rows(data: ReportData) -> list[Row]:
    """The compact summary of one statistics directory (see the module docstring)."""
    s = data.summary
    head = s.get("headline", {})
    tokens = f"{s.get('n_tokens', '?')}, {s.get('n_sequences', '?')}"
    if s.get("n_excluded"):  # tokens left out by stats.exclude_positions / exclude_massive
        tokens += f" ({s['n_excluded']} tokens left out)"
    rows = [Row("tokens", "tokens, sequences", tokens, False)]
    if data.exclusions:
        rows.append(Row("exclusions", "tokens left out (stats options)", data.exclusions, False))
    # decoding
    if "decoding_perplexity" in head:
        rows.append(Row("perplexity", "perplexity exp(−mean log p(next)), final layer",
                        head.get("decoding_perplexity"), fmt=".4g"))
    dr = data.rows("decoding", stat="rank")
    dh = data.rows("decoding_hist", stat="rank", bin=1)  # bin 1 = [0, 1): rank 0
    if dr and dh and dr["count"][0]:
        rows.append(Row("top1", "top-1 accuracy, final layer (share of rank 0)", float(dh["count"][0] / dr["count"][0]),
                        fmt=".3f"))
    # logit lens: median rank at five residual indices
    r = data.rows("logit_lens", stat="rank")
    if r:
        n = len(r["layer"])
        for i in sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1}):
            rows.append(Row(f"lens_rank_{int(r['layer'][i])}",
                            f"logit lens: median next-token rank at residual {int(r['layer'][i])}",
                            float(r["median"][i]), fmt=".4g"))
    # geometry: first/middle/last residual index
    g = data.rows("geometry")
    if g:
        for i in _pick_layers(g["layer"]):
            rows.append(Row(f"anisotropy_{int(g['layer'][i])}", f"anisotropy at residual {int(g['layer'][i])}",
                            float(g["anisotropy"][i]), fmt=".3f"))
        has = np.flatnonzero(np.isfinite(g["eff_dim"]))  # layers with a covariance
        for i in has[_pick_layers(has)] if len(has) else []:
            rows.append(Row(f"eff_dim_{int(g['layer'][i])}", f"effective dimension at residual {int(g['layer'][i])}",
                            float(g["eff_dim"][i]), fmt=".3g"))
        if "massive_share" in g:
            share = np.nan_to_num(g["massive_share"].astype(np.float64))
            peak = int(np.argmax(share))
            dim = int(g["massive_dim"][peak]) if "massive_dim" in g else -1
            rows.append(Row("massive_share", "massive activations: largest share of tokens at a residual index",
                            float(share[peak]), fmt=".3g"))
            if share[peak] > 0:
                rows.append(Row("massive_where", "massive activations: where that share is",
                                f"residual {int(g['layer'][peak])}" + (f", dimension {dim}" if dim >= 0 else ""),
                                False))
            mid = len(share) // 2
            rows.append(Row(f"massive_share_{int(g['layer'][mid])}",
                            f"massive activations: share of tokens at residual {int(g['layer'][mid])}",
                            float(share[mid]), fmt=".3g"))
            rows.append(Row("massive_layers", "massive activations: residual indices with any",
                            float((share > 0).sum()), fmt=".0f"))
    # attention
    a = data.rows("attention")
    if a:
        if "attention_sink_rate" in head:
            rows.append(Row("sink_rate", "attention sink rate: share of heads with sink mass > 0.3",
                            head.get("attention_sink_rate"), fmt=".3f", family="attention"))
        rows.append(Row("sink_mass", "mean sink mass (weight on position 0) over heads",
                        float(np.nanmean(a["sink_mass"])), fmt=".3f", family="attention"))
        if "self_ratio" in a:
            rows.append(Row("self_ratio_below_1", f"heads with self_ratio < 1 (of {len(a['self_ratio'])})",
                            float((a["self_ratio"] < 1).sum()), fmt=".0f", family="attention"))
    skipped = s.get("skipped") or {}
    rows.append(Row("skipped", "families skipped",
                    "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) if skipped else "none", False))
    return rows


@dataclass
class Compared:
    row: Row
    other: float | str | None  # the compared directory's value (None: not there)
    verdict: bool | None  # survives? None: n/a or a context row

    def verdict_text(self) -> str:
        if not self.row.finding:
            return ""
        return {True: "yes", False: "no", None: "n/a"}[self.verdict]


NOT_APPLICABLE = "not applicable"


def compare_rows(mine: list[Row], theirs: list[Row], factor: float = SURVIVE_FACTOR,
                 mine_skipped: dict | None = None, theirs_skipped: dict | None = None) -> list[Compared]:
    """``mine`` beside ``theirs`` by key (rows only they have come last, with no value of ours). A
    row of a family one run's model does not have (``*_skipped``: the summaries' reasons, "does
    not apply: ..." for attention in an attention-free model) reads "not applicable" there."""
    def absent(row: Row, skipped: dict | None) -> str | None:
        why = (skipped or {}).get(row.family or "", "")
        return NOT_APPLICABLE if why.startswith("does not apply") else None

    other = {r.key: r for r in theirs}
    out = []
    for r in mine:
        t = other.pop(r.key, None)
        value = absent(r, theirs_skipped) if t is None else t.value
        out.append(Compared(r, value, survives(r.value, value, factor) if r.finding else None))
    for t in other.values():
        out.append(Compared(Row(t.key, t.label, absent(t, mine_skipped), t.finding, t.fmt, t.family), t.value, None))
    return out
