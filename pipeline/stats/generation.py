"""Generated walks: statistics of stored continuations (``embwalk generate``).

A continuation is one sequence: a prompt of P tokens x_0..x_{P-1} followed by N generated
tokens x_P..x_{P+N-1} (``generated`` rows; step j = the j-th generated token, row P + j).
The final vector at row i is the context vector c that chose the token at row i + 1, so
generated row i (step j) was chosen by c = final[i - 1] (none when i = 0: a step without a
context is left out of what needs c). One continuation per ``update`` call. Per continuation:

Repetition (n = 1..4, ``NGRAM_SIZES``), over the n-grams g_e = (x_{e-n+1}, ..., x_e):

- ``ngrams``: n-grams ending at a generated row e (start e-n+1 >= 0: may begin in the prompt);
  ``repeated``: those whose n-gram also ends at an earlier row f < e of the same sequence
  (prompt included);
- ``inner``: n-grams lying inside the generated part (e-n+1 >= P); ``distinct``: how many
  different ones (distinct-n, Li et al. 2016);
- pooled shares (ratio of sums) and means over continuations of the per-continuation share.

Loops: the loop start is the first step s such that the generated tokens from s on are
periodic with a period k <= ``MAX_PERIOD`` covering at least ``MIN_PERIODS`` periods:
g[j] == g[j + k] for every s <= j < N - k, and N - s >= 2k (g = the generated tokens); the
period is the smallest k with that smallest s. Binned (integer): ``loop_start``, ``loop_period``.

Per step j (binned, integer bins for ranks and sizes): the step records ``entropy``, ``prob``,
``sample_prob``, ``rank`` (token-table columns), and ``nucleus``: the size of the top-p nucleus
of softmax(c W^T + b), p = ``nucleus_p``.

Self-bias, per step with a context vector c (u = unit vectors):

- ``recent_cos``: mean over the ``RECENT`` previous rows s = i-RECENT..i-1 (s >= 0, prompt
  included) of cos(c, W[x_s]);
- ``chosen_cos``: cos(c, W[x_i]);  ``vocab_cos``: mean_v cos(c, W_v) = u(c) . mean_v u(W_v);
- ``self_bias`` = recent_cos - vocab_cos;  ``chosen_in_recent``: x_i is one of x_s.

Nearest-token decoding (when resid is given): per residual layer l, the rank by cosine of the
chosen token among all token vectors for h = resid[i - 1, l]: #{v : cos(h, W_v) > cos(h, W[x_i])}
(0 = nearest; ties count in the token's favour), binned with integer bins.

Token vectors of zero norm have no direction: they are left out of every cosine (recent and
vocabulary means, and the nearest ranks); a context vector of zero norm leaves its step out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

from embwalk.stats import hist
from embwalk.stats.base import Accumulator, StatsMergeError
from embwalk.stats.decoding import nucleus_size
from embwalk.stats.head import logits as _logits
from embwalk.stats.inputs import SequenceInputs
from embwalk.stats.ops import TINY, as_ids, f32

FAMILY = "generation"  # the family name, set on the class when it is registered
NGRAM_SIZES = (1, 2, 3, 4)
MAX_PERIOD = 16  # longest loop period looked for
MIN_PERIODS = 2  # a loop covers at least this many periods
RECENT = 8  # window of recent tokens for the self-bias

# the token-table columns the family reads (beyond the token ids)
COLUMNS = ("generated", "prob", "rank", "entropy", "sample_prob")
# per-step binned statistics and their bin kinds
_STEP_STATS = {"entropy": "entropy", "prob": "prob", "sample_prob": "prob", "rank": "rank",
               "nucleus": "nucleus"}
_LOOP_STATS = {"loop_start": "rank", "loop_period": "rank"}
_REP = ("rep_ngrams", "rep_repeated", "rep_share_sum", "rep_sequences",
        "rep_inner", "rep_distinct", "rep_distinct_share_sum", "rep_inner_sequences")
_LOOPS = ("loop_sequences", "loop_looping", "loop_generated", "loop_looped")
_SELF = ("self_n", "self_recent", "self_chosen", "self_vocab", "self_in_recent")
_HIST_SUFFIXES = (".count", ".sum", ".sumsq", ".hist", ".min", ".max")
_STEP_KEYS = tuple(f"{k}{s}" for k in _STEP_STATS for s in _HIST_SUFFIXES) + _SELF
_NEAREST_KEYS = tuple(f"nearest_rank{s}" for s in _HIST_SUFFIXES) + ("nearest_layers", "nearest_top")

REPETITION_SCHEMA = pa.schema(
    [
        ("n", pa.int64()), ("ngrams", pa.int64()), ("repeated", pa.int64()),
        ("repeated_share", pa.float64()), ("mean_repeated_share", pa.float64()),
        ("sequences", pa.int64()), ("inner_ngrams", pa.int64()), ("distinct", pa.int64()),
        ("distinct_share", pa.float64()), ("mean_distinct_share", pa.float64()),
        ("inner_sequences", pa.int64()),
    ]
)
LOOPS_SCHEMA = pa.schema(
    [
        ("n_sequences", pa.int64()), ("looping", pa.int64()), ("share", pa.float64()),
        ("generated_tokens", pa.int64()), ("looped_tokens", pa.int64()),
        ("looped_token_share", pa.float64()),
    ]
)
SELF_SCHEMA = pa.schema(
    [
        ("step", pa.int64()), ("count", pa.int64()), ("recent_cos", pa.float64()),
        ("chosen_cos", pa.float64()), ("vocab_cos", pa.float64()), ("self_bias", pa.float64()),
        ("chosen_bias", pa.float64()), ("chosen_in_recent_share", pa.float64()),
    ]
)
NEAREST_SCHEMA = pa.schema(
    [
        ("layer", pa.int64()), ("count", pa.int64()), ("share_nearest", pa.float64()),
        ("mean_rank", pa.float64()), ("std_rank", pa.float64()), ("q25_rank", pa.float64()),
        ("median_rank", pa.float64()), ("q75_rank", pa.float64()),
    ]
)


class GenerationWalk(Accumulator):
    """Repetition, loops, per-step curves, self-bias and nearest-token decoding of continuations."""

    family: ClassVar[str] = FAMILY
    labels = ("ngram_sizes", "loop_params", "recent_window", "nearest_layers")
    needs_final_or_last_resid = True
    needs_unembed = True
    needs_columns: ClassVar[tuple[str, ...]] = COLUMNS
    uses_resid = True  # the nearest-token decoding, per residual layer the store holds

    def update_from(self, inputs: SequenceInputs) -> None:
        cols = getattr(inputs, "columns", None)
        if not cols or "generated" not in cols:
            return
        self.update(
            inputs.token_ids, cols["generated"], inputs.final, inputs.head.unembed,
            prob=cols.get("prob"), rank=cols.get("rank"), entropy=cols.get("entropy"),
            sample_prob=cols.get("sample_prob"), bias=inputs.head.bias, resid=inputs.resid,
            softcap=inputs.head.softcap,
        )

    def update(
        self,
        token_ids: torch.Tensor,
        generated: torch.Tensor,
        final: torch.Tensor,
        unembed: torch.Tensor,
        *,
        prob: torch.Tensor | None = None,
        rank: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        sample_prob: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        resid: torch.Tensor | None = None,
        softcap: float | None = None,
    ) -> None:
        """One continuation: ``token_ids`` [n]; ``generated`` [n] bool, True on the last N rows;
        ``final`` [n, d] context vectors (after the final norm); ``unembed`` W [V, d];
        the step records ``prob``, ``entropy``, ``sample_prob`` [n] float (NaN on prompt rows)
        and ``rank`` [n] int (-1 on prompt rows), each optional; ``bias`` [V];
        ``resid`` [n, L+1, d] (optional: the nearest-token decoding per residual layer);
        ``softcap``: the model's final logit soft-capping (None: none).
        The nucleus mass is the config's ``nucleus_p``. A sequence without generated rows
        adds nothing."""
        if final is None or final.ndim != 2:
            raise ValueError("the generated walk needs final [n_tok, d] (after the final norm)")
        n, dev = final.shape[0], final.device
        ids = as_ids(token_ids, n, dev, "token_ids")
        gen = torch.as_tensor(generated).to("cpu", torch.bool)  # the layout is needed on the host
        if gen.shape != (n,):
            raise ValueError(f"generated must have shape ({n},), got {tuple(gen.shape)}")
        n_gen = int(gen.sum())
        p = n - n_gen  # prompt length
        if not bool(gen[p:].all()):
            raise ValueError("generated rows must be the last rows of the sequence (prompt first)")
        if resid is not None and (resid.ndim != 3 or resid.shape[0] != n):
            raise ValueError(f"resid must be [{n}, L+1, d], got {tuple(resid.shape)}")
        self._init(n_gen, None if resid is None else resid.shape[1])
        if n_gen == 0:
            return
        self._repetition(ids, p)
        self._loops(ids[p:])
        steps = self.state["self_n"].shape[0]
        for name, col in (("entropy", entropy), ("prob", prob), ("sample_prob", sample_prob), ("rank", rank)):
            if col is None:
                continue
            v = torch.as_tensor(col).to(dev)
            if v.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
            v = v[p:].to(torch.float64)
            if name == "rank":
                v = torch.where(v >= 0, v, torch.nan)
            self._add_binned(name, _per_step(v, 0, steps), _STEP_STATS[name])
        first = max(0, 1 - p)  # the first step with a context vector (p = 0: step 0 has none)
        if first >= n_gen:
            return
        rows = torch.arange(p + first, n, device=dev)  # generated rows with a context
        c = f32(final[p + first - 1 : n - 1])
        chosen = ids[rows]
        w = f32(unembed).to(dev)
        b = None if bias is None else f32(bias).to(dev)
        w_norm = w.norm(dim=-1)
        has_dir = w_norm > 0
        w_unit = w / w_norm.clamp_min(TINY)[:, None]  # zero rows stay zero
        # nucleus of softmax(c W^T + b) (soft-capped as the model's), chunked over steps: [chunk, V] at a time
        chunk, top_p = self.config.chunk_tokens, self.config.nucleus_p
        sizes = [nucleus_size(torch.log_softmax(_logits(c[s : s + chunk], w, b, softcap), dim=-1), top_p)
                 for s in range(0, len(c), chunk)]
        self._add_binned("nucleus", _per_step(torch.cat(sizes).to(torch.float64), first, steps), "nucleus")
        self._self_bias(c, ids, rows, chosen, w_unit, has_dir, first, steps)
        if resid is not None:
            self._nearest(resid, rows, chosen, w_unit, has_dir)

    # ---- the parts ---------------------------------------------------------------

    def _repetition(self, ids: torch.Tensor, p: int) -> None:
        """n-gram counts of one continuation; exact comparisons of the rows' windows, a block of
        generated rows at a time ([block, n] booleans per size)."""
        n, dev = ids.shape[0], ids.device
        sizes = self.state["ngram_sizes"]
        k_max = int(sizes.max())
        totals = torch.zeros((4, len(sizes)), dtype=torch.long, device=dev)
        f = torch.arange(n, device=dev)
        block = max(1, (1 << 22) // max(n, 1))
        for lo in range(p, n, block):
            e = torch.arange(lo, min(n, lo + block), device=dev)  # ending rows (generated)
            earlier = f[None, :] < e[:, None]
            eq = torch.ones((len(e), n), dtype=torch.bool, device=dev)
            for k in range(k_max):  # eq: the n-grams of size k+1 ending at e and at f are equal
                a, b = e - k, f - k
                same = ids[a.clamp_min(0)][:, None] == ids[b.clamp_min(0)][None, :]
                eq &= same & (a >= 0)[:, None] & (b >= 0)[None, :]
                size = k + 1
                if size not in sizes:
                    continue
                g = int(np.flatnonzero(sizes == size)[0])
                exists = e - k >= 0
                seen = (eq & earlier).any(1)
                inner = e - k >= p
                seen_inner = (eq & earlier & (f - k >= p)[None, :]).any(1)
                totals[0, g] += exists.sum()
                totals[1, g] += (exists & seen).sum()
                totals[2, g] += inner.sum()
                totals[3, g] += (inner & ~seen_inner).sum()
        ngrams, repeated, inner_n, distinct = totals
        d = {
            "rep_ngrams": ngrams, "rep_repeated": repeated, "rep_sequences": (ngrams > 0).long(),
            "rep_inner": inner_n, "rep_distinct": distinct, "rep_inner_sequences": (inner_n > 0).long(),
            "rep_share_sum": torch.where(ngrams > 0, repeated.double() / ngrams.clamp_min(1), 0.0),
            "rep_distinct_share_sum": torch.where(inner_n > 0, distinct.double() / inner_n.clamp_min(1), 0.0),
        }
        for key, v in d.items():
            self._add(key, v)

    def _loops(self, g: torch.Tensor) -> None:
        """Loop start and period of the generated tokens ``g`` [N] (module docstring)."""
        n, dev = g.shape[0], g.device
        max_period, min_periods = (int(v) for v in self.state["loop_params"])
        k_top = min(max_period, n // min_periods)
        one = torch.ones(1, dtype=torch.long, device=dev)
        self._add("loop_sequences", one)
        self._add("loop_generated", one * n)
        if k_top < 1:
            return
        j = torch.arange(n, device=dev)
        k = torch.arange(1, k_top + 1, device=dev)[:, None]  # [K, 1]
        later = j[None, :] + k
        mismatch = (later < n) & (g[None, :] != g[later.clamp_max(n - 1)])
        start = torch.where(mismatch, j[None, :], -1).amax(1) + 1  # [K]: first periodic step per k
        ok = n - start >= min_periods * k[:, 0]
        start = torch.where(ok, start, n + 1)
        idx = start.argmin()  # ties: the first, i.e. the smallest period
        s = start[idx]
        looping = (s <= n)[None]
        self._add("loop_looping", looping.long())
        self._add("loop_looped", torch.where(looping, n - s, 0))
        self._add_binned("loop_start", s.to(torch.float64)[None, None], "rank", looping)
        self._add_binned("loop_period", (idx + 1).to(torch.float64)[None, None], "rank", looping)

    def _self_bias(self, c: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, chosen: torch.Tensor,
                   w_unit: torch.Tensor, has_dir: torch.Tensor, first: int, steps: int) -> None:
        window = int(self.state["recent_window"][0])
        c_unit = c / c.norm(dim=-1, keepdim=True)  # NaN for a zero vector: the step is left out
        back = rows[:, None] - torch.arange(1, window + 1, device=c.device)  # [N', W] recent rows
        in_seq = back >= 0
        recent_ids = ids[back.clamp_min(0)]
        usable = in_seq & has_dir[recent_ids]
        cos_recent = torch.linalg.vecdot(w_unit[recent_ids], c_unit[:, None, :])  # [N', W]
        recent = torch.where(usable, cos_recent, 0.0).sum(1) / usable.sum(1)
        chosen_cos = torch.where(has_dir[chosen], torch.linalg.vecdot(c_unit, w_unit[chosen]), torch.nan)
        vocab_mean = w_unit.sum(0) / has_dir.sum()
        vocab = c_unit @ vocab_mean
        in_recent = ((recent_ids == chosen[:, None]) & in_seq).any(1)
        ok = torch.isfinite(recent) & torch.isfinite(chosen_cos) & torch.isfinite(vocab)
        for key, v in (("self_n", ok), ("self_recent", recent), ("self_chosen", chosen_cos),
                       ("self_vocab", vocab), ("self_in_recent", in_recent)):
            dtype = torch.long if v.dtype == torch.bool else torch.float64
            full = torch.zeros(steps, dtype=dtype, device=c.device)
            full[first : first + len(v)] = torch.where(ok, v.to(dtype), 0)
            self._add(key, full)

    def _nearest(self, resid: torch.Tensor, rows: torch.Tensor, chosen: torch.Tensor,
                 w_unit: torch.Tensor, has_dir: torch.Tensor) -> None:
        """Rank by cosine of the chosen token for every layer's context vector (chunked)."""
        dev = w_unit.device
        h_all = resid[(rows - 1).to(resid.device)]  # [N', L+1, d]
        no_dir = torch.where(has_dir, 0.0, -torch.inf)  # zero token vectors never outrank
        chunk = self.config.chunk_tokens
        out = []
        for lo in range(0, len(rows), chunk):
            h = f32(h_all[lo : lo + chunk]).to(dev)
            x = chosen[lo : lo + chunk]
            ranks = []
            for layer in range(h.shape[1]):
                hl = h[:, layer]
                scores = hl @ w_unit.T + no_dir  # |h| cos(h, W_v): the same order as the cosine
                mine = scores.gather(1, x[:, None])
                r = (scores > mine).sum(-1).to(torch.float64)
                bad = ~has_dir[x] | (hl.norm(dim=-1) == 0)
                ranks.append(torch.where(bad, torch.nan, r))
            out.append(torch.stack(ranks, 1))
        r = torch.cat(out)  # [N', L+1]
        self._add_binned("nearest_rank", r, "rank")
        self._add("nearest_top", (r == 0).sum(0))

    # ---- state -------------------------------------------------------------------

    def _init(self, n_gen: int, n_layers: int | None) -> None:
        if not self.state:
            st = self.state
            st["ngram_sizes"] = np.asarray(NGRAM_SIZES, np.int64)
            st["loop_params"] = np.asarray([MAX_PERIOD, MIN_PERIODS], np.int64)
            st["recent_window"] = np.asarray([RECENT], np.int64)
            for key in _REP:
                st[key] = np.zeros(len(NGRAM_SIZES), np.float64 if key.endswith("_sum") else np.int64)
            for key in _LOOPS:
                st[key] = np.zeros(1, np.int64)
            for name, kind in _LOOP_STATS.items():
                hist.init(st, name, 1, len(self.config.bins[kind].edges) - 1)
            for name, kind in _STEP_STATS.items():
                hist.init(st, name, 0, len(self.config.bins[kind].edges) - 1)
            for key in _SELF:
                st[key] = np.zeros(0, np.int64 if key in ("self_n", "self_in_recent") else np.float64)
        if self.state["self_n"].shape[0] < n_gen:
            self.state = _pad_steps(self.export_state(), n_gen)  # flush first: shapes change
        if n_layers is not None:
            if "nearest_layers" not in self.state:
                self.state.update(_nearest_state(n_layers, len(self.config.bins["rank"].edges) - 1))
            elif int(self.state["nearest_layers"][0]) != n_layers:
                raise ValueError(f"resid has {n_layers} layers, accumulator has "
                                 f"{int(self.state['nearest_layers'][0])}")

    def _merge_state(self, theirs: dict[str, np.ndarray]) -> None:
        """Steps padded to the longer side, nearest-token arrays added where one side lacks them."""
        before = self.state
        steps = max(before["self_n"].shape[0], theirs["self_n"].shape[0])
        mine, theirs = _pad_steps(before, steps), _pad_steps(theirs, steps)
        for a, b in ((mine, theirs), (theirs, mine)):
            if "nearest_layers" in a and "nearest_layers" not in b:
                b.update(_nearest_state(int(a["nearest_layers"][0]), a["nearest_rank.hist"].shape[1] - 2))
        self.state = mine
        try:
            super()._merge_state(theirs)
        except StatsMergeError:
            self.state = before
            raise

    # ---- results -----------------------------------------------------------------

    def result(self) -> dict[str, pa.Table]:
        """Tables (step: 0 = the first generated token; -1 = every step pooled):

        - ``generation``: stat, step, count, mean, std, q25, median, q75 for stat in entropy, prob,
          sample_prob, rank (the step records), nucleus (size at ``nucleus_p``); step -1 first;
        - ``generation_hist``: stat, step, bin, lo, hi, count (steps 0..N-1);
        - ``generation_repetition``: n, ngrams, repeated, repeated_share = repeated / ngrams,
          mean_repeated_share (over the ``sequences`` with an n-gram), sequences, inner_ngrams,
          distinct, distinct_share = distinct / inner_ngrams, mean_distinct_share (over the
          ``inner_sequences`` with an inner n-gram), inner_sequences;
        - ``generation_loops``: n_sequences, looping, share = looping / n_sequences,
          generated_tokens, looped_tokens (generated tokens from the loop start on),
          looped_token_share;
        - ``generation_loop_dist``: stat (loop_start, loop_period), count, mean, std, q25, median,
          q75 over the looping continuations; ``generation_loop_hist``: stat, bin, lo, hi, count;
        - ``generation_self``: step, count, recent_cos, chosen_cos, vocab_cos, self_bias =
          recent_cos - vocab_cos, chosen_bias = chosen_cos - vocab_cos, chosen_in_recent_share;
        - ``generation_nearest``: layer, count, share_nearest (rank 0), mean_rank, std_rank,
          q25_rank, median_rank, q75_rank; ``generation_nearest_hist``: layer, bin, lo, hi, count
          (empty without resid)."""
        st = self.export_state()
        out: dict[str, pa.Table] = {}
        steps = st["self_n"].shape[0] if st else 0
        pooled = Accumulator(self.config)
        if st:
            for name in _STEP_STATS:
                for suffix in _HIST_SUFFIXES:
                    key = f"{name}{suffix}"
                    reduce, initial = {".min": (np.min, np.inf), ".max": (np.max, -np.inf)}.get(suffix, (np.sum, 0))
                    pooled.state[key] = np.concatenate(
                        [reduce(st[key], axis=0, keepdims=True, initial=initial), st[key]])
        out["generation"], _ = pooled._binned_tables(
            {k: (kind, np.arange(-1, steps)) for k, kind in _STEP_STATS.items()}, group="step")
        _, out["generation_hist"] = self._binned_tables(
            {k: (kind, np.arange(steps)) for k, kind in _STEP_STATS.items()}, group="step")
        out["generation_repetition"] = self._repetition_table(st)
        out["generation_loops"] = self._loops_table(st)
        out["generation_loop_dist"], out["generation_loop_hist"] = self._binned_tables(
            {k: (kind, None) for k, kind in _LOOP_STATS.items()}, group=None)
        out["generation_self"] = self._self_table(st)
        out["generation_nearest"], out["generation_nearest_hist"] = self._nearest_tables(st)
        return out

    @staticmethod
    def _repetition_table(st: Mapping[str, np.ndarray]) -> pa.Table:
        if not st:
            return REPETITION_SCHEMA.empty_table()
        with np.errstate(invalid="ignore", divide="ignore"):
            cols = [
                st["ngram_sizes"], st["rep_ngrams"], st["rep_repeated"],
                st["rep_repeated"] / st["rep_ngrams"], st["rep_share_sum"] / st["rep_sequences"],
                st["rep_sequences"], st["rep_inner"], st["rep_distinct"],
                st["rep_distinct"] / st["rep_inner"], st["rep_distinct_share_sum"] / st["rep_inner_sequences"],
                st["rep_inner_sequences"],
            ]
        return pa.table(cols, schema=REPETITION_SCHEMA)

    @staticmethod
    def _loops_table(st: Mapping[str, np.ndarray]) -> pa.Table:
        if not st:
            return LOOPS_SCHEMA.empty_table()
        n, looping = st["loop_sequences"], st["loop_looping"]
        gen, looped = st["loop_generated"], st["loop_looped"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return pa.table([n, looping, looping / n, gen, looped, looped / gen], schema=LOOPS_SCHEMA)

    @staticmethod
    def _self_table(st: Mapping[str, np.ndarray]) -> pa.Table:
        if not st:
            return SELF_SCHEMA.empty_table()
        arrays = {k: np.concatenate([st[k].sum(keepdims=True), st[k]]) for k in _SELF}
        n = arrays["self_n"]
        with np.errstate(invalid="ignore", divide="ignore"):
            recent, chosen, vocab = (arrays[k] / n for k in ("self_recent", "self_chosen", "self_vocab"))
            share = arrays["self_in_recent"] / n
        steps = np.arange(-1, len(n) - 1)
        return pa.table([steps, n, recent, chosen, vocab, recent - vocab, chosen - vocab, share],
                        schema=SELF_SCHEMA)

    def _nearest_tables(self, st: Mapping[str, np.ndarray]) -> tuple[pa.Table, pa.Table]:
        n_layers = int(st["nearest_layers"][0]) if "nearest_layers" in st else 0
        summary, histogram = self._binned_tables({"nearest_rank": ("rank", np.arange(n_layers))}, group="layer")
        histogram = histogram.drop_columns(["stat"])
        if not n_layers:
            return NEAREST_SCHEMA.empty_table(), histogram
        count = summary.column("count").to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            share = st["nearest_top"] / count
        cols = [summary.column("layer"), summary.column("count"), share] + [
            summary.column(k) for k in ("mean", "std", "q25", "median", "q75")]
        return pa.table(cols, schema=NEAREST_SCHEMA), histogram


def _per_step(values: torch.Tensor, first: int, steps: int) -> torch.Tensor:
    """[1, steps] float64: ``values`` at steps first.., NaN (skipped) elsewhere."""
    row = torch.full((1, steps), torch.nan, dtype=torch.float64, device=values.device)
    row[0, first : first + len(values)] = values.to(torch.float64)
    return row


def _pad_steps(state: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """``state`` (a new dict) with its per-step arrays widened to ``steps`` (their identities)."""
    out = dict(state)
    for key in _STEP_KEYS:
        have = state[key].shape[0]
        if have < steps:
            identity = next((i for suffix, (_, i) in hist.EXTREMES.items() if key.endswith(suffix)), 0)
            pad = np.full((steps - have,) + state[key].shape[1:], identity, state[key].dtype)
            out[key] = np.concatenate([state[key], pad])
    return out


def _nearest_state(n_layers: int, n_bins: int) -> dict[str, np.ndarray]:
    st: dict[str, np.ndarray] = {"nearest_layers": np.asarray([n_layers], np.int64),
                                 "nearest_top": np.zeros(n_layers, np.int64)}
    hist.init(st, "nearest_rank", n_layers, n_bins)
    return st
