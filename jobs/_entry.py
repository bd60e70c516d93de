"""What every job does around its work: logging, and one-line errors with a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import transformers
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import EmbwalkError

EXIT_USER_ERROR = 2


def run_job(work: Callable[[dict], int | None], cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.WARNING, format="embwalk: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.disable_progress_bar()  # our own bar is the one to watch
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        code = work(resolved)
    except EmbwalkError as exc:
        print(f"embwalk: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:  # OmegaConf's missing-value errors are user errors too
        if type(exc).__name__ == "MissingMandatoryValue":
            print(f"embwalk: error: missing required option: {exc.full_key}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    sys.exit(code or 0)


def store_argument(argv: list[str]) -> list[str]:
    """``store=PATH`` (or the extract job's ``store.path=PATH``) -> ``store_path=PATH``:
    ``store`` is also a config group (the extract job's), so Hydra would read
    ``store=PATH`` as choosing an option of that group."""
    return [f"store_path={a.split('=', 1)[1]}" if a.startswith(("store=", "store.path=")) else a for a in argv]


def require_store(config: dict) -> str:
    path = config.get("store_path")
    if not path:
        raise EmbwalkError("missing required option: store=PATH (the store to read)")
    return str(path)
