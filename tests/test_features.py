import h5py
import numpy as np
import pytest

from brainharness.backbone import Backbone
from brainharness.data import Stimuli
from brainharness.features import FeatureCache, apply_readout, pca_readout


class Counting(Backbone):
    """Mean colour per image; counts the images it encoded and can fail after k batches."""

    registry_name = "counting"
    fail_after: int | None = None

    def __init__(self, scale: float = 1.0, **kw):
        self.scale, self.calls, self.encoded = scale, 0, 0
        super().__init__(batch_size=4, **kw)

    def layers(self):
        return ["mean", "max"]

    def identity(self):
        return {**super().identity(), "scale": self.scale}

    def encode(self, batch, layer):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.encoded += len(batch.ids)
        x = batch.images.reshape(len(batch.ids), -1, 3).astype(np.float32)
        return self.scale * (x.mean(1) if layer == "mean" else x.max(1))


def stimuli(n=18, fingerprint="tiny-v1"):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    return Stimuli(np.arange(100, 100 + n), lambda rows: imgs[rows], fingerprint=fingerprint)


def test_cache_hit_is_identical_and_skips_the_backbone(tmp_path):
    cache, stim, ids = FeatureCache(tmp_path), stimuli(), np.arange(100, 118)
    bb = Counting()
    first, info = cache.features(bb, stim, ids)
    assert info["cache"] == "miss" and bb.encoded == 18
    again, info2 = cache.features(bb, stim, ids)
    assert info2["cache"] == "hit" and bb.encoded == 18
    np.testing.assert_array_equal(first, again)
    expected = stim.images(ids).reshape(18, -1, 3).astype(np.float32).max(1)  # default layer = last
    np.testing.assert_allclose(first, expected)


@pytest.mark.parametrize("change", ["layer", "identity", "ids", "stimuli", "readout"])
def test_every_key_part_changes_the_key(tmp_path, change):
    cache, ids = FeatureCache(tmp_path), np.arange(100, 118)
    base = cache.key_parts(Counting(), stimuli(), ids, "mean")
    other = {
        "layer": lambda: cache.key_parts(Counting(), stimuli(), ids, "max"),
        "identity": lambda: cache.key_parts(Counting(scale=2.0), stimuli(), ids, "mean"),
        "ids": lambda: cache.key_parts(Counting(), stimuli(), ids[:-1], "mean"),
        "stimuli": lambda: cache.key_parts(Counting(), stimuli(fingerprint="tiny-v2"), ids, "mean"),
        "readout": lambda: cache.key_parts(Counting(readout="mean"), stimuli(), ids, "mean"),
    }[change]()
    assert other != base


def test_unknown_identity_is_not_cached(tmp_path):
    class Anonymous(Counting):
        def identity(self):
            return None

    cache = FeatureCache(tmp_path)
    bb = Anonymous()
    _, info = cache.features(bb, stimuli(), np.arange(100, 118))
    cache.features(bb, stimuli(), np.arange(100, 118))
    assert info["cache"].startswith("disabled") and bb.encoded == 36
    assert not list(tmp_path.rglob("*.h5"))


def test_interrupted_extraction_resumes_from_last_complete_batch(tmp_path):
    cache, stim, ids = FeatureCache(tmp_path), stimuli(), np.arange(100, 118)
    bb = Counting()
    bb.fail_after = 2  # two batches of 4 written, then interrupted
    with pytest.raises(KeyboardInterrupt):
        cache.features(bb, stim, ids)
    partial = list(tmp_path.rglob("*.partial"))
    assert len(partial) == 1 and not list(tmp_path.rglob("*.h5"))
    with h5py.File(partial[0]) as f:
        assert f.attrs["n_done"] == 8
    bb.fail_after = None
    feats, info = cache.features(bb, stim, ids)
    assert info["cache"] == "resumed at row 8"
    assert bb.encoded == 8 + 10  # only the missing rows were encoded
    fresh, _ = FeatureCache(tmp_path / "other").features(Counting(), stim, ids)
    np.testing.assert_array_equal(feats, fresh)
    assert cache.entries()[0]["complete"] and cache.clear() >= 1


def test_pca_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((50, 6)) * [5, 3, 1, 1, 1, 1]
    test = rng.standard_normal((20, 6)) * [1, 1, 1, 1, 1, 50]  # dominant axis only in test
    tr, (te,) = pca_readout(train, [test], 2)
    mean = train.mean(0)
    v = np.linalg.svd(train - mean, full_matrices=False)[2][:2].T  # exact PCA of train only
    expected = (test - mean) @ v
    for k in range(2):  # equal up to the sign of each component
        assert min(np.abs(te[:, k] - expected[:, k]).max(), np.abs(te[:, k] + expected[:, k]).max()) < 1e-3
    test_only = np.linalg.svd(test - test.mean(0), full_matrices=False)[2][0]
    assert abs(test_only[5]) > 0.99 and abs(v[5, 0]) < 0.3  # a test-fitted PCA would differ
    assert tr.shape == (50, 2)


def test_token_readouts():
    import torch

    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # cls + 2×2 patches
    assert torch.equal(apply_readout(tokens, "cls"), tokens[:, 0])
    assert torch.equal(apply_readout(tokens, "mean"), tokens[:, 1:].mean(1))
    assert apply_readout(tokens, "flatten").shape == (2, 15)
    grid = apply_readout(tokens, "grid", grid=1)
    assert torch.allclose(grid, tokens[:, 1:].mean(1))
