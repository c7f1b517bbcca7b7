import json

import numpy as np
import pytest

from brainharness.errors import ConfigError
from brainharness.results import ResultStore

KEY = {"dataset": "d", "subject": "s1", "backbone": "b", "weights": "none", "task": "encoding", "experiment": "e"}


def test_save_load_roundtrip_with_sidecar(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save({"key": KEY, "status": "complete", "scores": {"x": 1.5}}, {"r": np.arange(3.0)})
    rec = store.load(KEY)
    assert rec["scores"]["x"] == 1.5 and rec["schema"] == "brainharness.result/1"
    np.testing.assert_array_equal(store.per_voxel(path)["r"], [0, 1, 2])
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_policies(tmp_path):
    store = ResultStore(tmp_path)
    assert store.should_run(KEY, "skip-existing")
    store.save({"key": KEY, "status": "failed"})
    assert not store.should_run(KEY, "skip-existing")
    assert store.should_run(KEY, "only-missing")  # failed → re-run
    store.save({"key": KEY, "status": "complete"})
    assert not store.should_run(KEY, "only-missing")
    assert store.should_run(KEY, "overwrite")
    with pytest.raises(ConfigError, match="policy"):
        store.should_run(KEY, "sometimes")


def test_interrupted_write_leaves_old_record(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.save({"key": KEY, "status": "complete", "scores": {"x": 1}})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        store.save({"key": KEY, "status": "complete", "scores": {"x": 2}})
    monkeypatch.undo()
    assert store.load(KEY)["scores"]["x"] == 1
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_foreign_json_ignored(tmp_path):
    (tmp_path / "other.json").write_text("{}")
    store = ResultStore(tmp_path)
    store.save({"key": KEY, "status": "complete"})
    assert [r["key"] for r in store.records()] == [KEY]


@pytest.mark.parametrize("change, message", [
    ({"status": "done"}, "status must be complete or failed"),
    ({"evaluated_on": "train"}, "evaluated_on must be test or validation"),
    ({"main_score": "nope"}, "main score 'nope' is not among its scores"),
    ({"scores": [1.0]}, "field 'scores' must be a dict"),
    ({"tables": {"per_roi": {"V1": 1}}}, "table 'per_roi' must be a list of rows"),
    ({"key": {**KEY, "subject": ""}}, "key lacks subject"),
    ({"schema": "other/1"}, "not a brainharness result record"),
])
def test_validate_record_names_the_problem(change, message):
    from brainharness.errors import DataError
    from brainharness.results import SCHEMA, validate_record

    good = {"schema": SCHEMA, "key": KEY, "status": "complete", "evaluated_on": "test", "main_score": "x",
            "scores": {"x": 1.0}, "tables": {"per_roi": [{"roi": "V1"}]}, "backbone": {}, "task": {},
            "dataset": {}, "provenance": {}}
    assert validate_record(dict(good)) == good
    with pytest.raises(DataError, match=message):
        validate_record({**good, **change})
