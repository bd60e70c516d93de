"""Capture during generation: ``embwalk generate [decode.strategy=sample decode.samples=4 ...] [store=PATH]``.

An extraction whose forward pass is a decoding loop (pipeline/generation/): the same model,
corpus, capture, store and cluster groups, plus ``decode``. Prompts are the corpus's packed
sequences of corpus.seq_len tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embwalk.extraction.config import ExtractConfig
from embwalk.generation.config import DecodeConfig
from embwalk.jobs._entry import run_job, store_shorthand


@dataclass
class GenerateConfig(ExtractConfig):
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # how the model decodes (docs/generation.md)


SCHEMA = GenerateConfig


def generate(config: dict) -> int:
    from embwalk.config import from_dict
    from embwalk.executors.dispatch import extract as execute
    from embwalk.store.reader import Store

    cfg = from_dict(GenerateConfig, config)
    manifest = execute(cfg)
    print(Store(cfg.store.path).summary())
    gen = manifest["generation"]
    seconds, tokens = manifest.get("run_seconds"), manifest.get("run_tokens")
    print(f"generated: {gen['n_prompts']} prompts x {gen['samples']} continuation(s) of {gen['new_tokens']} tokens "
          f"({gen['decode']['strategy']})")
    if seconds and tokens:
        print(f"this run: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s, prompts included)")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_job("generate", SCHEMA, generate, store_shorthand(argv, "store.path"))


if __name__ == "__main__":
    main()
