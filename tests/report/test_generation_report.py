"""The report of generation stores: the generated-walks figure, the strategies comparison of
several stores (report.stores) with its table read back against each store's tables, and the
one-line errors for stores without generation statistics."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from embwalk.errors import EmbwalkError, StoreError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.report import ReportOptions, build_report
from embwalk.report.figures import decode_label
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from embwalk.store.reader import Store
from tests.generation.test_generate import config
from tests.stats.stores import tiny

QUIET = ClusterConfig(workers=1, progress=False)
PNG = b"\x89PNG\r\n\x1a\n"
DECODES = {  # store name: decode options (the same prompts)
    "greedy": {},
    "sample": {"strategy": "sample", "samples": 2, "temperature": 0.8, "top_p": 0.9, "seed": 1},
    "beam": {"strategy": "beam", "num_beams": 3, "repetition_penalty": 1.3},
}
LABELS = {"greedy": "greedy", "sample": "sample T=0.8 top_p=0.9", "beam": "beam K=3 rp=1.3"}


@pytest.fixture(scope="module")
def loaded(smollm2):
    return tiny("llama", smollm2.tokenizer)  # random and peaked: loops and repeats in 6 steps


@pytest.fixture(scope="module")
def stores(tmp_path_factory, loaded):
    root = tmp_path_factory.mktemp("gen")
    paths = {}
    for name, decode in DECODES.items():
        cfg = config(root, name, **decode)
        extract_local(cfg, loaded)
        paths[name] = root / name
        compute_store_stats(paths[name], StatsOptions(families=["generation"]), QUIET, loaded=loaded)
    return paths


def images(page) -> list[str]:
    return re.findall(r"<img src='([^']+)\.png'", page.read_text())


def table(page) -> list[list[str]]:
    """The strategies table's rows (header first), cell texts."""
    html = page.read_text()
    body = html.split("<table class='summary strategies'>", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def stats(path, name: str) -> dict:
    t = pq.read_table(path / "stats" / f"{name}.parquet")
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def test_labels_name_the_strategy_and_what_shapes_it():
    assert decode_label({"strategy": "greedy", "repetition_penalty": 1.0}) == "greedy"
    assert decode_label({"strategy": "greedy", "repetition_penalty": 1.3}) == "greedy rp=1.3"
    assert decode_label({"strategy": "sample", "temperature": 0.8, "top_k": 0, "top_p": 0.9, "min_p": None,
                         "repetition_penalty": 1.0}) == "sample T=0.8 top_p=0.9"
    assert decode_label({"strategy": "sample", "temperature": 1.0, "top_k": 40, "top_p": 1.0, "min_p": 0.05,
                         "repetition_penalty": 1.0}) == "sample top_k=40 min_p=0.05"
    assert decode_label({"strategy": "beam", "num_beams": 4, "samples": 1}) == "beam K=4"
    assert decode_label({"strategy": "beam", "num_beams": 4, "samples": 2}) == "beam K=4 best 2 kept"


def test_a_generation_store_gets_its_figure_first(stores, loaded, tmp_path):
    page = build_report(stores["greedy"], ReportOptions(out=str(tmp_path / "r")), loaded=loaded)
    shown = images(page)
    assert shown[0] == "generation" and "strategies" not in shown
    data = (page.parent / "generation.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 20000
    html = page.read_text()
    assert "Decoding: greedy (repetition_penalty=1)" in html
    assert "6 prompts of 8 tokens × 1 continuation of 6 tokens" in html
    loops = stats(stores["greedy"], "generation_loops")
    assert f"{loops['looping'][0]} of 6 continuations end in a loop (share {loops['share'][0]:.3f}" in html
    # the summary table has the generation rows; families the statistics did not compute are named
    assert "generation: distinct-2" in html and "Not shown" in html and "encoding: needs encoding" in html


def test_strategies_side_by_side_with_a_table_of_the_stores_numbers(stores, loaded, tmp_path):
    page = build_report(stores["greedy"], ReportOptions(out=str(tmp_path / "r"), labels=False,
                                                        stores=[str(stores["sample"]), str(stores["beam"]),
                                                                str(stores["greedy"])]),  # itself: once
                        loaded=loaded)
    assert images(page)[:2] == ["generation", "strategies"]
    assert (page.parent / "strategies.png").read_bytes().startswith(PNG)
    rows = table(page)
    header, body = rows[0], rows[1:]
    assert header[:3] == ["store", "strategy", "prompts × continuations"]
    assert [r[0] for r in body] == ["greedy", "sample", "beam"]  # this store first, once
    assert [r[1] for r in body] == [LABELS[n] for n in ("greedy", "sample", "beam")]
    assert [r[2] for r in body] == ["6 × 1", "6 × 2", "6 × 1"]
    col = {h: i for i, h in enumerate(header)}
    with open(page.parent / "strategies.csv", newline="") as f:
        saved = {r["store"]: r for r in csv.DictReader(f)}
    for r in body:
        path = stores[r[0]]
        rep, loops, me = (stats(path, t) for t in ("generation_repetition", "generation_loops", "generation_self"))
        assert r[col["distinct-2"]] == f"{rep['distinct_share'][rep['n'] == 2][0]:.3f}"
        assert r[col["repeated 4-gram share"]] == f"{rep['repeated_share'][rep['n'] == 4][0]:.3f}"
        assert r[col["loop share"]] == f"{loops['share'][0]:.3f}"
        assert r[col["self-bias (pooled)"]] == f"{me['self_bias'][me['step'] == -1][0]:.4f}"
        assert float(saved[r[0]]["distinct2"]) == rep["distinct_share"][rep["n"] == 2][0]  # the csv: full precision
        # mean log p(chosen) from the token table
        t = Store(path).tokens()
        p = t.column("prob").to_numpy(zero_copy_only=False)[t.column("generated").to_numpy(zero_copy_only=False)]
        want = float(np.log(p.astype(np.float64)).mean())
        assert math.isclose(float(saved[r[0]]["mean_logprob"]), want, rel_tol=1e-12)
        assert r[col["mean log p(chosen), nats"]] == f"{want:.3f}"
    html = page.read_text()
    assert "Every store continues the same prompts" in html
    assert f"compared stores</th><td>{stores['sample'].resolve()} (sample T=0.8 top_p=0.9)" in html
    # the same page without report.stores: no stale comparison left beside it
    build_report(stores["greedy"], ReportOptions(out=str(tmp_path / "r"), labels=False), loaded=loaded)
    assert not (page.parent / "strategies.png").exists() and not (page.parent / "strategies.csv").exists()
    assert "strategies" not in page.read_text()


def test_stores_without_generation_statistics_are_one_line_errors(stores, loaded, tmp_path):
    bare = tmp_path / "bare"
    extract_local(config(tmp_path, "bare"), loaded)  # no statistics
    opts = ReportOptions(out=str(tmp_path / "r"), labels=False, stores=[str(bare)])
    where = re.escape(str(bare))
    with pytest.raises(StoreError, match=rf"report.stores: {where} has no statistics in .*: "
                                         rf"run embwalk stats store={where} stats.families=\[generation\]"):
        build_report(stores["greedy"], opts, loaded=loaded)
    compute_store_stats(bare, StatsOptions(families=["encoding"]), QUIET, loaded=loaded)  # statistics, not these
    with pytest.raises(StoreError, match=r"has no generation statistics in .*: run embwalk stats store=") as err:
        build_report(stores["greedy"], opts, loaded=loaded)
    assert "\n" not in str(err.value)
    plain = tmp_path / "plain"  # an extraction store: no generation in its manifest
    shutil.copytree(bare, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    del manifest["generation"]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"report.stores: .*plain is not a generation store .*embwalk generate"):
        build_report(stores["greedy"], ReportOptions(stores=[str(plain)]), loaded=loaded)
    with pytest.raises(StoreError, match="report.stores: store not found: .*nowhere"):
        build_report(stores["greedy"], ReportOptions(stores=[str(tmp_path / "nowhere")]), loaded=loaded)
    # this store must have them too
    with pytest.raises(StoreError, match="report.stores compares generation stores: this store: .* has no generation"):
        build_report(bare, ReportOptions(out=str(tmp_path / "r2"), labels=False, stores=[str(stores["greedy"])]),
                     loaded=loaded)
    with pytest.raises(EmbwalkError, match=r"report.stores is a list of store paths"):
        build_report(stores["greedy"], ReportOptions(stores="x"), loaded=loaded)


def test_a_store_without_resid_draws_all_but_the_nearest_panel(tmp_path, loaded):
    cfg = config(tmp_path, "fin", sites=("final",), strategy="beam", num_beams=3, samples=2)
    extract_local(cfg, loaded)
    compute_store_stats(tmp_path / "fin", StatsOptions(families=["generation"]), QUIET, loaded=loaded)
    assert stats(tmp_path / "fin", "generation_nearest")["layer"].size == 0
    page = build_report(tmp_path / "fin", ReportOptions(labels=False), loaded=loaded)
    assert images(page) == ["generation"]
    html = page.read_text()
    assert "beam (num_beams=3, length_penalty=1, repetition_penalty=1)" in html
    assert "The 2 stored beams of each prompt are pooled" in html and "nearest one by cosine" not in html


def test_the_prompts_digest_tells_other_prompts_apart_and_ignores_how_shards_cut_them(stores, loaded, tmp_path):
    """Stores are compared by a digest of their prompts' (prompt, position, token) rows, summed shard
    by shard: the same prompts cut into other shards give the same digest, other prompts another."""
    from embwalk.report.figures.generation import _chosen

    def digest(path) -> int:
        s = Store(path)
        return _chosen(str(path.resolve()), tuple(s.committed), str(path)).prompts

    cut = config(tmp_path, "cut", shard=2, **DECODES["sample"])  # one shard per continuation
    fewer = config(tmp_path, "fewer", **DECODES["sample"])
    fewer.decode.max_prompts = 4
    for cfg in (cut, fewer):
        extract_local(cfg, loaded)
    assert len(Store(cut.store.path).committed) > len(Store(stores["sample"]).committed)
    assert digest(tmp_path / "cut") == digest(stores["sample"]) == digest(stores["greedy"])
    assert digest(tmp_path / "fewer") != digest(stores["greedy"])
