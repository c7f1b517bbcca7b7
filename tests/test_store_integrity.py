"""Results-store integrity under injected faults, with real files and the real runner / CLI.

Each fault (truncated, empty, wrong-schema or wrong-typed record; flipped bytes in a sidecar;
a run killed between the sidecar and the record) is detected with one line naming the file, by
the store, ``results check`` and the leaderboard; the re-run policies re-run the damaged unit and
the recovered scores equal an undisturbed run's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_record, tiny_config

from brainharness.errors import DataError
from brainharness.leaderboard.tables import render_all_markdown, write_leaderboard
from brainharness.registry import register_task
from brainharness.results import ResultStore
from brainharness.runner import Runner
from brainharness.store_check import check_store, damaged
from brainharness.tasks.encoding import EncodingTask

DATASET = {"name": "synthetic", "n_train": 200, "n_test": 120, "n_voxels": 150, "image_size": 16, "seed": 5}
BACKBONES = [{"name": "oracle", "layer": "all"}, {"name": "pixels", "size": 8}]
KEY = {"dataset": "d", "subject": "s1", "backbone": "b", "weights": "none", "task": "encoding", "experiment": "e"}
FLAKY_MARKER: list[Path] = []  # the flaky task fails while this file exists


@register_task("test-flaky-encoding")
class FlakyEncoding(EncodingTask):
    """The encoding task, failing while a marker file exists: same parameters, same record key."""

    def run(self, ctx):
        if FLAKY_MARKER and FLAKY_MARKER[0].exists():
            raise DataError("flaky: the marker file exists")
        return super().run(ctx)


def config(root: Path, **over) -> dict:
    return tiny_config(root, **{"dataset": DATASET, "backbones": BACKBONES, "policy": "skip-existing", **over})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brainharness.cli", "-q", *args], capture_output=True, text=True,
                          timeout=600)


def one_line_naming(message: str, path: Path) -> bool:
    return "\n" not in message and str(path) in message


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An undisturbed run: {backbone: (record, per-voxel arrays)} and its store."""
    root = tmp_path_factory.mktemp("reference")
    records = Runner(config(root), progress=False).run()
    store = ResultStore(root / "results")
    return {"root": root, "units": {r["key"]["backbone"]: (r, store.per_voxel(r["_path"])) for r in records}}


def copy_of(reference: dict, tmp_path: Path) -> tuple[Path, ResultStore]:
    shutil.copytree(reference["root"] / "results", tmp_path / "results")
    return tmp_path / "results", ResultStore(tmp_path / "results")


def unit_path(reference: dict, root: Path, backbone: str) -> Path:
    return root / Path(reference["units"][backbone][0]["_path"]).relative_to(reference["root"] / "results")


def assert_recovered(reference: dict, store: ResultStore) -> None:
    records, problems = store.scan()
    assert problems == []
    got = {r["key"]["backbone"]: r for r in records}
    for backbone, (want, arrays) in reference["units"].items():
        assert got[backbone]["scores"] == want["scores"] and got[backbone]["tables"] == want["tables"]
        side = store.per_voxel(got[backbone]["_path"])
        assert sorted(side) == sorted(arrays)
        for name, values in arrays.items():
            np.testing.assert_array_equal(side[name], values)


def _truncate(record: Path, sidecar: Path) -> Path:
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    return record


def _empty(record: Path, sidecar: Path) -> Path:
    record.write_bytes(b"")
    return record


def _wrong_schema(record: Path, sidecar: Path) -> Path:
    record.write_text(json.dumps({**json.loads(record.read_text()), "schema": "brainharness.result/7"}))
    return record


def _wrong_types(record: Path, sidecar: Path) -> Path:
    obj = json.loads(record.read_text())
    record.write_text(json.dumps({**obj, "scores": {k: str(v) for k, v in obj["scores"].items()}}))
    return record


def _flip_sidecar(record: Path, sidecar: Path) -> Path:
    data = bytearray(sidecar.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 200] = bytes(b ^ 0xFF for b in data[mid: mid + 200])
    sidecar.write_bytes(bytes(data))
    return sidecar


@pytest.mark.parametrize("fault, message, policy", [
    (_truncate, "is not valid JSON", "only-missing"),
    (_empty, "is empty", "skip-existing"),
    (_wrong_schema, "unknown record version 'brainharness.result/7'", "only-missing"),
    (_wrong_types, "must be a number or null, got a string", "skip-existing"),
    (_flip_sidecar, "is corrupt: its sha256", "only-missing"),
])
def test_fault_is_named_and_rerun_recovers_the_undisturbed_scores(reference, tmp_path, fault, message, policy):
    root, store = copy_of(reference, tmp_path)
    record_path = unit_path(reference, root, "pixels")
    sidecar = record_path.parent / reference["units"]["pixels"][0]["sidecar"]
    untouched = unit_path(reference, root, "oracle")
    before = untouched.read_bytes()
    damaged_file = fault(record_path, sidecar)

    _, problems = store.scan()  # the store's readers
    assert [p.path for p in problems] == [damaged_file] and message in str(problems[0])
    assert one_line_naming(str(problems[0]), damaged_file)
    findings = damaged(check_store(root))  # `results check`; an unreadable record no longer names its sidecar
    assert {f.problem.path for f in findings} == {damaged_file} | ({sidecar} if fault in (_truncate, _empty) else set())
    assert all(one_line_naming(str(f), f.problem.path) for f in findings)
    found: list = []  # the leaderboard
    md = render_all_markdown(root, found)
    assert [p.path for p in found] == [damaged_file] and md.startswith("> **Warning: 1 problem(s)")
    assert str(damaged_file) in md
    key = reference["units"]["pixels"][0]["key"]
    assert store.state(key)[0] == "broken" and store.should_run(key, policy)
    if fault is _flip_sidecar:
        with pytest.raises(DataError, match="corrupt") as e:
            store.per_voxel(record_path)
        assert one_line_naming(str(e.value), sidecar)

    runner = Runner(config(tmp_path, policy=policy), progress=False)
    runner.run()
    assert untouched.read_bytes() == before  # only the damaged unit ran again
    assert_recovered(reference, store)
    findings = check_store(root, fix=True, grace_s=0)  # the broken record's sidecar, if any, is an orphan now
    assert all(f.kind == "orphan" and f.fixed for f in findings)
    assert damaged(check_store(root)) == [] and untouched.read_bytes() == before


KILLER = """
import json, os, signal, sys
results = sys.argv[2]
real = os.replace

def replace(src, dst, *a, **k):  # the first record's rename: its sidecar is already in place
    if str(dst).startswith(results) and str(dst).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)

os.replace = replace
from brainharness.runner import run_config
run_config(json.loads(sys.argv[1]), progress=False)
"""


def test_killed_between_sidecar_and_record(reference, tmp_path):
    cfg = config(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(cfg), cfg["results_dir"]], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = Path(cfg["results_dir"])
    npz, tmp = list(root.rglob("*.npz")), list(root.rglob(".*.tmp"))
    assert len(npz) == 1 and len(tmp) == 1 and list(ResultStore(root).paths()) == []
    json.loads(tmp[0].read_text())  # the record was complete, only its rename was missing

    findings = damaged(check_store(root))
    assert sorted((f.kind, f.problem.path) for f in findings) == [("orphan", npz[0]), ("temporary", tmp[0])]
    assert all(one_line_naming(str(f), f.problem.path) for f in findings)
    out = cli("results", "check", "--results", str(root))
    assert out.returncode == 1 and str(npz[0]) in out.stdout and str(tmp[0]) in out.stdout

    Runner(cfg, progress=False).run()  # default policy: the unit has no record, so it runs
    store = ResultStore(root)
    assert_recovered(reference, store)
    valid = {p: p.read_bytes() for p in store.paths()}
    sidecars = {Path(r["_path"]).parent / r["sidecar"] for r in store.records()}
    out = cli("results", "check", "--results", str(root), "--fix", "--grace", "0")
    assert out.returncode == 0, out.stdout
    assert not tmp[0].exists() and set(root.rglob("*.npz")) == sidecars  # orphans gone, live sidecars kept
    assert {p: p.read_bytes() for p in store.paths()} == valid
    assert_recovered(reference, store)


def test_interrupted_overwrite_keeps_the_old_pair(tmp_path, monkeypatch):
    import brainharness.results as results

    store = ResultStore(tmp_path)
    path = store.save(make_record(KEY, scores={"x": 1.0}), {"r": np.arange(4.0)})
    real = results.atomic_write_bytes

    def killed_at_the_record(target, data):
        if str(target).endswith(".json"):
            raise KeyboardInterrupt  # the sidecar is written, the record is not
        real(target, data)

    monkeypatch.setattr(results, "atomic_write_bytes", killed_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        store.save(make_record(KEY, scores={"x": 2.0}), {"r": np.arange(4.0) * 10})
    monkeypatch.undo()
    assert store.load(KEY)["scores"] == {"x": 1.0}
    np.testing.assert_array_equal(store.per_voxel(path)["r"], np.arange(4.0))  # digest still matches
    (finding,) = damaged(check_store(tmp_path))
    assert finding.kind == "orphan" and finding.problem.path.suffix == ".npz" and finding.problem.path.exists()
    young = check_store(tmp_path, fix=True)  # just written: a run may still be writing it
    assert not young[0].fixed and "not removed" in str(young[0]) and finding.problem.path.exists()
    assert [f.fixed for f in check_store(tmp_path, fix=True, grace_s=0)] == [True]
    assert not finding.problem.path.exists() and store.scan() == ([{**store.load(KEY), "_path": str(path)}], [])


def test_failure_never_replaces_a_complete_record(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save(make_record(KEY, scores={"x": 1.5}), {"r": np.ones(3)})
    failed = store.save(make_record(KEY, "failed", error="RuntimeError: out of memory"))
    assert failed != path and failed == store.failure_path(path) and store.failure_paths() == [failed]
    assert store.load(KEY)["scores"] == {"x": 1.5} and store.state(KEY) == ("complete", None)
    np.testing.assert_array_equal(store.per_voxel(path)["r"], np.ones(3))
    assert [r["status"] for r in store.records()] == ["complete"]
    findings = check_store(tmp_path)
    assert [(f.kind, f.problem.path) for f in findings] == [("failure", failed)] and damaged(findings) == []
    assert "out of memory" in str(findings[0]) and one_line_naming(str(findings[0]), failed)
    store.save(make_record(KEY, scores={"x": 2.5}))  # a later complete record supersedes the failure
    assert store.failure_paths() == [] and store.load(KEY)["scores"] == {"x": 2.5}
    assert list(tmp_path.rglob("*.npz")) == []  # the replaced record's sidecar went with it


def test_runner_failure_beside_complete_record_with_overwrite(tmp_path):
    cfg = tiny_config(tmp_path, dataset=DATASET, backbones=BACKBONES[1:], tasks=[{"name": "test-flaky-encoding"}],
                      policy="overwrite")
    (record,) = Runner(cfg, progress=False).run()
    store = ResultStore(cfg["results_dir"])
    path = Path(record["_path"])
    before = path.read_bytes()
    FLAKY_MARKER[:] = [tmp_path / "fail-now"]
    FLAKY_MARKER[0].touch()
    try:
        runner = Runner(cfg, progress=False)
        assert runner.run() == [] and [o.status for o in runner.outcomes] == ["failed"]
    finally:
        FLAKY_MARKER.clear()
    assert path.read_bytes() == before and store.per_voxel(path)  # the complete record and its sidecar stay
    (failure,) = store.failure_paths()
    assert failure.parent == path.parent and "flaky: the marker file exists" in store.read(failure)["error"]
    cfg["policy"] = "skip-existing"  # the complete record is up to date: nothing re-runs
    runner = Runner(cfg, progress=False)
    runner.run()
    assert [o.status for o in runner.outcomes] == ["up to date"] and path.read_bytes() == before


def test_save_validates_before_writing(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(DataError, match=r"not written\): scores.x must be a number or null, got a string"):
        store.save(make_record(KEY, scores={"x": "high"}), {"r": np.ones(2)})
    assert list(tmp_path.rglob("*")) == []


def test_version_1_record_is_read_and_its_sidecar_unverified(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save(make_record(KEY), {"r": np.arange(2.0)})
    record = json.loads(path.read_text())
    record["schema"] = "brainharness.result/1"
    del record["sidecar_sha256"]
    path.write_text(json.dumps(record))
    assert store.load(KEY)["schema"] == "brainharness.result/1" and store.state(KEY)[0] == "complete"
    np.testing.assert_array_equal(store.per_voxel(path)["r"], [0.0, 1.0])
    store.update(KEY, tracking={"wandb": None})
    assert store.load(KEY)["schema"] == "brainharness.result/1"  # never silently upgraded


def test_foreign_json_is_ignored_but_a_claimed_one_is_reported(tmp_path):
    store = ResultStore(tmp_path)
    store.save(make_record(KEY))
    (tmp_path / "notes.json").write_text('{"author": "me"}')  # not ours
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "half.json").write_text('{"summary": ')  # W&B's folder: another tool's files
    claimed = tmp_path / "claimed.json"
    claimed.write_text(json.dumps({"key": KEY, "status": "complete"}))
    records, problems = store.scan()
    assert len(records) == 1 and [p.path for p in problems] == [claimed]
    assert str(problems[0]) == f"result record {claimed}: not a brainharness result record (schema None)"


def test_leaderboard_cli_names_the_broken_record_and_strict_exits_1(reference, tmp_path):
    root, _ = copy_of(reference, tmp_path)
    broken = _truncate(unit_path(reference, root, "oracle"), None)
    out = cli("leaderboard", "--results", str(root), "--out", str(tmp_path / "lb"))
    assert out.returncode == 0 and f"brainharness: warning: result record {broken}" in out.stderr
    assert "> **Warning: 1 problem(s) in the results store**" in out.stdout and str(broken) in out.stdout
    assert "| pixels |" in out.stdout and "| oracle |" not in out.stdout  # the good row stays
    page = (tmp_path / "lb" / "index.html").read_text()
    assert 'class="warn" role="alert"' in page and str(broken) in page
    assert all(str(broken) in p.read_text() for p in (tmp_path / "lb").glob("*.md"))
    strict = cli("leaderboard", "--results", str(root), "--strict")
    assert strict.returncode == 1 and str(broken) in strict.stderr
    clean = tmp_path / "clean"
    shutil.copytree(reference["root"] / "results", clean)
    assert cli("leaderboard", "--results", str(clean), "--strict").returncode == 0
    paths = write_leaderboard(clean, tmp_path / "lb2", plots=False)
    assert paths and "Warning" not in (tmp_path / "lb2" / "index.html").read_text()


def test_rerun_after_a_failed_unit_does_not_crash(tmp_path):
    cfg = tiny_config(tmp_path, dataset=DATASET, backbones=BACKBONES[1:], policy="skip-existing",
                      tasks=[{"name": "retrieval", "roi": "nowhere"}])
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    first = cli("run", str(tmp_path / "c.json"))
    second = cli("run", str(tmp_path / "c.json"))  # the default policy retries the failed unit
    for out in (first, second):
        assert out.returncode == 1 and "Traceback" not in out.stderr and "ROI 'nowhere'" in out.stdout + out.stderr
    (path,) = ResultStore(cfg["results_dir"]).paths()
    assert ResultStore.read(path)["status"] == "failed"


def test_sweep_rescores_a_broken_best_record_and_names_it(tmp_path, caplog):
    from brainharness.sweeps.study import run_sweep

    cfg = config(tmp_path, backbones=BACKBONES[1:], sweep={"study": "s", "n_trials": 1,
                                                           "space": {"alpha_min": {"low": 1e-2, "high": 1e2}}})
    first = run_sweep(cfg, progress=False)
    best = Path(first["record"])
    _empty(best, None)
    second = run_sweep(cfg, progress=False)  # the study is complete: only the test record is redone
    assert f"result record {best} is empty" in caplog.text
    assert second["record"] == first["record"] and second["test_score"] == first["test_score"]
    assert ResultStore(cfg["results_dir"]).scan()[1] == []


def test_records_without_an_error_list_log_each_problem(tmp_path, caplog):
    store = ResultStore(tmp_path)
    store.save(make_record(KEY))
    bad = tmp_path / "x" / "half.json"
    bad.parent.mkdir()
    bad.write_text('{"schema": "brainharness.result/2", "key": ')
    assert len(list(store.records())) == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"result record {bad} is not valid JSON (truncated or damaged?): Expecting value: line 1 column 44 (char 43)"]
