"""Capture during generation: ``embwalk generate [decode.strategy=sample decode.samples=4 ...] [store=PATH]``.

An extraction whose forward pass is a decoding loop (pipeline/generation/): the same model,
corpus, capture, store and cluster groups, plus ``decode``. Prompts are the corpus's packed
sequences of corpus.seq_len tokens, or one per document (corpus.mode=document: a line of a
prompts file with corpus.txt_unit=line). On an encoder-decoder model (T5 family) ``dec.*`` sites make
each document an encoder input and the decoder generates from its start token (docs/generation.md).
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
    from embwalk.jobs.extract import run_and_describe

    manifest = run_and_describe(from_dict(GenerateConfig, config), ", prompts included")
    gen = manifest["generation"]
    print(f"generated: {gen['n_prompts']} prompts x {gen['samples']} continuation(s) of {gen['new_tokens']} tokens "
          f"({gen['decode']['strategy']})")
    return 0


def main(argv: list[str] | None = None) -> None:
    run_job("generate", SCHEMA, generate, store_shorthand(argv, "store.path"))


if __name__ == "__main__":
    main()
