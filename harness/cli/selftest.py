"""``brainharness selftest``: the real pipeline on a small synthetic dataset with known truth.

It checks the installation and the harness's own validity: the estimated noise ceiling must
track the true one, the oracle backbone (the generating features) must reach a normalised R²
near 100 % and retrieve images far above chance, and the same features with the stimulus
order shuffled must score near 0 and at chance.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLDS = {"nc_truth_r": (">=", 0.95), "oracle_median_nc_r2": (">=", 90.0),
              "shuffled_median_nc_r2": ("<=", 2.0), "retrieval_oracle_top1": (">=", 0.5),
              "retrieval_shuffled_top1": ("<=", 0.02)}


def selftest_config(workdir: Path, seed: int = 0) -> dict:
    return {
        "experiment": "selftest", "seed": seed, "policy": "overwrite",
        "results_dir": str(workdir / "results"), "cache_dir": str(workdir / "cache"),
        "dataset": {"name": "synthetic", "n_train": 1500, "n_test": 300, "n_voxels": 1000, "image_size": 32,
                    "seed": seed},
        "backbones": [{"name": "oracle", "layer": "all"},
                      {"name": "oracle", "label": "oracle-shuffled", "layer": "all", "shuffle_seed": seed + 1}],
        "tasks": [{"name": "encoding"}, {"name": "retrieval"}],
        "tracking": {"wandb": {"mode": "offline", "project": "brainharness-selftest"}},
    }


def run_selftest(workdir: str | Path | None = None, progress: bool = False) -> dict:
    from brainharness.runner import Runner

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="brainharness-selftest-") as tmp:
        runner = Runner(selftest_config(Path(workdir or tmp)), progress=progress)
        records = {(r["key"]["backbone"], r["key"]["task"]): r for r in runner.run()}
        subject = runner.dataset.subject(runner.subjects()[0])
        truth = subject.truth["noise_ceiling"]
        out = {
            "nc_truth_r": float(np.corrcoef(subject.noise_ceiling, truth)[0, 1]),
            "oracle_median_nc_r2": records[("oracle", "encoding")]["scores"]["median_nc_r2"],
            "shuffled_median_nc_r2": records[("oracle-shuffled", "encoding")]["scores"]["median_nc_r2"],
            "retrieval_oracle_top1": records[("oracle", "retrieval")]["scores"]["brain→image"],
            "retrieval_shuffled_top1": records[("oracle-shuffled", "retrieval")]["scores"]["brain→image"],
            "retrieval_oracle_image_to_brain_top1": records[("oracle", "retrieval")]["scores"]["image→brain"],
            "n_voxels_kept": records[("oracle", "encoding")]["scores"]["n_voxels_kept"],
            "wandb": records[("oracle", "encoding")].get("tracking", {}).get("wandb", {}).get("status"),
        }
    ok = {name: (out[name] >= bound if op == ">=" else out[name] <= bound) for name, (op, bound) in THRESHOLDS.items()}
    out["checks"] = {name: {"value": out[name], "require": f"{op} {bound}", "ok": ok[name]}
                     for name, (op, bound) in THRESHOLDS.items()}
    out["passed"] = all(ok.values())
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
