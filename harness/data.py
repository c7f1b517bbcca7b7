"""The data model every dataset loader produces and every task consumes.

A :class:`Dataset` holds :class:`Stimuli` (stable ids, lazily read images, captions) and one
:class:`Subject` per participant. A subject's responses come per split as a
:class:`Responses`: the repeat-averaged matrix used for fitting and scoring, and the single
trials (with the stimulus id of each trial) kept for the noise ceiling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping

import numpy as np

from .capabilities import provided
from .errors import DataError
from .params import Configurable

ImageReader = Callable[[np.ndarray], np.ndarray]
"""Reads the images at the given row positions → uint8 array (N, H, W, 3)."""


@dataclass
class Stimuli:
    """All stimuli of a dataset. ``ids`` are stable integer ids (NSD: 0-based 73k ids)."""

    ids: np.ndarray
    read_images: ImageReader
    captions: Mapping[int, list[str]] = field(default_factory=dict)
    descriptions: Mapping[int, str] = field(default_factory=dict)  # e.g. LLM-generated
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-row arrays (e.g. truth)
    fingerprint: str = ""  # identifies the stimulus set for the feature cache

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if len(np.unique(self.ids)) != len(self.ids):
            raise DataError("stimulus ids are not unique")
        self._row = {int(s): i for i, s in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids) -> np.ndarray:
        """Row positions of the given stimulus ids (raises on unknown ids)."""
        try:
            return np.fromiter((self._row[int(s)] for s in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise DataError(f"stimulus id {e.args[0]} is not in the stimulus set") from None

    def images(self, ids) -> np.ndarray:
        return self.read_images(self.rows(ids))


@dataclass
class Responses:
    """One split of one subject's responses.

    ``stim_ids[i]`` is the stimulus of row ``i`` of ``averaged`` (n_images × n_voxels,
    float32). ``trials`` (n_trials × n_voxels) and ``trial_stim`` hold the single trials,
    z-scored within session, for the noise ceiling; they may be ``None`` where a layout ships
    only averages.
    """

    stim_ids: np.ndarray
    averaged: np.ndarray
    trials: np.ndarray | None = None
    trial_stim: np.ndarray | None = None

    def __post_init__(self):
        self.stim_ids = np.asarray(self.stim_ids, dtype=np.int64)
        if self.averaged.ndim != 2 or self.averaged.shape[0] != len(self.stim_ids):
            raise DataError(
                f"averaged responses have shape {self.averaged.shape}, expected ({len(self.stim_ids)}, n_voxels)"
            )
        if (self.trials is None) != (self.trial_stim is None):
            raise DataError("single trials and their stimulus ids must be given together")
        if self.trials is not None and self.trials.shape[0] != len(self.trial_stim):
            raise DataError(f"{self.trials.shape[0]} single trials but {len(self.trial_stim)} trial stimulus ids")

    @property
    def n_voxels(self) -> int:
        return self.averaged.shape[1]

    def repeats(self) -> np.ndarray | None:
        """Number of single trials behind each averaged row (None without trials)."""
        if self.trial_stim is None:
            return None
        ids, counts = np.unique(self.trial_stim, return_counts=True)
        lookup = dict(zip(ids.tolist(), counts.tolist()))
        return np.array([lookup.get(int(s), 0) for s in self.stim_ids])

    def subset(self, rows: np.ndarray) -> "Responses":
        """The averaged rows ``rows`` with exactly their single trials."""
        rows = np.asarray(rows)
        ids = self.stim_ids[rows]
        trials = trial_stim = None
        if self.trials is not None:
            keep = np.isin(self.trial_stim, ids)
            trials, trial_stim = self.trials[keep], self.trial_stim[keep]
        return Responses(ids, self.averaged[rows], trials, trial_stim)


@dataclass
class Subject:
    """One participant: responses per split, ROI masks, per-voxel noise ceiling (%)."""

    name: str
    train: Responses
    test: Responses
    rois: dict[str, np.ndarray] = field(default_factory=dict)  # name → bool mask over voxels
    noise_ceiling: np.ndarray | None = None  # % for the test split's repeat counts
    nc_source: str = "unavailable"  # how the ceiling was obtained (recorded in results)
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # synthetic only

    def __post_init__(self):
        if self.train.n_voxels != self.test.n_voxels:
            raise DataError(
                f"subject {self.name}: train has {self.train.n_voxels} voxels, test has {self.test.n_voxels}"
            )
        for roi, mask in self.rois.items():
            if mask.dtype != bool or mask.shape != (self.n_voxels,):
                raise DataError(f"subject {self.name}: ROI {roi!r} mask must be bool of shape ({self.n_voxels},)")
        if self.noise_ceiling is not None and self.noise_ceiling.shape != (self.n_voxels,):
            raise DataError(f"subject {self.name}: noise ceiling shape {self.noise_ceiling.shape} != ({self.n_voxels},)")

    @property
    def n_voxels(self) -> int:
        return self.train.n_voxels


@dataclass
class Dataset:
    """What a dataset plugin's ``load()`` returns."""

    name: str
    stimuli: Stimuli
    subjects: dict[str, Subject]
    info: dict = field(default_factory=dict)  # provenance: source path/params, version

    def subject(self, name: str) -> Subject:
        if name not in self.subjects:
            raise DataError(f"dataset {self.name} has no subject {name!r} (has: {', '.join(self.subjects)})")
        return self.subjects[name]


class DatasetLoader(Configurable):
    """Base of dataset plugins: declare ``params`` (:class:`brainharness.params.Param` each), take
    them in :meth:`configure` (cheap: nothing is read there), read the data in :meth:`load`."""

    kind = "dataset"
    # Part of every result's identity: bump it when the loader's numbers change for the same
    # parameters and source files (a fix in reading, scaling, z-scoring, splitting …); every
    # result on its data then becomes a new result. Built-ins keep it equal to their VERSION.
    version: ClassVar[str] = "1"
    runtime_params: ClassVar[tuple[str, ...]] = ("cache", "cache_dir")
    # ``Dataset.info["source_signature"]`` (set by loaders that read files: a digest of their source
    # files' paths, sizes and modification times) is part of the identity too.
    # What the loaded data holds (brainharness.capabilities: captions, descriptions, single trials,
    # ROI masks), or Offer(cap, when=..., condition=...) where it depends on the parameters.
    provides: ClassVar[tuple] = ()

    def __init__(self, **params):
        self.p = self.resolve(params)  # every key declared, typed and checked (brainharness.params)
        self.configure(self.p)

    @classmethod
    def provides_for(cls, params: dict) -> frozenset:
        """The capabilities of a loader configured with ``params`` (class-level: nothing is read)."""
        return provided(cls.provides, params)

    @classmethod
    def sizes(cls, params: dict) -> dict | None:
        """``{"n_train": ..., "n_test": ..., "n_voxels": ...}`` per subject, from the resolved
        ``params`` alone (nothing read), or None when only loading can tell (brainharness.preflight
        then checks the sizes right after loading, before any feature is extracted)."""
        return None

    def configure(self, p: dict) -> None:
        """Take the resolved parameters ``p``; raise ConfigError/DataError on what they name."""

    def load(self) -> Dataset:
        raise NotImplementedError
