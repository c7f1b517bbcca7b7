"""Grids and sweep workers on a real single-node SLURM cluster (tests/conftest_slurm.py) through
submitit: the same records as a local run, a cancelled job's unit re-submitted alone, sweep workers
as SLURM jobs; and the launcher's checks, which need no cluster."""
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import tiny_config
from conftest_slurm import slurm_cluster  # noqa: F401
from brainharness.results import ResultStore
from brainharness.runner import Runner

pytestmark = pytest.mark.slurm


def grid_config(tmp: Path, results: str) -> dict:
    """12 units: 3 subjects × 2 backbones × 2 tasks."""
    return tiny_config(tmp, results_dir=str(tmp / results), policy="skip-existing",
                       dataset={"name": "synthetic", "n_train": 120, "n_test": 60, "n_voxels": 200,
                                "image_size": 16, "n_subjects": 3, "seed": 5},
                       backbones=[{"name": "pixels", "size": 4}, {"name": "random-features", "n_features": 32, "size": 8}],
                       tasks=[{"name": "encoding"}, {"name": "retrieval", "n_trials": 5, "n_candidates": 20}])


def write(tmp: Path, cfg: dict, name: str) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brainharness.cli", "-q", *args], capture_output=True, text=True,
                          timeout=timeout)


def scores_by_id(results_dir) -> dict:
    return {r["key"]["id"]: (r["scores"], r["main_score"]) for r in ResultStore(results_dir).records()}


def states(config: Path) -> dict:
    out = cli("status", str(config))
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:-1]]
    return {tuple(r[2:5]): (r[0], r[1]) for r in rows}


def squeue(*args) -> list[str]:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i", *args], capture_output=True, text=True).stdout.split()


def cancel_one_mid_run(array: str, config: Path) -> str:
    """Cancel a running array task whose unit has no record yet (``scancel``: SIGTERM, SIGKILL after
    KillWait); a task that finished its unit before the cancel landed does not count: try the next."""
    tried: set = set()
    end = time.monotonic() + 300
    while time.monotonic() < end:
        running = [j for j in squeue("-t", "R") if j.startswith(array + "_") and j not in tried]
        if not running:
            time.sleep(0.05)
            continue
        victim = running[0]
        tried.add(victim)
        subprocess.run(["scancel", victim], check=True)
        while victim in squeue():
            time.sleep(0.2)
        if any(job == victim and s != "done" for s, job in states(config).values()):
            return victim
    raise AssertionError(f"no array task could be cancelled before its unit ended (tried {sorted(tried)})")


def test_grid_on_slurm_matches_local_and_resubmits_a_cancelled_unit(tmp_path, slurm_cluster):  # noqa: F811
    local = grid_config(tmp_path, "local")
    Runner(local, progress=False).run()
    expected = scores_by_id(local["results_dir"])
    assert len(expected) == 12

    config = write(tmp_path, grid_config(tmp_path, "cluster"), "grid.yaml")
    out = cli("run", str(config), "--launcher", "slurm", "--array-parallelism", "2", "--time-min", "10")
    assert out.returncode == 0, out.stderr
    assert "submitted 12 unit(s) as job array" in out.stdout
    array = out.stdout.split("job array ")[1].split()[0]
    victim = cancel_one_mid_run(array, config)
    first = {}
    end = time.monotonic() + 600
    while time.monotonic() < end:
        first = states(config)
        if not any(s in ("pending", "running") for s, _ in first.values()):
            break
        time.sleep(1)
    cancelled = [u for u, (s, job) in first.items() if job == victim]
    assert len(cancelled) == 1 and first[cancelled[0]][0] == "failed"
    assert sorted(s for s, _ in first.values()) == ["done"] * 11 + ["failed"]
    results = Path(tmp_path / "cluster")
    assert not list(results.rglob(".*.tmp"))  # no half-written file left behind
    assert len(scores_by_id(results)) == 11

    again = cli("run", str(config), "--launcher", "slurm", "--wait")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "submitted 1 unit(s)" in again.stdout
    final = states(config)
    assert all(s == "done" for s, _ in final.values())
    assert final[cancelled[0]][1] != victim  # the re-submitted job ran it
    assert scores_by_id(results) == expected  # the same numbers as the local run, unit by unit

    jobs = {r["provenance"]["job"]["job_id"] for r in ResultStore(results).records()}
    assert len(jobs) == 12 and all(j.startswith(array + "_") for j in jobs - {final[cancelled[0]][1]})
    nothing = cli("run", str(config), "--launcher", "slurm")
    assert nothing.returncode == 0 and "nothing to submit" in nothing.stdout


def test_sweep_workers_as_slurm_jobs(tmp_path, slurm_cluster):  # noqa: F811
    from test_sweep_workers import write_config

    cfg, path = write_config(tmp_path, None)
    cfg["sweep"]["n_trials"] = 6
    path.write_text(yaml.safe_dump(cfg))
    out = cli("sweep", str(path), "--launcher", "slurm", "--workers", "2", "--wait", "--time-min", "10")
    assert out.returncode == 0, out.stderr + out.stdout
    assert "submitted 2 sweep worker(s)" in out.stdout
    study = optuna.load_study(study_name="w", storage=cfg["sweep"]["storage"])
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) >= 1 and all(":" in w for w in workers)
    records = list(Runner(cfg, progress=False).store.records())
    (test,) = [r for r in records if r["evaluated_on"] == "test"]
    assert test["sweep"]["best_trial"] == study.best_trial.number
    assert test["provenance"]["job"]["launcher"] == "slurm"


# -- the launcher's checks: no cluster needed ------------------------------------------------------

def test_status_of_a_local_run(tmp_path):
    cfg = grid_config(tmp_path, "r")
    cfg["subjects"] = ["subj01"]
    cfg["tasks"] = cfg["tasks"][:1]
    config = write(tmp_path, cfg, "one.yaml")
    before = states(config)
    assert sorted(before.values()) == [("missing", "-")] * 2
    runner = Runner(cfg, progress=False)
    runner.run()
    after = states(config)
    assert sorted(s for s, _ in after.values()) == ["done", "done"]
    assert cli("status", str(config)).stdout.splitlines()[-1] == "2 unit(s): 2 done, 0 running, 0 pending, 0 failed, 0 missing"


@pytest.mark.parametrize("args, env, says", [
    (["--gpus", "-1"], {}, "slurm: gpus must be"),
    (["--launcher", "local", "--partition", "gpu"], {}, "--partition is an option of --launcher slurm"),
    (["--sbatch", "=x"], {}, "--sbatch takes KEY=VALUE"),
    ([], {"PATH": os.path.dirname(sys.executable)}, "sbatch, sacct, scancel not found on PATH"),
])
def test_launcher_input_errors_are_one_line(tmp_path, args, env, says):
    config = write(tmp_path, grid_config(tmp_path, "r"), "g.yaml")
    out = subprocess.run([sys.executable, "-m", "brainharness.cli", "run", str(config), "--launcher", "slurm", *args],
                         capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # before any compute: nothing written


def test_slurm_section_of_a_config_is_checked(tmp_path):
    cfg = grid_config(tmp_path, "r")
    cfg["slurm"] = {"partiton": "gpu"}
    out = cli("run", str(write(tmp_path, cfg, "bad.yaml")))
    assert out.returncode == 2 and "did you mean 'partition'" in out.stderr, out.stderr
