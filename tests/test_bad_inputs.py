"""Bad inputs, as a new user makes them: each ends in ONE line on stderr, exit 2, nothing written.

Every case runs the real command line in-process (``brainharness.cli.main``; a few in a
subprocess) and asserts the exit code, exactly one ``brainharness: error:`` line holding the
expected fragment (argparse's usage line may precede its own), no traceback, and that nothing
was written as if it had worked: no result record, no study, no cache file, files left as found.

Root and permissions: root ignores file modes (``os.access`` says yes, ``chmod 555`` stops no
write), so the chmod case runs only for other users; the read-only cases every user can test
use a kernel folder that refuses even root (``/sys``: EACCES) and a path under a regular file.
A full disk cannot be made honestly in a test: ``/dev/full`` gives a real ENOSPC for the
one-line mapping (``test_disk_full_is_one_line``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from brainharness.cli import main

SMALL = {"name": "synthetic", "n_train": 60, "n_test": 20, "n_voxels": 40, "image_size": 16}


def base(tmp: Path) -> dict:
    return {"experiment": "t", "results_dir": str(tmp / "res"), "cache_dir": str(tmp / "cache"),
            "dataset": dict(SMALL), "backbones": [{"name": "pixels", "size": 4}], "tasks": [{"name": "encoding"}],
            "tracking": {"wandb": {"mode": "disabled"}}}


def sweep(**over) -> dict:
    return {"study": "s", "n_trials": 1, "space": {"alpha_min": {"low": 1e-2, "high": 1.0, "log": True}}, **over}


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # writes what the case needs under tmp, returns the argv
    fragment: str  # part of the one error line (the message class)
    code: int = 2
    usage: bool = False  # argparse: ``brainharness <command>: error:``, maybe after a usage line
    report: bool = False  # `data check`: the problems are the report on stdout, not an error line
    skip: Callable[[], str | None] = lambda: None


def cfg(mutate, command: str = "run", extra: tuple = ()) -> Callable[[Path], list[str]]:
    """A case from the tiny config changed by ``mutate(cfg, tmp)`` (a dict merged in, or a function)."""
    def setup(tmp: Path) -> list[str]:
        c = base(tmp)
        if callable(mutate):
            mutate(c, tmp)
        else:
            c.update(mutate)
        path = tmp / "cfg.yaml"
        path.write_text(yaml.safe_dump(c, allow_unicode=True))
        return [command, str(path), *extra]
    return setup


def text(body: str, command: str = "run") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "cfg.yaml").write_text(body)
        return [command, str(tmp / "cfg.yaml")]
    return setup


def argv(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [a.replace("{tmp}", str(tmp)) for a in args]


def a_file(name: str):
    """``mutate`` helper: make ``tmp/name`` a regular file (returns its path)."""
    def make(tmp: Path) -> Path:
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("not a folder")
        return p
    return make


def set_(key: str, value, *, file: str | None = None):
    """``mutate``: ``cfg[key] = value`` (``{file}`` in a string value: a regular file made first)."""
    def mutate(c, tmp):
        if file:
            a_file(file)(tmp)
        c[key] = value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value
    return mutate


def task(**params):
    return {"tasks": [{"name": "encoding", **params}]}


def ds(**params):
    return {"dataset": {**SMALL, **params}}


def sweep_case(**over):
    def mutate(c, tmp):
        c["sweep"] = sweep(**{k: v.replace("{tmp}", str(tmp)) if isinstance(v, str) else v for k, v in over.items()})
    return mutate


def space(**entries):
    return sweep_case(space=entries)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _changed_space(new_space: dict, resume_anyway: bool = False):
    """A study that already holds a trial of ``alpha_min`` in [1e-2, 1] (log), re-run with ``new_space``."""
    def setup(tmp: Path) -> list[str]:
        import optuna

        (tmp / "db").mkdir()
        old = sweep()["space"]
        study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp / 'db' / 'o.db'}", direction="maximize")
        study.set_user_attr("search_space", old)
        study.add_trial(optuna.trial.create_trial(
            params={"alpha_min": 0.1}, distributions={"alpha_min": optuna.distributions.FloatDistribution(
                1e-2, 1.0, log=True)}, value=1.0))
        return cfg(sweep_case(storage=f"sqlite:///{tmp / 'db' / 'o.db'}", space=new_space, n_trials=2), "sweep",
                   ("--resume-anyway",) if resume_anyway else ())(tmp)
    return setup


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def _readonly_dir(tmp: Path) -> list[str]:
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o555)
    return cfg(set_("results_dir", str(d / "res")))(tmp)


CASES = [
    # -- the config file ---------------------------------------------------------------
    Case("config-missing", argv("run", "{tmp}/nope.yaml"), "config file not found"),
    Case("yaml-syntax", text("experiment: [t\ndataset: synthetic\n"), "not valid YAML"),
    Case("yaml-list", text("- a\n- b\n"), "mapping at the top level"),
    Case("yaml-empty", text(""), "mapping at the top level"),
    Case("unknown-key", cfg({"backbone": [{"name": "pixels"}]}), "unknown config key 'backbone'; did you mean 'backbones'"),
    Case("unknown-key-seed", cfg({"seeed": 1}), "did you mean 'seed'"),
    Case("seed-str", cfg({"seed": "x"}), "seed must be an integer"),
    Case("seed-bool", cfg({"seed": True}), "seed must be an integer"),
    Case("experiment-empty", cfg({"experiment": ""}), "experiment must be a non-empty string"),
    Case("policy", cfg({"policy": "always"}), "policy must be one of"),
    Case("device-word", cfg({"device": "gpu"}), "device must be auto, cpu or cuda"),
    Case("device-cuda3", cfg({"device": "cuda:3"}), "device 'cuda:3' is not available",
         skip=lambda: "this machine has 4+ GPUs" if _gpus() > 3 else None),
    Case("device-cuda", cfg({"device": "cuda"}), "device 'cuda' is not available",
         skip=lambda: "this machine has a GPU" if _gpus() else None),
    Case("device-cuda-x", cfg({"device": "cuda:x"}), "cuda or cuda:N"),
    Case("backbone-device", cfg({"backbones": [{"name": "pixels", "size": 4, "device": "cuda:7"}]}),
         "backbone pixels: device 'cuda:7' is not available", skip=lambda: "8+ GPUs" if _gpus() > 7 else None),
    Case("tasks-empty", cfg({"tasks": []}), "'tasks' is empty"),
    Case("backbones-empty", cfg({"backbones": []}), "'backbones' is empty"),
    Case("tasks-missing", cfg(lambda c, t: c.pop("tasks")), "config needs 'tasks'"),
    Case("dataset-missing", cfg(lambda c, t: c.pop("dataset")), "config needs 'dataset"),
    Case("dataset-number", cfg({"dataset": 5}), "config needs 'dataset"),
    Case("task-no-name", cfg({"tasks": [{"alpha_min": 1}]}), "tasks[0] must be a mapping with a 'name'"),
    Case("tasks-number", cfg({"tasks": 3}), "'tasks' must be a list"),
    Case("results-dir-number", cfg({"results_dir": 5}), "results_dir must be a path"),
    Case("cache-dir-list", cfg({"cache_dir": ["a"]}), "cache_dir must be a path"),
    Case("wandb-mode", cfg({"tracking": {"wandb": {"mode": "loud"}}}), "tracking.wandb.mode must be one of"),
    Case("duplicate-label", cfg({"tasks": [{"name": "encoding"}, {"name": "encoding"}]}), "share the label 'encoding'"),
    # -- plugin names and parameters ---------------------------------------------------
    Case("dataset-name", cfg({"dataset": {"name": "synthetik"}}), "did you mean 'synthetic'"),
    Case("backbone-name", cfg({"backbones": [{"name": "pixel"}]}), "did you mean 'pixels'"),
    Case("task-name", cfg({"tasks": [{"name": "encodng"}]}), "did you mean 'encoding'"),
    Case("task-param-unknown", cfg(task(alpha_mn=1)), "unknown parameter 'alpha_mn'; did you mean 'alpha_min'"),
    Case("task-param-type", cfg(task(alpha_min="x")), "alpha_min must be"),
    Case("task-param-range", cfg(task(alpha_min=-1)), "alpha_min must be"),
    Case("task-params-rule", cfg(task(alpha_min=10.0, alpha_max=1.0)), "alpha_min must be ≤ alpha_max"),
    Case("task-param-choice", cfg(task(cv="sometimes")), "task encoding: cv"),
    Case("dataset-param-unknown", cfg(ds(n_trian=5)), "did you mean 'n_train'"),
    Case("dataset-param-range", cfg(ds(n_train=1)), "n_train must be"),
    Case("backbone-param-type", cfg({"backbones": [{"name": "pixels", "size": "big"}]}), "size must be"),
    Case("capability", cfg({"tasks": [{"name": "captioning"}]}), "backbone 'pixels' (pixels) does not provide"),
    Case("pca-too-large", cfg(task(pca=500)), "pca = 500 components but only 60 fit images"),
    # -- the file system -----------------------------------------------------------------
    Case("results-dir-file", cfg(set_("results_dir", "{tmp}/rfile", file="rfile")), "is a file, not a folder"),
    Case("results-dir-under-file", cfg(set_("results_dir", "{tmp}/rfile/sub", file="rfile")), "is a file, not a folder"),
    Case("cache-dir-file", cfg(set_("cache_dir", "{tmp}/cfile", file="cfile")), "cache_dir"),
    Case("cache-dir-under-file", cfg(set_("cache_dir", "{tmp}/cfile/x/y", file="cfile")), "is a file, not a folder"),
    Case("results-dir-kernel-readonly", cfg(set_("results_dir", "/sys/brainharness-results")), "results_dir /sys",
         skip=lambda: None if sys.platform == "linux" else "no /sys"),
    Case("cache-dir-kernel-readonly", cfg(set_("cache_dir", "/sys/brainharness-cache")), "cache_dir /sys",
         skip=lambda: None if sys.platform == "linux" else "no /sys"),
    Case("results-dir-chmod", _readonly_dir, "not writable",
         skip=lambda: "root ignores file modes" if os.geteuid() == 0 else None),
    # -- sweeps --------------------------------------------------------------------------
    Case("sweep-missing-section", cfg({}, "sweep"), "no 'sweep' section"),
    Case("sweep-fraction-high", cfg(sweep_case(validation_fraction=1.5), "sweep"), "validation_fraction must be"),
    Case("sweep-fraction-zero", cfg(sweep_case(validation_fraction=0), "sweep"), "in (0, 1)"),
    Case("sweep-fraction-str", cfg(sweep_case(validation_fraction="x"), "sweep"), "validation_fraction must be"),
    Case("sweep-objective", cfg(sweep_case(objective="median_rr2"), "sweep"),
         "'median_rr2' is not a score of task encoding; did you mean 'median_r2'"),
    Case("sweep-objective-type", cfg(sweep_case(objective=5), "sweep"), "sweep.objective must be a score name"),
    Case("sweep-low-high", cfg(space(alpha_min={"low": 10.0, "high": 1.0}), "sweep"), "low must be ≤ high"),
    Case("sweep-log-zero", cfg(space(alpha_min={"low": 0.0, "high": 1.0, "log": True}), "sweep"), "needs low > 0"),
    Case("sweep-choices-empty", cfg(space(pca={"choices": []}), "sweep"), "choices must be a non-empty list"),
    Case("sweep-space-unknown", cfg(space(alpah={"low": 1, "high": 2}), "sweep"),
         "'alpah' is not a parameter of task encoding"),
    Case("sweep-space-not-mapping", cfg(space(alpha_min=5), "sweep"), "must be a mapping"),
    Case("sweep-space-no-range", cfg(space(alpha_min={"low": 1.0}), "sweep"), "needs 'choices' or 'low' and 'high'"),
    Case("sweep-space-param", cfg(space(alpha_min={"low": -1.0, "high": 1.0}), "sweep"), "alpha_min must be"),
    Case("sweep-choice-type", cfg(sweep_case(space={"alpha_min": {"choices": ["x"]}}), "sweep"), "alpha_min must be"),
    Case("sweep-pca-choices", cfg(space(pca={"choices": [None, 500]}), "sweep"), "pca = 500 components but only 48"),
    Case("sweep-pca-range", cfg(space(pca={"low": 2, "high": 50}), "sweep"), "pca = 50 components but only 48"),
    Case("sweep-sampler", cfg(sweep_case(sampler="random"), "sweep"), "sweep.sampler must be one of"),
    Case("sweep-key", cfg(sweep_case(trials=3), "sweep"), "unknown sweep key 'trials'"),
    Case("sweep-n-trials", cfg(sweep_case(n_trials=0), "sweep"), "n_trials must be a positive integer"),
    Case("sweep-backbone", cfg(sweep_case(backbone="clip"), "sweep"), "sweep.backbone 'clip' is not a backbone label"),
    Case("sweep-report", cfg(sweep_case(report="nocolon"), "sweep"), "must be 'module:function'"),
    Case("sweep-changed-space", _changed_space({"alpha_min": {"low": 1e-3, "high": 1.0, "log": True}}),
         "different search space (changed: alpha_min): use a new sweep.study name, or --resume-anyway"),
    Case("sweep-changed-kind", _changed_space({"alpha_min": {"choices": [0.1, 1.0]}}, resume_anyway=True),
         "Optuna cannot mix in one study even with --resume-anyway"),
    # -- storage ---------------------------------------------------------------------------
    Case("sqlite-under-file", cfg(lambda c, t: (a_file("dbfile")(t), sweep_case(storage="sqlite:///{tmp}/dbfile/sub/o.db")(
        c, t)), "sweep"), "dbfile is a file, not a folder"),
    Case("sqlite-kernel-readonly", cfg(sweep_case(storage="sqlite:////sys/brainharness/o.db"), "sweep"),
         "cannot write in /sys", skip=lambda: None if sys.platform == "linux" else "no /sys"),
    Case("sqlite-is-folder", cfg(sweep_case(storage="sqlite:///{tmp}"), "sweep"), "is a folder, not a database file"),
    Case("storage-not-url", cfg(sweep_case(storage="optuna.db"), "sweep"), "must be a database URL"),
    # psycopg (3) is the driver of plain postgresql:// URLs and comes with the `postgres` extra (in `test`)
    Case("postgres-psycopg2-missing", cfg(sweep_case(storage="postgresql+psycopg2://u@127.0.0.1:1/db"), "sweep"),
         "pip install psycopg2-binary", skip=lambda: "psycopg2 installed" if _module("psycopg2") else None),
    Case("postgres-unreachable", cfg(sweep_case(storage="postgresql://u:secret@127.0.0.1:1/db"), "sweep"),
         "u:***@127.0.0.1:1/db cannot be reached"),
    Case("mysql-driver-missing", cfg(sweep_case(storage="mysql+pymysql://u@127.0.0.1:1/db"), "sweep"),
         "pip install PyMySQL", skip=lambda: "pymysql installed" if _module("pymysql") else None),
    Case("storage-unknown-dialect", cfg(sweep_case(storage="nosuchdb://x/y"), "sweep"), "sweep.storage nosuchdb://x/y is not a usable database URL"),
    # -- the command line ------------------------------------------------------------------
    Case("no-command", argv(), "required", usage=True),
    Case("unknown-command", argv("rn", "x.yaml"), "invalid choice: 'rn'", usage=True),
    Case("run-no-config", argv("run"), "required: config", usage=True),
    Case("run-unknown-option", argv("run", "x.yaml", "--polcy", "x"), "unrecognized arguments", usage=True),
    Case("run-policy", argv("run", "x.yaml", "--policy", "always"), "invalid choice: 'always'", usage=True),
    Case("list-kind", argv("list", "models"), "invalid choice: 'models'", usage=True),
    Case("sweep-config-missing", argv("sweep", "{tmp}/nope.yaml"), "config file not found"),
    Case("leaderboard-results-missing", argv("leaderboard", "--results", "{tmp}/nope"), "no such folder"),
    Case("leaderboard-out-file", lambda t: ["leaderboard", "--results", str(_empty(t / "res")), "--out",
                                            str(a_file("rfile")(t))], "is a file, not a folder"),
    Case("results-ls-missing", argv("results", "ls", "--results", "{tmp}/nope"), "no such folder"),
    Case("cache-dir-arg-file", lambda t: ["cache", "ls", "--cache-dir", str(a_file("cfile")(t))], "is a file, not a folder"),
    Case("data-check-missing", argv("data", "check", "{tmp}/nope"), "not a folder", report=True),
    Case("data-check-file", lambda t: ["data", "check", str(a_file("dfile")(t))], "not a folder", report=True),
    Case("data-check-empty", lambda t: ["data", "check", str(_empty(t / "empty"))], "no known layout", report=True),
]


def _snapshot(tmp: Path) -> dict:
    return {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    reason = case.skip()
    if reason:
        pytest.skip(reason)
    args = case.setup(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(["-q", *args])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    assert code == case.code, (code, out, err)
    assert "Traceback" not in err + out
    if case.report:  # `data check`: the report names the problem
        assert case.fragment in out
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        # argparse names the subcommand (``brainharness run: error: ...``) and may print its usage first
        pattern = r"brainharness( [a-z]+)?: error: " if case.usage else r"brainharness: error: "
        errors = [line for line in lines if re.match(pattern, line)]
        assert len(errors) == 1 and case.fragment in errors[0], err
        assert lines[-1] == errors[0] and (len(lines) == 1 or case.usage and lines[0].startswith("usage:")), err
    # nothing written as if it had worked: every file as it was, no new one (records, studies, caches)
    after = _snapshot(tmp_path)
    assert after == before, sorted(map(str, set(after) ^ set(before)))
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("*.json"))
    assert not (tmp_path / "cache").exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("args, fragment", [
    (["run", "/nonexistent/brainharness.yaml"], "config file not found"),
    (["sweep", "/nonexistent/brainharness.yaml"], "config file not found"),
    (["leaderboard", "--results", "/nonexistent/results"], "no such folder"),
])
def test_a_real_process_exits_2_with_one_line(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "brainharness.cli", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("brainharness: error:") and fragment in line


def test_probes_leave_nothing_behind(tmp_path):
    from brainharness.preflight import check_folder

    check_folder(tmp_path / "a" / "b", "results_dir")  # writable: passes, creates nothing
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_one_line():
    """A real ENOSPC (``/dev/full``) maps to one line naming the path; other errors are not disk errors."""
    from brainharness.errors import DataError
    from brainharness.preflight import write_error

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as info:
        with open("/dev/full", "w") as f:
            f.write("x")
    err = write_error(info.value, "/dev/full")
    assert isinstance(err, DataError) and str(err) == "cannot write /dev/full: No space left on device"
    assert write_error(FileNotFoundError(2, "No such file or directory", "x")) is None


def test_resume_anyway_keeps_the_old_trials_and_samples_the_new_space(tmp_path, capsys):
    import optuna

    argv_ = _changed_space({"alpha_min": {"low": 1e-3, "high": 1.0, "log": True}}, resume_anyway=True)(tmp_path)
    assert main(["-q", *argv_]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db' / 'o.db'}")
    assert len(study.trials) == 2 and study.trials[0].params == {"alpha_min": 0.1}
    assert study.user_attrs["search_space"] == {"alpha_min": {"low": 1e-3, "high": 1.0, "log": True}}
    # the same space again: no error, no flag needed
    assert main(["-q", *[a for a in argv_ if a != "--resume-anyway"]]) == 0
