"""End to end: config → runner → results store → leaderboard, through the CLI too."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import tiny_config
from brainharness.cli import main
from brainharness.errors import ConfigError, PluginNotFound
from brainharness.runner import Runner


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tmp, tasks=[{"name": "encoding"}, {"name": "retrieval", "n_trials": 5}],
                      tracking={"wandb": {"mode": "offline", "project": "t"}})
    runner = Runner(cfg, progress=False)
    return runner, {(r["key"]["backbone"], r["key"]["task"]): r for r in runner.run()}


def test_records_are_complete_and_traceable(tiny_run):
    runner, records = tiny_run
    rec = records[("oracle", "encoding")]
    assert rec["status"] == "complete" and rec["evaluated_on"] == "test"
    assert rec["key"]["weights"] == "none" and rec["backbone"]["layer"] == "all"
    prov = rec["provenance"]
    assert prov["seed"] == 0 and prov["packages"]["torch"] and prov["code"]["source_digest"]
    assert rec["dataset"]["n_scored_images"] == 320 and rec["dataset"]["info"]
    assert {r["roi"] for r in rec["tables"]["per_roi"]} >= {"V1", "FFA", "PPA"}
    # the oracle is near the ceiling, pixels well below it
    assert rec["scores"]["median_nc_r2"] > 80
    assert records[("pixels", "encoding")]["scores"]["median_nc_r2"] < rec["scores"]["median_nc_r2"]
    side = runner.store.per_voxel(rec["_path"])
    assert side["nc_r2"].shape == (300,) and np.nanmedian(side["nc_r2"][side["noise_ceiling"] > 10]) == \
        pytest.approx(rec["scores"]["median_nc_r2"], rel=1e-5)
    assert rec["tracking"]["wandb"]["status"] == "offline"


def test_retrieval_directions_recorded(tiny_run):
    _, records = tiny_run
    rows = {r["direction"]: r for r in records[("oracle", "retrieval")]["tables"]["retrieval"]}
    assert set(rows) == {"brain→image", "image→brain"}
    assert rows["brain→image"]["mean"] > 0.3 and rows["brain→image"]["n_candidates"] == 300


def test_skip_existing_policy_reuses_records(tiny_run, tmp_path):
    runner, records = tiny_run
    cfg = dict(runner.cfg, policy="skip-existing")
    again = Runner(cfg, progress=False).run()
    assert [r["provenance"]["created"] for r in again] == \
        [records[(r["key"]["backbone"], r["key"]["task"])]["provenance"]["created"] for r in again]


def test_validation_mode_never_sees_the_test_split(tiny_run):
    runner, _ = tiny_run
    seen = []
    orig = runner.cache.features

    def spy(backbone, stimuli, ids, layer=None, progress=False):
        seen.append(np.asarray(ids))
        return orig(backbone, stimuli, ids, layer, progress)

    runner.cache.features = spy
    try:
        rec = runner.run_unit("subj01", runner.cfg["backbones"][0], runner.cfg["tasks"][0],
                              evaluated_on="validation", experiment="val", track=False)
    finally:
        runner.cache.features = orig
    test_ids = set(runner.dataset.subject("subj01").test.stim_ids.tolist())
    assert seen and all(not (set(s.tolist()) & test_ids) for s in seen)
    assert rec["evaluated_on"] == "validation" and rec["dataset"]["n_scored_images"] == 80


def test_bad_inputs_fail_early_with_named_problem(tmp_path):
    with pytest.raises(PluginNotFound, match="did you mean 'pixels'"):
        Runner(tiny_config(tmp_path, backbones=[{"name": "pixel"}]))
    with pytest.raises(ConfigError, match="nc_threshold"):
        Runner(tiny_config(tmp_path, tasks=[{"name": "encoding", "nc_threshold": 150}]))
    with pytest.raises(ConfigError, match="unknown parameter 'alpah_min'; did you mean 'alpha_min'"):
        Runner(tiny_config(tmp_path, tasks=[{"name": "encoding", "alpah_min": 1}]))
    with pytest.raises(ConfigError, match="share the label"):
        Runner(tiny_config(tmp_path, backbones=[{"name": "pixels"}, {"name": "pixels", "size": 4}]))


@pytest.mark.parametrize("case, needle", [
    ("unknown_plugin", "unknown backbone 'clipp'"),
    ("bad_value", "seed must be an integer"),
    ("missing_file", "config file not found"),
])
def test_cli_errors_are_one_line(tmp_path, case, needle):
    cfg = tiny_config(tmp_path)
    if case == "unknown_plugin":
        cfg["backbones"] = [{"name": "clipp"}]
    if case == "bad_value":
        cfg["seed"] = "zero"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    target = str(tmp_path / "nope.yaml") if case == "missing_file" else str(path)
    proc = subprocess.run([sys.executable, "-m", "brainharness.cli", "run", target], capture_output=True, text=True)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_run_then_leaderboard(tmp_path, capsys):
    cfg = tiny_config(tmp_path, backbones=[{"name": "pixels", "size": 8}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "run", str(path)]) == 0
    out_dir = tmp_path / "lb"
    assert main(["leaderboard", "--results", cfg["results_dir"], "--out", str(out_dir)]) == 0
    assert (out_dir / "encoding.md").exists() and (out_dir / "encoding.csv").exists()
    assert "pixels" in capsys.readouterr().out


def test_selftest_meets_its_thresholds(tmp_path):
    from brainharness.cli.selftest import run_selftest

    result = run_selftest(tmp_path)
    assert result["passed"], json.dumps(result["checks"])
    assert result["nc_truth_r"] >= 0.95 and result["oracle_median_nc_r2"] >= 90
    assert result["shuffled_median_nc_r2"] <= 2 and result["retrieval_shuffled_top1"] <= 0.02


def test_cache_clear_parts(tmp_path, capsys):
    """`cache clear` removes features only; `cache clear captioners` / `all` the other folders."""
    for part, name in (("features", "a.h5"), ("captioners", "abc/generation/model.safetensors"),
                       ("text-embeddings", "minilm.npz")):
        f = tmp_path / part / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "features").exists() and (tmp_path / "captioners").exists()
    assert main(["cache", "clear", "captioners", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert not (tmp_path / "captioners").exists() and (tmp_path / "text-embeddings").exists()
    assert main(["cache", "clear", "all", "--cache-dir", str(tmp_path)]) == 0
    assert list(tmp_path.iterdir()) == []
