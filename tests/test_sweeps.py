"""Optuna sweeps: validation-only objective, resumable SQLite storage, best scored once on test."""
import optuna
import pytest

from conftest import tiny_config
from brainharness.errors import ConfigError
from brainharness.runner import Runner
from brainharness.sweeps.study import Sweep, run_sweep


def sweep_config(tmp, n_trials):
    return tiny_config(tmp, backbones=[{"name": "pixels", "size": 8}], sweep={
        "study": "s", "n_trials": n_trials, "space": {"alpha_min": {"low": 1e-2, "high": 1e2, "log": True},
                                                     "alpha_max": {"low": 1e3, "high": 1e6, "log": True}}})


def test_sweep_resumes_and_scores_best_once_on_test(tmp_path):
    first = run_sweep(sweep_config(tmp_path, 3), progress=False)
    assert first["n_complete_trials"] == 3
    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.value for t in trials if t.number == first["best_trial"]][0] == pytest.approx(
        first["best_validation_score"])
    # every trial wrote a validation record; only the best one was scored on test
    runner = Runner(sweep_config(tmp_path, 3), progress=False)
    recs = list(runner.store.records())
    val = [r for r in recs if r["evaluated_on"] == "validation"]
    test = [r for r in recs if r["evaluated_on"] == "test"]
    assert len(val) == 3 and len(test) == 1
    assert test[0]["sweep"]["best_params"] == first["best_params"]
    assert test[0]["task"]["params"]["alpha_min"] == pytest.approx(first["best_params"]["alpha_min"])
    created = test[0]["provenance"]["created"]
    # resuming to 5 trials runs only 2 more, reusing the study
    second = run_sweep(sweep_config(tmp_path, 5), progress=False)
    assert second["n_complete_trials"] == 5
    assert len([r for r in runner.store.records() if r["evaluated_on"] == "validation"]) == 5
    if second["best_params"] == first["best_params"]:  # same best → the test record is not redone
        assert runner.store.load(test[0]["key"])["provenance"]["created"] == created


def test_objective_uses_only_the_training_split(tmp_path):
    runner = Runner(sweep_config(tmp_path, 1), progress=False)
    sweep = Sweep(runner)
    test_ids = set(runner.dataset.subject("subj01").test.stim_ids.tolist())
    asked = []
    orig = runner.cache.features
    runner.cache.features = lambda b, s, ids, layer=None, progress=False: (asked.append(set(ids.tolist())),
                                                                            orig(b, s, ids, layer, progress))[1]
    study = optuna.create_study(direction="maximize")
    study.optimize(sweep.objective, n_trials=1)
    assert asked and all(not (a & test_ids) for a in asked)


def test_bad_sweep_space_is_named(tmp_path):
    cfg = sweep_config(tmp_path, 1)
    cfg["sweep"]["space"] = {"alpah": {"low": 1, "high": 2}}
    with pytest.raises(ConfigError, match="'alpah' is not a parameter of task encoding"):
        Sweep(Runner(cfg, progress=False))


def test_sweep_objective_names_a_score(tmp_path):
    cfg = sweep_config(tmp_path, 1)
    cfg["sweep"]["objective"] = "median_r2"
    summary = run_sweep(cfg, progress=False)
    assert summary["objective"] == "median_r2"
    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    (val,) = [r for r in Runner(cfg, progress=False).store.records() if r["evaluated_on"] == "validation"]
    assert trial.value == pytest.approx(val["scores"]["median_r2"]) != pytest.approx(val["scores"]["median_nc_r2"])
    cfg = sweep_config(tmp_path / "b", 1)
    cfg["sweep"]["objective"] = "median_rr2"
    with pytest.raises(ConfigError, match="'median_rr2' is not a score of task encoding; did you mean 'median_r2'"):
        run_sweep(cfg, progress=False)  # before any trial (the task declares its scores)
    assert not (tmp_path / "b" / "results").exists()
