"""``python -m jobs.query``: readable tables, exports, and one-line errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets  # requirements-dev.txt: the export target is tested, not skipped
import numpy as np
import pytest
from omegaconf import OmegaConf

from embwalk.jobs._entry import run_work
from embwalk.jobs.query import QueryJob, query
from embwalk.query import open_store

ROOT = Path(__file__).resolve().parents[2]


def _config(store: Path | str, **values) -> OmegaConf:
    cfg = OmegaConf.structured(QueryJob)  # the job's schema: conf/query.yaml adds nothing to it
    cfg.store.path = str(store)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def _run(capsys, store, **values) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        run_work(query, _config(store, **values))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_prints_tokens_with_norms(packed, capsys):
    code, out, _ = _run(capsys, packed, token=" the", sites=["resid_post.1", "final"], show=3, summary=True)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"store: {packed}"
    header = next(line for line in lines if line.startswith("row"))
    assert header.split() == [
        "row", "doc_id", "seq_id", "pos", "doc_pos", "token_id", "token", "|resid_post.1|", "|final|",
    ]
    sel = open_store(packed).select(token=" the")
    first = lines[lines.index(header) + 2].split()
    assert int(first[0]) == sel.rows[0] and first[6] == "'" and first[7] == "the'"
    norm = np.linalg.norm(sel.vectors("final")[0].astype(np.float32))
    assert float(first[-1]) == pytest.approx(norm, rel=1e-3)
    assert lines[-1] == f"... {len(sel) - 3} more rows ({len(sel)} in all)"


def test_sql_and_columns(packed, capsys):
    code, out, _ = _run(capsys, packed, sql="SELECT pos, count(*) AS n FROM tokens GROUP BY pos ORDER BY pos LIMIT 2")
    assert code == 0 and out.splitlines()[0].split() == ["pos", "n"] and out.splitlines()[-1] == "(2 rows)"
    code, out, _ = _run(capsys, packed, doc=1, pos="0:2", columns=["length(token) AS chars"])
    assert out.splitlines()[0].split()[-1] == "chars" and out.splitlines()[-1] == "(2 rows)"


def test_doc_pos_selector(packed, capsys):
    code, out, _ = _run(capsys, packed, doc=3, doc_pos="0:16", show=20)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "(16 rows)"
    column = lines[0].split().index("doc_pos")
    assert [int(line.split()[column]) for line in lines[2:-1]] == list(range(16))


def test_exports(packed, tmp_path, capsys):
    code, out, _ = _run(capsys, packed, regex="^ [a-z]", sites=["resid_post.1"], **{"export.path": f"{tmp_path}/x.npy"})
    assert code == 0 and out.startswith("wrote ")
    expected = open_store(packed).select(regex="^ [a-z]").vectors("resid_post.1")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), expected)
    code, _, _ = _run(capsys, packed, sql="SELECT row FROM tokens WHERE pos = 0", sites=["final", "resid_pre.0"],
                      **{"export.path": str(tmp_path / "x.safetensors")})
    assert code == 0 and (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    "store, values, fragment",
    [
        ("{tmp}/nowhere", {}, "store not found"),
        ("{tmp}", {}, "not an embwalk store"),
        ("{packed}", {"sites": ["resid_post.9"]}, "past the model's depth"),
        ("{packed}", {"sites": ["mlp_out.1"]}, "mlp_out.1 is not in this store"),
        ("{packed}", {"regex": "(?<=x)"}, "invalid regular expression"),
        ("{packed}", {"where": "pos >"}, "syntax error"),
        ("{packed}", {"sql": "SELECT nope FROM tokens"}, "nope"),
        ("{packed}", {"export.path": "/tmp/x.npy"}, "export.path needs the sites"),
        ("{packed}", {"doc": "x"}, "doc='x'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(packed, tmp_path, capsys, store, values, fragment):
    code, _, err = _run(capsys, store.format(tmp=tmp_path, packed=packed), **values)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("embwalk: error: ") and fragment in err, err


def test_command_line(packed):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ok = subprocess.run([sys.executable, "-m", "jobs.query", f"store={packed}", "pos=0:2", "doc=[0,1]", "limit=3"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0].split()[:3] == ["row", "doc_id", "seq_id"]
    expected = open_store(packed).select(pos="0:2", doc=[0, 1], limit=3).rows
    assert [int(line.split()[0]) for line in ok.stdout.splitlines()[2:-1]] == expected.tolist()
    bad = subprocess.run([sys.executable, "-m", "jobs.query", f"store={packed}", "sites=[bogus.1]"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "embwalk: error: unknown capture site 'bogus.1'; known: resid_pre.L, resid_mid.L, resid_post.L, "
        "attn_pattern.L, attn_out.L, mlp_out.L, final (L an index, '*' or omitted for all), "
        "or blocks.L.hook_resid_post-style aliases; T5 also resid_cross.L, cross_pattern.L and the score terms "
        "attn_score.L, attn_content.L, attn_bias.L, cross_score.L; mixture-of-experts models router_logits.L")


def test_command_line_datasets_export(packed, tmp_path):
    out = tmp_path / "the_dataset"
    done = subprocess.run([sys.executable, "-m", "jobs.query", f"store={packed}", "regex='^ [a-z]'",
                           "sites=[final,resid_post.1]", f"export.path={out}", "export.format=datasets"],
                          cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    sel = open_store(packed).select(regex="^ [a-z]")
    assert done.stdout.strip() == f"wrote {len(sel)} rows x final, resid_post.1 to {out}"
    ds = datasets.load_from_disk(str(out)).with_format("numpy")
    assert ds["row"][:].tolist() == sel.rows.tolist()
    for site in ("final", "resid_post.1"):
        np.testing.assert_array_equal(ds[site][:], sel.vectors(site).astype(np.float32), err_msg=site)


def test_exports_saelens_cached_activations(packed, capsys, tmp_path):
    out_dir = tmp_path / "cache"
    code, out, _ = _run(capsys, packed, sites=["resid_post.1"], **{"export.format": "saelens",
                                                                     "export.path": str(out_dir)})
    assert code == 0 and f"to {out_dir}" in out
    assert (out_dir / "dataset_info.json").is_file()
    code, _, err = _run(capsys, packed, sites=["resid_post.1", "final"], **{"export.format": "saelens",
                                                                             "export.path": str(out_dir)})
    assert code == 2 and "takes export.path and one site" in err
