"""The torch ridge against scikit-learn, brute force and itself (reuse, batching)."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.linear_model import RidgeCV as SkRidgeCV

from harness.errors import ConfigError, DataError
from harness.ridge import Decomposition, RidgeCV

ALPHAS = np.logspace(0, 6, 7)  # no near-ties at tiny α, where float32 cannot order the errors


def data(n, p, t=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, t)) + rng.standard_normal((n, t)) * np.linspace(3, 30, t) + 3.0
    Xt = rng.standard_normal((25, p))
    return X.astype(np.float32), Y.astype(np.float32), Xt.astype(np.float32)


@pytest.mark.parametrize("n, p", [(60, 150), (150, 40)])  # dual, primal
@pytest.mark.parametrize("intercept", [True, False])
def test_loo_equals_sklearn(n, p, intercept):
    X, Y, Xt = data(n, p)
    ours = RidgeCV(ALPHAS, cv="loo", fit_intercept=intercept, device="cpu").fit(X, Y)
    sk = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True, fit_intercept=intercept).fit(X.astype(float), Y.astype(float))
    np.testing.assert_allclose(ours.best_alphas_.numpy(), sk.alpha_, rtol=1e-6)
    a, b = ours.predict(Xt), sk.predict(Xt)
    assert np.abs(a - b).max() / np.abs(b).max() < 1e-4
    assert ours.decomposition_.mode == ("dual" if n < p else "primal")


def test_gcv_equals_brute_force_hat_matrix():
    X, Y, _ = data(40, 15, t=5)
    Xd, Yd = X.astype(float), Y.astype(float)
    Xc, Yc = Xd - Xd.mean(0), Yd - Yd.mean(0)
    n = len(X)
    expected = []
    for a in ALPHAS:
        H = np.ones((n, n)) / n + Xc @ np.linalg.solve(Xc.T @ Xc + a * np.eye(15), Xc.T)
        resid = Yc - (H - np.ones((n, n)) / n) @ Yc
        expected.append((resid ** 2).mean(0) / (1 - np.trace(H) / n) ** 2)
    model = RidgeCV(ALPHAS, cv="gcv", device="cpu").fit(X, Y)
    np.testing.assert_allclose(model.cv_errors_.numpy(), np.array(expected), rtol=2e-4)
    np.testing.assert_allclose(model.best_alphas_.numpy(), ALPHAS[np.argmin(expected, 0)], rtol=1e-6)


@pytest.mark.parametrize("n, p", [(50, 120), (100, 20)])
def test_kfold_equals_brute_force_loop(n, p):
    X, Y, _ = data(n, p, t=6)
    model = RidgeCV(ALPHAS, cv=5, device="cpu").fit(X, Y)
    bounds = np.linspace(0, n, 6).astype(int)
    expected = np.zeros((len(ALPHAS), 6))
    for i, a in enumerate(ALPHAS):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            val = np.zeros(n, bool)
            val[lo:hi] = True
            fit = Ridge(alpha=a).fit(X[~val].astype(float), Y[~val].astype(float))
            expected[i] += ((fit.predict(X[val].astype(float)) - Y[val]) ** 2).sum(0)
    np.testing.assert_allclose(model.cv_errors_.numpy(), expected / n, rtol=1e-3)


def test_decomposition_reuse_and_target_batching_change_nothing():
    X, Y, Xt = data(70, 90, t=30)
    fresh = RidgeCV(ALPHAS, device="cpu").fit(X, Y)
    d = Decomposition.of(X, device="cpu")
    reused = RidgeCV(ALPHAS, device="cpu").fit(X, Y, decomposition=d)
    batched = RidgeCV(ALPHAS, device="cpu", target_batch=7).fit(X, Y)
    for other in (reused, batched):
        np.testing.assert_array_equal(other.best_alphas_.numpy(), fresh.best_alphas_.numpy())
        np.testing.assert_allclose(other.predict(Xt), fresh.predict(Xt), rtol=1e-5, atol=1e-5)
    # a different grid on the same decomposition equals a fresh fit with that grid
    grid = [3.0, 300.0]
    np.testing.assert_allclose(RidgeCV(grid, device="cpu").fit(X, Y, decomposition=d).predict(Xt),
                               RidgeCV(grid, device="cpu").fit(X, Y).predict(Xt), rtol=1e-5, atol=1e-5)


def test_float64_agrees_with_float32_at_small_alpha():
    X, Y, Xt = data(80, 60)
    f32 = RidgeCV([1e-2], device="cpu").fit(X, Y).predict(Xt)
    f64 = RidgeCV([1e-2], device="cpu", dtype=torch.float64).fit(X, Y).predict(Xt)
    assert np.abs(f32 - f64).max() / np.abs(f64).max() < 1e-3


def test_numpy_in_numpy_out_tensor_in_tensor_out():
    X, Y, Xt = data(30, 10)
    m = RidgeCV(ALPHAS, device="cpu").fit(X, Y)
    assert isinstance(m.predict(Xt), np.ndarray)
    assert isinstance(m.predict(torch.as_tensor(Xt)), torch.Tensor)
    assert m.coef_.shape == (10, 12) and m.intercept_.shape == (12,)


def test_bad_inputs():
    X, Y, _ = data(30, 10)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(DataError, match="features contains NaN"):
        RidgeCV(device="cpu").fit(Xn, Y)
    with pytest.raises(DataError, match="30 samples but targets have 29"):
        RidgeCV(device="cpu").fit(X, Y[:29])
    with pytest.raises(ConfigError, match="alphas"):
        RidgeCV([0.0, 1.0], device="cpu").fit(X, Y)
    with pytest.raises(ConfigError, match="cv must be"):
        RidgeCV(cv="kfold", device="cpu").fit(X, Y)
    m = RidgeCV(device="cpu").fit(X, Y)
    with pytest.raises(DataError, match="fitted on 10 features"):
        m.predict(X[:, :5])
