"""Layer-wise voxel encoding (seed 003): every readable layer → ridge → the best layer per ROI.

One backbone pass reads all requested layers (``_FeatureView.prefetch`` →
``FeatureCache.features_multi``: one cache file per layer). Then, per layer, the encoding of
:mod:`brainharness.tasks.encoding` (same ridge, same metrics) is run twice:

1. **Selection** — ridge fitted on the fit split minus a validation part carved from it
   (``validation_fraction``, seeded), scored on that validation part with a noise ceiling
   estimated from the fit split's own single trials. The layer of each ROI (and of the whole
   brain, ``all``) is the one with the highest validation ``median_nc_r2`` (``median_r2``
   without single trials); ties go to the earlier layer. This phase only ever sees fit-split
   stimuli: its feature reader refuses any other id, so the test split cannot steer the choice.
2. **Scoring** — ridge refitted on the whole fit split, scored once on the score split.

Reported:

* ``tables.per_roi`` — per ROI the validation-selected layer and its **test** scores (the
  cells of seed 003 Table 13); rows carry ``layer``, ``layer_index`` and the selection score.
* ``scores`` / main score ``median_nc_r2`` — the whole-brain test scores of the single layer
  that is best on validation (``details.best_layer``; its per-voxel arrays are the sidecar).
  Chosen over a per-ROI composite because it is one model, comparable with the plain
  ``encoding`` task, and defined for voxels that lie in no ROI.
* ``tables.layer_scores`` — the full ROI × layer matrix, validation and test, for the heatmap.
  Its test values are **descriptive**: picking a layer from them would select on the test split.
* sidecar ``best_layer_index`` — per voxel, the layer with the highest validation Pearson r
  (the voxel-level brain-to-network map).

``layers``: ``every`` (all readable layers of the backbone, in its order), a glob
(``blocks.*``, ``mix.*``) or a list of names/globs (patterns this backbone has no layer for are
skipped and listed in ``details.unmatched_layer_patterns``, so one task serves several
families); ``layer_stride`` keeps every n-th of them (e.g. ``blocks.*`` with stride 2 →
blocks 0, 2, 4, …). Ridge decompositions are not kept in the run's memo (``fit_ridge(...,
keep=False)``), so memory holds one at a time.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import replace

import numpy as np

from brainharness.errors import ConfigError, DataError, HarnessError
from brainharness.layout import Layout, Plot, Row, Side, num
from brainharness.metrics import encoding_scores
from brainharness.params import Param
from brainharness.readout import RIDGE_PARAMS, RIDGE_SPACE, backbone_source, check_ridge, fit_ridge, scatter
from brainharness.registry import register_task
from brainharness.task import (NC_THRESHOLD, REPORT_ROIS, Task, TaskContext, TaskOutput, selection_split,
                               validation_fraction, validation_noise_ceiling)
from brainharness.tasks.encoding import ENCODING_TABLE, TABLE13


def resolve_layers(spec, readable: list[str], stride: int = 1) -> tuple[list[str], list[str]]:
    """``(layers, unmatched patterns)``: the readable layers named by ``spec`` (``every``, a glob or
    a list of names/globs, in the order given), every ``stride``-th. Patterns that match no layer
    of this backbone are returned (one task can then serve several families); none matching
    at all is an error."""
    patterns = ["*"] if spec in (None, "every") else [spec] if isinstance(spec, str) else list(spec)
    chosen, unmatched = [], []
    for pattern in patterns:
        hits = [layer for layer in readable if fnmatch.fnmatchcase(layer, str(pattern))]
        chosen += [h for h in hits if h not in chosen]
        if not hits:
            unmatched.append(pattern)
    if not chosen:
        raise ConfigError(f"layerwise_encoding: no readable layer matches {', '.join(map(repr, patterns))} "
                          f"(readable: {', '.join(readable)})")
    return chosen[::stride], unmatched


def _argmax(values: list) -> int | None:
    """Index of the largest non-missing value (the first on ties); ``None`` if all are missing."""
    best = None
    for i, v in enumerate(values):
        if v is not None and np.isfinite(v) and (best is None or v > values[best]):
            best = i
    return best


def _only(features, allowed: np.ndarray):
    """A feature reader that refuses any stimulus outside ``allowed``."""
    allowed = set(np.asarray(allowed).tolist())

    def read(ids, layer=None):
        if not allowed.issuperset(np.asarray(ids).tolist()):
            raise HarnessError("layer selection asked for features of stimuli outside the fit split")
        return features(ids, layer)

    return read


# -- leaderboard layout: Table 13 cells at each ROI's validation-chosen layer -----------------
BEST_LAYER_SECTION = "Best layer per ROI (chosen on a validation part of the training split)"


def _details(record: dict) -> dict:
    return record.get("details") if isinstance(record.get("details"), dict) else {}


def _layers(record: dict) -> tuple[list[str], list[dict]]:
    rows = [r for r in (record.get("tables") or {}).get("layer_scores") or [] if isinstance(r, dict)]
    layers = [str(x) for x in _details(record).get("layers") or []]
    return layers or list(dict.fromkeys(str(r.get("layer")) for r in rows)), rows


def layer_range(record: dict) -> dict:
    """The ``layer`` cell of a row: the range of layers compared (``mix.0…mix.4 (5)``)."""
    layers, _ = _layers(record)
    return {"layer": f"{layers[0]}…{layers[-1]} ({len(layers)})" if len(layers) > 1 else
            layers[0] if layers else np.nan}


def layer_matrix(record: dict) -> dict:
    """ROI × layer grid of test scores (descriptive) with the validation-chosen cells marked."""
    layers, rows = _layers(record)
    seen = list(dict.fromkeys(TABLE13.column(r.get("roi")) for r in rows if r.get("roi") != "nsdgeneral"))
    rois = [c for c in TABLE13.fixed() if c in seen] + [c for c in seen if c not in TABLE13.fixed()]
    test = np.full((len(rois), len(layers)), np.nan)
    selected = np.zeros(test.shape, dtype=bool)
    for r in rows:
        col, layer = TABLE13.column(r.get("roi")), str(r.get("layer"))
        if col in rois and layer in layers:
            test[rois.index(col), layers.index(layer)] = num(r.get("test"))
            selected[rois.index(col), layers.index(layer)] = bool(r.get("selected"))
    metric = next((str(r["metric"]) for r in rows if r.get("metric")), "median_nc_r2")
    return {"y": rois, "x": layers, "values": test.tolist(), "marked": selected.tolist(), "metric": metric}


LAYERWISE_TABLE = replace(
    ENCODING_TABLE, name="layerwise",
    title="brain score per ROI at its best layer, median noise-ceiling-normalised R² (%)",
    description="seed 003 Table 13 layout. Cells: per-ROI median of 100·R²/NC on the test split, at the "
                "layer chosen for that ROI on a validation part of the training split (never on test); "
                "all = the whole-brain median of the one layer best on validation. The chosen layers are "
                "in the 'best layer per ROI' table and the '<ROI> layer' CSV columns; per-record ROI × "
                "layer heatmaps show every layer's test score (descriptive); the model is a per-layer ridge with a "
                "validation-selected layer, not seed 003's FactorTopy",
    side=Side(BEST_LAYER_SECTION, replace(TABLE13, value="layer", cell_kind="text",
                                          whole_value=lambda r: _details(r).get("best_layer")), " layer"),
    cells=layer_range, row_data=layer_matrix,
    plots=ENCODING_TABLE.plots + (Plot("row_heatmaps", {
        "prefix": "layers", "labels": {"median_nc_r2": "median NC-normalised R² (%)"}, "digits": 0,
        "colorbar": "test {label}",
        "title": "test {label} per ROI × layer (descriptive); red box = layer chosen on validation"}),))


def _raw_rows(record: dict) -> list[Row]:
    """The record as a Table 13 row ranked by its raw whole-brain mean R²."""
    return [Row({**record, "main_score": "mean_r2"})]


MODEL_NOTE = ("model: a ridge per layer, the layer chosen per ROI on a validation part of the training split "
              "(median nc-R²) — not seed 003's FactorTopy selector; seed 003's ModelSoup selected on test, never here")
LAYERWISE_RAW_TABLE = replace(
    LAYERWISE_TABLE, suffix="raw-r2", name="layerwise_raw",
    title="seed 003 Table 13: raw ROI-averaged brain score R² at each ROI's best layer",
    description="seed 003 Table 13 (its appendix D.1: 'the raw ROI-averaged brain score'). Cells: per-ROI mean of "
                "r² (Pearson r², negative r → 0) over the ROI's voxels on the test split, no noise-ceiling "
                "normalisation or threshold, at the layer chosen for that ROI on validation; all = the "
                "whole-brain mean R² of the one layer best on validation. The normalised cells are the "
                "layerwise_encoding table",
    columns=replace(TABLE13, score="mean_r2", value="mean_r2", cell_kind="acc"), split=_raw_rows,
    notes=lambda records: [MODEL_NOTE], plots=(Plot("bars"),), row_data=None)
"""Seed 003 Table 13 as published: raw ROI-averaged R² (a fraction, 3 decimals)."""


@register_task("layerwise_encoding")
class LayerwiseEncodingTask(Task):
    direction = "image→brain"
    main_score = "median_nc_r2"
    layout = Layout(LAYERWISE_TABLE, LAYERWISE_RAW_TABLE)
    example = {"backbone": {"name": "oracle"}, "layers": ["mix.*", "low"]}
    params = {**RIDGE_PARAMS,
              "layers": Param("every", (str, list), items=Param(type=str), nonempty=True, nullable=True,
                              expect="'every', a glob or a non-empty list of layer names/globs",
                              doc="layers compared: every, a glob (blocks.*) or a list of names/globs"),
              "layer_stride": Param(1, ge=1, doc="keep every n-th of those layers"),
              "validation_fraction": validation_fraction(0.2),
              "nc_threshold": NC_THRESHOLD, "rois": REPORT_ROIS}
    search_space = RIDGE_SPACE

    def check(self, p):
        check_ridge(self.owner(), p)

    def run(self, ctx: TaskContext) -> TaskOutput:
        t0 = time.perf_counter()
        p, thr = self.p, float(self.p["nc_threshold"])
        layers, unmatched = resolve_layers(p["layers"], ctx.backbone.layers(), p["layer_stride"])
        ctx.features.prefetch(layers)  # one backbone pass for every layer
        t1 = time.perf_counter()

        sub, val = selection_split(ctx.fit, float(p["validation_fraction"]), ctx.seed)
        val_nc, val_nc_source = validation_noise_ceiling(ctx.fit, val)
        bad = ~np.isfinite(ctx.fit.averaged).all(0) | ~np.isfinite(ctx.score.averaged).all(0)
        if bad.all():
            raise DataError("every voxel has NaN or inf responses")
        keep = ~bad  # documented handling (as in encoding): non-finite voxels are excluded and counted
        rois = {k: v[keep] for k, v in ctx.rois.items() if p["rois"] is None or k in p["rois"]}
        nc = ctx.noise_ceiling[keep] if ctx.noise_ceiling is not None else None
        val_nc = val_nc[keep] if val_nc is not None else None
        sel_metric = "median_nc_r2" if val_nc is not None else "median_r2"
        metric = "median_nc_r2" if nc is not None else "median_r2"
        fit_only = _only(ctx.features, ctx.fit.stim_ids)

        val_tab, test_tab, voxel_r, test_voxel, alphas = {}, {}, [], [], []
        for i, layer in enumerate(layers):
            # 1. selection: fit-split stimuli only
            _, pred = fit_ridge(p, ctx, fit_only(sub.stim_ids, layer), sub.averaged[:, keep],
                                fit_only(val.stim_ids, layer), backbone_source(ctx, layer), sub.stim_ids, keep=False)
            pv, scores, per_roi = encoding_scores(pred, val.averaged[:, keep], val_nc, rois, thr)
            val_tab[i] = {"all": scores, **{r["roi"]: r for r in per_roi}}
            voxel_r.append(pv["pearson_r"])
            # 2. scoring: refit on the whole fit split, score once
            model, pred = fit_ridge(p, ctx, ctx.features(ctx.fit.stim_ids, layer), ctx.fit.averaged[:, keep],
                                    ctx.features(ctx.score.stim_ids, layer), backbone_source(ctx, layer),
                                    ctx.fit.stim_ids, keep=False)
            pv, scores, per_roi = encoding_scores(pred, ctx.score.averaged[:, keep], nc, rois, thr)
            test_tab[i] = {"all": scores, **{r["roi"]: r for r in per_roi}}
            test_voxel.append(pv)
            alphas.append(model.best_alphas_.cpu().numpy())
        t2 = time.perf_counter()

        names = ["all", *rois]
        choice = {r: _argmax([val_tab[i][r].get(sel_metric) for i in range(len(layers))]) for r in names}
        best = choice["all"]
        if best is None:
            raise DataError(f"layerwise_encoding: no layer has a validation {sel_metric} (no voxel above the "
                            "noise-ceiling threshold?)")
        per_roi = []
        for r in rois:
            k = choice[r]
            row = dict(test_tab[k][r]) if k is not None else {"roi": r}
            per_roi.append({**row, "layer": layers[k] if k is not None else None, "layer_index": k,
                            f"validation_{sel_metric}": val_tab[k][r].get(sel_metric) if k is not None else None})
        layer_scores = [{"roi": r, "layer": layer, "layer_index": i, "metric": metric,
                         "validation": val_tab[i][r].get(sel_metric), "test": test_tab[i][r].get(metric),
                         "selected": choice[r] == i}
                        for i, layer in enumerate(layers) for r in names]
        scores = {**test_tab[best]["all"], "best_layer_index": best, "n_layers": len(layers),
                  "n_voxels_nonfinite_excluded": int(bad.sum())}
        per_voxel = {**test_voxel[best], "best_alpha": alphas[best],
                     "best_layer_index": np.argmax(np.stack(voxel_r), 0).astype(np.float32)}
        if bad.any():  # scatter back to the full voxel index so sidecars align with the ROI masks
            per_voxel = {k: scatter(v, keep) for k, v in per_voxel.items()}
        details = {
            "layers": layers, "unmatched_layer_patterns": unmatched, "best_layer": layers[best],
            "best_layer_per_roi": {r: layers[choice[r]] if choice[r] is not None else None for r in names},
            "selection": f"per ROI, the layer with the highest {sel_metric} on a {p['validation_fraction']:.0%} "
                         f"validation part of the fit split ({len(val.stim_ids)} images; ridge fitted on the other "
                         f"{len(sub.stim_ids)}); noise ceiling {val_nc_source}",
            "layer_scores": "descriptive: test scores of every layer; the layers were chosen on validation only",
        }
        return TaskOutput(metric, scores, {"per_roi": per_roi, "layer_scores": layer_scores}, per_voxel,
                          {"timings": {"features_s": t1 - t0, "ridge_s": t2 - t1}, "details": details})
