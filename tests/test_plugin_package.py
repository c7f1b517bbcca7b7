"""An out-of-tree plugin package (tests/plugin_example, shown in the README) installed as users
install one — built and pip-installed into a scratch virtual environment — and found through its
entry points alone: it runs through ``brainharness run`` and appears in ``brainharness leaderboard``.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parent / "plugin_example"


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory) -> Path:
    """A venv that sees this environment's packages (torch, brainharness) plus the example plugin."""
    root = tmp_path_factory.mktemp("plugin-venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    src = root / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return python


def _cli(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "brainharness.cli", "-q", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ""})


def test_the_plugin_is_not_registered_here():
    """Discovery is by entry points: in this interpreter (no plugin installed) the names are unknown."""
    from brainharness import registry

    assert "rsa" not in registry.tasks.names() and "edges" not in registry.backbones.names()


def test_installed_plugin_runs_and_reaches_the_leaderboard(plugin_python, tmp_path):
    listed = _cli(plugin_python, "list", "tasks", cwd=tmp_path)
    assert listed.returncode == 0 and any(line.startswith("rsa\t") for line in listed.stdout.splitlines())
    backbones = _cli(plugin_python, "list", "backbones", cwd=tmp_path).stdout
    assert any(line.startswith("edges\t") and "family=example" in line for line in backbones.splitlines())

    cfg = {"experiment": "plugin", "seed": 0, "results_dir": "results", "cache_dir": str(tmp_path / "cache"),
           "dataset": {"name": "synthetic", "n_train": 200, "n_test": 80, "n_voxels": 120, "image_size": 32,
                       "seed": 4},
           "backbones": [{"name": "edges", "grid": 4}, {"name": "oracle", "layer": "all"}],
           "tasks": [{"name": "rsa", "max_images": 60}, {"name": "encoding"}],
           "tracking": {"wandb": {"mode": "disabled"}}}
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(cfg))
    run = _cli(plugin_python, "run", "plugin.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]

    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")
               if "wandb" not in p.parts]
    rsa = {r["key"]["backbone"]: r for r in records if r["key"]["task"] == "rsa"}
    assert set(rsa) == {"edges", "oracle"} and all(r["status"] == "complete" for r in rsa.values())
    # the oracle's features generated the responses: its RDM matches the brain's far better than edges do
    assert rsa["oracle"]["scores"]["rsa_all"] > rsa["edges"]["scores"]["rsa_all"] + 0.1
    assert rsa["edges"]["backbone"]["family"] == "example"
    assert {row["roi"] for row in rsa["oracle"]["tables"]["per_roi"]} >= {"V1", "FFA"}

    board = _cli(plugin_python, "leaderboard", "--results", "results", "--out", "board", cwd=tmp_path)
    assert board.returncode == 0, board.stderr[-2000:]
    with open(tmp_path / "board" / "rsa.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the plugin backbone is ranked; the oracle declares itself a control: a reference row, never ranked
    assert [(r["backbone"], r["rank"], r["reference"]) for r in rows] == [("edges", "1", "False"),
                                                                         ("oracle", "", "True")]
    assert {"all", "V1", "hV4", "FFA"} <= set(rows[1])  # the plugin's own ROI columns, the data's names
    assert float(rows[1]["all"]) == pytest.approx(rsa["oracle"]["scores"]["rsa_all"], abs=1e-3)
    assert (tmp_path / "board" / "encoding.csv").exists()
