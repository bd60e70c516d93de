"""Hydra's own config errors become one ``embwalk: error:`` line with exit status 2."""

from __future__ import annotations

import pytest

from embwalk.extraction.config import ExtractConfig
from embwalk.jobs._entry import run_job
from embwalk.jobs.stats import StatsJob


def never(config: dict) -> int:
    ExtractConfig.from_dict(config).validate()  # what the job does first
    raise AssertionError("a bad config must not reach the job's work")


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["model=smollm"], ["unknown model option 'smollm'", "did you mean smollm2?", "hub, minilm, smollm2"]),
        (["capture=bogus"], ["unknown capture option 'bogus'", "stats_only"]),
        (["store.shard_tokns=4"], ["unknown store option(s): shard_tokns", "did you mean shard_tokens?"]),
        (["corpus.max_token=5"], ["unknown corpus option(s): max_token", "did you mean max_tokens?"]),
        (["corpus.seq_len=abc"], ["corpus.seq_len", "abc"]),
        (["corpus=files"], ["missing required option: corpus.path"]),
        (["model=hub"], ["missing required option: model.name"]),
    ],
)
def test_extract_config_errors_are_one_line(argv, fragments, capsys):
    with pytest.raises(SystemExit) as info:
        run_job("extract", ExtractConfig, never, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embwalk: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_stats_job_rejects_a_misspelt_option(capsys):
    with pytest.raises(SystemExit) as info:
        run_job("stats", StatsJob, never, ["stats.famlies=[encoding]"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embwalk: error: unknown stats option(s): famlies") and "did you mean families?" in err


def test_presets_hold_only_what_differs_and_compose_into_the_dataclasses():
    seen = {}

    def keep(config: dict) -> int:
        seen.update(config)
        return 0

    with pytest.raises(SystemExit) as info:
        run_job("extract", ExtractConfig, keep, ["capture=stats_only", "corpus=files", "corpus.path=x.txt"])
    assert info.value.code == 0
    cfg = ExtractConfig.from_dict(seen)
    assert cfg.capture.store_arrays is False and cfg.capture.stats.cov_every == 3
    assert cfg.corpus.max_tokens is None and cfg.corpus.path == "x.txt"  # the builtin preset's cut is not carried


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["decode.strategy=bogus"], "decode.strategy='bogus'; choose one of greedy, sample, beam"),
        (["decode.top_p=1.5"], "decode.top_p=1.5 must be in (0, 1]"),
        (["decode.max_new_tokns=4"], "unknown decode option(s): max_new_tokns (did you mean max_new_tokens?)"),
    ],
)
def test_generate_decode_errors_are_one_line(argv, fragment, capsys):
    from embwalk.config import from_dict
    from embwalk.jobs.generate import GenerateConfig

    def check(config: dict) -> int:
        from_dict(GenerateConfig, config).validate()
        raise AssertionError("a bad config must not reach the job's work")

    with pytest.raises(SystemExit) as info:
        run_job("generate", GenerateConfig, check, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embwalk: error: ") and fragment in err[0], err
