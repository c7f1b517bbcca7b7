import json

import numpy as np
import pytest

from brainharness.errors import ConfigError
from brainharness.results import ResultStore
from conftest import make_record

KEY = {"dataset": "d", "subject": "s1", "backbone": "b", "weights": "none", "task": "encoding", "experiment": "e"}


def test_save_load_roundtrip_with_sidecar(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save(make_record(KEY, scores={"x": 1.5}), {"r": np.arange(3.0)})
    rec = store.load(KEY)
    assert rec["scores"]["x"] == 1.5 and rec["schema"] == "brainharness.result/2"
    np.testing.assert_array_equal(store.per_voxel(path)["r"], [0, 1, 2])
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_policies(tmp_path):
    store = ResultStore(tmp_path)
    assert store.should_run(KEY, "skip-existing")
    store.save(make_record(KEY, "failed"))
    assert store.should_run(KEY, "skip-existing")  # failed → retried by the default policy too
    assert store.should_run(KEY, "only-missing")
    store.save(make_record(KEY))
    assert not store.should_run(KEY, "only-missing") and not store.should_run(KEY, "skip-existing")
    assert store.should_run(KEY, "overwrite")
    with pytest.raises(ConfigError, match="policy"):
        store.should_run(KEY, "sometimes")


def test_interrupted_write_leaves_old_record(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.save(make_record(KEY, scores={"x": 1}))

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        store.save(make_record(KEY, scores={"x": 2}))
    monkeypatch.undo()
    assert store.load(KEY)["scores"]["x"] == 1
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_foreign_json_ignored(tmp_path):
    (tmp_path / "other.json").write_text("{}")
    store = ResultStore(tmp_path)
    store.save(make_record(KEY))
    errors = []
    assert [r["key"] for r in store.records(errors=errors)] == [KEY] and errors == []


@pytest.mark.parametrize("change, message", [
    ({"status": "done"}, "status must be complete or failed"),
    ({"evaluated_on": "train"}, "evaluated_on must be test or validation"),
    ({"main_score": "nope"}, "main score 'nope' is not among its scores"),
    ({"scores": [1.0]}, "field 'scores' must be an object, got a list"),
    ({"scores": {"x": "0.5"}}, "scores.x must be a number or null, got a string"),
    ({"scores": {"x": True}}, "scores.x must be a number or null, got a boolean"),
    ({"tables": {"per_roi": {"V1": 1}}}, "table 'per_roi' must be a list of rows"),
    ({"key": {**KEY, "subject": ""}}, "key lacks subject"),
    ({"key": {**KEY, "subject": 1}}, "key.subject must be a string, got an integer"),
    ({"schema": "other/1"}, "not a brainharness result record"),
    ({"schema": "brainharness.result/9"}, "unknown record version"),
    ({"task": {}}, "task.name must be a non-empty string"),
    ({"provenance": {"seed": "0"}}, "provenance.seed must be an integer"),
    ({"timings": {"fit": "1s"}}, "timings.fit must be a number or null"),
    ({"sidecar_sha256": None}, "sidecar and sidecar_sha256 must be set together"),
    ({"sidecar_sha256": "abc"}, "sidecar_sha256 must be 64 lowercase hex digits"),
    ({"sidecar": "../x.npz"}, "sidecar must be a plain file name"),
    ({"backbone": "clip"}, "field 'backbone' must be an object, got a string"),
])
def test_validate_record_names_the_problem(change, message):
    from brainharness.errors import DataError
    from brainharness.results import SCHEMA, validate_record

    good = make_record(KEY, schema=SCHEMA, tables={"per_roi": [{"roi": "V1"}]}, scores={"x": 1.0, "y": None},
                       sidecar="e.npz", sidecar_sha256="0" * 64)
    assert validate_record(dict(good)) == good
    with pytest.raises(DataError, match=message):
        validate_record({**good, **change}, where="f.json")


def test_failed_record_needs_its_error_and_version_1_is_read_without_digest():
    from brainharness.errors import DataError
    from brainharness.results import validate_record

    failed = make_record(KEY, "failed", schema="brainharness.result/2", sidecar=None, sidecar_sha256=None)
    assert validate_record(dict(failed))["error"].startswith("RuntimeError")
    with pytest.raises(DataError, match="field 'error' is missing"):
        validate_record({k: v for k, v in failed.items() if k != "error"})
    v1 = make_record(KEY, schema="brainharness.result/1", sidecar="e.npz")  # no digest in version 1
    assert validate_record(dict(v1)) == v1
    with pytest.raises(DataError, match="sidecar and sidecar_sha256 must be set together"):
        validate_record({**v1, "schema": "brainharness.result/2"})
