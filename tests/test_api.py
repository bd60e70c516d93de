"""``import embwalk`` gives the public API, each name from the module that defines it."""

from __future__ import annotations

import embwalk


def test_every_public_name_resolves():
    for name in embwalk.__all__:
        assert getattr(embwalk, name) is not None, name
    assert set(embwalk.__all__) <= set(dir(embwalk))


def test_the_jobs_are_functions_and_the_configs_dataclasses():
    import embwalk.extraction.config  # the stage package is imported: extract must still be the job

    for job in ("extract", "open_store", "compute_store_stats", "verify_store", "build_report", "export_saelens"):
        assert callable(getattr(embwalk, job)) and not isinstance(getattr(embwalk, job), type(embwalk)), job
    cfg = embwalk.ExtractConfig.from_dict({"store": {"path": "x"}})
    assert isinstance(cfg.store, embwalk.StoreConfig) and isinstance(cfg.cluster, embwalk.ClusterConfig)
