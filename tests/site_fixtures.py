"""A demo-like results store and its static leaderboard site, built once per test process from
real tiny runs (the demo's backbones and tasks on a smaller synthetic dataset, no sweep)."""
from __future__ import annotations

import functools
import os
import tempfile
from importlib import resources
from pathlib import Path

import yaml


@functools.cache
def demo_like_site() -> tuple[Path, Path]:
    """``(results root, site folder)``."""
    from brainharness.config import load_config
    from brainharness.leaderboard import write_leaderboard
    from brainharness.runner import Runner

    root = Path(tempfile.mkdtemp(prefix="site-", dir=os.environ.get("BRAINHARNESS_CACHE")))
    cfg = yaml.safe_load(resources.files("brainharness.configs").joinpath("demo.yaml").read_text())
    cfg.pop("sweep")
    cfg["dataset"].update(n_train=240, n_test=100, n_voxels=200)
    cfg["tasks"][1].update(n_candidates=50, n_trials=5)
    cfg.update(results_dir=str(root / "results"), tracking={"wandb": {"mode": "disabled"}})
    Runner(load_config(cfg), progress=False).run()
    write_leaderboard(root / "results", root / "leaderboard_out")
    return root / "results", root / "leaderboard_out"
