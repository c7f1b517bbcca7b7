"""brainharness core: registry, data model, ridge, metrics, runner, tracking, results.

The Python API (imported lazily, so ``import brainharness`` stays light)::

    from brainharness import RidgeCV, ncsnr, noise_ceiling, encoding_scores, top1_retrieval
    from brainharness import run_config, load_config, ResultStore
    from brainharness import register_backbone, register_task, register_dataset, register_metric
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "RidgeCV": "ridge", "Decomposition": "ridge",
    "ncsnr": "metrics.noise_ceiling", "noise_ceiling": "metrics.noise_ceiling",
    "zscore_within_sessions": "metrics.noise_ceiling",
    "pearson_r": "metrics", "normalised_r2": "metrics", "encoding_scores": "metrics", "top1_retrieval": "metrics",
    "run_config": "runner", "Runner": "runner", "load_config": "config", "ResultStore": "results",
    "Backbone": "backbone", "Task": "task", "TaskOutput": "task", "TaskContext": "task",
    "Dataset": "data", "Subject": "data", "Responses": "data", "Stimuli": "data", "DatasetLoader": "data",
    "Param": "params", "Layout": "layout", "Table": "layout",
    "register_backbone": "registry", "register_task": "registry", "register_dataset": "registry",
    "register_metric": "registry", "HarnessError": "errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module 'brainharness' has no attribute {name!r}")
