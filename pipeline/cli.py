"""The ``embwalk`` command: ``embwalk JOB [key=value ...]`` runs one of the jobs.

Nothing heavy is imported to print help or to find the job: the job module is
imported only when it runs, and ``embwalk JOB --help`` is built from the job's
config dataclasses (light modules) and the preset files in conf/.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from embwalk.config import describe_options, option_groups

JOBS = {
    "extract": "run a model over a corpus and store every layer's activations (and attention where asked)",
    "generate": "continue prompts with the model and store every token's activations and each step's choice",
    "stats": "walk statistics of a stored run, per shard in parallel, merged into STORE/stats/",
    "report": "figures and one HTML page from a store's statistics",
    "query": "select token rows of a store, print them or export their vectors",
    "verify": "check every committed shard of a store against its commit record and checksums",
    "tuned_lens": "train a tuned lens (per-layer affine translators) from a store, evaluate it on held-out sequences",
}
EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        close = difflib.get_close_matches(name, list(JOBS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"embwalk: error: unknown command {name!r}{hint}; choose one of: {', '.join(JOBS)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    importlib.import_module(f"embwalk.jobs.{name}").main(rest)


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: embwalk JOB [group=option] [key=value ...]", "", "jobs:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in JOBS.items()]
    lines += ["", "embwalk JOB --help lists a job's options. Options are Hydra overrides, e.g.",
              "  embwalk extract model=minilm corpus=files corpus.path=data/ store=stores/run1"]
    return "\n".join(lines)


def job_help(name: str, schema: type) -> str:
    """Each option group in a line (what it is, its presets), then its keys with their defaults."""
    lines = [f"usage: embwalk {name} [group=option] [key=value ...]", "", f"{JOBS[name]}.", ""]
    groups = option_groups(name)
    options = describe_options(schema)
    for key, default, comment, section in sorted(options, key=lambda o: o[3] is not None):  # plain keys first
        if section is None:
            lines.append(f"  {key}={default}" + (f"  # {comment}" if comment else ""))
            continue
        presets = groups.get(key)
        choose = f" ({key}={'|'.join(presets)})" if presets else ""
        lines.append(f"{key}: {comment}{choose}")
        for sub, sub_default, sub_comment, _ in describe_options(section):
            lines.append(f"  {key}.{sub}={sub_default}" + (f"  # {sub_comment}" if sub_comment else ""))
    return "\n".join(lines)
