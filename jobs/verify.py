"""Check a store's committed shards: ``python -m jobs.verify store=PATH [full=false] [repair=true]``.

Reads every byte of every committed shard (``full=false``: the quick check a
rerun does) and names each damaged shard and file. Exit status 0 when
everything checks out, 1 when something is damaged; with ``repair=true`` the
damaged shards are un-committed, so the next run of the same extraction
rewrites only them, and the exit status is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from embwalk.jobs._entry import require_store, run_job, store_shorthand
from embwalk.store.verify import verify_store

EXIT_DAMAGED = 1


def verify(config: dict) -> int:
    result = verify_store(require_store(config), full=bool(config["full"]), repair=bool(config["repair"]),
                          progress=bool(config["progress"]))
    for damage in result.damaged:
        print(f"damaged: shard {damage.shard}: {damage.file}: {damage.problem}")
    for index in result.interrupted:
        print(f"interrupted: shard {index} has a commit record but no token table (never committed)")
    level = "every byte" if config["full"] else "sizes, shard indexes and token tables"
    print(
        f"verified {result.checked} committed of {result.planned} planned shards of {result.location} "
        f"({result.nbytes / 1e6:.1f} MB, {level}) in {result.seconds:.1f} s: {len(result.damaged)} damaged"
    )
    if not result.damaged:
        return 0
    if result.repaired:
        shards = ", ".join(str(d.shard) for d in result.damaged)
        print(f"repaired: un-committed shard(s) {shards}; rerun the extraction to rewrite them")
        return 0
    print("rerun with repair=true to un-commit them, then rerun the extraction to rewrite only those")
    return EXIT_DAMAGED


@dataclass
class VerifyJob:
    store: str | None = None  # the store (a directory or an fsspec URL): store=PATH
    full: bool = True  # every byte (each chunk's CRC-32C); false: the quick check a rerun does (sizes, indexes)
    repair: bool = False  # un-commit damaged shards so the next run of the extraction rewrites only them
    progress: bool = True  # a progress bar on stderr


SCHEMA = VerifyJob


def main(argv: list[str] | None = None) -> None:
    run_job("verify", SCHEMA, verify, store_shorthand(argv, "store"))


if __name__ == "__main__":
    main()
