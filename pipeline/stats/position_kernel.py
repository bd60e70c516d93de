"""Tables from a model's weights rather than a store's activations: the position kernel.

A model with a learned relative position bias (the T5 family, ``Family.position_bias``) adds
b_h(key − query) to every score of head h. ``position_kernel.parquet`` holds that bias at every
offset, one row per (stack, layer, head, offset), from the model's own compute_bias
(pipeline/models/position_bias.py): the layers listed are those that learn one (T5 and MT5:
layer 0, whose bias every later layer reuses; UMT5: every layer). The encoder's offsets run
over ±relative_attention_max_distance (beyond it the bias is constant); the decoder's over
−max_distance..0 (later keys are masked, and share offset 0's bucket). The decoder's tables
are read from the checkpoint the encoder came from (a few kB, ``checkpoint_decoder``); an
encoder-only checkpoint, or a model handed over in memory, has the encoder's rows alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from embwalk.models.config import ModelConfig
from embwalk.models.position_bias import bias_layers, checkpoint_decoder, kernel_offsets, position_kernel
from embwalk.models.sources import locate_model, weight_files

TABLE = "position_kernel"
SCHEMA = pa.schema([("stack", pa.string()), ("layer", pa.int64()), ("head", pa.int64()),
                    ("offset", pa.int64()), ("bias", pa.float32())])


def kernel_table(stacks: dict) -> pa.Table:
    """The rows of every bias-learning layer of ``stacks`` ({"enc": model, "dec": model}: models
    holding that stack)."""
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for stack, model in stacks.items():
        for layer in bias_layers(model, stack):
            kernel = position_kernel(model, stack, layer)  # [heads, offsets]
            offsets = kernel_offsets((kernel.shape[1] + 1) // 2)
            keep = offsets <= 0 if stack == "dec" else np.ones(len(offsets), bool)
            heads, offs = np.meshgrid(np.arange(kernel.shape[0]), offsets[keep], indexing="ij")
            columns["stack"] += [stack] * heads.size
            columns["layer"].append(np.full(heads.size, layer))
            columns["head"].append(heads.ravel())
            columns["offset"].append(offs.ravel())
            columns["bias"].append(kernel[:, keep].ravel())
    arrays = [pa.array(columns["stack"], pa.string())]
    arrays += [pa.array(np.concatenate(columns[n]) if columns[n] else [], SCHEMA.field(n).type)
               for n in SCHEMA.names[1:]]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def model_tables(loaded, model_cfg: ModelConfig | None = None) -> dict[str, tuple[pa.Table, str]]:
    """{table: (table, what it holds)} of ``loaded``'s weights: empty but for a learned position
    bias. ``model_cfg`` names the checkpoint ``loaded`` came from (the store's model config), where
    the decoder's tables are read."""
    if not loaded.family.position_bias:
        return {}
    stacks, why = {"enc": loaded.model}, None
    if hasattr(loaded.model, "decoder"):  # a whole encoder-decoder model handed over
        stacks["dec"] = loaded.model
    else:
        decoder, why = _checkpoint_decoder(loaded, model_cfg)
        if decoder is not None:
            stacks["dec"] = decoder
    layers = "; ".join(f"{stack} layers {bias_layers(model, stack)}" for stack, model in stacks.items())
    note = f"learned relative position bias by offset (key − query), from the model's weights: {layers}"
    return {TABLE: (kernel_table(stacks), note + (f"; no dec rows: {why}" if why else ""))}


def _checkpoint_decoder(loaded, model_cfg: ModelConfig | None):
    """(a model holding the checkpoint's decoder, None) or (None, why there is none)."""
    located = locate_model(model_cfg) if model_cfg is not None else None
    if located is None or located.model_id != loaded.model_id or located.gguf:
        return None, "the model was not loaded from a checkpoint embwalk can read"
    decoder = checkpoint_decoder(loaded.model, weight_files(located, model_cfg))
    return (decoder, None) if decoder is not None else (None, "the checkpoint has no decoder")
