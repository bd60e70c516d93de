"""The report from small stores: every figure and the page, missing statistics named, and a
store without activations (statistics computed in the pass) still drawn from the kept sample."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from embwalk.errors import EmbwalkError, StoreError
from embwalk.executors.config import ClusterConfig
from embwalk.report import ReportOptions, build_report
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from tests.stats.stores import build_store, tiny

ALL = ["encoding", "logit_lens", "position_kernels", "self_bias", "sink", "geometry", "trajectory", "similarity",
       "decoding"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def loaded(smollm2):
    return tiny("llama", smollm2.tokenizer)


@pytest.fixture(scope="module")
def stats_store(tmp_path_factory, loaded):
    store = build_store(tmp_path_factory.mktemp("report"), loaded)
    compute_store_stats(store, StatsOptions(self_sim_top_k=4), ClusterConfig(workers=1, progress=False), loaded=loaded)
    return store


def images(page) -> list[str]:
    return re.findall(r"<img src='([^']+)\.png'", page.read_text())


def test_every_figure_and_one_page(stats_store, loaded, tmp_path):
    page = build_report(stats_store, ReportOptions(out=str(tmp_path / "r")), loaded=loaded)
    assert page == tmp_path / "r" / "index.html"
    assert images(page) == ALL
    for name in ALL:
        data = (page.parent / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    html = page.read_text()
    assert "Not shown" not in html and "negative self-bias" in html and "Median rank falls" in html
    assert "<table class='summary'>" in html and "survives" not in html  # one run: one value column
    assert ">stats/summary.json</a>" in html
    assert "<pre>" not in html  # the summary's JSON is a link, not a dump


def test_default_location_and_missing_statistics(tmp_path, loaded):
    store = build_store(tmp_path, loaded, sites=["resid_pre.0", "resid_post", "final"])  # no attention
    with pytest.raises(StoreError, match="run embwalk stats store="):
        build_report(store)
    with pytest.raises(EmbwalkError, match="stats.families cannot compute attention: needs attention patterns"):
        compute_store_stats(store, StatsOptions(families=["encoding", "attention"]),
                            ClusterConfig(workers=1, progress=False), loaded=loaded)
    # the default families: every one the store can feed, the others listed with the reason
    compute_store_stats(store, StatsOptions(families=None, self_sim_top_k=4),
                        ClusterConfig(workers=1, progress=False), loaded=loaded)
    page = build_report(store, ReportOptions(labels=False))
    assert page == store / "report" / "index.html"
    assert images(page) == ["encoding", "logit_lens", "geometry", "trajectory", "similarity", "decoding"]
    html = page.read_text()
    assert "Not shown" in html and "needs attention patterns" in html
    assert not (page.parent / "sink.png").exists()


def test_a_store_without_activations_merges_and_draws_from_the_sample(stats_store, tmp_path, loaded):
    """What an in-pass (stats-only) run leaves: partials, no arrays."""
    store = tmp_path / "store"
    shutil.copytree(stats_store, store)
    shutil.rmtree(store / "activations.zarr")
    shutil.rmtree(store / "attention.zarr")
    shutil.rmtree(store / "stats" / "report", ignore_errors=True)
    for p in (store / "stats").glob("*.parquet"):
        p.unlink()
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["arrays"] = {}
    (store / "manifest.json").write_text(json.dumps(manifest))
    summary = compute_store_stats(store, StatsOptions(), ClusterConfig(workers=1, progress=False))  # no model needed
    assert summary["shards"]["with_stats"] == summary["shards"]["committed"]
    page = build_report(store, ReportOptions(labels=False))
    assert images(page) == ALL
    assert "vectors from the sample" in page.read_text()


def test_compare_mode_and_another_statistics_directory(stats_store, loaded, tmp_path):
    """``report.compare``: a second statistics directory of the store (here with position 0 left
    out) beside the first, in the summary table and dashed in the layer-wise figures;
    ``report.stats``: which directory the report reads."""
    store = tmp_path / "store"
    shutil.copytree(stats_store, store)
    shutil.rmtree(store / "report", ignore_errors=True)
    compute_store_stats(store, StatsOptions(self_sim_top_k=4, exclude_positions=[0], out="stats-nopos0"),
                        ClusterConfig(workers=1, progress=False), loaded=loaded)
    page = build_report(store, ReportOptions(compare="stats-nopos0", labels=False))
    assert page == store / "report" / "index.html" and images(page) == ALL
    html = page.read_text()
    assert "<th>stats-nopos0 (exclude_positions=[0], exclude_massive=false)</th><th>survives</th>" in html
    assert "within 2x" in html and re.search(r"<td class='(yes|no)'>(yes|no)</td>", html)
    assert "href='../stats/summary.json'" in html and "href='../stats-nopos0/summary.json'" in html
    assert "Dashed: the medians of stats-nopos0 (exclude_positions=[0]" in html
    alone = build_report(store, ReportOptions(stats="stats-nopos0", labels=False))
    assert alone == store / "report-stats-nopos0" / "index.html"
    assert "statistics</th><td>stats-nopos0 (exclude_positions=[0]" in alone.read_text()
    with pytest.raises(StoreError, match="stats.out=stats-none"):
        build_report(store, ReportOptions(compare="stats-none", labels=False))


def test_a_t5_store_draws_its_learned_position_bias_and_others_do_not(tmp_path, stats_store, loaded):
    from tests.models.t5_checkpoints import save_t5

    path = save_t5(tmp_path, "umt5")
    store = build_store(tmp_path, None, model_name=str(path), sites=["resid_pre.0", "resid_post", "attn_pattern"])
    compute_store_stats(store, StatsOptions(self_sim_top_k=4), ClusterConfig(workers=1, progress=False))
    page = build_report(store, ReportOptions(out=str(tmp_path / "r")))
    shown = images(page)
    assert shown[shown.index("position_kernel") + 1] == "position_kernels"  # the learned kernel, then the measured
    data = (page.parent / "position_kernel.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    assert "key − query" in page.read_text() and "Not shown" in page.read_text()  # no LM head: no logit lens
    assert shown[shown.index("position_kernels") + 1] == "bias_share"  # then how much of each score it explains
    shares = json.loads((store / "stats" / "summary.json").read_text())
    assert "bias_share" in shares["families"]
    top = max(r["bias_share"] for r in _rows(store, "bias_share") if r["kind"] == "within_query")
    assert f"({top:.2f})" in page.read_text()  # the caption names the most positional head with its share
    other = build_report(stats_store, ReportOptions(out=str(tmp_path / "r")), loaded=loaded)  # the same folder
    for name in ("position_kernel", "bias_share"):
        assert name not in images(other) and not (other.parent / f"{name}.png").exists()
    assert "bias_share" not in other.read_text()  # not offered (not even as 'Not shown') where it cannot apply


def _rows(store, table: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(store / "stats" / f"{table}.parquet").to_pylist()


def test_an_attention_model_beside_an_attention_free_one_on_the_same_corpus(stats_store, loaded, smollm2, tmp_path):
    """report.compare_store draws another store's statistics beside this one's: a Mamba store's
    attention statistics are 'not applicable' there (its summary's reason), never silently absent."""
    mamba = tiny("mamba", smollm2.tokenizer)
    other = build_store(tmp_path / "mamba", mamba, sites=["resid_pre.0", "resid_post", "final"])
    compute_store_stats(other, StatsOptions(self_sim_top_k=4), ClusterConfig(workers=1, progress=False), loaded=mamba)
    skipped = json.loads((other / "stats" / "summary.json").read_text())["skipped"]
    assert skipped["attention"] == "does not apply: the model is attention-free"

    page = build_report(stats_store, ReportOptions(out=str(tmp_path / "r"), compare_store=str(other)), loaded=loaded)
    html = page.read_text()
    assert f"mamba/store ({mamba.model_id}): stats" in html  # the compared store, named by store and model
    sink = r"mean sink mass \(weight on position 0\) over heads</td>"
    assert re.search(sink + r"<td class='num'>[0-9.]+</td><td class='num'>not applicable<", html)
    assert "attention: does not apply: the model is attention-free" in html
    assert set(images(page)) >= {"encoding", "geometry", "sink"}  # this store's attention figures stay

    # the Mamba store's own report: the attention figures are listed with the reason, not dropped
    page = build_report(other, ReportOptions(out=str(tmp_path / "m"), compare_store=str(stats_store)), loaded=mamba)
    html = page.read_text()
    assert "Not shown" in html and html.count("does not apply: the model is attention-free") >= 3
    assert re.search(sink + r"<td class='num'>not applicable</td><td class='num'>[0-9.]+<", html)
    with pytest.raises(EmbwalkError, match="is this store and these statistics"):
        build_report(other, ReportOptions(out=str(tmp_path / "x"), compare_store=str(other)), loaded=mamba)
