"""What the statistic families read: one sequence's inputs, and what a shard offers.

Each family declares its needs on its class (``Accumulator.needs_*``,
pipeline/stats/base.py) and reads one ``SequenceInputs`` per call of
``update_from``. An ``Offer`` says what a shard holds, from a capture layout (the
in-pass route) or a store's arrays (the two-step route); which families run,
why the others do not, which stored arrays are read and which capture sites are
needed all follow from the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from embwalk.stats.head import ModelHead

# The arrays a family can read, in the order the routes read them.
ARRAYS = ("resid", "final", "pattern")


@dataclass(frozen=True)
class Offer:
    """What a shard can feed the families.

    ``resid_layers``: residual indices along resid's layer axis (None: no resid);
    ``pattern_layers``: model layer ids along the pattern's layer axis (None: no patterns);
    ``final``: the final-normed last block is there; ``unembed``: the model has an LM head;
    ``attention``: False for an attention-free model (Mamba): attention statistics do not apply;
    ``position_bias``: the model learns a relative position bias (T5) and the head can recompute
    its scores (ModelHead.scores).
    """

    n_layers: int
    resid_layers: tuple[int, ...] | None = None
    final: bool = False
    pattern_layers: tuple[int, ...] | None = None
    unembed: bool = False
    final_from_resid: bool = True  # final may be derived as final_norm(resid of the last block)
    columns: frozenset[str] = frozenset()  # token-table columns beyond the token ids (a generation's)
    attention: bool = True
    position_bias: bool = False

    @property
    def last_resid(self) -> bool:
        """resid holds the output of the last block and ``final`` may be derived from it."""
        return self.final_from_resid and bool(self.resid_layers) and self.resid_layers[-1] == self.n_layers

    @property
    def layer_inputs(self) -> bool:
        """resid holds every pattern layer's input (residual index L for attention layer L)."""
        return bool(self.pattern_layers) and bool(self.resid_layers) and all(
            layer in self.resid_layers for layer in self.pattern_layers
        )

    @property
    def layer_input_resid(self) -> bool:
        """resid holds some block's input (a residual index below n_layers)."""
        return bool(self.resid_layers) and self.resid_layers[0] < self.n_layers

    @property
    def arrays(self) -> set[str]:
        """The ``ARRAYS`` the shard holds."""
        held = {"resid": self.resid_layers is not None, "final": self.final, "pattern": bool(self.pattern_layers)}
        return {name for name, ok in held.items() if ok}


def column_tensor(values: np.ndarray) -> torch.Tensor:
    """A token-table column as a tensor, the same from the pass (numpy, masked where null) and from
    a store (Parquet nulls, ``column_numpy``): nulls are NaN in floats, -1 in integers, False in bools."""
    data = np.ma.getdata(values)
    if np.ma.isMaskedArray(values) and values.mask is not np.ma.nomask:
        fill = np.nan if data.dtype.kind == "f" else (False if data.dtype.kind == "b" else -1)
        data = np.where(np.ma.getmaskarray(values), fill, data)
    return torch.from_numpy(np.ascontiguousarray(data))


def column_numpy(column) -> np.ndarray:
    """A Parquet column (pyarrow) as a numpy array masked where null: what ``column_tensor`` takes."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    mask = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        filled = column.fill_null(pa.scalar([0] * width, column.type))
        data = filled.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        return np.ma.masked_array(data, np.repeat(mask[:, None], width, 1))
    data = column.fill_null(False if pa.types.is_boolean(column.type) else 0).to_numpy(zero_copy_only=False)
    return np.ma.masked_array(data, mask)


def next_token_ids(token_ids: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """Each token's successor within the sequence, -1 for the last token and where the
    successor belongs to another document (packed sequences join documents)."""
    nxt = torch.full_like(token_ids, -1)
    if token_ids.numel() > 1:
        same = doc_ids[1:] == doc_ids[:-1]
        nxt[:-1] = torch.where(same, token_ids[1:], -1)
    return nxt


@dataclass
class SequenceInputs:
    """One whole sequence, unpadded, in position order: what ``update_from`` reads.

    ``resid`` [n, len(resid_layers), d], ``captured_final`` [n, d] (after the final norm),
    ``pattern`` [len(pattern_layers), H, n, n] are float32 and contiguous, or None when the
    shard lacks them; ``token_ids``, ``doc_ids``, ``next_ids`` [n] (next: -1 = none).
    ``final`` and ``assoc_inputs`` are derived on first use, once per sequence.
    ``keep`` [n] bool marks the tokens the statistics count (None: all of them;
    ``StatsConfig.exclude_positions`` / ``exclude_massive``): a family of independent
    tokens reads ``rows(...)``, one of pairs or sequences (attention, decoding) the mask.
    """

    token_ids: torch.Tensor
    doc_ids: torch.Tensor
    next_ids: torch.Tensor
    head: ModelHead
    resid: torch.Tensor | None = None
    captured_final: torch.Tensor | None = None
    pattern: torch.Tensor | None = None
    resid_layers: Sequence[int] = ()
    pattern_layers: Sequence[int] | None = None
    assoc_index: Sequence[int] | None = None  # positions along resid's layer axis of each pattern layer's input
    keep: torch.Tensor | None = None
    columns: dict[str, torch.Tensor] | None = None  # the families' ``needs_columns``, per row

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s rows (first axis: tokens) of the tokens kept."""
        return t if self.keep is None else t[self.keep.to(t.device)]

    @property
    def n(self) -> int:
        return int(self.token_ids.shape[0])

    @cached_property
    def final(self) -> torch.Tensor:
        """The final context vectors [n, d]: captured, or final_norm(resid of the last block)."""
        if self.captured_final is not None:
            return self.captured_final
        if self.resid is None or not self.resid_layers or self.resid_layers[-1] != self.head.n_layers:
            raise ValueError("the decoding walk needs final or resid of the last block")
        last = self.resid[:, -1]
        return last if self.head.final_norm is None else self.head.final_norm(last)

    @cached_property
    def assoc_inputs(self) -> torch.Tensor | None:
        """[L_att, n, d]: each pattern layer's input vectors (None when resid lacks one)."""
        if self.assoc_index is None or self.resid is None:
            return None
        return self.resid[:, list(self.assoc_index)].transpose(0, 1)
