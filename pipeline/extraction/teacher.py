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
        encoded, enc_mask = encode(self.loaded, [win.inputs[s - win.seq0] for s in batch], self.pad_id)
        # The cross patterns' keys are the encoder's inputs: buffers of that width; the per-token
        # views the runner may hand over (straight into its shard buffers) are kept.
        got = capturer.scratch(len(batch), ids.shape[1], encoded.shape[1])
        if out is not None:
            got.update({name: v for name, v in out.items() if name not in store_layout.SEQUENCE_ARRAYS.values()})
        device = self.loaded.device
        with capturer.writing_to(got):
            self.loaded.model.decoder(
                input_ids=ids.to(device), attention_mask=None if mask is None else mask.to(device),
                encoder_hidden_states=encoded, encoder_attention_mask=enc_mask, use_cache=False,
            )
        return got


def encode(loaded: LoadedModel, inputs: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's encoder inputs (lists of ids) right-padded through the encoder, as context: its last
    hidden state [B, K, d] and mask [B, K] on the model's device (None: no padding). The capture
    hooks sit on the decoder's blocks, so nothing of the encoder is captured."""
    ids, mask = right_padded(inputs, pad_id)
    device = loaded.device
    mask = None if mask is None else mask.to(device)
    return loaded.model.encoder(input_ids=ids.to(device), attention_mask=mask).last_hidden_state, mask
