import numpy as np
import pytest

from brainharness.errors import DataError
from brainharness.metrics import (
    encoding_scores,
    normalised_r2,
    paired_difference,
    pearson_r,
    top1_from_similarity,
    top1_retrieval,
)


def test_pearson_matches_numpy_and_handles_constant_columns():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    b[:, 3] = 1.0
    r = pearson_r(a, b)
    for j in range(3):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1], abs=1e-6)
    assert r[3] == 0


def test_normalised_r2_clips_negatives_and_at_100_and_marks_zero_nc():
    out = normalised_r2(np.array([-0.5, 0.5, 0.9, 0.5]), np.array([50.0, 50.0, 50.0, 0.0]))
    assert out[0] == 0
    assert out[1] == pytest.approx(50.0)  # 100 * 0.25 / 0.5
    assert out[2] == 100  # 0.81 / 0.5 > 1 → clipped
    assert np.isnan(out[3])


def test_encoding_scores_threshold_and_missing_roi():
    rng = np.random.default_rng(1)
    actual = rng.standard_normal((40, 6))
    pred = actual + rng.standard_normal((40, 6)) * np.array([0.1, 0.1, 1, 1, 3, 3])
    nc = np.array([80, 5, 80, 80, 80, 0.0])
    rois = {"A": np.array([1, 1, 0, 0, 0, 0], bool), "empty": np.zeros(6, bool)}
    per_voxel, scores, per_roi = encoding_scores(pred, actual, nc, rois, nc_threshold=10)
    assert scores["n_voxels_kept"] == 4
    kept = per_voxel["nc_r2"][[0, 2, 3, 4]]
    assert scores["median_nc_r2"] == pytest.approx(float(np.median(kept)))
    assert scores["mean_nc_r2"] == pytest.approx(float(np.mean(kept)))
    roi = {r["roi"]: r for r in per_roi}
    assert roi["A"]["n_voxels_kept"] == 1
    assert roi["A"]["median_nc_r2"] == pytest.approx(float(per_voxel["nc_r2"][0]))
    assert roi["empty"]["median_nc_r2"] is None  # missing, never 0


def test_top1_perfect_chance_and_direction():
    rng = np.random.default_rng(2)
    img = rng.standard_normal((320, 16))
    perfect = top1_retrieval(img + 0.01 * rng.standard_normal(img.shape), img, n_trials=5)
    assert perfect["mean"] == 1.0 and perfect["chance"] == pytest.approx(1 / 300)
    rand = top1_retrieval(rng.standard_normal((320, 16)), img, n_trials=30)
    assert rand["mean"] < 0.02 and rand["ci_low"] <= rand["mean"] <= rand["ci_high"]
    # Directions: every brain sample is closest to image 0 (a "hub"), so brain→image fails
    # for all but one query, while each image still finds its own brain sample.
    images = np.eye(300)
    brains = np.eye(300) + 2 * np.eye(300)[0]
    assert top1_retrieval(brains, images, n_trials=3)["mean"] == pytest.approx(1 / 300)
    assert top1_retrieval(images, brains, n_trials=3)["mean"] == 1.0


def test_top1_needs_enough_items():
    with pytest.raises(DataError, match="at least 300"):
        top1_retrieval(np.ones((10, 3)), np.ones((10, 3)))


def test_paired_difference_over_items():
    """Per-item hit rates average to the trial mean; the paired CI is over items and detects a
    better model that the per-model trial CIs alone do not compare."""
    rng = np.random.default_rng(3)
    img = rng.standard_normal((400, 32))
    good, bad = img + 1.2 * rng.standard_normal(img.shape), img + 1.6 * rng.standard_normal(img.shape)
    a = top1_retrieval(good, img, n_trials=20, per_item=True)
    b = top1_retrieval(bad, img, n_trials=20, per_item=True)
    drawn = np.isfinite(a["item_hits"])
    assert drawn.sum() > 300 and np.isnan(a["item_hits"][~drawn]).all()
    # every trial draws the same number of items, so the trial mean = the draw-weighted item mean
    assert a["mean"] > b["mean"]
    d = paired_difference(a["item_hits"], b["item_hits"])
    assert d["n_items"] == drawn.sum() and d["delta_ci_low"] > 0
    assert d["delta"] == pytest.approx(np.nanmean(a["item_hits"] - b["item_hits"]))
    same = paired_difference(a["item_hits"], a["item_hits"])
    assert same["delta"] == 0 and same["delta_ci_low"] == same["delta_ci_high"] == 0
    with pytest.raises(DataError, match="at least two items"):
        paired_difference(np.array([np.nan, 1.0]), np.array([0.0, np.nan]))


def test_top1_from_similarity_matches_the_embedding_version():
    """A model's own similarity matrix gives the embedding protocol's numbers (same seed, same draws)."""
    rng = np.random.default_rng(4)
    img = rng.standard_normal((350, 24))
    brain = img + 1.3 * rng.standard_normal(img.shape)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit(brain) @ unit(img).T
    a = top1_retrieval(brain, img, n_trials=7, seed=3, per_item=True)
    b = top1_from_similarity(sim, n_trials=7, seed=3, per_item=True)
    assert 0.05 < a["mean"] < 0.95 and a["mean"] == pytest.approx(b["mean"])
    np.testing.assert_array_equal(np.isnan(a["item_hits"]), np.isnan(b["item_hits"]))
    assert top1_from_similarity(sim.T, n_trials=7, seed=3)["mean"] == pytest.approx(
        top1_retrieval(img, brain, n_trials=7, seed=3)["mean"])
    with pytest.raises(DataError, match="square"):
        top1_from_similarity(sim[:, :300])
