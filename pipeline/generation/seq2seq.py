"""Generation on an encoder-decoder model (T5 family): the decoder generates, its sites captured.

A decoder store's corpus of inputs alone (pipeline/corpus/pairs.py) holds one encoder input per
prompt, and each prompt's decoder row is ``decoder_start_token_id`` alone (P = 1). The encoder
runs once per batch, right-padded with its mask, outside the capture hooks (they sit on the
decoder's blocks: the T5 decoder family); its output is the cross-attention's context of every
step. The decoding loop, the capture and the records are GenerationForward's
(pipeline/generation/forward.py): only the model's calls differ (``EncodedCalls``), as
``generate`` calls T5ForConditionalGeneration: ``encoder_outputs`` and the encoder's mask, the
decoder's tokens with the cache (self- and cross-attention keys both cached).
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput

from embwalk.corpus.sequences import ShardTokens
from embwalk.errors import EmbwalkError
from embwalk.extraction.teacher import encode
from embwalk.generation.config import DecodeConfig
from embwalk.generation.forward import GenerationForward, _Padding
from embwalk.generation.plan import GenerationPlan
from embwalk.models.loading import LoadedModel


class EncodedCalls:
    """T5ForConditionalGeneration's calls over one batch's encoded inputs ``hidden`` [B, K, d]
    (``mask`` [B, K]: their padding, None when there is none)."""

    def __init__(self, model: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, cache_arg: str):
        self.model, self.hidden, self.mask, self.cache_arg = model, hidden, mask, cache_arg
        self.keys = hidden.shape[1]

    def prefill(self, ids: torch.Tensor):
        return self.model(decoder_input_ids=ids, encoder_outputs=BaseModelOutput(last_hidden_state=self.hidden),
                          attention_mask=self.mask, use_cache=True)

    def feed(self, tokens: torch.Tensor, cache, t: int, last: bool):
        if last:  # the decoder stack alone, no LM head
            return self.model.decoder(input_ids=tokens, encoder_hidden_states=self.hidden,
                                      encoder_attention_mask=self.mask, use_cache=True, **{self.cache_arg: cache})
        return self.model(decoder_input_ids=tokens, encoder_outputs=BaseModelOutput(last_hidden_state=self.hidden),
                          attention_mask=self.mask, use_cache=True, **{self.cache_arg: cache})

    def beams(self, rows: list[int], k: int) -> EncodedCalls:
        index = torch.as_tensor(rows, device=self.hidden.device).repeat_interleave(k)  # as generate expands them
        return EncodedCalls(self.model, self.hidden[index], None if self.mask is None else self.mask[index],
                            self.cache_arg)


class Seq2SeqGenerationForward(GenerationForward):
    """``ShardRunner``'s forward for generation on a decoder store: each continuation's encoder input
    is ``win.inputs[g - win.seq0]`` (GenerationPlan.window)."""

    def __init__(self, loaded: LoadedModel, decode: DecodeConfig, plan: GenerationPlan):
        super().__init__(loaded, decode, plan)
        self.pad_id = int(loaded.config.pad_token_id or 0)  # padded inputs are masked, never read

    def _calls(self, pad: _Padding, batch: list[int], win: ShardTokens) -> EncodedCalls:
        if pad.padded:  # the job refuses targets with generation (ExtractConfig.validate)
            raise EmbwalkError("generation on an encoder-decoder model starts every decoder row from its start "
                               "token alone")
        hidden, mask = encode(self.loaded, [win.inputs[g - win.seq0] for g in batch], self.pad_id)
        return EncodedCalls(self.loaded.model, hidden, mask, self.cache_arg)
