"""Base class of task plugins and the context the runner hands them.

A task never receives the whole subject: it gets a ``fit`` part and a ``score`` part. In test
mode these are the dataset's train and test splits; in selection mode (sweeps, and any
internal model selection) ``score`` is a validation part carved from the training split and
the test split is not in the context at all — so model selection cannot read the test split
by construction.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from .data import Responses, Stimuli
from .errors import ConfigError, DataError
from .metrics.noise_ceiling import ncsnr, noise_ceiling


@dataclass
class TaskContext:
    subject_name: str
    stimuli: Stimuli
    fit: Responses
    score: Responses
    rois: dict[str, np.ndarray]
    noise_ceiling: np.ndarray | None  # % for the score rows' repeat counts
    nc_source: str
    evaluated_on: str  # "test" or "validation"
    features: Callable[..., np.ndarray]  # features(ids, layer=None) → (n, ...)
    backbone: Any
    seed: int = 0
    device: str = "auto"
    progress: bool = False
    memo: dict = field(default_factory=dict)  # per-run reuse (e.g. ridge decompositions)


@dataclass
class TaskOutput:
    main_score: str
    scores: dict
    tables: dict = field(default_factory=dict)
    per_voxel: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


class Task:
    """Subclass, declare the class metadata, implement :meth:`run`."""

    direction: ClassVar[str] = ""  # e.g. "image→brain"
    needs: ClassVar[tuple[str, ...]] = ("image",)  # backbone modalities used
    main_score: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}  # name → default
    search_space: ClassVar[dict[str, dict]] = {}  # default sweep ranges (Optuna specs)
    registry_name: ClassVar[str] = ""

    def __init__(self, **params):
        unknown = set(params) - set(self.params)
        if unknown:
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, list(self.params), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"task {self.registry_name}: unknown parameter {name!r}{hint}")
        self.p = {**self.params, **params}
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on bad parameter values."""

    @classmethod
    def describe(cls) -> dict:
        return {"direction": cls.direction, "needs": ",".join(cls.needs), "main_score": cls.main_score,
                "params": ", ".join(f"{k}={v}" for k, v in cls.params.items())}

    def run(self, ctx: TaskContext) -> TaskOutput:
        raise NotImplementedError


def selection_split(train: Responses, fraction: float, seed: int) -> tuple[Responses, Responses]:
    """Carve a validation part (``fraction`` of the training images) out of the training split."""
    if not 0 < fraction < 1:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(train.stim_ids)
    n_val = int(round(n * fraction))
    if n_val < 2 or n - n_val < 2:
        raise DataError(f"training split of {n} images is too small for a {fraction:.0%} validation part")
    order = np.random.default_rng(seed).permutation(n)
    return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))


def validation_noise_ceiling(train: Responses, val: Responses) -> tuple[np.ndarray | None, str]:
    """Noise ceiling for the validation rows from the training split's own single trials."""
    if train.trials is None:
        return None, "unavailable (no single trials)"
    snr = ncsnr(train.trials, train.trial_stim)
    return noise_ceiling(snr, val.repeats()), "estimated from training-split single trials (NSD formula)"


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """z-score columns with the training rows' statistics (constant columns → 0)."""
    mu = train.mean(0)
    sd = train.std(0)
    sd = np.where(sd > 0, sd, 1)
    return [((a - mu) / sd).astype(np.float32) for a in (train, *others)]
