"""Voxel encoding (image → brain): backbone features → ridge → noise-ceiling-normalised R²."""
from __future__ import annotations

import time

import numpy as np

from brainharness.errors import ConfigError, DataError
from brainharness.features import flatten_rows, pca_readout
from brainharness.metrics import encoding_scores
from brainharness.registry import register_task
from brainharness.task import Task, TaskContext, TaskOutput, standardise


def alpha_grid(p: dict) -> np.ndarray:
    """The α candidates: an explicit ``alphas`` list, else a log grid alpha_min..alpha_max."""
    if p.get("alphas"):
        return np.asarray(p["alphas"], dtype=np.float64)
    lo, hi, k = p["alpha_min"], p["alpha_max"], p["n_alphas"]
    if not (0 < lo <= hi) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"need 0 < alpha_min ≤ alpha_max and n_alphas ≥ 1, got {lo}, {hi}, {k}")
    return np.logspace(np.log10(lo), np.log10(hi), k)


RIDGE_PARAMS = {"alphas": None, "alpha_min": 1e-2, "alpha_max": 1e7, "n_alphas": 10, "cv": "gcv",
                "pca": None, "standardize": True}
RIDGE_SPACE = {"alpha_min": {"low": 1e-3, "high": 1e3, "log": True},
               "alpha_max": {"low": 1e3, "high": 1e8, "log": True}}


def fit_ridge(p: dict, ctx: TaskContext, X_fit, Y_fit, X_score, memo_key):
    """Shared stage: optional PCA (fit rows only), standardise, ridge with per-target α."""
    from brainharness.ridge import RidgeCV  # torch stays unimported until a task runs

    X_fit, X_score = flatten_rows(X_fit), flatten_rows(X_score)
    if p["pca"]:
        X_fit, (X_score,) = pca_readout(X_fit, [X_score], int(p["pca"]))
    if p["standardize"]:
        X_fit, X_score = standardise(X_fit, X_score)
    model = RidgeCV(alphas=alpha_grid(p), cv=p["cv"], device=ctx.device)
    # The decomposition depends only on the fit features: reuse it across α grids (sweeps).
    decomposition = ctx.memo.get(memo_key)
    model.fit(X_fit, Y_fit, decomposition=decomposition)
    ctx.memo[memo_key] = model.decomposition_
    return model, model.predict(X_score)


@register_task("encoding")
class EncodingTask(Task):
    direction = "image→brain"
    main_score = "median_nc_r2"
    params = {**RIDGE_PARAMS, "layer": None, "nc_threshold": 10.0, "rois": None}
    search_space = RIDGE_SPACE

    def validate(self):
        alpha_grid(self.p)
        if not 0 <= float(self.p["nc_threshold"]) < 100:
            raise ConfigError(f"encoding: nc_threshold must be in [0, 100), got {self.p['nc_threshold']}")

    def run(self, ctx: TaskContext) -> TaskOutput:
        t0 = time.perf_counter()
        layer = self.p["layer"]
        X_fit = ctx.features(ctx.fit.stim_ids, layer)
        X_score = ctx.features(ctx.score.stim_ids, layer)
        t1 = time.perf_counter()
        Y = ctx.fit.averaged
        bad = ~np.isfinite(Y).all(0) | ~np.isfinite(ctx.score.averaged).all(0)
        if bad.all():
            raise DataError("every voxel has NaN or inf responses")
        # Documented handling: voxels with any non-finite response are excluded and counted.
        keep = ~bad
        model, pred = fit_ridge(self.p, ctx, X_fit, Y[:, keep], X_score,
                                ("encoding", layer, ctx.evaluated_on, len(X_fit), self.p["pca"]))
        t2 = time.perf_counter()
        rois = {k: v[keep] for k, v in ctx.rois.items() if self.p["rois"] is None or k in self.p["rois"]}
        nc = ctx.noise_ceiling[keep] if ctx.noise_ceiling is not None else None
        per_voxel, scores, per_roi = encoding_scores(pred, ctx.score.averaged[:, keep], nc, rois,
                                                     float(self.p["nc_threshold"]))
        per_voxel["best_alpha"] = model.best_alphas_.cpu().numpy()
        if bad.any():  # scatter back to the full voxel index so sidecars align with the ROI masks
            per_voxel = {k: _scatter(v, keep) for k, v in per_voxel.items()}
        scores["n_voxels_nonfinite_excluded"] = int(bad.sum())
        main = self.main_score if nc is not None else "median_r2"
        return TaskOutput(main, scores, {"per_roi": per_roi}, per_voxel,
                          {"timings": {"features_s": t1 - t0, "ridge_s": t2 - t1}, "n_features": X_fit[0].size})


def _scatter(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.full(keep.shape, np.nan, dtype=np.float32)
    out[keep] = values
    return out
