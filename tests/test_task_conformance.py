"""One conformance suite that every registered task runs (beside the backbone one).

Each task declares its own smallest unit (``Task.example``: a tiny backbone and parameters); the
suite runs it on tiny synthetic data through the real runner and checks that the record is
complete and valid, that the declared contracts hold, and that the task's own leaderboard layout
turns the record into at least one table row. A new task without an example fails the suite.
"""
import math
from importlib.metadata import entry_points

import pytest
from conftest import tiny_config

from brainharness import registry
from brainharness.config import load_config
from brainharness.results import ResultStore, validate_record
from brainharness.runner import Runner

# Every installed task (entry points: the built-ins and any plugin package); tasks that other test
# modules register in-process for their own checks are not plugins and are left out.
NAMES = sorted(ep.name for ep in entry_points(group="brainharness.tasks"))
DATASET = {"name": "synthetic", "n_train": 200, "n_test": 80, "n_voxels": 120, "image_size": 32, "seed": 4}


def test_every_task_declares_its_own_example():
    missing = [n for n in NAMES if "example" not in vars(registry.tasks.get(n))
               or not isinstance(registry.tasks.get(n).example, dict)]
    assert NAMES and missing == []


@pytest.mark.parametrize("name", NAMES)
def test_task_conformance(name, tmp_path):
    from brainharness.leaderboard.tables import build_tables

    cls = registry.tasks.get(name)
    example = dict(cls.example)
    backbone = example.pop("backbone")
    cfg = load_config(tiny_config(tmp_path, dataset=DATASET, backbones=[backbone],
                                  tasks=[{"name": name, **example}]))
    meta = cls.describe()
    assert meta["direction"] and meta["main_score"]

    (record,) = Runner(cfg, progress=False).run()  # the runner checks the declared needs first
    validate_record(record)
    assert record["status"] == "complete" and record["evaluated_on"] == "test"
    assert record["task"]["name"] == name and record["key"]["task"] == name
    main = record["scores"][record["main_score"]]
    assert isinstance(main, (int, float)) and math.isfinite(main)
    assert all(isinstance(v, (int, float, str, type(None))) for v in record["scores"].values())
    if cls.scores is not None:  # a declared score list (checked by sweeps before any trial) is complete
        assert set(record["scores"]) <= {cls.main_score, *cls.scores}, set(record["scores"]) - set(cls.scores)
    # what is on disk is what was returned, and it reads back as a valid record
    (stored,) = list(ResultStore(cfg["results_dir"]).records())
    validate_record(stored)
    assert stored["scores"] == record["scores"]

    tables = build_tables(cfg["results_dir"])
    own = [t for t in tables if t == name or t.startswith(name + "-")]
    assert own, f"the {name} layout produced no table (got {sorted(tables)})"
    assert sum(len(tables[t]) for t in own) >= 1
