"""Train and evaluate a tuned lens from a store: ``python -m jobs.tuned_lens store=PATH [tuned_lens.steps=250]``.

Writes STORE/stats/tuned_lens.safetensors (the translators) and STORE/stats/tuned_lens.parquet
(held-out KL and next-token scores per layer, logit lens beside tuned lens); docs/tuned_lens.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from embwalk.config import from_dict
from embwalk.jobs._entry import require_store, run_job, store_shorthand
from embwalk.stats.tuned_lens import TunedLensOptions  # light: torch is imported when training starts


@dataclass
class TunedLensJob:
    store: str | None = None  # the store (a directory): store=PATH
    tuned_lens: TunedLensOptions = field(default_factory=TunedLensOptions)


SCHEMA = TunedLensJob


def tuned_lens(config: dict) -> int:
    from embwalk.stats.tuned_lens import run_tuned_lens

    path = require_store(config)
    options = from_dict(TunedLensOptions, config.get("tuned_lens"), "tuned_lens")
    summary = run_tuned_lens(path, options, report=lambda msg: print(msg, file=sys.stderr))
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """A few lines: where the files are, the split, the time, and held-out KL per layer."""
    t = summary["per_layer"]
    lines = [
        f"tuned lens: {summary['weights']}",
        f"  trained {summary['steps']} steps in {summary['train_seconds']:.1f} s on {summary['device']}: "
        f"{summary['train_tokens']} training tokens ({summary['train_sequences']} sequences), "
        f"evaluated on {summary['heldout_tokens']} held-out tokens ({summary['heldout_sequences']} sequences)",
        f"  per layer: {summary['table']}",
        "  layer  KL logit lens  KL tuned lens  top-1 logit  top-1 tuned  (held out; KL in nats)",
    ]
    for i, layer in enumerate(t["layer"]):
        lines.append(f"  {int(layer):>5}  {t['kl_logit_lens'][i]:>13.4f}  {t['kl_tuned_lens'][i]:>13.4f}  "
                     f"{t['top1_logit_lens'][i]:>11.3f}  {t['top1_tuned_lens'][i]:>11.3f}"
                     + ("" if t["trained"][i] else "  (no translator)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run_job("tuned_lens", SCHEMA, tuned_lens, store_shorthand(argv, "store"))


if __name__ == "__main__":
    main()
