"""What every job does around its work: compose its config, log, and fail in one line.

A job is a config dataclass (its Hydra schema: the YAML files in conf/ hold only
what differs from its defaults) and a function of the resolved config. The
config is composed with Hydra's compose API rather than ``@hydra.main``, so that
Hydra's own errors (an unknown group option, a misspelt key, a value of the
wrong type) reach us and become one ``embwalk: error:`` line with exit status 2
like every other bad input. ``--help`` prints the job's options (embwalk.cli);
other arguments that start with ``-`` (``--cfg job``, ``--info``) are Hydra's.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import sys
from collections.abc import Callable

from embwalk.config import conf_dir, unknown_message
from embwalk.errors import EmbwalkError

EXIT_USER_ERROR = 2
CONF_DIR = conf_dir()


def run_job(name: str, schema: type, work: Callable[[dict], int | None], argv: list[str] | None = None) -> None:
    """Compose conf/``name``.yaml over ``schema`` with the command line's overrides, run ``work``
    on the resolved config (plain dicts) and exit with its status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):  # each option group in a line, nothing heavy imported
        from embwalk.cli import job_help

        print(job_help(name, schema))
        return
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)
    if any(a.startswith("-") for a in argv):  # --cfg job, --info ...: Hydra's own flags
        sys.argv = [f"embwalk {name}", *argv, f"hydra.job.name={name}"]
        hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")(lambda cfg: None)()
        return
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=name):
            cfg = hydra.compose(config_name=name, overrides=argv)
    except Exception as exc:
        _fail_on_config_error(exc)
    run_work(work, cfg)


def run_work(work: Callable[[dict], int | None], cfg) -> None:
    """Run ``work`` on a composed config (resolved to plain dicts) and exit with its status;
    bad input of any kind exits 2 with one line."""
    from omegaconf import OmegaConf

    _set_up_logging()
    try:
        code = work(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except EmbwalkError as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail_on_config_error(exc)
    sys.exit(code or 0)


def _fail_on_config_error(exc: Exception) -> None:
    message = config_error(exc)
    if message is None:
        raise exc
    _fail(message)


def config_error(exc: BaseException) -> str | None:
    """One line for a config error of Hydra or OmegaConf (None: not a config error)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    chain = [exc]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    for err in reversed(chain):  # the innermost error says the most
        if isinstance(err, MissingMandatoryValue):
            return f"missing required option: {err.full_key}"
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(err.object_type):
            section, _, key = str(err.full_key).rpartition(".")
            return unknown_message(section, [key], [f.name for f in dataclasses.fields(err.object_type)])
        if isinstance(err, ValidationError) and err.full_key:
            return f"bad value for {err.full_key}: {_first_line(err.msg)}"
        if isinstance(err, MissingConfigException):
            return _missing_option(err)
    return _first_line(str(exc))


def _missing_option(err) -> str:
    """``model=smollm`` -> unknown model option 'smollm' (did you mean smollm2?); choose one of ..."""
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", str(err))
    options = list(getattr(err, "options", None) or [])
    if found is None or not options:
        return _first_line(str(err))
    group, choice = found.groups()
    close = difflib.get_close_matches(choice, options, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {group} option {choice!r}{hint}; choose one of: {', '.join(sorted(options))}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def _fail(message: str) -> None:
    print(f"embwalk: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _set_up_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="embwalk: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bar is the one to watch


def store_shorthand(argv: list[str] | None, key: str) -> list[str]:
    """``store=PATH`` means the store on every job: the key that holds it is ``key`` (``store.path``
    where the store has more options than its location)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [f"{key}={a.split('=', 1)[1]}" if a.startswith("store=") else a for a in argv]


def require_store(config: dict) -> str:
    path = config.get("store")
    if not path:
        raise EmbwalkError("missing required option: store=PATH (the store to read)")
    return str(path)
