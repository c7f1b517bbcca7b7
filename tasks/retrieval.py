"""Brain ↔ image retrieval, stage 1: ridge from voxels to the backbone's image embedding.

Scored with the MindEye-2 protocol (300 candidates, 30 trials, mean and 95 % CI) in both
directions, named as in DESIGN §6: ``brain→image`` (each brain sample finds its own image
among the candidates) and ``image→brain`` (each image finds its own brain sample).
"""
from __future__ import annotations

import time

import numpy as np

from brainharness.errors import ConfigError, DataError
from brainharness.features import flatten_rows
from brainharness.metrics import top1_retrieval
from brainharness.registry import register_task
from brainharness.task import Task, TaskContext, TaskOutput, standardise
from brainharness.tasks.encoding import RIDGE_PARAMS, RIDGE_SPACE, alpha_grid, fit_ridge


@register_task("retrieval")
class RetrievalTask(Task):
    direction = "brain→image"
    main_score = "brain→image"
    params = {**RIDGE_PARAMS, "alpha_min": 1e0, "layer": None, "roi": "nsdgeneral",
              "n_candidates": 300, "n_trials": 30, "seed": 0}
    search_space = RIDGE_SPACE

    def validate(self):
        alpha_grid(self.p)
        for k in ("n_candidates", "n_trials"):
            if not isinstance(self.p[k], int) or self.p[k] < 2:
                raise ConfigError(f"retrieval: {k} must be an integer ≥ 2, got {self.p[k]!r}")

    def voxels(self, ctx: TaskContext) -> np.ndarray:
        roi = self.p["roi"]
        if roi is None:
            return np.ones(ctx.fit.n_voxels, dtype=bool)
        if roi not in ctx.rois:
            raise DataError(f"retrieval: ROI {roi!r} not in this subject (has: {', '.join(ctx.rois)})")
        mask = ctx.rois[roi] & np.isfinite(ctx.fit.averaged).all(0) & np.isfinite(ctx.score.averaged).all(0)
        if not mask.any():
            raise DataError(f"retrieval: ROI {roi!r} has no voxel with finite responses")
        return mask

    def run(self, ctx: TaskContext) -> TaskOutput:
        t0 = time.perf_counter()
        layer = self.p["layer"]
        target_fit = flatten_rows(ctx.features(ctx.fit.stim_ids, layer))
        target_score = flatten_rows(ctx.features(ctx.score.stim_ids, layer))
        t1 = time.perf_counter()
        mask = self.voxels(ctx)
        B_fit, B_score = standardise(ctx.fit.averaged[:, mask], ctx.score.averaged[:, mask])
        # Brain → embedding: the voxels are the ridge features here, the embedding the targets.
        params = dict(self.p, standardize=False, pca=None)
        model, pred = fit_ridge(params, ctx, B_fit, target_fit, B_score,
                                ("retrieval", self.p["roi"], ctx.evaluated_on, len(B_fit)))
        t2 = time.perf_counter()
        n = min(self.p["n_candidates"], len(pred))
        if n < self.p["n_candidates"]:
            raise DataError(f"retrieval: {len(pred)} scored images, fewer than n_candidates={self.p['n_candidates']}")
        kw = dict(n_candidates=n, n_trials=self.p["n_trials"], seed=self.p["seed"])
        rows = [{"direction": "brain→image", **top1_retrieval(pred, target_score, **kw)},
                {"direction": "image→brain", **top1_retrieval(target_score, pred, **kw)}]
        scores = {r["direction"]: r["mean"] for r in rows}
        scores["n_voxels"] = int(mask.sum())
        scores["embedding_dim"] = int(target_fit.shape[1])
        return TaskOutput(self.main_score, scores, {"retrieval": rows},
                          {"best_alpha": model.best_alphas_.cpu().numpy()},
                          {"timings": {"features_s": t1 - t0, "ridge_s": t2 - t1}})

