"""How the model decodes: the ``decode`` section of ``embwalk generate``."""

from __future__ import annotations

from dataclasses import dataclass

from embwalk.errors import EmbwalkError

STRATEGIES = ("greedy", "sample", "beam")


@dataclass
class DecodeConfig:
    """Decoding options; prompts are the corpus's packed sequences (corpus.seq_len tokens each)."""

    strategy: str = "greedy"  # greedy | sample | beam
    max_new_tokens: int = 32  # tokens generated per prompt; every continuation runs this long (an EOS is a token)
    samples: int = 1  # continuations per prompt (sample: each its own seeded draw; beam: the best beams, <= num_beams)
    num_beams: int = 4  # beam: hypotheses kept per prompt
    length_penalty: float = 1.0  # beam: as generate's (every beam has the same length here, so it never reorders)
    temperature: float = 1.0  # sample: logits / temperature
    top_k: int = 0  # sample: keep the k most probable tokens (0: off)
    top_p: float = 1.0  # sample: keep the smallest set holding this much probability (1: off)
    min_p: float | None = None  # sample: drop tokens below min_p x the top probability (None: off)
    repetition_penalty: float = 1.0  # penalise tokens already in the sequence (CTRL; 1: off), both strategies
    seed: int = 0  # sample: continuation g draws from a generator seeded by (seed, g): reruns are identical
    max_prompts: int | None = None  # use at most this many of the corpus's sequences as prompts
    top_candidates: int = 8  # per step, the most probable tokens stored with their probabilities

    def validate(self) -> None:
        def bad(what: str) -> EmbwalkError:
            return EmbwalkError(f"bad decode option: {what}")

        if self.strategy not in STRATEGIES:
            raise bad(f"decode.strategy={self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if int(self.max_new_tokens) < 1:
            raise bad(f"decode.max_new_tokens={self.max_new_tokens} must be >= 1")
        if int(self.samples) < 1:
            raise bad(f"decode.samples={self.samples} must be >= 1")
        if int(self.num_beams) < 1:
            raise bad(f"decode.num_beams={self.num_beams} must be >= 1")
        if self.strategy == "beam" and self.samples > self.num_beams:
            raise bad(f"decode.samples={self.samples} is more than decode.num_beams={self.num_beams} beams")
        if self.strategy == "greedy" and self.samples > 1:
            raise bad(f"decode.samples={self.samples} with greedy decoding: every continuation would be the same")
        if not self.temperature > 0:
            raise bad(f"decode.temperature={self.temperature} must be > 0")
        if int(self.top_k) < 0:
            raise bad(f"decode.top_k={self.top_k} must be >= 0 (0: off)")
        if not 0 < self.top_p <= 1:
            raise bad(f"decode.top_p={self.top_p} must be in (0, 1]")
        if self.min_p is not None and not 0 < self.min_p < 1:
            raise bad(f"decode.min_p={self.min_p} must be in (0, 1)")
        if not self.repetition_penalty > 0:
            raise bad(f"decode.repetition_penalty={self.repetition_penalty} must be > 0")
        if self.max_prompts is not None and int(self.max_prompts) < 1:
            raise bad(f"decode.max_prompts={self.max_prompts} must be >= 1")
        if int(self.top_candidates) < 1:
            raise bad(f"decode.top_candidates={self.top_candidates} must be >= 1")
        if self.seed < 0:
            raise bad(f"decode.seed={self.seed} must be >= 0")
        sampling = (self.temperature != 1.0, self.top_k != 0, self.top_p != 1.0, self.min_p is not None)
        if self.strategy != "sample" and any(sampling):
            raise bad("temperature, top_k, top_p and min_p shape sampling: set decode.strategy=sample")
