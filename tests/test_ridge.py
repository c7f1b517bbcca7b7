"""brainharness.ridge.RidgeCV against scikit-learn, himalaya and brute-force references (tiny data)."""
import warnings

import numpy as np
import pytest
import torch

from brainharness.errors import ConfigError, DataError
from brainharness.ridge import Decomposition
from brainharness.ridge import RidgeCV as _RidgeCV

ALPHAS = np.logspace(-1, 4, 11)
F64 = torch.float64


def RidgeCV(*args, **kw):  # CPU even where CUDA exists: the assertions read tensors as numpy
    return _RidgeCV(*args, device="cpu", **kw)


def make(n, p, t=12, seed=0, n_test=15):
    """Features: low-rank signal + noise, with offsets; targets: a linear read-out of the features
    with SNR from 10^-2 to 10^2 across targets (so the best α differs between targets) + offsets."""
    rng = np.random.default_rng(seed)
    N = n + n_test
    X = rng.standard_normal((N, 4)) @ rng.standard_normal((4, p)) + rng.standard_normal((N, p)) + rng.standard_normal(p)
    S = X @ rng.standard_normal((p, t))
    S = (S - S.mean(0)) / S.std(0)
    Y = S * np.sqrt(np.logspace(-2, 2, t)) + rng.standard_normal((N, t)) + 5
    return X[:n], Y[:n], X[n:]


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


SHAPES = {"dual": (30, 60), "primal": (80, 20)}


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("shape", ["dual", "primal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loo_matches_sklearn(shape, fit_intercept, dtype):
    from sklearn.linear_model import RidgeCV as SkRidgeCV

    X, Y, Xt = make(*SHAPES[shape])
    sk = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True, fit_intercept=fit_intercept).fit(X, Y)
    h = RidgeCV(ALPHAS, cv="loo", fit_intercept=fit_intercept, dtype=dtype).fit(X, Y)
    assert h.decomposition_.mode == shape
    assert len(np.unique(sk.alpha_)) >= 3  # the test data really exercises per-target alphas
    np.testing.assert_allclose(h.best_alphas_.numpy(), sk.alpha_, rtol=1e-5)
    assert rel(h.predict(Xt), sk.predict(Xt)) < 1e-4
    assert rel(h.coef_.numpy(), sk.coef_.T) < 1e-4
    # exact LOO: the stored errors are sklearn's mean squared LOO residuals
    sk_err = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True, fit_intercept=fit_intercept,
                       store_cv_results=True).fit(X, Y).cv_results_.mean(0).T  # (alphas, t)
    np.testing.assert_allclose(h.cv_errors_.numpy(), sk_err, rtol=1e-3 if dtype == torch.float32 else 1e-8)


def brute_gcv(X, Y, alphas, fit_intercept):
    """Mean squared GCV error per alpha, from the explicit hat matrix."""
    n = X.shape[0]
    Xc = X - X.mean(0) if fit_intercept else X
    out = []
    for a in alphas:
        H = Xc @ np.linalg.solve(Xc.T @ Xc + a * np.eye(X.shape[1]), Xc.T)
        if fit_intercept:
            H = H + np.ones((n, n)) / n
        R = Y - H @ Y
        out.append((R ** 2).mean(0) / (1 - np.trace(H) / n) ** 2)
    return np.array(out)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("shape", ["dual", "primal"])
def test_gcv_matches_brute_force_hat_matrix(shape, fit_intercept):
    X, Y, _ = make(*SHAPES[shape], seed=1)
    h = RidgeCV(ALPHAS, cv="gcv", fit_intercept=fit_intercept, dtype=F64).fit(X, Y)
    ref = brute_gcv(X, Y, ALPHAS, fit_intercept)
    np.testing.assert_allclose(h.cv_errors_.numpy(), ref, rtol=1e-6)  # GCV near interpolation is ill-conditioned
    np.testing.assert_array_equal(h.best_alphas_.numpy(), ALPHAS[ref.argmin(0)])
    assert len(np.unique(ALPHAS[ref.argmin(0)])) >= 3
    # and the refit is plain ridge at each target's alpha
    from sklearn.linear_model import Ridge

    j = 0
    r = Ridge(alpha=float(h.best_alphas_[j]), fit_intercept=fit_intercept).fit(X, Y[:, j])
    np.testing.assert_allclose(h.coef_[:, j].numpy(), r.coef_, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("shape", ["dual", "primal"])
def test_kfold_matches_brute_force_sklearn_ridge(shape, fit_intercept, k):
    from sklearn.linear_model import Ridge

    n, p = {"dual": (30, 60), "primal": (75, 20)}[shape]  # n divisible by k: folds unambiguous
    X, Y, _ = make(n, p, seed=2)
    h = RidgeCV(ALPHAS, cv=k, fit_intercept=fit_intercept, dtype=F64).fit(X, Y)
    sse = np.zeros((len(ALPHAS), Y.shape[1]))
    for val in np.array_split(np.arange(n), k):  # contiguous folds, in sample order
        tr = np.setdiff1d(np.arange(n), val)
        for i, a in enumerate(ALPHAS):
            pred = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[tr], Y[tr]).predict(X[val])
            sse[i] += ((Y[val] - pred) ** 2).sum(0)
    np.testing.assert_allclose(h.cv_errors_.numpy(), sse / n, rtol=1e-7)
    np.testing.assert_array_equal(h.best_alphas_.numpy(), ALPHAS[sse.argmin(0)])


def test_kfold_folds_match_sklearn_kfold_when_n_not_divisible():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    X, Y, _ = make(33, 60, seed=2)  # 33 % 5 == 3
    h = RidgeCV(ALPHAS, cv=5, dtype=F64).fit(X, Y)
    mse = np.zeros((len(ALPHAS), Y.shape[1]))
    for tr, val in KFold(5).split(X):  # mean over folds of each fold's MSE (himalaya's criterion)
        for i, a in enumerate(ALPHAS):
            mse[i] += ((Y[val] - Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[val])) ** 2).mean(0) / 5
    np.testing.assert_allclose(h.cv_errors_.numpy(), mse, rtol=1e-7)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("shape", ["dual", "primal", "dual-uneven", "primal-uneven"])
def test_kfold_matches_himalaya_kernel_ridge_cv(shape, fit_intercept):
    """himalaya KernelRidgeCV(cv=5): KFold in order, alpha per target maximising the mean over folds of
    -MSE (l2_neg_loss), the harness criterion too, also with folds of unequal size."""
    pytest.importorskip("himalaya")
    from himalaya.backend import get_backend, set_backend
    from himalaya.kernel_ridge import KernelRidgeCV

    # n % 5 != 0 in the "uneven" cases: folds of 7 and 6 (scikit-learn KFold, also the harness's)
    n, p = {"dual": (30, 60), "primal": (75, 20), "dual-uneven": (33, 60), "primal-uneven": (77, 20)}[shape]
    X, Y, Xt = make(n, p, seed=3)
    previous = get_backend().name
    set_backend("numpy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hm = KernelRidgeCV(alphas=ALPHAS, cv=5, fit_intercept=fit_intercept, warn=False).fit(X, Y)
        ref_pred, ref_alpha = np.asarray(hm.predict(Xt)), np.asarray(hm.best_alphas_)
    finally:
        set_backend(previous)
    h = RidgeCV(ALPHAS, cv=5, fit_intercept=fit_intercept, dtype=F64).fit(X, Y)
    assert len(np.unique(ref_alpha)) >= 2
    np.testing.assert_allclose(h.best_alphas_.numpy(), ref_alpha, rtol=1e-10)
    assert rel(h.predict(Xt), ref_pred) < 1e-4


def _correlated(n=120, p=300, t=40, n_test=30, seed=5):
    """Features with a power-law spectrum (column j scaled by (1+j)^-1.5) plus offsets: the fold
    kernels' condition numbers are far beyond float32's precision for small α."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_test, p)) * (1.0 + np.arange(p)) ** -1.5 + rng.standard_normal(p)
    Y = X @ rng.standard_normal((p, t)) * np.logspace(-1, 1, t) + rng.standard_normal((n + n_test, t)) + 2
    return X[:n].astype(np.float32), Y[:n].astype(np.float32), X[n:].astype(np.float32)


def test_kfold_float32_matches_float64_sklearn_selection_on_correlated_features(monkeypatch):
    """float32 K-fold (eigenpairs in float32 where the spectrum allows, float64 Cholesky per α
    elsewhere) picks scikit-learn's float64 K-fold α and predicts within 1e-4 of a float64 fit;
    float32 eigenpairs alone would not (the test would catch dropping the fallback)."""
    import brainharness.ridge as ridge
    from sklearn.linear_model import Ridge

    alphas = np.logspace(-6, 2, 9)
    X, Y, Xt = _correlated()
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    mse = np.zeros((len(alphas), Y.shape[1]))
    for val in np.array_split(np.arange(len(X)), 5):
        tr = np.setdiff1d(np.arange(len(X)), val)
        for i, a in enumerate(alphas):
            pred = Ridge(alpha=a, solver="cholesky").fit(X64[tr], Y64[tr]).predict(X64[val])
            mse[i] += ((Y64[val] - pred) ** 2).mean(0) / 5
    ref = RidgeCV(alphas, cv=5, dtype=F64).fit(X64, Y64)
    np.testing.assert_array_equal(ref.best_alphas_.numpy(), alphas[mse.argmin(0)])
    h = RidgeCV(alphas, cv=5).fit(X, Y)
    np.testing.assert_allclose(h.cv_errors_.numpy(), mse, rtol=1e-4)
    np.testing.assert_allclose(h.best_alphas_.numpy(), alphas[mse.argmin(0)], rtol=1e-6)
    assert rel(h.predict(Xt), ref.predict(Xt.astype(np.float64))) < 1e-4
    monkeypatch.setattr(ridge, "FOLD_EIG_TOL", float("inf"))  # float32 eigenpairs for every α
    plain = RidgeCV(alphas, cv=5).fit(X, Y)
    assert np.abs(plain.cv_errors_.numpy() / mse - 1).max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", ["dual", "primal"])
def test_kfold_refit_equals_sklearn_ridge_per_alpha_group(shape, dtype, monkeypatch):
    """The K-fold refit (one Cholesky of G + αI per distinct chosen α, targets grouped by α, no
    eigendecomposition) equals scikit-learn's float64 Ridge fitted on each group of targets at
    its α; so does the eigendecomposition refit used when too many distinct α were chosen."""
    import brainharness.ridge as ridge
    from sklearn.linear_model import Ridge

    if shape == "dual":  # ill-conditioned fold kernels: float32 and float64 factors both in use
        X, Y, Xt = _correlated(t=30)
        alphas = np.logspace(-6, 2, 9)
    else:
        X, Y, Xt = (a.astype(np.float32) for a in make(80, 20, t=30, seed=7))
        alphas = ALPHAS[::2]  # 6 α: at most REFIT_CHOLESKY_MAX distinct choices
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    h = RidgeCV(alphas, cv=5, dtype=dtype).fit(X.astype(np_dtype), Y.astype(np_dtype))
    assert h.decomposition_.mode == shape and h.decomposition_.eigvals is None  # the Cholesky refit ran
    best = h.best_alphas_.numpy()
    groups = np.unique(best)
    assert 3 <= len(groups) <= ridge.REFIT_CHOLESKY_MAX
    ref_pred, ref_coef = np.empty((len(Xt), Y.shape[1])), np.empty((X.shape[1], Y.shape[1]))
    for a in groups:
        cols = best == a
        r = Ridge(alpha=float(a), solver="cholesky").fit(X.astype(np.float64), Y[:, cols].astype(np.float64))
        ref_pred[:, cols] = r.predict(Xt.astype(np.float64)).reshape(len(Xt), -1)
        ref_coef[:, cols] = r.coef_.reshape(cols.sum(), -1).T
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert rel(h.predict(Xt.astype(np_dtype)), ref_pred) < tol
    if shape == "primal" or dtype == F64:  # dual float32: tiny α on a null-ish spectrum, predictions only
        assert rel(h.coef_.numpy(), ref_coef) < 10 * tol
    monkeypatch.setattr(ridge, "REFIT_CHOLESKY_MAX", 0)  # force the eigendecomposition refit
    e = RidgeCV(alphas, cv=5, dtype=dtype).fit(X.astype(np_dtype), Y.astype(np_dtype))
    assert e.decomposition_.eigvals is not None
    np.testing.assert_array_equal(e.best_alphas_.numpy(), best)
    assert rel(e.predict(Xt.astype(np_dtype)), ref_pred) < tol


@pytest.mark.parametrize("cv", ["gcv", "loo", 3])
def test_decomposition_reuse_equals_fresh_fit(cv):
    X, Y, Xt = make(30, 60, seed=4)
    d = Decomposition.of(X, device="cpu")
    for grid in (ALPHAS, ALPHAS[::2] * 3.0):  # two different grids on the same decomposition
        fresh = RidgeCV(grid, cv=cv).fit(X, Y)
        reused = RidgeCV(grid, cv=cv).fit(X, Y, decomposition=d)
        assert reused.decomposition_ is d
        assert torch.equal(reused.cv_errors_, fresh.cv_errors_)
        assert torch.equal(reused.best_alphas_, fresh.best_alphas_)
        if cv == 3:  # a fresh K-fold fit refits by Cholesky per α; reuse: from the float64 eigenpairs
            assert rel(reused.predict(Xt), fresh.predict(Xt)) < 1e-5
            continue
        assert torch.equal(reused.coef_, fresh.coef_)
        np.testing.assert_array_equal(reused.predict(Xt), fresh.predict(Xt))


@pytest.mark.parametrize("cv", ["gcv", "loo", 3])
@pytest.mark.parametrize("shape", ["dual", "primal"])
def test_target_batching_equals_unbatched(cv, shape):
    X, Y, Xt = make(*SHAPES[shape], t=11, seed=5)
    whole = RidgeCV(ALPHAS, cv=cv, target_batch=None, dtype=F64).fit(X, Y)
    batched = RidgeCV(ALPHAS, cv=cv, target_batch=3, dtype=F64).fit(X, Y)  # 4 batches, the last partial
    assert len(np.unique(whole.best_alphas_.numpy())) >= 2
    torch.testing.assert_close(batched.cv_errors_, whole.cv_errors_, rtol=1e-12, atol=0)
    assert torch.equal(batched.best_alphas_, whole.best_alphas_)
    torch.testing.assert_close(batched.coef_, whole.coef_, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(batched.intercept_, whole.intercept_, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("where", ["X", "Y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_raises_data_error(where, bad):
    X, Y, _ = make(30, 60)
    (X if where == "X" else Y)[3, 2] = bad
    with pytest.raises(DataError, match=("features" if where == "X" else "targets") + " contains NaN or inf"):
        RidgeCV(ALPHAS).fit(X, Y)


def test_shape_mismatch_raises_data_error():
    X, Y, _ = make(30, 60)
    with pytest.raises(DataError, match="30 samples but targets have 29"):
        RidgeCV(ALPHAS).fit(X, Y[:-1])
    m = RidgeCV(ALPHAS).fit(X, Y)
    with pytest.raises(DataError, match="fitted on 60 features, got 59"):
        m.predict(X[:, :-1])


@pytest.mark.parametrize("alphas", [[], [0.0, 1.0], [-1.0], [np.nan], [np.inf], [1.0, np.nan]])
def test_bad_alphas_raise_config_error(alphas):
    X, Y, _ = make(30, 60)
    with pytest.raises(ConfigError, match="alphas must be finite and > 0"):
        RidgeCV(alphas).fit(X, Y)


@pytest.mark.parametrize("cv", ["kfold", "LOO", 1, 0, 31, True, 2.5, None])
def test_bad_cv_raises_config_error(cv):
    X, Y, _ = make(30, 60)
    with pytest.raises(ConfigError, match="cv must be"):
        RidgeCV(ALPHAS, cv=cv).fit(X, Y)


def test_bad_solver_raises_config_error_and_forced_solvers_agree():
    X, Y, Xt = make(30, 60)
    with pytest.raises(ConfigError, match="solver"):
        RidgeCV(ALPHAS, solver="qr").fit(X, Y)
    dual = RidgeCV(ALPHAS, cv="loo", solver="dual", dtype=F64).fit(X, Y)
    primal = RidgeCV(ALPHAS, cv="loo", solver="primal", dtype=F64).fit(X, Y)
    assert (dual.decomposition_.mode, primal.decomposition_.mode) == ("dual", "primal")
    assert torch.equal(dual.best_alphas_, primal.best_alphas_)
    assert rel(primal.predict(Xt), dual.predict(Xt)) < 1e-8


def test_predict_follows_input_type():
    X, Y, Xt = make(30, 60)
    m = RidgeCV(ALPHAS).fit(X, Y)
    out_np = m.predict(Xt)
    out_t = m.predict(torch.as_tensor(Xt))
    assert isinstance(out_np, np.ndarray) and out_np.shape == (Xt.shape[0], Y.shape[1])
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), out_np)
    expected = Xt @ m.coef_.double().numpy() + m.intercept_.double().numpy()
    np.testing.assert_allclose(out_np, expected, rtol=1e-4, atol=1e-4)
    # fitting from tensors gives the same model as from numpy
    mt = RidgeCV(ALPHAS).fit(torch.as_tensor(X), torch.as_tensor(Y))
    assert torch.equal(mt.best_alphas_, m.best_alphas_)
    torch.testing.assert_close(mt.coef_, m.coef_)


@pytest.mark.parametrize("shape", ["dual", "primal"])
def test_float32_matches_float64_at_small_alpha(shape):
    """float32 data with a float64 eigensolver stays accurate where α is small against the spectrum."""
    rng = np.random.default_rng(6)
    n, p = {"dual": (40, 120), "primal": (120, 30)}[shape]
    X = rng.standard_normal((n + 20, p)) * np.logspace(0, -1, p) + 1  # condition number ~100 in X
    Y = X @ rng.standard_normal((p, 5)) + 0.1 * rng.standard_normal((n + 20, 5))
    s_min = float(Decomposition.of(X[:n], device="cpu", dtype=F64).eigvals.min())
    small = [1e-3 * s_min]  # α small against every eigenvalue (one α: float32 cannot order LOO errors there)
    m64 = RidgeCV(small, cv="loo", dtype=F64).fit(X[:n], Y[:n])
    m32 = RidgeCV(small, cv="loo", dtype=torch.float32).fit(X[:n].astype(np.float32), Y[:n].astype(np.float32))
    assert m32.decomposition_.eigvals.numel() == m64.decomposition_.eigvals.numel()
    p64, p32 = m64.predict(X[n:]), m32.predict(X[n:])
    assert p32.dtype == np.float32
    assert 0 < rel(p32, p64) < 1e-4  # float32 differs (it is float32) but only by rounding
    assert rel(m32.coef_.double().numpy(), m64.coef_.numpy()) < 1e-3


def test_float32_keeps_the_small_but_real_directions_of_a_decaying_spectrum():
    from sklearn.linear_model import RidgeCV as SkRidgeCV

    rng = np.random.default_rng(0)
    n, p = 200, 400
    X = rng.standard_normal((n + 20, p)) / np.arange(1, p + 1) + 1  # power-law spectrum, full rank
    Y = X @ rng.standard_normal((p, 20)) + 0.3 * rng.standard_normal((n + 20, 20))
    alphas = np.logspace(-6, 0, 7)
    sk = SkRidgeCV(alphas=alphas, alpha_per_target=True).fit(X[:n], Y[:n])
    h = RidgeCV(alphas, cv="loo").fit(X[:n].astype(np.float32), Y[:n].astype(np.float32))
    assert rel(h.predict(X[n:].astype(np.float32)), sk.predict(X[n:])) < 1e-4
