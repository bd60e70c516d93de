"""The wheel: it builds, installs into a fresh environment, and works outside the checkout.

The fresh environment takes embwalk from the wheel alone; its dependencies come from the
test environment's site-packages through a path file (installing torch again would take
minutes and the network), which adds that directory but none of its own path files: the
checkout's editable install is not seen.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(args: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info into the tree it builds
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("pipeline", "jobs", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        source], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("embwalk-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "embwalk/conf/extract.yaml" in names and "embwalk/conf/model/minilm.yaml" in names
    assert "embwalk/jobs/extract.py" in names and "embwalk/cli.py" in names

    env = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", env], cwd=tmp_path)
    site = Path(sh([env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh([env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=tmp_path)

    where = sh([env / "bin" / "python", "-c", "import embwalk; print(embwalk.__file__, embwalk.ExtractConfig)"],
               cwd=tmp_path).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout

    started = time.perf_counter()
    usage = sh([env / "bin" / "embwalk", "--help"], cwd=tmp_path).stdout
    assert "extract" in usage and "verify" in usage
    options = sh([env / "bin" / "embwalk", "extract", "--help"], cwd=tmp_path).stdout
    assert "model: " in options and "model=hub|minilm|smollm2" in options and "store.path=" in options
    assert time.perf_counter() - started < 30  # generous on a loaded machine; docs/benchmarks.md has the timing

    store = tmp_path / "store"
    run = sh([env / "bin" / "embwalk", "extract", "model=minilm", "corpus.max_tokens=64", "cluster.progress=false",
              f"store={store}"], cwd=tmp_path)
    assert "tokens: 64 committed of 64" in run.stdout, run.stdout
    assert (store / "manifest.json").is_file() and list((store / "tokens").glob("*.parquet"))
    bad = subprocess.run([env / "bin" / "python", "-m", "embwalk", "extract", "model=smollm"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("embwalk: error: unknown model option 'smollm'")


def test_every_package_of_the_tree_is_in_the_wheel():
    """pyproject.toml lists packages by name: a new subpackage left out would be missing from the
    wheel while the editable install still finds it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"pipeline": "embwalk", "jobs": "embwalk.jobs", "conf": "embwalk.conf"}
    found = set()
    for folder, package in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found <= listed, sorted(found - listed)
