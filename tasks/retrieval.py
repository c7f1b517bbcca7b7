"""Brain ↔ image retrieval, stage 1: ridge from voxels to the backbone's image embedding.

Scored with the MindEye-2 protocol (300 candidates, 30 trials, mean and 95 % CI) in both
directions, named as in DESIGN §6: ``brain→image`` (each brain sample finds its own image
among the candidates) and ``image→brain`` (each image finds its own brain sample).
"""
from __future__ import annotations

import math
import re
import time

import numpy as np

from brainharness.errors import DataError
from brainharness.layout import MISSING, Intervals, Layout, Table, num
from brainharness.features import flatten_rows
from brainharness.metrics import top1_retrieval
from brainharness.metrics.bootstrap import images_digest
from brainharness.params import Param
from brainharness.readout import RIDGE_PARAMS, RIDGE_SPACE, check_ridge, fit_ridge, voxel_source
from brainharness.registry import register_task
from brainharness.task import Task, TaskContext, TaskOutput, standardise

DIRECTIONS = ("brain→image", "image→brain", "text→brain", "brain→text")


def direction_name(name) -> str | None:
    """Canonical retrieval direction (``brain→image`` …) of a table entry or score name
    (``b2i``, ``brain_to_image``, ``top1_brain->image`` …); None if it names none."""
    text = str(name).lower().replace("->", "→")
    text = re.sub(r"[\s_-]to[\s_-]", "→", text)
    text = re.sub(r"(?<=[a-z])2(?=[a-z])", "→", text)  # b2i, brain2image
    abbrev = {"i": "image", "b": "brain", "t": "text", "img": "image", "txt": "text", "fmri": "brain"}
    m = re.search(r"(?<![a-z])(image|brain|text|img|txt|fmri|[ibt])\s*→\s*(image|brain|text|img|txt|fmri|[ibt])(?![a-z])",
                  text)
    if not m:
        return None
    a, b = (abbrev.get(x, x) for x in m.groups())
    return f"{a}→{b}" if a != b else None


def chance_notes(records: list[dict]) -> list[str]:
    """One note per direction and protocol: chance level, candidates, trials."""
    protocols: dict[str, set] = {}
    for record in records:
        first: dict = {}
        for row in (record.get("tables") or {}).get("retrieval") or []:
            d = direction_name(row.get("direction", "")) if isinstance(row, dict) else None
            if d is not None and d not in first:
                first[d] = (row.get("n_candidates"), row.get("n_trials"), num(row.get("chance")))
        for d, p in first.items():
            protocols.setdefault(d, set()).add(p)
    notes = []
    for d in DIRECTIONS + tuple(sorted(set(protocols) - set(DIRECTIONS))):
        for n_cand, n_trials, chance in sorted(protocols.get(d, ()), key=str):
            chance_s = f"{chance:.4f}" if not math.isnan(chance) else MISSING
            notes.append(f"{d}: chance = {chance_s} ({n_cand} candidates, {n_trials} trials)")
    return notes


def chance_levels(records: list[dict], main: str | None) -> list[tuple[str, float]]:
    """Chance (1 / candidates) of the main direction, one level per protocol: a line on the bar
    plot, never a competing row."""
    d, levels = direction_name(main or ""), {}
    for record in records:
        for row in (record.get("tables") or {}).get("retrieval") or []:
            if isinstance(row, dict) and direction_name(row.get("direction", "")) == d:
                if not math.isnan(num(row.get("chance"))):
                    levels[f"chance ({row.get('n_candidates')} candidates)"] = num(row["chance"])
    return sorted(levels.items(), key=lambda kv: kv[1])


RETRIEVAL_TABLE = Table(
    name="retrieval", title="top-1 retrieval accuracy (mean ± half 95 % CI)",
    description="brain→image: for each brain sample, is its own image the best of the candidates; "
                "image→brain: for each image, is its own brain sample the best (seed 000's published "
                "I→B is image→brain and B→I brain→image: its code transposes the similarity)",
    columns=Intervals("retrieval", "direction", DIRECTIONS, direction_name), notes=chance_notes,
    levels=chance_levels)
"""Seed 000 Table 1: top-1 accuracy per direction, mean ± half 95 % CI (the CSV keeps mean /
ci_low / ci_high as numbers); a note per direction gives chance and the protocol."""


@register_task("retrieval")
class RetrievalTask(Task):
    direction = "brain→image"
    main_score = "brain→image"
    layout = Layout(RETRIEVAL_TABLE)
    example = {"backbone": {"name": "pixels", "size": 8}, "n_candidates": 50, "n_trials": 3}
    params = {**RIDGE_PARAMS, "alpha_min": Param(1e0, gt=0, doc="smallest α of the log grid"),
              "layer": Param(None, str, doc="backbone layer of the target embedding (null: the backbone's own)"),
              "roi": Param("nsdgeneral", str, nullable=True, doc="voxels used (null: every voxel)"),
              "n_candidates": Param(300, ge=2, doc="candidates per retrieval trial (MindEye-2: 300)"),
              "n_trials": Param(30, ge=2, doc="random candidate sets averaged"),
              "seed": Param(0, int, doc="seed of the candidate sets")}
    search_space = RIDGE_SPACE

    def check(self, p):
        check_ridge(self.owner(), p)

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
        model, pred = fit_ridge(params, ctx, B_fit, target_fit, B_score, voxel_source(ctx, self.p["roi"]),
                                ctx.fit.stim_ids)
        t2 = time.perf_counter()
        n = min(self.p["n_candidates"], len(pred))
        if n < self.p["n_candidates"]:
            raise DataError(f"retrieval: {len(pred)} scored images, fewer than n_candidates={self.p['n_candidates']}")
        kw = dict(n_candidates=n, n_trials=self.p["n_trials"], seed=self.p["seed"], per_item=True)
        rows = [{"direction": "brain→image", **top1_retrieval(pred, target_score, **kw)},
                {"direction": "image→brain", **top1_retrieval(target_score, pred, **kw)}]
        per_voxel = {"best_alpha": model.best_alphas_.cpu().numpy()}
        paired = [item_entry(r, ctx.score.stim_ids, per_voxel) for r in rows]
        scores = {r["direction"]: r["mean"] for r in rows}
        scores["n_voxels"] = int(mask.sum())
        scores["embedding_dim"] = int(target_fit.shape[1])
        return TaskOutput(self.main_score, scores, {"retrieval": rows, ITEMS_TABLE: paired}, per_voxel,
                          {"timings": {"features_s": t1 - t0, "ridge_s": t2 - t1}})


ITEMS_TABLE = "paired_items"
"""Record table naming, per direction, the sidecar array of per-test-item hit rates and what two
records must share to be compared item by item (the leaderboard's paired test vs the best row)."""


def item_entry(row: dict, stim_ids, per_voxel: dict) -> dict:
    """Move ``row``'s ``item_hits`` into ``per_voxel`` (key ``items_<from>_to_<to>``, ASCII) and
    return its :data:`ITEMS_TABLE` row: direction, test-image digest, protocol, sidecar key."""
    key = "items_" + row["direction"].replace("→", "_to_")
    per_voxel[key] = row.pop("item_hits")
    return {"score": row["direction"], "test_images": images_digest(stim_ids), "n_test_images": len(stim_ids),
            "seed": row["seed"], "n_candidates": row["n_candidates"], "n_trials": row["n_trials"],
            "sidecar_key": key}

