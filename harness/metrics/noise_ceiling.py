"""Noise ceiling of repeat-averaged responses (NSD convention, Allen et al. 2022).

Betas are z-scored per voxel within each session; the noise variance is the mean over
images with exactly three trials of the ddof=1 variance across those trials; then
``ncsnr = sqrt(max(0, 1 - σ²)) / σ`` and, for an n-trial average,
``NC = 100 · ncsnr² / (ncsnr² + 1/n)``. With mixed repeat counts among the scored images
(A, B, C images with 3, 2, 1 trials) ``1/n`` becomes ``(A/3 + B/2 + C/1) / (A + B + C)``.
"""
from __future__ import annotations

import numpy as np

from brainharness.errors import DataError


def zscore_within_sessions(trials: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """z-score each voxel within each session (ddof=0). Constant voxels become 0."""
    trials = np.asarray(trials, dtype=np.float32)
    out = np.empty_like(trials)
    for s in np.unique(sessions):
        sel = sessions == s
        block = trials[sel]
        mu = block.mean(0)
        sd = block.std(0)
        out[sel] = np.where(sd > 0, (block - mu) / np.where(sd > 0, sd, 1), 0)
    return out


def ncsnr(trials: np.ndarray, trial_stim: np.ndarray, repeats: int = 3) -> np.ndarray:
    """Noise-ceiling SNR per voxel from z-scored single trials.

    Uses the images with exactly ``repeats`` trials (3 in NSD). Raises if there are none.
    """
    trials = np.asarray(trials)
    ids, inverse, counts = np.unique(trial_stim, return_inverse=True, return_counts=True)
    keep = counts[inverse] == repeats
    if not keep.any():
        raise DataError(f"no stimulus has exactly {repeats} trials: cannot estimate the noise ceiling")
    order = np.argsort(inverse[keep], kind="stable")
    grouped = trials[keep][order].astype(np.float64).reshape(-1, repeats, trials.shape[1])
    noise_var = grouped.var(axis=1, ddof=1).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.sqrt(np.clip(1.0 - noise_var, 0.0, None)) / np.sqrt(noise_var)
    return np.nan_to_num(snr, nan=0.0, posinf=0.0).astype(np.float32)


def inverse_repeats(counts) -> float:
    """The ``1/n`` term for scored images with the given trial counts (mixed-repeat formula)."""
    counts = np.asarray(counts)
    counts = counts[counts > 0]
    if counts.size == 0:
        raise DataError("no scored image has any trial")
    return float(np.mean(1.0 / counts))


def noise_ceiling(snr: np.ndarray, counts) -> np.ndarray:
    """Noise ceiling in % of explainable variance for averages over ``counts`` trials.

    ``counts`` is an int (every image averaged over n trials) or the per-image trial counts.
    """
    inv_n = 1.0 / counts if np.isscalar(counts) else inverse_repeats(counts)
    snr2 = np.asarray(snr, dtype=np.float64) ** 2
    return (100.0 * snr2 / (snr2 + inv_n)).astype(np.float32)
