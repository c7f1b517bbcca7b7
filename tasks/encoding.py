"""Voxel encoding (image → brain): backbone features → ridge → noise-ceiling-normalised R²."""
from __future__ import annotations

import time

import numpy as np

from brainharness.errors import DataError
from brainharness.layout import Layout, Plot, RoiColumns, Table
from brainharness.metrics import encoding_scores
from brainharness.metrics.bootstrap import LEVEL, encoding_bootstrap, images_digest, interval
from brainharness.params import Param
from brainharness.readout import RIDGE_PARAMS, RIDGE_SPACE, backbone_source, check_ridge, fit_ridge, scatter
from brainharness.registry import register_task
from brainharness.task import NC_THRESHOLD, REPORT_ROIS, Task, TaskContext, TaskOutput

TABLE13 = RoiColumns(rois=("V1", "V2", "V3", "hV4", "EBA", "FBA", "OFA", "FFA", "OPA", "PPA", "OWFA", "VWFA"),
                     aliases={"hv4": "hV4"}, score="median_nc_r2", skip=("nsdgeneral",))
"""Seed 003 Table 13 columns: all (the record's whole-brain score), then these ROIs under the
data's own names (hV4 stays hV4; other ROIs follow); cells = per-ROI median noise-ceiling-normalised R² in %."""
ENCODING_TABLE = Table(
    name="encoding", title="median noise-ceiling-normalised R² (%)",
    description="cells: per-ROI median of 100·R²/NC over voxels above the noise-ceiling threshold; "
                "all = the record's whole-brain median (not an average of the ROI cells)",
    columns=TABLE13,
    plots=(Plot("bars"), Plot("heatmap", {"title": "per-ROI median noise-ceiling-normalised R² (%)",
                                          "colorbar": "median NC-normalised R² (%)", "digits": 1})))


@register_task("encoding")
class EncodingTask(Task):
    direction = "image→brain"
    main_score = "median_nc_r2"
    scores = ("median_nc_r2", "mean_nc_r2", "median_r2", "mean_r2", "median_noise_ceiling", "n_voxels",
              "n_voxels_kept", "nc_threshold", "n_voxels_nonfinite_excluded",
              "median_nc_r2_ci_low", "median_nc_r2_ci_high", "median_r2_ci_low", "median_r2_ci_high")
    layout = Layout(ENCODING_TABLE)
    example = {"backbone": {"name": "pixels", "size": 8}}
    params = {**RIDGE_PARAMS,
              "layer": Param(None, str, doc="backbone layer to read out (null: the backbone's own layer)"),
              "nc_threshold": NC_THRESHOLD,
              "rois": REPORT_ROIS,
              "n_boot": Param(1000, int, ge=0, doc="bootstrap resamples of the test images for the 95 % intervals "
                                                   "(test scoring only; seeded by the run's seed; 0 = no intervals)")}
    search_space = RIDGE_SPACE

    def check(self, p):
        check_ridge(self.owner(), p)

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

        def kept(a):  # the finite voxels' columns; no copy when every voxel is finite (NSD: 0.5 GB each)
            return a if not bad.any() else a[..., keep]

        model, pred = fit_ridge(self.p, ctx, X_fit, kept(Y), X_score, backbone_source(ctx, layer),
                                ctx.fit.stim_ids)
        best_alpha = model.best_alphas_.cpu().numpy()
        del model  # its coefficients (features × voxels: 257 MB at NSD size, 4,096 features) are not scored
        actual = kept(ctx.score.averaged)
        t2 = time.perf_counter()
        rois = {k: kept(v) for k, v in ctx.rois.items() if self.p["rois"] is None or k in self.p["rois"]}
        nc = kept(ctx.noise_ceiling) if ctx.noise_ceiling is not None else None
        per_voxel, scores, per_roi = encoding_scores(pred, actual, nc, rois,
                                                     float(self.p["nc_threshold"]))
        per_voxel["best_alpha"] = best_alpha
        if bad.any():  # scatter back to the full voxel index so sidecars align with the ROI masks
            per_voxel = {k: scatter(v, keep) for k, v in per_voxel.items()}
        scores["n_voxels_nonfinite_excluded"] = int(bad.sum())
        main = self.main_score if nc is not None else "median_r2"
        tables = {"per_roi": per_roi}
        if self.p["n_boot"] and ctx.evaluated_on == "test":  # model-selection trials never reach a table
            draws = encoding_bootstrap(pred, actual, nc, rois, float(self.p["nc_threshold"]),
                                       int(self.p["n_boot"]), ctx.seed)
            tables["bootstrap"] = [bootstrap_entry(main, draws, int(self.p["n_boot"]), ctx.seed,
                                                   ctx.score.stim_ids, scores, per_roi)]
            per_voxel[BOOTSTRAP_KEY.format(main)] = draws[""]  # B values, for paired tests
        timings = {"features_s": t1 - t0, "ridge_s": t2 - t1,
                   "scoring_s": time.perf_counter() - t2}  # scores and intervals
        return TaskOutput(main, scores, tables, per_voxel, {"timings": timings, "n_features": X_fit[0].size})


BOOTSTRAP_KEY = "bootstrap_{}"
"""Sidecar array of the per-resample whole-brain main score (the leaderboard's paired tests)."""


def bootstrap_entry(score: str, draws: dict, n_boot: int, seed: int, stim_ids, scores: dict, per_roi: list) -> dict:
    """Write the intervals into ``scores`` (``<score>_ci_low/high``) and each ``per_roi`` row, and
    return the record's ``bootstrap`` table row: what two records must share to be compared
    resample by resample (score, n_boot, seed, test images) and where the draws are."""
    scores[f"{score}_ci_low"], scores[f"{score}_ci_high"] = interval(draws[""])
    for row in per_roi:
        row[f"{score}_ci_low"], row[f"{score}_ci_high"] = interval(draws[row["roi"]])
    return {"score": score, "n_boot": n_boot, "seed": seed, "level": LEVEL, "test_images": images_digest(stim_ids),
            "n_test_images": len(stim_ids), "sidecar_key": BOOTSTRAP_KEY.format(score)}
