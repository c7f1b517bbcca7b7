"""Encoding and retrieval metrics (reference formulas in DESIGN §6).

Encoding (Algonauts 2023 convention): per-voxel Pearson r between prediction and the
repeat-averaged response; negative r → 0; ``R² = r²``; normalised ``100·R²/NC`` clipped at
100; voxels whose noise ceiling is below a threshold are excluded from normalised summaries.
Both the Algonauts mean and the per-ROI median are reported, labelled.

Retrieval (MindEye-2 protocol): draw ``n_candidates`` test items without replacement,
L2-normalise flattened embeddings, cosine similarity, top-1; repeat ``n_trials`` times with a
fixed seed; mean and 95 % CI (normal approximation over trials, ``1.96·sd/√trials``).
``brain→image``: for each brain sample, is its own image the best of the candidate images.
``image→brain``: for each image, is its own brain sample the best of the candidate brains.
"""
from __future__ import annotations

import numpy as np

from brainharness.errors import DataError
from brainharness.registry import register_metric


def _check_pair(pred: np.ndarray, actual: np.ndarray) -> None:
    if pred.shape != actual.shape:
        raise DataError(f"prediction shape {pred.shape} differs from response shape {actual.shape}")


@register_metric("pearson_r")
def pearson_r(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per-column Pearson r (0 where either column is constant)."""
    _check_pair(pred, actual)
    p = pred - pred.mean(0)
    a = actual - actual.mean(0)
    denom = np.sqrt((p * p).sum(0) * (a * a).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * a).sum(0) / denom
    return np.where(denom > 0, r, 0.0).astype(np.float32)


@register_metric("r2")
def coefficient_of_determination(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per-column coefficient of determination 1 − SSE/SST (can be negative)."""
    _check_pair(pred, actual)
    sse = ((actual - pred) ** 2).sum(0)
    sst = ((actual - actual.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1 - sse / sst, 0.0).astype(np.float32)


@register_metric("nc_r2")
def normalised_r2(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """``100·max(r,0)²/NC`` per voxel (NC in %), clipped to [0, 100]; NaN where NC ≤ 0."""
    r2 = np.clip(r, 0, None) ** 2
    nc = np.asarray(noise_ceiling, dtype=np.float64) / 100.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(nc > 0, 100.0 * r2 / nc, np.nan)
    return np.clip(out, 0, 100).astype(np.float32)


def encoding_scores(pred: np.ndarray, actual: np.ndarray, noise_ceiling: np.ndarray | None,
                    rois: dict[str, np.ndarray], nc_threshold: float = 10.0):
    """Per-voxel arrays, whole-brain scores and one per-ROI row each.

    Returns ``(per_voxel, scores, per_roi)``. Without a noise ceiling the normalised entries
    are absent (never zero) and raw ``r2`` summaries are still reported.
    """
    r = pearson_r(pred, actual)
    per_voxel = {"pearson_r": r, "r2": np.clip(r, 0, None) ** 2, "cod": coefficient_of_determination(pred, actual)}
    if noise_ceiling is not None:
        per_voxel["noise_ceiling"] = np.asarray(noise_ceiling, dtype=np.float32)
        per_voxel["nc_r2"] = normalised_r2(r, noise_ceiling)
        kept = per_voxel["noise_ceiling"] > nc_threshold
    else:
        kept = np.ones(len(r), dtype=bool)

    def summary(mask: np.ndarray) -> dict:
        row = {"n_voxels": int(mask.sum()), "mean_r2": _stat(np.mean, per_voxel["r2"][mask]),
               "median_r2": _stat(np.median, per_voxel["r2"][mask])}
        if noise_ceiling is not None:
            sel = mask & kept
            row.update(n_voxels_kept=int(sel.sum()), mean_nc_r2=_stat(np.mean, per_voxel["nc_r2"][sel]),
                       median_nc_r2=_stat(np.median, per_voxel["nc_r2"][sel]),
                       median_noise_ceiling=_stat(np.median, per_voxel["noise_ceiling"][sel]))
        return row

    scores = summary(np.ones(len(r), dtype=bool))
    scores["nc_threshold"] = float(nc_threshold) if noise_ceiling is not None else None
    per_roi = [{"roi": name, **summary(mask)} for name, mask in rois.items()]
    return per_voxel, scores, per_roi


def _stat(fn, values: np.ndarray) -> float | None:
    return float(fn(values)) if values.size else None  # empty selection: missing, not 0


@register_metric("top1")
def top1_retrieval(queries: np.ndarray, candidates: np.ndarray, n_candidates: int = 300,
                   n_trials: int = 30, seed: int = 0, per_item: bool = False) -> dict:
    """Top-1 accuracy of finding row i of ``candidates`` for row i of ``queries``.

    ``queries`` and ``candidates`` are paired (row i ↔ row i). For brain→image pass
    (brain embeddings, image embeddings); for image→brain pass them the other way round.
    ``per_item``: also ``item_hits`` — each query's hit rate over the trials it was drawn in
    (NaN if never drawn), the unit of :func:`paired_difference`.
    """
    q = _unit_rows(queries)
    c = _unit_rows(candidates)
    if len(q) != len(c):
        raise DataError(f"retrieval needs paired rows, got {len(q)} queries and {len(c)} candidates")
    return _top1_trials(len(q), lambda idx: q[idx] @ c[idx].T, n_candidates, n_trials, seed, per_item)


def top1_from_similarity(similarity: np.ndarray, n_candidates: int = 300, n_trials: int = 30, seed: int = 0,
                         per_item: bool = False) -> dict:
    """:func:`top1_retrieval` for a model's own similarity (e.g. BLIP-2's max over query tokens):
    ``similarity[i, j]`` scores query i against candidate j, the pair (i, i) is the match. The
    same seed draws the same candidate sets as :func:`top1_retrieval`."""
    sim = np.asarray(similarity)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise DataError(f"retrieval needs a square query × candidate similarity, got shape {sim.shape}")
    return _top1_trials(len(sim), lambda idx: sim[np.ix_(idx, idx)], n_candidates, n_trials, seed, per_item)


def top1_per_trial(similarity_of, n: int, n_candidates: int = 300, n_trials: int = 30, seed: int = 0,
                   per_item: bool = False) -> dict:
    """:func:`top1_from_similarity` for a similarity drawn anew each trial (e.g. a random caption
    of each candidate image per trial): ``similarity_of(idx)`` → the (query, candidate) matrix of
    the candidate set ``idx`` (n items in all); the same seed draws the same candidate sets."""
    return _top1_trials(n, similarity_of, n_candidates, n_trials, seed, per_item)


def _top1_trials(n: int, similarity, n_candidates: int, n_trials: int, seed: int, per_item: bool) -> dict:
    if n < n_candidates:
        raise DataError(f"retrieval needs at least {n_candidates} test items, got {n}")
    rng = np.random.default_rng(seed)
    accs = np.empty(n_trials)
    hits, drawn = np.zeros(n), np.zeros(n)
    for t in range(n_trials):
        idx = rng.choice(n, size=n_candidates, replace=False)
        hit = similarity(idx).argmax(1) == np.arange(n_candidates)  # row: query, column: candidate
        accs[t] = hit.mean()
        hits[idx] += hit
        drawn[idx] += 1
    half = 1.96 * accs.std(ddof=1) / np.sqrt(n_trials) if n_trials > 1 else float("nan")
    mean = float(accs.mean())
    out = {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n_candidates": n_candidates,
           "n_trials": n_trials, "chance": 1.0 / n_candidates, "seed": seed}
    if per_item:
        with np.errstate(invalid="ignore", divide="ignore"):
            out["item_hits"] = hits / drawn
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of ``a − b`` over items scored by both (e.g. per-image hit rates of two models on
    the same retrieval trials) with a 95 % CI over items (normal approximation): the items,
    not the resampled trials, are the independent units, so this CI is the one to compare
    two models with."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        raise DataError(f"a paired difference needs at least two items scored by both, got {len(d)}")
    mean, half = float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(len(d)))
    return {"delta": mean, "delta_ci_low": mean - half, "delta_ci_high": mean + half, "n_items": int(len(d))}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)
