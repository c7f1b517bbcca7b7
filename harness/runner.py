"""Runs a resolved config: every (subject, backbone, task) unit → a stored result record.

Each unit is independent and written as soon as it exists, so an interrupted run loses at
most the unit in progress; the re-run policy decides what is skipped on the next run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import registry
from .backbone import Backbone
from .config import load_config, spec_label
from .data import Dataset
from .errors import ConfigError, HarnessError
from .cache import cache_root
from .capabilities import check_config
from .preflight import check_pca, check_run
from .features import FeatureCache
from .identity import (backbone_identity, dataset_identity, dataset_variant, result_identity, selection_identity,
                       task_identity, weights_label)
from .provenance import device_used, environment, precision_used
from .results import ResultStore
from .slurm import in_job
from .task import Task, TaskContext, selection_split, validation_noise_ceiling
from .threads import torch_threads
from .tracking import log_result

log = logging.getLogger(__name__)


@dataclass
class UnitOutcome:
    """What one unit of :meth:`Runner.run` came to: ``ran``, ``up to date`` (an existing record
    with the same identity was kept) or ``failed`` (``error``: one line)."""

    key: dict
    status: str
    record: dict | None
    path: Path
    error: str | None = None


class Runner:
    def __init__(self, config: dict | str | Path, progress: bool = True):
        self.cfg = load_config(config)  # idempotent on an already resolved config
        self.progress = progress
        for kind, specs in (("backbone", self.cfg["backbones"]), ("task", self.cfg["tasks"])):
            labels = [spec_label(s) for s in specs]
            dup = {x for x in labels if labels.count(x) > 1}
            if dup:
                raise ConfigError(f"two {kind}s share the label {sorted(dup)[0]!r}: give each a distinct 'label'")
        # Validate before any work: task parameters, then every (dataset, backbone, task) against
        # the declared capabilities (plugin classes only: no data, model or folder yet).
        check_config(self.cfg, [(spec, self.task(spec)) for spec in self.cfg["tasks"]])
        self.cache_dir = cache_root(self.cfg["cache_dir"])  # every cache of the run lives under it
        check_run(self.cfg, self.cache_dir)  # folders writable, devices present: nothing created yet
        self.store = ResultStore(self.cfg["results_dir"])
        self.cache = FeatureCache(self.cache_dir)
        self._dataset: Dataset | None = None
        self._loader = self._dataset_loader()  # its parameters are checked now; data is read on first use
        self._check_sizes()  # when the loader can tell its sizes unread; else right after loading
        self._backbones: dict[str, Backbone] = {}
        self._data_identity: tuple[dict, str] | None = None
        self._bb_identity: dict[str, tuple[dict, str]] = {}
        self.outcomes: list[UnitOutcome] = []
        for spec in self.cfg["backbones"]:
            self.backbone(spec)

    # -- plugins ----------------------------------------------------------------------
    def _dataset_loader(self):
        spec = dict(self.cfg["dataset"])
        cls = registry.datasets.get(spec.pop("name"))
        if "cache_dir" in getattr(cls, "params", {"cache_dir": None}) and "cache_dir" not in spec:
            spec["cache_dir"] = str(self.cache_dir)
        return cls(**spec)

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self._loader.load()
            self._check_sizes()
        return self._dataset

    def n_train(self) -> int | None:
        """Training images of the smallest subject: from the loader's ``sizes`` hook (nothing
        read), else from the loaded data; None while only loading can tell."""
        sizes = type(self._loader).sizes(self._loader.p)
        if sizes is not None:
            return int(sizes["n_train"])
        if self._dataset is None:
            return None
        return min(len(self._dataset.subject(s).train.stim_ids) for s in self._dataset.subjects)

    def _check_sizes(self) -> None:
        n = self.n_train()
        if n is not None:
            for spec in self.cfg["tasks"]:
                check_pca([self.task(spec).p.get("pca")], n, f"task {spec_label(spec)}")

    def backbone(self, spec: dict) -> Backbone:
        label = spec_label(spec)
        if label not in self._backbones:
            params = {k: v for k, v in spec.items() if k not in ("name", "label")}
            params.setdefault("device", self.cfg["device"])
            params.setdefault("cache_dir", str(self.cache_dir))
            self._backbones[label] = registry.backbones.get(spec["name"])(**params)
        return self._backbones[label]

    def task(self, spec: dict, overrides: dict | None = None) -> Task:
        params = {k: v for k, v in spec.items() if k not in ("name", "label")}
        params.update(overrides or {})
        return registry.tasks.get(spec["name"])(**params)

    def subjects(self) -> list[str]:
        wanted = self.cfg["subjects"]
        names = list(self.dataset.subjects)
        if wanted is None:
            return names
        for s in wanted:
            self.dataset.subject(s)  # raises with the available names
        return list(wanted)

    # -- identity (brainharness.identity) ------------------------------------------------
    def data_identity(self) -> tuple[dict, str]:
        """``(payload, readable variant label)`` of the dataset (loads it on first use)."""
        if self._data_identity is None:
            self._data_identity = (dataset_identity(self._loader, self.dataset),
                                   dataset_variant(self._loader, self.dataset.name))
        return self._data_identity

    def _backbone_identity(self, bspec: dict) -> tuple[dict, str]:
        label = spec_label(bspec)
        if label not in self._bb_identity:  # computed once: local weights are digested from their files
            backbone = self.backbone(bspec)
            self._bb_identity[label] = (backbone_identity(backbone), weights_label(backbone.weights_info()))
        return self._bb_identity[label]

    def identify(self, subject: str, bspec: dict, tspec: dict, experiment: str | None = None, *,
                 overrides: dict | None = None, evaluated_on: str = "test",
                 validation_fraction: float = 0.2) -> tuple[dict, dict]:
        """``(key, identity payload)`` of a unit: the readable key fields, ``id`` (hash of the
        payload) and ``data_id`` (hash of its dataset part)."""
        experiment = experiment or self.cfg["experiment"]
        bb_identity, weights = self._backbone_identity(bspec)
        payload, rid, data_id = result_identity(
            dataset=self.data_identity()[0], subject=subject, backbone=bb_identity,
            task=task_identity(self.task(tspec, overrides)),
            selection=selection_identity(evaluated_on, self.cfg["seed"], validation_fraction),
            labels={"experiment": experiment, "backbone": spec_label(bspec), "task": spec_label(tspec)})
        key = {"dataset": self.dataset.name, "subject": subject, "backbone": spec_label(bspec), "weights": weights,
               "task": spec_label(tspec), "experiment": experiment, "id": rid, "data_id": data_id}
        return key, payload

    def key(self, subject: str, bspec: dict, tspec: dict, experiment: str | None = None, **how) -> dict:
        """The record key of a unit (``how``: ``overrides``, ``evaluated_on``, ``validation_fraction``
        as :meth:`run_unit` takes them)."""
        return self.identify(subject, bspec, tspec, experiment, **how)[0]

    # -- running ----------------------------------------------------------------------
    def run(self, on_unit: Callable[[UnitOutcome], None] | None = None) -> list[dict]:
        """Every unit of the config, honouring the re-run policy; returns the complete records (ran
        or up to date). A failed unit does not stop the others; ``on_unit`` hears each unit's
        :class:`UnitOutcome` as it ends, and ``self.outcomes`` keeps them (failures with their line)."""
        from tqdm.auto import tqdm

        self.outcomes = []
        units = self.check_units(self.units())
        for subject, bspec, tspec in tqdm(units, desc=self.cfg["experiment"], disable=not self.progress):
            outcome = self.run_one(subject, bspec, tspec)
            self.outcomes.append(outcome)
            if on_unit is not None:
                on_unit(outcome)
        return [o.record for o in self.outcomes if o.record is not None]

    def units(self) -> list[tuple[str, dict, dict]]:
        """Every ``(subject, backbone spec, task spec)`` of the config, in run order."""
        return [(s, b, t) for s in self.subjects() for b in self.cfg["backbones"] for t in self.cfg["tasks"]]

    def check_units(self, units: list[tuple[str, dict, dict]]) -> list[tuple[str, dict, dict]]:
        """Each unit's task parameters against its data and model (``Task.check_data``): one line
        before any unit runs (locally, or before a job is submitted); returns ``units``."""
        for subject, bspec, tspec in units:
            self.task(tspec).check_data(self.dataset.subject(subject), self.backbone(bspec))
        return units

    def run_one(self, subject: str, bspec: dict, tspec: dict) -> UnitOutcome:
        key = self.key(subject, bspec, tspec)
        path = self.store.path_for(key)
        if not self.store.should_run(key, self.cfg["policy"]):
            record = self.store.load(key)
            if record is not None and record.get("status") == "complete":
                log.info("kept existing result %s", path)
                record["_path"] = str(path)
                return UnitOutcome(key, "up to date", record, path)
            error = ((record or {}).get("error") or "").strip() or "no complete record"
            return UnitOutcome(key, "failed", None, path, error.splitlines()[0])
        try:
            return UnitOutcome(key, "ran", self.run_unit(subject, bspec, tspec), path)
        except Exception as e:  # the unit failed (its record says so); the other units still run
            log.info("unit %s failed", path, exc_info=True)  # the traceback with --debug
            first = (str(e).strip().splitlines() or [""])[0]
            line = first if isinstance(e, HarnessError) and first else f"{type(e).__name__}: {first}".rstrip(": ")
            return UnitOutcome(key, "failed", None, path, line)

    def run_unit(self, subject_name: str, bspec: dict, tspec: dict, *, evaluated_on: str = "test",
                 overrides: dict | None = None, validation_fraction: float = 0.2, experiment: str | None = None,
                 memo: dict | None = None, track: bool = True, group: str | None = None,
                 extra: dict | None = None) -> dict:
        """Run one unit and store its record. ``evaluated_on="validation"`` scores a part
        carved from the training split and never hands the test split to the task."""
        start = time.perf_counter()
        seed = self.cfg["seed"]
        _seed_everything(seed)
        subject = self.dataset.subject(subject_name)
        backbone = self.backbone(bspec)
        task = self.task(tspec, overrides)
        if evaluated_on == "test":
            fit, score = subject.train, subject.test
            nc, nc_source = subject.noise_ceiling, subject.nc_source
            universe = np.concatenate([fit.stim_ids, score.stim_ids])
        elif evaluated_on == "validation":
            fit, score = selection_split(subject.train, validation_fraction, seed)
            nc, nc_source = validation_noise_ceiling(subject.train, score)
            universe = subject.train.stim_ids
        else:
            raise ConfigError(f"evaluated_on must be 'test' or 'validation', got {evaluated_on!r}")
        key, identity = self.identify(subject_name, bspec, tspec, experiment, overrides=overrides,
                                      evaluated_on=evaluated_on, validation_fraction=validation_fraction)
        variant = self.data_identity()[1]
        features = _FeatureView(self.cache, backbone, self.dataset.stimuli, universe, self.progress)
        ctx = TaskContext(subject_name, self.dataset.stimuli, fit, score, subject.rois, nc, nc_source,
                          evaluated_on, features, backbone, seed, self.cfg["device"], self.progress,
                          memo if memo is not None else {}, self.cache_dir)
        base = {
            "key": key, "identity": identity, "evaluated_on": evaluated_on,
            "backbone": {**backbone.describe_instance(), "spec": bspec},
            "task": {"name": tspec["name"], "label": spec_label(tspec), "params": task.p, "direction": task.direction},
            "dataset": {"name": self.dataset.name, "id": key["data_id"], "variant": variant,
                        "info": self.dataset.info, "subject": subject_name,
                        "n_fit_images": len(fit.stim_ids), "n_scored_images": len(score.stim_ids),
                        "n_voxels": subject.n_voxels, "noise_ceiling": nc_source},
            # the device and precision actually used ("auto" resolved); the config keeps the request
            "provenance": {"seed": seed, "config": self.cfg, **environment(device_used(self.cfg["device"])),
                           "device_requested": self.cfg["device"], "backbone_device": device_used(backbone.device),
                           "precision": precision_used(backbone), **({"job": job} if (job := in_job()) else {})},
            **(extra or {}),
        }
        try:
            with torch_threads(task.p.get("num_threads")):  # a task's `num_threads` parameter, if it has one
                out = task.run(ctx)
            record = {**base, "status": "complete", "main_score": out.main_score, "scores": out.scores,
                      "tables": out.tables, "details": out.extras.get("details", {}),
                      "features": features.info,
                      "timings": {**out.extras.get("timings", {}), "total_s": time.perf_counter() - start}}
            path = self.store.save(record, out.per_voxel)  # validated first: an invalid record fails the unit
        except Exception as e:  # kept beside a complete record of the same key, never over it
            self.store.save({**base, "status": "failed", "error": f"{type(e).__name__}: {e}"})
            raise
        record = self.store.read(path)
        if track:
            tracking = log_result(record, path, self.cfg["tracking"]["wandb"], Path(self.cfg["results_dir"]) / "wandb",
                                  group=group)
            self.store.update(key, tracking=tracking)
            record["tracking"] = tracking
        record["_path"] = str(path)
        return record


class _FeatureView:
    """Features of any stimulus in ``universe``: extracted (or read from cache) once per layer."""

    def __init__(self, cache: FeatureCache, backbone: Backbone, stimuli, universe: np.ndarray, progress: bool):
        self.cache, self.backbone, self.stimuli, self.progress = cache, backbone, stimuli, progress
        self.universe = np.unique(universe)
        self.info: dict = {}
        self._loaded: dict[str, np.ndarray] = {}

    def prefetch(self, layers) -> None:
        """Extract (or read from cache) every layer of ``layers`` not yet loaded, in one backbone pass."""
        todo = [layer for layer in dict.fromkeys(layers) if layer not in self._loaded]
        if todo:
            feats, info = self.cache.features_multi(self.backbone, self.stimuli, self.universe, todo, self.progress)
            self._loaded.update(feats)
            self.info.update(info)

    def __call__(self, ids, layer: str | None = None) -> np.ndarray:
        layer = layer or self.backbone.layer
        if layer not in self._loaded:
            feats, info = self.cache.features(self.backbone, self.stimuli, self.universe, layer, self.progress)
            self._loaded[layer] = feats
            self.info[layer] = info
        rows = np.searchsorted(self.universe, ids)
        if np.any(rows >= len(self.universe)) or np.any(self.universe[np.minimum(rows, len(self.universe) - 1)] != ids):
            raise HarnessError("features requested for stimuli outside this run's allowed set")
        return self._loaded[layer][rows]


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_config(config: dict | str | Path, progress: bool = True) -> list[dict]:
    """Run a config (YAML path or dict) and return its result records."""
    return Runner(config, progress=progress).run()

