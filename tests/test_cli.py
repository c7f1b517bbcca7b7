"""The terminal: one exit-code table for every command, one-line usage errors, ``--version``,
global flags after the sub-command, and what ``run`` / ``sweep`` print (a line per unit as it
ends with its rounded score and interval, where the records went, the next command)."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from brainharness.cli import build_parser, main
from brainharness.errors import ConfigError
from brainharness.results import ResultStore

SMALL = {
    "experiment": "t", "seed": 0,
    "dataset": {"name": "synthetic", "n_train": 200, "n_test": 60, "n_voxels": 60, "image_size": 16, "seed": 3},
    "backbones": [{"name": "pixels", "size": 4}],
    "tasks": [{"name": "encoding"}, {"name": "retrieval", "n_candidates": 50}],
    "tracking": {"wandb": {"mode": "disabled"}},
}


def _write_config(tmp: Path, **over) -> Path:
    cfg = {**SMALL, "results_dir": str(tmp / "results"), "cache_dir": str(tmp / "cache"), **over}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- what run prints ---------------------------------------------------------------------------
def test_run_prints_each_unit_as_it_ends_with_its_interval_then_where_and_next(tmp_path, capsys, monkeypatch):
    from brainharness.tasks.retrieval import RetrievalTask

    seen_before_retrieval: list[str] = []
    orig = RetrievalTask.run

    def run_and_look(self, ctx):  # the encoding unit's line must be out before retrieval starts
        seen_before_retrieval.append(capsys.readouterr().out)
        return orig(self, ctx)

    monkeypatch.setattr(RetrievalTask, "run", run_and_look)
    assert main(["run", str(_write_config(tmp_path)), "-q"]) == 0
    out = "".join(seen_before_retrieval) + capsys.readouterr().out
    assert "subj01 pixels@none encoding [t]: ran  median_nc_r2 = " in seen_before_retrieval[0]

    records = {r["key"]["task"]: r for r in ResultStore(tmp_path / "results").records()}
    enc, ret = records["encoding"], records["retrieval"]
    lines = out.splitlines()
    s = enc["scores"]
    assert lines[0] == (f"subj01 pixels@none encoding [t]: ran  median_nc_r2 = {s['median_nc_r2']:.1f} "
                        f"({s['n_voxels_kept']} of {s['n_voxels']} voxels kept)  id {enc['key']['id'][:12]}")
    row = ret["tables"]["retrieval"][0]
    assert row["direction"] == "brain→image" == ret["main_score"]
    m = re.fullmatch(r"subj01 pixels@none retrieval \[t\]: ran  brain→image = (\S+) ± (\S+) \(95% CI\)  id (\w+)",
                     lines[1])
    assert m, lines[1]
    mean, half = float(m.group(1)), float(m.group(2))
    assert mean == pytest.approx(row["mean"], rel=5e-3) and len(m.group(1).lstrip("0.")) == 3  # 3 significant
    assert half == pytest.approx((row["ci_high"] - row["ci_low"]) / 2, abs=1e-4) and half > 0
    assert m.group(3) == ret["key"]["id"][:12]
    results = tmp_path / "results"
    assert lines[2:] == ["2 unit(s): 2 ran, 0 up to date, 0 failed", f"records: {results}",
                         f"next: brainharness leaderboard --results {results} --out {tmp_path / 'leaderboard'}"]
    # the next command works as printed
    assert main(lines[-1].split()[2:]) == 0 and (tmp_path / "leaderboard" / "retrieval.md").is_file()


def test_quiet_after_the_subcommand_hides_progress_bars(tmp_path, capsys):
    path = _write_config(tmp_path)
    assert main(["-q", "run", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # every unit up to date; the bar still shows on stderr
    out, err = capsys.readouterr()
    assert "2 up to date" in out and "it/s" in err and "it/s" not in out
    assert main(["run", str(path), "-q"]) == 0
    out, err = capsys.readouterr()
    assert "2 up to date" in out and err == ""


def test_global_flags_parse_before_or_after_the_subcommand():
    p = build_parser()
    for argv, quiet, debug in ((["run", "c.yaml"], False, False), (["-q", "--debug", "run", "c.yaml"], True, True),
                               (["run", "c.yaml", "-q", "--debug"], True, True), (["--debug", "run", "c.yaml", "-q"],
                                                                                  True, True),
                               (["results", "ls", "--debug"], False, True), (["cache", "ls", "-q"], True, False)):
        args = p.parse_args(argv)
        assert (args.quiet, args.debug) == (quiet, debug), argv


def test_debug_after_run_shows_the_traceback_of_a_config_error(tmp_path, capsys):
    path = _write_config(tmp_path, seed="zero")
    assert main(["run", str(path)]) == 2
    assert "seed must be an integer" in _one_line(capsys.readouterr().err)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        main(["run", str(path), "--debug"])


def test_version_names_package_commit_python_and_torch_without_importing_torch():
    proc = subprocess.run([sys.executable, "-c", "import sys; from brainharness.cli import main\n"
                           "try: main(['--version'])\nexcept SystemExit as e: print('exit', e.code)\n"
                           "print('torch imported:', 'torch' in sys.modules)"], capture_output=True, text=True)
    first, exit_line, imported = proc.stdout.strip().splitlines()
    assert first.startswith(f"brainharness {metadata.version('brainharness')}")
    assert f"python {sys.version.split()[0]}" in first and f"torch {metadata.version('torch')}" in first
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert f"(git {commit.stdout.strip()[:12]}" in first
    assert exit_line == "exit 0" and imported == "torch imported: False"


# -- the exit-code table -----------------------------------------------------------------------
def _store_with_a_broken_record(tmp: Path) -> Path:
    root = tmp / "store"
    (root / "x").mkdir(parents=True)
    (root / "x" / "broken.json").write_text("{ not json")
    return root


@pytest.mark.parametrize("argv, code, needle", [
    (["leaderboard", "--results", "{tmp}/nope"], 2, "--results {tmp}/nope: no such folder"),
    (["leaderboard", "--results", "{tmp}/file.txt"], 2, "is a file, not a results folder"),
    (["leaderboard", "--results", "{tmp}/store", "--out", "{tmp}/file.txt"], 2,
     "leaderboard output {tmp}/file.txt is a file, not a folder"),
    (["leaderboard", "--results", "{tmp}/store", "--out", "{tmp}/file.txt/sub"], 2, "is not a writable folder"),
    (["leaderboard", "--results", "{tmp}/store", "--strict"], 1, "broken.json"),
    (["results", "ls", "--results", "{tmp}/nope"], 2, "no such folder"),
    (["results", "check", "--results", "{tmp}/nope"], 2, "no such folder"),
    (["results", "show", "abc", "--results", "{tmp}/nope"], 2, "no such folder"),
    (["results", "diff", "a", "b", "--results", "{tmp}/nope"], 2, "no such folder"),
    (["data", "check", "{tmp}/nope"], 2, ""),
    (["sweep", "{tmp}/c.yaml"], 2, "config has no 'sweep' section"),
    (["demo", "--out", "{tmp}/file.txt"], 2, "is a file, not a folder"),
    (["run", "{tmp}/missing.yaml"], 2, "config file not found"),
])
def test_exit_codes(tmp_path, capsys, argv, code, needle):
    (tmp_path / "file.txt").write_text("keep me")
    _store_with_a_broken_record(tmp_path)
    _write_config(tmp_path)
    assert main([a.format(tmp=tmp_path) for a in argv]) == code
    out, err = capsys.readouterr()
    if code == 2 and argv[0] != "data":
        assert needle.format(tmp=tmp_path) in _one_line(err) and out == ""  # nothing printed as if it had worked
    else:
        assert needle in out + err
    assert (tmp_path / "file.txt").read_text() == "keep me" and not (tmp_path / "results").exists()


def test_exit_zero_when_all_is_well(tmp_path, capsys):
    root = _store_with_a_broken_record(tmp_path)
    assert main(["leaderboard", "--results", str(root)]) == 0  # broken records warn; only --strict fails
    assert "broken.json" in capsys.readouterr().err
    assert main(["list", "tasks"]) == 0 and main(["cache", "ls", "--cache-dir", str(tmp_path / "c")]) == 0
    assert main(["results", "ls", "--results", str(tmp_path / "store")]) == 0


@pytest.mark.parametrize("argv", [["list", "bogus"], ["run"], ["bogus"], ["results"], ["run", "c.yaml", "--nope"]])
def test_usage_errors_are_one_line_and_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("brainharness") and ": error: " in line and "--help` shows the usage" in line


def test_interrupted_is_130_and_an_unexpected_error_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    from brainharness.runner import Runner

    path = _write_config(tmp_path)

    def interrupted(self, on_unit=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "run", interrupted)
    assert main(["run", str(path)]) == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)

    def broken(self, on_unit=None):
        raise RuntimeError("disk on fire\nmore detail")

    monkeypatch.setattr(Runner, "run", broken)
    assert main(["-q", "run", str(path)]) == 1
    assert _one_line(capsys.readouterr().err) == ("brainharness: error: RuntimeError: disk on fire "
                                                  "(unexpected: --debug shows the traceback)")
    with pytest.raises(RuntimeError):
        main(["run", str(path), "--debug"])


def test_selftest_failure_exits_1(monkeypatch, capsys):
    import brainharness.cli.selftest as selftest

    checks = {"oracle_median_nc_r2": {"ok": False, "value": 12.0, "require": ">= 90"}}
    monkeypatch.setattr(selftest, "run_selftest", lambda progress: {"checks": checks, "passed": False, "seconds": 0})
    assert main(["selftest", "-q"]) == 1
    assert "FAIL oracle_median_nc_r2 = 12 (require >= 90)" in capsys.readouterr().out


# -- sweep ----------------------------------------------------------------------------------------
def test_sweep_prints_each_trial_and_the_best_on_test(tmp_path, capsys):
    space = {"alpha_min": {"low": 1e-2, "high": 1e2, "log": True}}
    path = _write_config(tmp_path, tasks=[{"name": "encoding"}], sweep={"study": "s", "n_trials": 2, "space": space})
    assert main(["sweep", str(path), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(": ")[0] for ln in lines[:3]] == ["subj01 pixels@none encoding [s-trial0000]",
                                                       "subj01 pixels@none encoding [s-trial0001]",
                                                       "subj01 pixels@none encoding [s-best]"]
    assert all(", on the validation part  id " in ln for ln in lines[:2]) and "validation" not in lines[2]
    assert lines[3].startswith("sweep s: best of 2 trials") and lines[3].endswith(" on test")
    assert lines[-1] == (f"next: brainharness leaderboard --results {tmp_path / 'results'} "
                         f"--out {tmp_path / 'leaderboard'}")
    assert main(["sweep", str(path), "-q"]) == 0  # nothing left to do: the best is up to date
    assert capsys.readouterr().out.splitlines()[0].startswith("subj01 pixels@none encoding [s-best]: up to date  ")
