"""Attention statistics per (layer, head), over visible (query i, key j) pairs only
(causal: j <= i; bidirectional: all j).

- position kernel: mean weight A[i, j] at each relative offset i - j, with the
  kernel uniform attention would give (a causal row i spreads 1/(i+1)) beside it
- self weight: mean A[i, i] against the uniform baseline mean 1/n_visible(i);
  ``self_bias`` = their difference (negative = a token avoids itself)
- entropy of each query's row (nats), beside the uniform row's log n_visible(i)
- sink mass: mean A[i, 0]

Positions the statistics leave out (``SequenceInputs.keep``) are left out as queries and
from every pair (kernel, association bias); their weight as keys stays in each kept
query's row, so a row still sums to 1 and the sink mass is still the weight on key 0.
- association bias: Pearson correlation of A[i, j] with cos(x_i, x_j) (x = the
  layer's input, its resid_pre), from n, sum a, sum c, sum a^2, sum c^2, sum ac,
  which add exactly across sequences and shards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from embwalk.stats.base import Accumulator
from embwalk.stats.inputs import SequenceInputs
from embwalk.stats.ops import f32, unit

SUMMARY_SCHEMA = pa.schema(
    [
        ("layer", pa.int64()), ("head", pa.int64()), ("n_queries", pa.int64()),
        ("self_weight", pa.float64()), ("uniform_baseline", pa.float64()),
        ("self_bias", pa.float64()), ("self_ratio", pa.float64()), ("entropy", pa.float64()),
        ("entropy_uniform", pa.float64()), ("sink_mass", pa.float64()),
        ("assoc_pairs", pa.int64()), ("assoc_corr", pa.float64()),
    ]
)
KERNEL_SCHEMA = pa.schema(
    [
        ("layer", pa.int64()), ("head", pa.int64()), ("offset", pa.int64()),
        ("count", pa.int64()), ("mean_weight", pa.float64()), ("uniform_weight", pa.float64()),
        ("ratio_to_uniform", pa.float64()),
    ]
)
_KERNEL = ("kernel_sum", "kernel_count", "kernel_uniform")  # last axis: offsets -(M-1)..M-1
_ASSOC = ("assoc_a", "assoc_a2", "assoc_ac", "assoc_c", "assoc_c2")


class AttentionStats(Accumulator):
    """Per-(layer, head) attention statistics of whole sequences, one per call."""

    family = "attention"
    labels = ("layers", "heads", "causal")
    needs_pattern = True
    uses_layer_inputs = True  # the association bias

    def update_from(self, inputs: SequenceInputs) -> None:
        pattern, n = inputs.pattern, inputs.n
        if pattern is None:
            return
        if tuple(pattern.shape[-2:]) != (n, n):
            raise ValueError(f"pattern must be cropped to the sequence, [..., {n}, {n}]; got {tuple(pattern.shape)}")
        self.update(pattern, inputs.head.causal, inputs.assoc_inputs, inputs.pattern_layers, keep=inputs.keep)

    def update(
        self,
        pattern: torch.Tensor,
        causal: bool,
        inputs: torch.Tensor | None = None,
        layers: Sequence[int] | None = None,
        length: int | None = None,
        keep: torch.Tensor | None = None,
    ) -> None:
        """``pattern`` [L_att, H, S, S] probabilities (query, key) of one sequence;
        ``inputs`` [L_att, S, d] each layer's input vectors (for association bias,
        skipped when None); ``layers``: the model layer ids of the L_att layers;
        ``length``: the real length when the pattern is padded beyond it; ``keep`` [S] the
        positions counted (None: all; module docstring)."""
        if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
            raise ValueError(f"pattern must be [L_att, H, S, S], got {tuple(pattern.shape)}")
        n_layers, n_heads, s, _ = pattern.shape
        if length is not None and not 0 <= int(length) <= s:
            raise ValueError(f"length {length} outside the pattern's 0..{s} positions")
        s = s if length is None else int(length)
        dev = pattern.device
        layer_ids = np.arange(n_layers) if layers is None else np.asarray(layers, np.int64)
        if layer_ids.shape != (n_layers,):
            raise ValueError(f"layers must list {n_layers} layer ids, got {list(layer_ids)}")
        if inputs is not None and tuple(inputs.shape[:2]) != (n_layers, pattern.shape[-1]):
            raise ValueError(f"inputs must be [L_att, S, d], got {tuple(inputs.shape)}")
        self._init(layer_ids, n_heads, causal)
        if s < 1:
            return
        self._grow(s)
        m = self.state["kernel_count"].shape[0] // 2 + 1  # offsets held: -(m-1)..m-1
        rows = n_layers * n_heads
        p = f32(pattern[..., :s, :s]).reshape(rows, s, s)
        i = torch.arange(s, device=dev)[:, None]
        j = torch.arange(s, device=dev)[None, :]
        vis = (j <= i) if causal else torch.ones(s, s, dtype=torch.bool, device=dev)
        n_vis = vis.sum(1).to(torch.float64)  # [S]
        q = slice(None) if keep is None else keep[:s].to(dev)  # the queries counted
        self.state["n_queries"] += s if keep is None else int(q.sum())
        self._add("uniform_sum", (1.0 / n_vis)[q].sum()[None])
        self._add("entropy_uniform_sum", n_vis.log()[q].sum()[None])
        # The diagonal and key 0 are visible to every query, causal or not.
        diag = p.diagonal(dim1=-2, dim2=-1)[:, q]  # [L*H, queries]
        self._add("self_sum", diag.sum(-1).view(n_layers, n_heads))
        # Per query, the self weight over the uniform one (1 / keys visible): early queries, whose
        # uniform weight is large, no longer dominate the pooled self-bias.
        self._add("self_ratio_sum", (diag.to(torch.float64) * n_vis[q]).sum(-1).view(n_layers, n_heads))
        self._add("sink_sum", p[:, q, 0].sum(-1).view(n_layers, n_heads))
        # Everything else reads the visible pairs only, gathered once by flat index (weight on
        # invisible keys never counts, and a causal pattern's upper half is never touched).
        flat = p.reshape(rows, s * s)
        if keep is None:
            vis_idx = vis.reshape(-1).nonzero().squeeze(1)  # [pairs]
            w = flat.index_select(1, vis_idx)  # [L*H, pairs]
            row_w = w
        else:  # a kept query's whole row, but only the pairs of two kept positions
            rows_vis = vis & q[:, None]
            row_w = flat.index_select(1, rows_vis.reshape(-1).nonzero().squeeze(1))
            vis_idx = (rows_vis & q[None, :]).reshape(-1).nonzero().squeeze(1)
            w = flat.index_select(1, vis_idx)
        off = (i - j + m - 1).reshape(-1).index_select(0, vis_idx)
        self._add("entropy_sum", -torch.special.xlogy(row_w, row_w).sum(-1).view(n_layers, n_heads))
        # Position kernel: scatter every visible pair's weight into its offset bin.
        ksum = torch.zeros(rows, 2 * m - 1, device=dev).index_add_(1, off, w)
        self._add("kernel_sum", ksum.view(n_layers, n_heads, -1))
        self._add("kernel_count", torch.bincount(off, minlength=2 * m - 1))
        uni = (1.0 / n_vis)[:, None].expand(s, s).reshape(-1).index_select(0, vis_idx)
        self._add("kernel_uniform", torch.bincount(off, weights=uni, minlength=2 * m - 1))
        if inputs is not None:
            pick = None  # which visible pairs enter the correlation
            if not self.config.assoc_include_self:
                pick = (off != m - 1).nonzero().squeeze(1)  # offset 0 is the pair i == j
                w = w.index_select(1, pick)
            self._association(w.view(n_layers, n_heads, -1), f32(inputs[:, :s]), vis_idx, pick)

    def _association(self, w: torch.Tensor, x: torch.Tensor, vis_idx: torch.Tensor,
                     pick: torch.Tensor | None) -> None:
        """Sums of a, a^2, a c, c, c^2 over the pairs: w [L_att, H, pairs] weights, x the inputs."""
        n_pairs = w.shape[-1]
        self._add("assoc_n", torch.full((1,), n_pairs, dtype=torch.long, device=w.device))
        u = unit(x)
        s = x.shape[1]
        n_layers = w.shape[0]
        # Blocks of layers, in float64: the correlation is a difference of sums that cancel
        # when it is small. A block's cosine matrices [k, S, S] and weights [k, H, pairs] stay
        # below ~2^24 values; few large ops rather than many small ones (each op of a
        # multi-threaded CPU pool waits at a barrier).
        step = max(1, (1 << 24) // max(s * s, w.shape[1] * w.shape[2]))
        sums: dict[str, list[torch.Tensor]] = {k: [] for k in _ASSOC}
        for lo in range(0, n_layers, step):
            ub = u[lo : lo + step]
            c = torch.bmm(ub, ub.transpose(1, 2)).view(ub.shape[0], s * s).index_select(1, vis_idx)
            c = c if pick is None else c.index_select(1, pick)  # [k, pairs]
            a = w[lo : lo + step]  # [k, H, pairs]
            block = _centred_sums(a, c, n_pairs) if self.config.fast_moments else _sums(a.double(), c.double())
            for key, v in zip(_ASSOC, block, strict=True):
                sums[key].append(v)
        for key, vs in sums.items():
            self._add(key, torch.cat(vs))

    def _init(self, layer_ids: np.ndarray, n_heads: int, causal: bool) -> None:
        if self.state:
            st = self.state
            if not np.array_equal(st["layers"], layer_ids) or len(st["heads"]) != n_heads:
                raise ValueError(
                    f"pattern layers {list(layer_ids)} x {n_heads} heads differ from the "
                    f"accumulator's {list(st['layers'])} x {len(st['heads'])}"
                )
            if bool(st["causal"][0]) != bool(causal):
                raise ValueError("cannot mix causal and bidirectional attention in one accumulator")
            return
        shape = (len(layer_ids), n_heads)
        self.state = {
            "layers": layer_ids.astype(np.int64),
            "heads": np.arange(n_heads, dtype=np.int64),
            "causal": np.array([int(bool(causal))], np.int64),
            "n_queries": np.zeros(1, np.int64),
            "uniform_sum": np.zeros(1),
            "entropy_uniform_sum": np.zeros(1),
            "assoc_n": np.zeros(1, np.int64),
            "assoc_c": np.zeros(shape[0]),
            "assoc_c2": np.zeros(shape[0]),
            "kernel_sum": np.zeros(shape + (1,)),
            "kernel_count": np.zeros(1, np.int64),
            "kernel_uniform": np.zeros(1),
        }
        for key in ("self_sum", "self_ratio_sum", "sink_sum", "entropy_sum",
                    "assoc_a", "assoc_a2", "assoc_ac"):
            self.state[key] = np.zeros(shape)

    def _grow(self, s: int) -> None:
        if self.state["kernel_count"].shape[0] // 2 + 1 < s:
            self.state = _padded(self.export_state(), s)  # flush first: widths change

    def _merge_state(self, theirs: dict[str, np.ndarray]) -> None:
        width = max(self.state["kernel_count"].shape[0], theirs["kernel_count"].shape[0])
        m = width // 2 + 1
        self.state = _padded(self.state, m)
        super()._merge_state(_padded(theirs, m))

    def result(self) -> dict[str, pa.Table]:
        """``attention``: layer, head, n_queries, self_weight, uniform_baseline, self_bias,
        self_ratio, entropy, entropy_uniform, sink_mass, assoc_pairs, assoc_corr;
        ``attention_kernel``: layer, head, offset, count, mean_weight, uniform_weight,
        ratio_to_uniform (mean_weight / uniform_weight: 1 = no preference for that offset)."""
        st = self.export_state()
        if not st:
            return {"attention": SUMMARY_SCHEMA.empty_table(),
                    "attention_kernel": KERNEL_SCHEMA.empty_table()}
        n_l, n_h = st["self_sum"].shape
        lay = np.repeat(st["layers"], n_h)
        head = np.tile(st["heads"], n_l)
        nq = st["n_queries"][0]
        with np.errstate(invalid="ignore", divide="ignore"):
            uniform = st["uniform_sum"][0] / nq
            self_w = (st["self_sum"] / nq).ravel()
            n = st["assoc_n"][0]
            ma, mc = st["assoc_a"] / n, (st["assoc_c"] / n)[:, None]
            cov = st["assoc_ac"] / n - ma * mc
            var_a = st["assoc_a2"] / n - ma * ma
            var_c = (st["assoc_c2"] / n)[:, None] - mc * mc
            corr = (cov / np.sqrt(var_a * var_c)).ravel()
        k = n_l * n_h
        summary = pa.table(
            [lay, head, np.full(k, nq), self_w, np.full(k, uniform), self_w - uniform,
             (st["self_ratio_sum"] / nq).ravel(),
             (st["entropy_sum"] / nq).ravel(), np.full(k, st["entropy_uniform_sum"][0] / nq),
             (st["sink_sum"] / nq).ravel(), np.full(k, n), corr],
            schema=SUMMARY_SCHEMA,
        )
        count = st["kernel_count"]
        m = count.shape[0] // 2 + 1
        offsets = np.arange(-(m - 1), m)
        has = count > 0
        n_off = int(has.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = st["kernel_sum"][:, :, has] / count[has]
            uni = st["kernel_uniform"][has] / count[has]
        kernel = pa.table(
            [np.repeat(lay, n_off), np.repeat(head, n_off), np.tile(offsets[has], k),
             np.tile(count[has], k), mean.reshape(-1), np.tile(uni, k), (mean / uni).reshape(-1)],
            schema=KERNEL_SCHEMA,
        )
        return {"attention": summary, "attention_kernel": kernel}


def _sums(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sum a, a^2, a c (per head), c, c^2 over the pairs: a [k, H, pairs], c [k, pairs]."""
    return (a.sum(-1), torch.linalg.vecdot(a, a), torch.bmm(a, c[:, :, None])[..., 0],
            c.sum(-1), torch.linalg.vecdot(c, c))


def _centred_sums(a: torch.Tensor, c: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``_sums`` in float64 from float32 sums of centred values (``fast_moments``).

    Plain float32 sums lose the correlation: it is a small difference of large sums (a
    weight ~1/n times a cosine ~0.3 against their ~1e-5 covariance). Shifted by the block's
    own means r, q, the float32 sums hold only the small centred parts, and the plain sums
    are rebuilt exactly in float64 (sum ac = sum (a-r)(c-q) + r sum (c-q) + q sum (a-r) + n r q),
    so the correlation keeps ~1e-7 of itself."""
    r, q = a.mean(-1, keepdim=True), c.mean(-1, keepdim=True)
    ac, cc = a - r, c - q
    a1, aa, axc, c1, c2 = _sums(ac, cc)
    r, q = r[..., 0].double(), q.double()  # [k, H], [k, 1]
    a1, aa, axc, c1, c2 = a1.double(), aa.double(), axc.double(), c1.double(), c2.double()
    qc = q[:, 0]
    return (a1 + n * r, aa + 2 * r * a1 + n * r * r, axc + r * c1[:, None] + q * a1 + n * r * q,
            c1 + n * qc, c2 + 2 * qc * c1 + n * qc * qc)


def _padded(state: dict[str, np.ndarray], m: int) -> dict[str, np.ndarray]:
    """State with kernel arrays widened (zeros) to offsets -(m-1)..m-1, centre kept."""
    have = state["kernel_count"].shape[0] // 2 + 1
    if have >= m:
        return state
    pad = m - have
    out = dict(state)
    for key in _KERNEL:
        widths = [(0, 0)] * (state[key].ndim - 1) + [(pad, pad)]
        out[key] = np.pad(state[key], widths)
    return out
