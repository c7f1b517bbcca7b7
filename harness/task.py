"""Base class of task plugins and the context the runner hands them.

A task never receives the whole subject: it gets a ``fit`` part and a ``score`` part. In test
mode these are the dataset's train and test splits; in selection mode (sweeps, and any
internal model selection) ``score`` is a validation part carved from the training split and
the test split is not in the context at all — so model selection cannot read the test split
by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from .capabilities import IMAGE_FEATURES, Need, describe_needs, needs_of
from .data import Responses, Stimuli
from .errors import ConfigError, DataError
from .layout import DEFAULT_LAYOUT, Layout
from .metrics.noise_ceiling import ncsnr, noise_ceiling
from .params import Configurable, Param


class FeatureView(Protocol):
    """``ctx.features``: the unit backbone's features of the stimuli the task may see."""

    def __call__(self, ids, layer: str | None = None) -> np.ndarray:
        """Features of ``ids`` (rows in that order) at ``layer`` (default: the backbone's) → (n, ...)."""

    def prefetch(self, layers) -> None:
        """Extract (or read from the cache) every layer of ``layers`` in one backbone pass."""


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
    features: FeatureView
    backbone: Any
    seed: int = 0
    device: str = "auto"
    progress: bool = False
    memo: dict = field(default_factory=dict)  # per-run reuse (e.g. ridge decompositions)
    cache_dir: Path | None = None  # the cache root (brainharness.cache.cache_root; None = its default)


@dataclass
class TaskOutput:
    main_score: str
    scores: dict
    tables: dict = field(default_factory=dict)
    per_voxel: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


NC_THRESHOLD = Param(10.0, ge=0, lt=100, doc="noise ceiling (%) below which a voxel is left out of nc_r2")
REPORT_ROIS = Param(None, list, items=Param(type=str), doc="ROIs reported (null: all of the subject's)")


def validation_fraction(default: float) -> Param:
    """The share of the training images a task carves out for its own model selection."""
    return Param(default, gt=0, lt=1, doc="share of the training images held out for selection")


class Task(Configurable):
    """Subclass, declare the class metadata (``params``: :class:`brainharness.params.Param` per
    hyper-parameter), implement :meth:`run`; rules across parameters go in :meth:`check`."""

    kind: ClassVar[str] = "task"
    version: ClassVar[str] = "1"  # bump when the task's numbers change for the same parameters: part of the result id

    direction: ClassVar[str] = ""  # e.g. "image→brain"
    # What the task needs (brainharness.capabilities): a capability — from the unit's backbone or the
    # dataset —, or Need(cap, role=<backbone-spec parameter>, when=..., condition=...). The runner
    # checks it against every backbone and the dataset of a config before anything is built.
    needs: ClassVar[tuple] = (IMAGE_FEATURES,)
    main_score: ClassVar[str] = ""
    # Every score name run() can report, when the task can list them (a sweep objective is then
    # checked before any trial: brainharness.preflight); None: only known once a unit has run.
    scores: ClassVar[tuple[str, ...] | None] = None
    params: ClassVar[dict[str, Param]] = {}  # name → Param(default, type, range, doc); a `num_threads`
    # parameter, if declared, sets torch's CPU threads while the runner runs the task
    search_space: ClassVar[dict[str, dict]] = {}  # default sweep ranges (Optuna specs)
    layout: ClassVar[Layout] = DEFAULT_LAYOUT  # its leaderboard tables (brainharness.layout)
    # The smallest complete unit of this task, run by the shared task conformance suite on tiny
    # synthetic data: {"backbone": {name: ..., ...}, <task parameter>: value, ...}. Brain-Score style,
    # the plugin carries its own test case; a task without one fails the suite.
    example: ClassVar[dict | None] = None
    registry_name: ClassVar[str] = ""

    def __init__(self, **params):
        self.p = self.resolve(params)  # every key declared, typed and checked (brainharness.params)

    def requirements(self) -> list[Need]:
        """The needs that hold for this task's (validated) parameters."""
        return [n for n in needs_of(self.needs) if n.holds(self.p)]

    @classmethod
    def describe(cls) -> dict:
        return {"direction": cls.direction, "needs": describe_needs(cls.needs), "main_score": cls.main_score}

    def check_data(self, subject, backbone) -> None:
        """Parameters against a unit's data (its :class:`~brainharness.data.Subject`) and its
        backbone, checked by :meth:`Runner.run` for every unit before any unit runs: raise
        ConfigError/DataError (one line, exit 2). Nothing heavy: no features, no fitting."""

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


def single_row_columns(train: np.ndarray) -> np.ndarray:
    """Columns whose training rows all hold one value except at most one row (n ≥ 3; bool per column).

    Such a column is, up to scale and offset, the indicator of one training row: next to the
    intercept its coefficient is set by that row's residual alone (leverage 1), so it memorises
    one image and says nothing about how the response varies with the feature. The shared value
    is row 0's or, if row 0 is the odd one, row 1's — two vectorised comparisons."""
    if len(train) < 3:
        return np.zeros(train.shape[1:], dtype=bool)
    return np.minimum((train != train[0]).sum(0), (train != train[1]).sum(0)) <= 1


def column_scale(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training rows' column means and sds (ddof 0), sd = inf where a column is treated as
    constant — every row then standardises to 0: sd exactly 0, or :func:`single_row_columns`."""
    mu = train.mean(0)
    sd = train.std(0)
    return mu, np.where((sd == 0) | single_row_columns(train), np.inf, sd)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """z-score columns with the training rows' statistics → float32 arrays, robust to near-constant columns.

    Ordinary columns give exactly ``(x - mean) / sd``. Two rules guard degenerate ones:

    - a column constant on the training rows, or constant but for a single row
      (:func:`single_row_columns`), is treated as constant: 0 in every row, training and others.
      scikit-learn's StandardScaler only guards sds at floating-point zero: a ReLU unit active
      in one of 1500 training images at 1e-5 gets sd ≈ 2.6e-7, a test value of 0.1 becomes
      z ≈ 4·10⁵, and that one value swamps every voxel's prediction for its image.
    - values of ``others`` are clipped to ±√(n−1) (n training rows): by Samuelson's inequality no
      training row can lie further from the mean in sd units, whatever the column's distribution,
      so the clip only touches values beyond anything the fit could have seen (|z| > 38.7 at
      n = 1500) — in practice sparse columns active in a few training rows, not dense features.
    """
    mu, sd = column_scale(train)
    bound = float(np.sqrt(max(len(train) - 1, 1)))

    def z(a: np.ndarray, clip: bool) -> np.ndarray:  # in row blocks: no float64 copy of all of ``a``
        out = np.empty(a.shape, dtype=np.float32)
        step = max(1, 2 ** 23 // max(1, a[0].size))
        for i in range(0, len(a), step):
            block = (a[i:i + step] - mu) / sd
            out[i:i + step] = np.clip(block, -bound, bound) if clip else block
        return out

    return [z(train, False)] + [z(a, True) for a in others]
