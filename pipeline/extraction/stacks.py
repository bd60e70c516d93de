"""The job of a two-stack store (pipeline/store/stacks.py): an encoder-decoder model's encoder and
decoder sites captured over one corpus, into one store with a token axis per stack.

``embwalk extract`` with encoder sites and ``dec.*`` sites runs two jobs, each a whole
extraction (plan, shards, commits, resume) into its own stack's store: first the decoder's
(its records' checks, e.g. an empty target, come before any work on either stack), then the
encoder's over the same records' inputs. Each stack's rows are cut into shards of its own
length, so a shard of one is not a shard of the other and the encoder runs in both jobs: the
decoder's uses it as context only. The encoder takes exactly the decoder store's records
(``corpus.max_tokens`` counts the decoder's tokens; without it both read every record, or the
same ``corpus.max_documents``), so sequence s is the same record in both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from embwalk.errors import EmbwalkError, StoreError
from embwalk.extraction.config import ExtractConfig
from embwalk.store import layout
from embwalk.store.fs import open_fs
from embwalk.store.stacks import STACK_DIRS, read_stacks, stack_manifest

RunOne = Callable[[ExtractConfig], dict]


def run_two_stacks(cfg: ExtractConfig, run_one: RunOne) -> dict:
    """Run (or resume) both stacks' jobs with ``run_one`` (run_extraction on the job's executor);
    returns ``{"stacks": {"dec": manifest, "enc": manifest}, "run_seconds", "run_tokens"}``."""
    jobs = cfg.stack_jobs()
    for job in jobs.values():
        job.validate()  # sets each job's model.stack from its sites
    check_sites_before_any_work(jobs)
    fs = open_fs(cfg.store.path)
    existed = fs.exists()
    _check_location(fs)
    if not fs.is_file(layout.MANIFEST):
        fs.write_atomic(layout.MANIFEST, _json(stack_manifest(dataclasses.asdict(cfg))))
    manifests = {}
    try:
        manifests["dec"] = run_one(jobs["dec"])
        enc = jobs["enc"]
        if enc.corpus.max_tokens is not None:  # a cut of the decoder's tokens: the records it kept, no more
            enc.corpus.max_tokens, enc.corpus.max_documents = None, manifests["dec"]["n_documents"]
        manifests["enc"] = run_one(enc)
    except EmbwalkError:
        if not existed and not any(fs.exists(d) for d in STACK_DIRS.values()):
            fs.remove("")  # bad input before any work: no store left behind
        raise
    return {
        "stacks": manifests,
        "run_seconds": sum(m.get("run_seconds", 0) for m in manifests.values()),
        "run_tokens": sum(m.get("run_tokens", 0) for m in manifests.values()),
    }


def check_sites_before_any_work(jobs: dict[str, ExtractConfig]) -> None:
    """Every site of both stacks checked against the model's description (config and tokenizer,
    never its weights), so a bad encoder site fails before the decoder's job has run."""
    from embwalk.extraction.job import capture_layout
    from embwalk.models.spec import load_spec

    for job in jobs.values():
        capture_layout(job, load_spec(dataclasses.replace(job.model, device="cpu")))


def _check_location(fs) -> None:
    if fs.is_file(layout.MANIFEST):
        if read_stacks(fs) is None:
            raise StoreError(f"store {fs.location} holds one stack's tokens; a job with encoder and dec.* sites "
                             "writes a two-stack store: give it a new store path")
        return
    if fs.exists() and (not fs.is_dir() or set(fs.list()) - {*STACK_DIRS.values(), layout.TMP_DIR}):
        raise StoreError(f"store path is a non-empty directory that is not an embwalk store: {fs.location}")


def _json(data: dict) -> bytes:
    return json.dumps(data, indent=2, default=str).encode()
