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

By what they draw: walk.py (encoding, logit lens, decoding), attention.py (position kernels,
self-bias, sink; a T5 model's learned position bias), geometry.py, document.py (one document's
trajectory and similarity map), generation.py (a generation store's continuations, and several
stores' decoding strategies side by side: report.stores; its x axes are the generation step and
the n-gram size);
common.py holds what they share (saving, style, the compared run's dashed lines, binned
quantiles and their bounds).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node; before any submodule imports pyplot

from embwalk.report.figures.attention import (  # noqa: E402
    SINK_EPSILON,
    fig_bias_share,
    fig_kernels,
    fig_position_bias,
    fig_self_bias,
    fig_sink,
)
from embwalk.report.figures.common import ATTN, DPI, RESID, UNRESOLVED, Figure, Quantiles, quantiles  # noqa: E402
from embwalk.report.figures.document import fig_similarity, fig_trajectory  # noqa: E402
from embwalk.report.figures.generation import (  # noqa: E402
    STRATEGIES_FILE,
    STRATEGIES_TITLE,
    StrategyRow,
    decode_label,
    decode_options,
    decode_text,
    fig_generation,
    fig_strategies,
    generation_rows,
    prompts_text,
    strategies_table,
)
from embwalk.report.figures.geometry import fig_geometry  # noqa: E402
from embwalk.report.figures.walk import fig_decoding, fig_encoding, fig_logit_lens  # noqa: E402

__all__ = [
    "ATTN", "DPI", "RESID", "SINK_EPSILON", "UNRESOLVED", "Figure", "Quantiles", "quantiles",
    "fig_encoding", "fig_logit_lens", "fig_decoding", "fig_kernels", "fig_position_bias", "fig_bias_share",
    "fig_self_bias", "fig_sink",
    "fig_geometry", "fig_trajectory", "fig_similarity",
    "fig_generation", "fig_strategies", "STRATEGIES_FILE", "STRATEGIES_TITLE", "StrategyRow", "decode_label",
    "decode_options", "decode_text", "generation_rows", "prompts_text", "strategies_table",
]
