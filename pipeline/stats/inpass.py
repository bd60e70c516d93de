"""The in-pass route: walk statistics computed by the extraction itself.

``InPassStats`` observes the extraction's ``ShardRunner`` (pipeline/extraction/runner.py),
which calls it at three fixed points and knows nothing else of statistics:

- ``start_shard(shard)`` when a shard starts: a ``WalkStats`` laid out like the capture
- ``on_batch(walk, got, ...)`` after each batch's forward pass: every sequence whose
  first token is in the shard, whole, from the capture buffers. Those are already in
  the store dtype, so the values equal what a store holds and the partials equal the
  two-step route's (pipeline/stats/walk.py)
- ``before_commit(walk, shard)`` on the writer thread, before the shard's commit: its
  partials, so a committed shard always has its statistics

The capture sites each family needs follow from its declared needs (``required_sites``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from embwalk.errors import EmbwalkError
from embwalk.stats.config import StatsConfig
from embwalk.stats.families import ACCUMULATORS
from embwalk.stats.head import ModelHead
from embwalk.stats.inputs import Offer, column_tensor
from embwalk.stats.partials import write_shard_partials
from embwalk.stats.walk import WalkStats, plan_families
from embwalk.store.fs import StoreFS, open_fs

# The capture sites (pipeline/models/sites.py) that give each array a family reads: resid is
# every residual index (embeddings, each block's output), which also holds each layer's input.
SITES = {"resid": ("resid_pre.0", "resid_post"), "final": ("final",), "pattern": ("attn_pattern",)}


def required_sites(families: Sequence[str]) -> list[str]:
    """Capture sites the families need (what a stats-only extraction must capture)."""
    read = {name for f in families for name in ACCUMULATORS[f].reads()}
    return [site for name, sites in SITES.items() if name in read for site in sites]


def check_capture(families: Sequence[str], layout, n_layers: int, has_unembed: bool,
                  exclude_massive: bool = False, columns: Sequence[str] = (), default: bool = False,
                  attention: bool = True, position_bias: bool = False, stack: str | None = None) -> tuple[str, ...]:
    """The families to compute in the pass. Refuse, before any work, statistics the capture cannot
    feed: each family asked for must be computable from the captured sites (and ``decoding``
    from a captured ``final``, never a final norm re-applied to the last block), naming the
    sites to add. ``default``: nobody named ``families`` (the default set), so the ones the
    capture cannot feed are left out instead. ``attention``: False for an attention-free model;
    ``position_bias``: the model learns a relative position bias (T5); ``stack``: ``dec`` for a
    decoder store (model.stack), whose sites are named with the ``dec.`` prefix (a plain name is
    an encoder site: adding one would make the job a two-stack store, the decoder still lacking it)."""
    offer = Offer(n_layers, tuple(layout.residual) or None, bool(layout.final),
                  tuple(layout.pattern_layers) or None, has_unembed, final_from_resid=False,
                  columns=frozenset(columns), attention=attention, position_bias=position_bias)
    held = {site for name in offer.arrays for site in SITES[name]}
    prefix = "dec." if stack == "dec" else ""
    problems = []
    feedable, missing = plan_families(families, offer)
    for family, why in ({} if default else missing).items():
        lacking = [prefix + site for site in required_sites([family])
                   if site not in held and (attention or site != "attn_pattern")]  # never a site the model lacks
        add = f": add {', '.join(lacking)} to capture.sites" if lacking else ""
        problems.append(f"{family} {why.replace('(resid_pre.L)', f'({prefix}resid_pre.L)')}{add}")
    if exclude_massive and not layout.residual:  # massive activations are found in the residual stream
        problems.append(f"exclude_massive needs resid: add {', '.join(prefix + s for s in SITES['resid'])} "
                        "to capture.sites")
    if problems:
        raise EmbwalkError("capture.stats cannot compute " + "; ".join(problems)
                           + " (or leave the family out of capture.stats.families)")
    return feedable


class InPassStats:
    """The shard runner's observer that computes walk statistics from its captures.

    ``config``: the statistics; ``head``: the model's unembedding and final norm;
    ``layout``: the runner's ``CaptureLayout``; ``store``: where partials go (a path,
    URL or StoreFS: the runner passes its writer's).
    """

    def __init__(self, config: StatsConfig, head: ModelHead, layout, store: StoreFS | str | Path,
                 columns: Sequence[str] = ()):
        self.config, self.head, self.layout = config, head, layout
        self.columns = tuple(columns)  # the token-table columns the rows have (a generation's)
        self.fs = open_fs(store)  # the job checked the capture feeds every family (check_capture)

    @classmethod
    def for_model(cls, config: StatsConfig, loaded, layout, store: StoreFS | str | Path,
                  columns: Sequence[str] = ()) -> InPassStats:
        """For a ``embwalk.models.loading.LoadedModel`` (its LM head and final norm)."""
        return cls(config, ModelHead.from_loaded(loaded), layout, store, columns)

    def start_shard(self, shard) -> WalkStats:
        """The per-shard state: a ``WalkStats`` covering ``shard``."""
        return self._walk_stats(shard.index)

    def _walk_stats(self, index: int) -> WalkStats:
        return WalkStats.for_layout(self.config, self.head, index, self.layout, self.columns)

    def on_batch(self, walk: WalkStats, got: dict[str, torch.Tensor], batch: list[int], starts: list[int],
                 lengths: list[int], shard, win) -> None:
        """Every sequence of the batch whose first token is in the shard, whole, from the
        capture buffers ``got`` ([batch, ...], padded); ``win`` is the shard's ShardTokens."""
        p0, p1 = shard.pattern_seqs
        for j, (s, a, n) in enumerate(zip(batch, starts, lengths, strict=True)):
            if not p0 <= s < p1:
                continue
            rows = win.rows(a, a + n)
            walk.update_sequence(
                got["resid"][j, :n] if "resid" in got else None,
                got["final"][j, :n] if "final" in got else None,
                torch.from_numpy(win.token_ids[rows].astype(np.int64)),
                torch.from_numpy(win.doc_ids[rows].astype(np.int64)),
                got["pattern"][j, :, :, :n, :n] if "pattern" in got else None,
                seq_id=s,
                columns={c: column_tensor(win.columns[c][rows]) for c in walk.columns} if walk.columns else None,
            )

    def before_commit(self, walk: WalkStats, shard) -> None:
        """Write the shard's partials (the runner calls this before it commits the shard)."""
        write_shard_partials(self.fs, shard.index, walk, {"route": "in-pass"})
