"""Many sweep workers on one study, on SQLite and a real PostgreSQL server: n_trials global, the
schema created once when all start together, a killed worker's trial retried, test scored once."""
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from conftest import tiny_config
from conftest_postgres import postgres_url  # noqa: F401
from brainharness.runner import Runner

N_TRIALS = 20
# the trial a worker is running, past its first parameter (Optuna's schema)
RUNNING_IN = sqlalchemy.text(
    "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id JOIN trial_user_attributes a "
    "ON a.trial_id = t.trial_id WHERE s.study_name = 'w' AND t.state = 'RUNNING' AND a.key = 'worker' "
    "AND a.value_json LIKE :worker AND EXISTS (SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id)")


def write_config(tmp, storage) -> tuple:
    cfg = tiny_config(tmp, backbones=[{"name": "pixels", "size": 4}],
                      dataset={"name": "synthetic", "n_train": 160, "n_test": 80, "n_voxels": 400, "image_size": 16,
                               "seed": 3},
                      sweep={"study": "w", "n_trials": N_TRIALS, "storage": storage or f"sqlite:///{tmp / 'optuna.db'}",
                             "heartbeat_interval": 1, "grace_period": 4,
                             "space": {"alpha_min": {"low": 1e-2, "high": 1e2, "log": True}}})
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, path


def brainharness(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "brainharness.cli", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def check_study(cfg) -> list:
    """20 COMPLETE trials, the best scored once on test (one test record, with the best's parameters)."""
    study = optuna.load_study(study_name="w", storage=cfg["sweep"]["storage"])
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    records = list(Runner(cfg, progress=False).store.records())
    (test,) = [r for r in records if r["evaluated_on"] == "test"]
    assert test["sweep"]["best_trial"] == study.best_trial.number
    assert test["task"]["params"]["alpha_min"] == pytest.approx(study.best_params["alpha_min"])
    assert study.user_attrs["best_on_test"]["trial"] == study.best_trial.number
    return records


def four_workers_at_once(tmp, storage):
    cfg, path = write_config(tmp, storage)
    proc = brainharness("sweep", str(path), "--workers", "4")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    records = check_study(cfg)
    assert sum(r["evaluated_on"] == "validation" for r in records) == N_TRIALS  # no trial ran twice
    assert f"complete {N_TRIALS}, running 0, waiting 0, fail 0" in out
    assert out.count("up to date") == 3 and out.count(" ran") >= N_TRIALS + 1  # one worker scored the test split
    status = brainharness("sweep", str(path), "--status")
    assert "test: scored once, trial" in status.communicate(timeout=60)[0]


def one_worker_killed_mid_trial(tmp, storage):
    cfg, path = write_config(tmp, storage)
    procs = [brainharness("sweep", str(path)) for _ in range(4)]
    victim, killed = procs[0], None
    url = cfg["sweep"]["storage"]
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=(
        {"timeout": 0.5} if url.startswith("sqlite") else {"options": "-c statement_timeout=500"}))
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline:
        os.kill(victim.pid, signal.SIGSTOP)  # frozen: if its trial is RUNNING now, it is mid-trial
        try:
            with engine.connect() as conn:
                killed = conn.execute(RUNNING_IN, {"worker": f'%:{victim.pid}"'}).scalar()
        except sqlalchemy.exc.SQLAlchemyError:  # no tables yet, or a row the frozen worker holds
            pass
        if killed is not None:
            victim.kill()
        else:
            os.kill(victim.pid, signal.SIGCONT)
            time.sleep(0.1)
    engine.dispose()
    assert killed is not None, "the victim never ran a trial"
    outs = [p.communicate(timeout=240)[0] for p in procs[1:]]
    assert [p.wait() for p in procs] == [-signal.SIGKILL, 0, 0, 0], outs
    records = check_study(cfg)
    # no trial's record lost to the kill: the retry writes the killed trial's
    assert sum(r["evaluated_on"] == "validation" for r in records) == N_TRIALS
    study = optuna.load_study(study_name="w", storage=url)
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.number == killed
    (retried,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retried.state == TrialState.COMPLETE and retried.params == failed.params


def test_four_workers_sqlite(tmp_path):
    four_workers_at_once(tmp_path, None)


def test_killed_worker_sqlite(tmp_path):
    one_worker_killed_mid_trial(tmp_path, None)


@pytest.mark.postgres
def test_four_workers_postgres(tmp_path, postgres_url):  # noqa: F811
    four_workers_at_once(tmp_path, postgres_url)


@pytest.mark.postgres
def test_killed_worker_postgres(tmp_path, postgres_url):  # noqa: F811
    one_worker_killed_mid_trial(tmp_path, postgres_url)


def test_status_and_bad_worker_count(tmp_path, capsys):
    from brainharness.cli import main

    cfg, path = write_config(tmp_path, None)
    assert main(["sweep", str(path), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "brainharness: error: --workers must be ≥ 1, got 0"
    assert main(["sweep", str(path), "--status"]) == 0
    assert capsys.readouterr().out.startswith(f"study w: not started in sqlite:///{tmp_path / 'optuna.db'}")
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "results").exists()  # nothing run or made
