"""Runs a resolved config: every (subject, backbone, task) unit → a stored result record.

Each unit is independent and written as soon as it exists, so an interrupted run loses at
most the unit in progress; the re-run policy decides what is skipped on the next run.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import registry
from .backbone import Backbone
from .config import load_config
from .data import Dataset
from .errors import ConfigError, HarnessError
from .cache import cache_root
from .capabilities import check_config
from .features import FeatureCache
from .provenance import environment
from .results import ResultStore
from .task import Task, TaskContext, selection_split, validation_noise_ceiling
from .tracking import log_result

log = logging.getLogger(__name__)


def weights_label(info: dict) -> str:
    """Short, stable label of a weights spec for result keys and leaderboard rows."""
    source = info.get("source") or "none"
    if source in ("none", "random-init"):
        return source
    ident = str(info.get("id") or "")
    rev = info.get("revision")
    return f"{source}:{ident}" + (f"@{rev}" if rev else "")


def _label(spec: dict) -> str:
    return spec.get("label") or spec["name"]


class Runner:
    def __init__(self, config: dict | str | Path, progress: bool = True):
        self.cfg = load_config(config)  # idempotent on an already resolved config
        self.progress = progress
        for kind, specs in (("backbone", self.cfg["backbones"]), ("task", self.cfg["tasks"])):
            labels = [_label(s) for s in specs]
            dup = {x for x in labels if labels.count(x) > 1}
            if dup:
                raise ConfigError(f"two {kind}s share the label {sorted(dup)[0]!r}: give each a distinct 'label'")
        # Validate before any work: task parameters, then every (dataset, backbone, task) against
        # the declared capabilities (plugin classes only: no data, model or folder yet).
        check_config(self.cfg, [(spec, self.task(spec)) for spec in self.cfg["tasks"]])
        self.store = ResultStore(self.cfg["results_dir"])
        self.cache_dir = cache_root(self.cfg["cache_dir"])  # every cache of the run lives under it
        self.cache = FeatureCache(self.cache_dir)
        self._dataset: Dataset | None = None
        self._loader = self._dataset_loader()  # its parameters are checked now; data is read on first use
        self._backbones: dict[str, Backbone] = {}
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
        return self._dataset

    def backbone(self, spec: dict) -> Backbone:
        label = _label(spec)
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

    def key(self, subject: str, bspec: dict, tspec: dict, experiment: str | None = None) -> dict:
        return {"dataset": self.dataset.name, "subject": subject, "backbone": _label(bspec),
                "weights": weights_label(self.backbone(bspec).weights_info()), "task": _label(tspec),
                "experiment": experiment or self.cfg["experiment"]}

    # -- running ----------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Every unit of the config, honouring the re-run policy; returns the records."""
        from tqdm.auto import tqdm

        units = [(s, b, t) for s in self.subjects() for b in self.cfg["backbones"] for t in self.cfg["tasks"]]
        records = []
        for subject, bspec, tspec in tqdm(units, desc=self.cfg["experiment"], disable=not self.progress):
            key = self.key(subject, bspec, tspec)
            if not self.store.should_run(key, self.cfg["policy"]):
                log.info("kept existing result %s", self.store.path_for(key))
                records.append(self.store.load(key))
                continue
            records.append(self.run_unit(subject, bspec, tspec))
        return records

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
        key = self.key(subject_name, bspec, tspec, experiment)
        features = _FeatureView(self.cache, backbone, self.dataset.stimuli, universe, self.progress)
        ctx = TaskContext(subject_name, self.dataset.stimuli, fit, score, subject.rois, nc, nc_source,
                          evaluated_on, features, backbone, seed, self.cfg["device"], self.progress,
                          memo if memo is not None else {}, self.cache_dir)
        base = {
            "key": key, "evaluated_on": evaluated_on,
            "backbone": {**backbone.describe_instance(), "spec": bspec},
            "task": {"name": tspec["name"], "label": _label(tspec), "params": task.p, "direction": task.direction},
            "dataset": {"name": self.dataset.name, "info": self.dataset.info, "subject": subject_name,
                        "n_fit_images": len(fit.stim_ids), "n_scored_images": len(score.stim_ids),
                        "n_voxels": subject.n_voxels, "noise_ceiling": nc_source},
            "provenance": {"seed": seed, "config": self.cfg, **environment(str(self.cfg["device"]))},
            **(extra or {}),
        }
        try:
            out = task.run(ctx)
        except Exception as e:
            self.store.save({**base, "status": "failed", "error": f"{type(e).__name__}: {e}"})
            raise
        record = {**base, "status": "complete", "main_score": out.main_score, "scores": out.scores,
                  "tables": out.tables, "details": out.extras.get("details", {}),
                  "features": features.info,
                  "timings": {**out.extras.get("timings", {}), "total_s": time.perf_counter() - start}}
        path = self.store.save(record, out.per_voxel)
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

