"""The ridge read-out stage: one decomposition key from everything that changes the decomposition,
reuse across α grids, no reuse across feature-changing parameters (standardize, pca, rows, layer)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from brainharness import registry
from brainharness.data import Responses
from brainharness.errors import HarnessError
from brainharness.params import defaults
from brainharness.readout import RIDGE_PARAMS, backbone_source, decomposition_key, fit_ridge, scatter, voxel_source
from brainharness.runner import Runner
from brainharness.task import TaskContext

PIXELS = {"name": "pixels", "size": 8}
RIDGE = defaults(RIDGE_PARAMS)  # the ridge parameters' default values


def context(memo=None, fit_ids=range(40), evaluated_on="test") -> TaskContext:
    fit_ids = np.asarray(list(fit_ids))
    rng = np.random.default_rng(0)
    fit = Responses(fit_ids, rng.normal(size=(len(fit_ids), 5)).astype(np.float32))
    score = Responses(np.arange(100, 110), rng.normal(size=(10, 5)).astype(np.float32))
    return TaskContext("subj01", None, fit, score, {}, None, "none", evaluated_on, None,
                       registry.backbones.get("pixels")(size=4), device="cpu", memo={} if memo is None else memo)


def key(ctx=None, source=("backbone", "x"), fit_ids=None, **p):
    ctx = ctx or context()
    return decomposition_key({**RIDGE, **p}, ctx, source, ctx.fit.stim_ids if fit_ids is None else fit_ids)


def test_key_changes_with_every_feature_parameter_and_not_with_the_alpha_grid():
    ctx = context()
    base = key(ctx)
    assert key(ctx, standardize=False) != base
    assert key(ctx, pca=10) != base and key(ctx, pca=10) != key(ctx, pca=20)
    assert key(ctx, cv=5) != base and key(ctx, cv="loo") == base  # GCV and LOO keep the same decomposition
    # the same number of fit rows, other stimuli: a different decomposition
    assert key(ctx, fit_ids=np.arange(1, 41)) != base
    assert key(context(evaluated_on="validation")) != base
    assert key(ctx, source=backbone_source(ctx, "a")) != key(ctx, source=backbone_source(ctx, "b"))
    assert backbone_source(ctx, None) == backbone_source(ctx, "pixels")  # None = the backbone's own layer
    assert key(ctx, source=voxel_source(ctx, "V1")) != key(ctx, source=voxel_source(ctx, "V2"))
    assert voxel_source(ctx, "V1") != voxel_source(context(fit_ids=range(1, 41)), "V1")  # z-scored on other rows
    # the α grid and the CV fold count do not change the decomposition
    assert key(ctx, alpha_min=1.0, alpha_max=10.0, n_alphas=3) == base == key(ctx, alphas=[1.0, 2.0])
    assert key(ctx, cv=5) == key(ctx, cv=3)


def test_fit_ridge_reuses_across_alpha_grids_and_keep_false_leaves_nothing():
    rng = np.random.default_rng(1)
    X, Y, Xs = rng.normal(size=(40, 60)), rng.normal(size=(40, 7)), rng.normal(size=(10, 60))
    ctx = context()
    src = ("test-features",)
    _, first = fit_ridge({**RIDGE, "alpha_min": 1e-2}, ctx, X, Y, Xs, src, ctx.fit.stim_ids)
    [d] = ctx.memo.values()
    p2 = {**RIDGE, "alpha_min": 1e2, "n_alphas": 4}
    m2, pred = fit_ridge(p2, ctx, X, Y, Xs, src, ctx.fit.stim_ids)
    assert m2.decomposition_ is d and list(ctx.memo.values()) == [d]
    _, fresh = fit_ridge(p2, context(), X, Y, Xs, src, ctx.fit.stim_ids)
    np.testing.assert_allclose(pred, fresh, rtol=1e-5, atol=1e-6)
    assert not np.allclose(pred, first)  # the α grid did change the fit
    empty = context()
    fit_ridge(p2, empty, X, Y, Xs, src, empty.fit.stim_ids, keep=False)
    assert empty.memo == {}
    with pytest.raises(HarnessError, match="39 fit ids for 40 feature rows"):
        fit_ridge(p2, ctx, X, Y, Xs, src, ctx.fit.stim_ids[1:])


def test_scatter_puts_values_back_on_the_full_voxel_index():
    out = scatter(np.array([1.0, 2.0]), np.array([False, True, True]))
    assert out.dtype == np.float32 and np.isnan(out[0]) and out[1:].tolist() == [1.0, 2.0]


# -- through the runner, as a sweep runs its trials (one memo for every trial) ---------------------
@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("readout"), backbones=[PIXELS])
    return Runner(cfg, progress=False)


def trial(runner, memo, **overrides) -> dict:
    return runner.run_unit("subj01", PIXELS, {"name": "encoding"}, evaluated_on="validation", overrides=overrides,
                           experiment="trial", memo=memo, track=False)["scores"]


def decompositions(memo) -> dict:
    return {k: v for k, v in memo.items() if k[0] == "ridge-decomposition"}


def test_a_sweep_over_alpha_min_reuses_the_decomposition(runner):
    memo: dict = {}
    trial(runner, memo, alpha_min=1e-2)
    [first] = decompositions(memo).values()
    reused = trial(runner, memo, alpha_min=1e2)
    assert list(decompositions(memo).values()) == [first] and next(iter(decompositions(memo).values())) is first
    fresh = trial(runner, None, alpha_min=1e2)
    assert reused["median_r2"] == pytest.approx(fresh["median_r2"], rel=1e-5, abs=1e-7)
    assert reused["median_nc_r2"] == pytest.approx(fresh["median_nc_r2"], rel=1e-5, abs=1e-7)


def test_a_sweep_over_standardize_does_not_reuse_the_decomposition(runner):
    memo: dict = {}
    on = trial(runner, memo, standardize=True)
    off = trial(runner, memo, standardize=False)
    objects = list(decompositions(memo).values())
    assert len(objects) == 2 and objects[0] is not objects[1]
    assert off["median_r2"] != pytest.approx(on["median_r2"], rel=1e-3)
    fresh = trial(runner, None, standardize=False)
    assert off["median_r2"] == pytest.approx(fresh["median_r2"], rel=1e-5, abs=1e-7)
    assert off["mean_r2"] == pytest.approx(fresh["mean_r2"], rel=1e-5, abs=1e-7)
