"""Uncertainty of encoding scores and paired comparisons between models (issue 17).

**Interval.** A bootstrap over test images: ``n_boot`` resamples of the test rows (with
replacement, drawn from ``seed``); in each, per-voxel Pearson r is recomputed on the resampled
rows and summarised exactly as the point estimate is (median over the voxels above the
noise-ceiling threshold of ``100·R²/NC``, or median R² without a ceiling). The interval is the
2.5–97.5 percentile of the resampled summaries; the point estimate is never replaced.

**Paired test.** Two records scored on the same test images with the same seed and ``n_boot``
drew the same resample indices, so their per-resample summaries are paired:
``d_k = a_k − b_k`` is the bootstrap distribution of the difference, and the two-sided p-value
is ``2·min(#(d ≤ 0)+1, #(d ≥ 0)+1)/(B+1)`` (capped at 1). Several rows against one best row
are corrected with Holm's step-down method (:func:`holm`). Retrieval records keep per-item hit
rates instead (same candidate sets when seed, candidates and trials match); they are compared by
a paired bootstrap over those items (:func:`paired_items_p`).
"""
from __future__ import annotations

import hashlib

import numpy as np

from brainharness.errors import DataError

from . import normalised_r2

LEVEL = 0.95
_CELLS_PER_BATCH = 4_000_000  # resamples × voxels held at once (≈ 16 MB per float32 array)


def images_digest(stim_ids) -> str:
    """Short digest of the ordered test image ids: two records compare only when these match."""
    return hashlib.sha256(np.asarray(stim_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _standardise_into(out: np.ndarray, x: np.ndarray) -> None:
    # Centre and scale each column once (r is invariant to both): the resampled moments are then
    # O(1) numbers and float32 matrix products lose nothing that matters for an interval.
    step = max(1, _CELLS_PER_BATCH // max(1, len(x)))  # columns at a time: no float64 copy of all of x
    for j in range(0, x.shape[1], step):
        block = np.array(x[:, j:j + step], dtype=np.float64)
        block -= block.mean(0)
        sd = block.std(0)
        block /= np.where(sd > 0, sd, 1.0)
        out[:, j:j + step] = block


def resampled_r(pred: np.ndarray, actual: np.ndarray, n_boot: int, seed: int):
    """Yield ``(first, r)`` per batch: per-voxel Pearson r (batch × voxels) on resamples
    ``first…`` of the test rows. Indices are drawn once from ``seed`` (batch size does not matter)."""
    if pred.shape != actual.shape:
        raise DataError(f"prediction shape {pred.shape} differs from response shape {actual.shape}")
    n, v = pred.shape
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    P, A = np.empty((n, v), dtype=np.float32), np.empty((n, v), dtype=np.float32)
    _standardise_into(P, pred)
    _standardise_into(A, actual)
    # the products P², A², PA are formed per batch, one at a time: 2 matrices held, not 5
    moments = (lambda: P, lambda: A, lambda: P * P, lambda: A * A, lambda: P * A)
    step = max(1, min(n_boot, _CELLS_PER_BATCH // max(v, 1)))
    for first in range(0, n_boot, step):
        b = min(step, n_boot - first)
        counts = np.bincount((idx[first:first + b] + n * np.arange(b)[:, None]).ravel(), minlength=b * n)
        w = counts.reshape(b, n).astype(np.float32) / n
        sp, sa, spp, saa, spa = (w @ m() for m in moments)
        var_p, var_a = spp - sp * sp, saa - sa * sa
        denom = np.sqrt(np.clip(var_p, 0, None) * np.clip(var_a, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 1e-12, (spa - sp * sa) / denom, 0.0)
        yield first, np.clip(r, -1.0, 1.0)


def encoding_bootstrap(pred: np.ndarray, actual: np.ndarray, noise_ceiling: np.ndarray | None,
                       rois: dict[str, np.ndarray], nc_threshold: float = 10.0, n_boot: int = 1000,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Per-resample main summary (``median_nc_r2``, or ``median_r2`` without a ceiling) for the
    whole brain (key ``""``) and each ROI (its name): ``{name: (n_boot,) float64}``, NaN where a
    selection has no voxel."""
    v = pred.shape[1]
    kept = np.asarray(noise_ceiling) > nc_threshold if noise_ceiling is not None else np.ones(v, dtype=bool)
    masks = {"": kept, **{name: np.asarray(m, dtype=bool) & kept for name, m in rois.items()}}
    out = {name: np.full(n_boot, np.nan) for name in masks}
    for first, r in resampled_r(pred, actual, n_boot, seed):
        value = normalised_r2(r, noise_ceiling) if noise_ceiling is not None else np.clip(r, 0, None) ** 2
        for name, mask in masks.items():
            if mask.any():
                out[name][first:first + len(r)] = np.median(value[:, mask], axis=1)
    return out


def interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap draws (None, None when there are none)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return None, None
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_bootstrap_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of ``a − b = 0`` from paired bootstrap draws (same resamples)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise DataError(f"paired bootstrap draws must be two vectors of one length, got {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if not d.size:
        raise DataError("paired bootstrap: no resample has both values")
    return float(min(1.0, 2 * min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (d.size + 1)))


def paired_items_p(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of ``mean(a) = mean(b)`` for per-item scores of two models on the same
    items (e.g. retrieval hit rates on the same trials): both means are recomputed on ``n_boot``
    resamples of the items scored by both, and the paired draws go to :func:`paired_bootstrap_p`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"paired item scores must be two vectors of one length, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    if not a.size:
        raise DataError("paired items: no item has both scores")
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    return paired_bootstrap_p(a[idx].mean(1), b[idx].mean(1))


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out
