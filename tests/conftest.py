"""Test environment: offline, with every cache and W&B folder in a scratch directory."""
import os
import tempfile
from pathlib import Path

_SCRATCH = Path(tempfile.mkdtemp(prefix="brainharness-tests-"))
# Tiny models and matrices: one thread avoids oversubscription on a shared 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ[var] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
for var in ("HF_HOME", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "BRAINHARNESS_CACHE"):
    os.environ[var] = str(_SCRATCH / var.lower())
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def scratch() -> Path:
    return _SCRATCH


def tiny_config(tmp: Path, **over) -> dict:
    """A small but complete experiment on the synthetic dataset."""
    cfg = {
        "experiment": "t", "seed": 0, "policy": "overwrite",
        "results_dir": str(tmp / "results"), "cache_dir": str(_SCRATCH / "shared-cache"),
        "dataset": {"name": "synthetic", "n_train": 400, "n_test": 320, "n_voxels": 300, "image_size": 32, "seed": 3},
        "backbones": [{"name": "oracle", "layer": "all"}, {"name": "pixels", "size": 8}],
        "tasks": [{"name": "encoding"}],
        "tracking": {"wandb": {"mode": "disabled"}},
    }
    cfg.update(over)
    return cfg


def make_record(key: dict, status: str = "complete", **fields) -> dict:
    """A minimal record that validates (brainharness.record_schema), for tests that build records
    by hand: every required field filled, ``fields`` override or add top-level entries."""
    record = {"key": dict(key), "status": status, "evaluated_on": "test",
              "task": {"name": key.get("task", "encoding")}, "dataset": {"name": key.get("dataset", "d")},
              "backbone": {}, "provenance": {}}
    if status == "complete":
        record.update(main_score="x", scores={"x": 1.0}, tables={})
    else:
        record["error"] = "RuntimeError: failed in a test"
    record.update(fields)
    return record


def require_installable(what: str, present: bool, how: str) -> None:
    """For a test that needs something outside pip (a system package, a server, a browser): nothing
    to do when ``present``; skip with one line where it cannot be installed (not root and not CI);
    in CI or as root — where ``.ci/run`` installs it — fail, naming how to install it."""
    if present:
        return
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(f"{what} is missing (CI and root install it: {how})")
    pytest.skip(f"{what} is not installed and cannot be here (not root, not CI): {how}")
