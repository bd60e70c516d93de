"""Extract activations: ``embwalk extract [model=...] [corpus.path=...] [store=PATH] ...``."""

from __future__ import annotations

from embwalk.extraction.config import ExtractConfig
from embwalk.jobs._entry import run_job, store_shorthand

SCHEMA = ExtractConfig


def extract(config: dict) -> int:
    run_and_describe(ExtractConfig.from_dict(config))
    return 0


def run_and_describe(cfg: ExtractConfig, tokens_are: str = "") -> dict:
    """Run (or resume) the job here or on the cluster, print the store's summary and this run's
    rate; returns the manifest. ``tokens_are`` says what the tokens counted are."""
    from embwalk.executors.dispatch import extract as execute
    from embwalk.store.reader import Store

    manifest = execute(cfg)
    if "stacks" in manifest:  # a two-stack store (pipeline/store/stacks.py): a store per stack
        for job in cfg.stack_jobs().values():
            print(Store(job.store.path).summary())
    else:
        print(Store(cfg.store.path).summary())  # a local path or any fsspec URL
    seconds, tokens = manifest.get("run_seconds"), manifest.get("run_tokens")
    if seconds and tokens:
        print(f"this run: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s{tokens_are})")
    return manifest


def main(argv: list[str] | None = None) -> None:
    run_job("extract", SCHEMA, extract, store_shorthand(argv, "store.path"))


if __name__ == "__main__":
    main()
