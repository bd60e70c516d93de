"""The forward pass of a decoder store: each batch of pairs teacher-forced through both stacks.

``ShardRunner`` calls it where an extraction runs one forward pass (its ``forward`` seam, as
generation does): the window's rows are the pairs' decoder inputs (right-padded by the runner,
with their mask), the window's ``inputs`` their encoder input ids. The encoder runs as context
only: the capture hooks sit on the decoder's blocks alone (the T5 decoder family,
pipeline/models/families.py), so nothing of the encoder is stored. The decoder then runs once,
teacher-forced, over the encoder's output, as ``T5ForConditionalGeneration`` runs it when given
``decoder_input_ids``: every stored row is what the model computes for that pair.
"""

from __future__ import annotations

import torch

from embwalk.corpus.sequences import ShardTokens
from embwalk.extraction.runner import right_padded
from embwalk.models.capture import Capturer
from embwalk.models.loading import LoadedModel
from embwalk.store import layout as store_layout


class TeacherForcedForward:
    """``ShardRunner``'s forward for a decoder store (see the module docstring)."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.pad_id = int(loaded.config.pad_token_id or 0)  # padded positions are masked, never stored

    @torch.inference_mode()
    def __call__(self, capturer: Capturer, ids: torch.Tensor, mask: torch.Tensor | None,
                 out: dict[str, torch.Tensor] | None, batch: list[int], starts: list[int],
                 win: ShardTokens) -> dict[str, torch.Tensor]:
        enc_ids, enc_mask = right_padded([win.inputs[s - win.seq0] for s in batch], self.pad_id)
        width = enc_ids.shape[1]
        # The cross patterns' keys are the encoder's inputs: buffers of that width; the per-token
        # views the runner may hand over (straight into its shard buffers) are kept.
        got = capturer.scratch(len(batch), ids.shape[1], width)
        if out is not None:
            got.update({name: v for name, v in out.items() if name not in store_layout.SEQUENCE_ARRAYS.values()})
        device = self.loaded.device
        model = self.loaded.model
        enc_mask = None if enc_mask is None else enc_mask.to(device)
        with capturer.writing_to(got):
            encoded = model.encoder(input_ids=enc_ids.to(device), attention_mask=enc_mask)
            model.decoder(
                input_ids=ids.to(device), attention_mask=None if mask is None else mask.to(device),
                encoder_hidden_states=encoded.last_hidden_state, encoder_attention_mask=enc_mask, use_cache=False,
            )
        return got
