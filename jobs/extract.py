"""Extract activations: ``python -m jobs.extract [model=...] [corpus.path=...] ...``."""

from __future__ import annotations

from jobs._entry import run_job
from pipeline.errors import EmbwalkError
from pipeline.extract.config import ExtractConfig
from pipeline.store.reader import Store


def extract(config: dict) -> int:
    cfg = ExtractConfig.from_dict(config)
    if cfg.cluster.kind == "local":
        from pipeline.executors.local import extract_local as execute
    elif cfg.cluster.kind == "ray":
        from pipeline.executors.ray import extract_ray as execute
    else:
        raise EmbwalkError(f"unknown cluster.kind {cfg.cluster.kind!r}; choose local or ray")
    manifest = execute(cfg)
    print(Store(cfg.store.path).summary())  # a local path or any fsspec URL
    seconds, tokens = manifest.get("run_seconds"), manifest.get("run_tokens")
    if seconds and tokens:
        print(f"this run: {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s)")
    return 0


def main() -> None:
    run_job("extract", ExtractConfig, extract)


if __name__ == "__main__":
    main()
