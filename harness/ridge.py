"""Multi-target ridge regression with a per-target α, in torch (CPU or CUDA).

One eigendecomposition serves every α and every target:

* dual form (n_samples < n_features): ``K = Xc Xcᵀ = U diag(s) Uᵀ``;
* primal form otherwise: ``Xcᵀ Xc = V diag(s) Vᵀ`` and ``U = Xc V diag(s^-½)``.

With ``Q = Uᵀ Yc`` the in-sample residual for α is ``U diag(α/(s+α)) Q`` (plus the part of
``Yc`` outside span(U)), so per α exact GCV costs O(n·t) and exact leave-one-out one
n×k×t product. The intercept is unpenalised: X and Y are centred and the hat matrix gains
``1/n`` on its diagonal (this is what scikit-learn's ``RidgeCV`` does, so LOO agrees with it).
The refit needs no grouping by α: ``W = Xcᵀ U (Q ⊙ 1/(s+α_t))`` (dual) or
``V (Q ⊙ √s/(s+α_t))`` (primal), computed per target batch.

K-fold CV needs no decomposition of the whole training set: its folds come from one Gram
matrix, and the refit solves ``(G + αI) S = R`` by one Cholesky per distinct chosen α (targets
grouped by α; a Cholesky costs a 6th to a 24th of an eigendecomposition), falling back to the
eigendecomposition when more than ``REFIT_CHOLESKY_MAX`` distinct α were chosen.

The :class:`Decomposition` is reusable: a sweep over α ranges on fixed features computes it
once (``RidgeCV(...).fit(X, Y, decomposition=d)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, DataError

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-2, 7, 10))
DTYPE = torch.float32  # fits, predictions and per-α errors (recorded in results' provenance)
EIG_DTYPE = torch.float64  # Gram matrix and eigensolver (see Decomposition.of)
BATCH_BYTES = 64 * 2 ** 20  # one n × target-batch float32 temporary of the GCV/LOO pass and refit
GRAM_BLOCK_BYTES = 64 * 2 ** 20  # float64 copy of the features held at once while forming the Gram


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_tensor(a, device, dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(a), device=device, dtype=dtype)


def _check_finite(name: str, t: torch.Tensor) -> None:
    step = max(1, 2 ** 22 // max(1, t[0].numel()))  # rows per check (isfinite makes float temporaries)
    for start in range(0, t.shape[0], step):
        part = t[start:start + step]
        if not torch.isfinite(part).all():
            bad = (~torch.isfinite(part)).nonzero()[0].tolist()
            bad[0] += start
            raise DataError(f"{name} contains NaN or inf (first at index {bad}); clean or drop those columns first")


@dataclass
class Decomposition:
    """Eigendecomposition of the centred training features, reusable across α and targets.

    ``eigvals``/``eigvecs`` are None until :meth:`eigen` computes them (a K-fold fit builds the
    Decomposition without them: it needs only the Gram matrix)."""

    mode: str  # "dual" or "primal"
    X_mean: torch.Tensor  # (p,)
    Xc: torch.Tensor  # (n, p) centred features (needed for the dual refit and primal U)
    eigvals: torch.Tensor | None  # (k,) ≥ 0
    eigvecs: torch.Tensor | None  # dual: U (n, k); primal: V (p, k)
    fit_intercept: bool
    gram: torch.Tensor | None = None  # float64 Gram (dual Xc Xcᵀ, primal Xcᵀ Xc), kept only on request
    eig_dtype: torch.dtype = EIG_DTYPE

    @property
    def n_samples(self) -> int:
        return self.Xc.shape[0]

    def left_vectors(self) -> torch.Tensor:
        """U (n, k): orthonormal left singular vectors of Xc (zero columns where s = 0)."""
        if self.mode == "dual":
            return self.eigvecs
        inv_sqrt = torch.where(self.eigvals > 0, self.eigvals.clamp_min(1e-30).rsqrt(), torch.zeros_like(self.eigvals))
        return (self.Xc @ self.eigvecs) * inv_sqrt

    def gram_matrix(self) -> torch.Tensor:
        """The kept Gram matrix, or a fresh one (``eig_dtype``): ``Xc Xcᵀ`` (dual) or ``Xcᵀ Xc`` (primal)."""
        if self.gram is not None:
            return self.gram
        # Gram matrix and eigensolver in float64: with correlated features the small eigenvalues
        # (where α acts) sit far below the large ones; a float32 Gram blurs them into the null
        # space of the centring. The O(n·t) and O(n·k·t) work per α and target stays in ``dtype``.
        # G = Bᵀ B summed over row blocks of B (Xc primal, Xcᵀ dual): no float64 copy of all of Xc.
        B = self.Xc if self.mode == "primal" else self.Xc.T
        G = torch.zeros(B.shape[1], B.shape[1], dtype=self.eig_dtype, device=B.device)
        step = max(64, GRAM_BLOCK_BYTES // (8 * B.shape[1]))
        for start in range(0, B.shape[0], step):
            block = B[start:start + step].to(self.eig_dtype)
            G.addmm_(block.T, block)
        return G

    def eigen(self, min_alpha: float | None = None) -> "Decomposition":
        """Compute the eigenpairs if missing. ``min_alpha``: the smallest α the fit will use, if
        known; then a dual decomposition is first tried in the features' dtype and kept if its
        error bound allows that α (see ``_fold_solvers``)."""
        if self.eigvals is not None:
            return self
        gram, dtype = self.gram_matrix(), self.Xc.dtype
        s = None
        if min_alpha is not None and self.mode == "dual" and dtype != self.eig_dtype:
            s, vecs = _eig(gram.to(dtype), dtype)
            if _eig_error_bound(s, dtype, min_alpha) > FOLD_EIG_TOL:
                s = None  # too ill-conditioned for ``dtype``: decompose in ``eig_dtype``
        if s is None:
            s, vecs = _eig(gram, dtype)
        self.eigvals, self.eigvecs = s, vecs
        return self

    @classmethod
    def of(cls, X, *, fit_intercept: bool = True, solver: str = "auto", device=None,
           dtype=DTYPE, eig_dtype=EIG_DTYPE, keep_gram: bool = False,
           min_alpha: float | None = None, eigen: bool = True, overwrite_X: bool = False) -> "Decomposition":
        """``eigen=False``: only centre (and with ``keep_gram`` compute the Gram matrix); the
        eigenpairs follow on demand (:meth:`eigen`). ``min_alpha``: see :meth:`eigen`.
        ``overwrite_X``: centre ``X`` in place when it is already a ``dtype`` array on ``device``
        (the caller's array then holds the centred features)."""
        device = resolve_device(device)
        X = _as_tensor(X, device, dtype)
        if X.ndim != 2:
            raise DataError(f"features must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
        _check_finite("features", X)
        n, p = X.shape
        mode = ("dual" if n < p else "primal") if solver == "auto" else solver
        if mode not in ("dual", "primal"):
            raise ConfigError(f"ridge solver must be 'auto', 'dual' or 'primal', got {solver!r}")
        X_mean = X.mean(0) if fit_intercept else torch.zeros(p, device=device, dtype=dtype)
        d = cls(mode, X_mean, X.sub_(X_mean) if overwrite_X else X - X_mean, None, None, fit_intercept,
                eig_dtype=eig_dtype)
        if keep_gram or eigen:
            d.gram = d.gram_matrix()
        if eigen:
            d.eigen(min_alpha)
        if not keep_gram:
            d.gram = None
        return d


def _eig(gram: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a (float64) Gram matrix without its null space, cast to ``dtype``."""
    s, vecs = torch.linalg.eigh(gram)
    # Null space only: directions below the input precision (e.g. the centring direction). A
    # tolerance scaled by max(n, p) once dropped real directions (2 % error vs scikit-learn).
    tol = s.max().clamp_min(0) * torch.finfo(dtype).eps
    keep = s > tol  # drop the null space: it carries no fit and only costs time
    return s[keep].to(dtype), vecs[:, keep].to(dtype)


class RidgeCV:
    """Ridge regression with one α per target chosen by GCV, exact LOO or K-fold CV.

    scikit-learn style: ``fit(X, Y)`` then ``predict(X)``; fitted state ``coef_`` (p, t),
    ``intercept_`` (t,), ``best_alphas_`` (t,), ``cv_errors_`` (n_alphas, t; mean squared
    CV error per α), ``decomposition_``. Inputs may be numpy arrays or torch tensors;
    outputs of ``predict`` follow the input type.

    Parameters
    ----------
    alphas : candidate regularisation strengths.
    cv : ``"gcv"`` (default), ``"loo"`` (exact leave-one-out, as scikit-learn's RidgeCV),
         or an int K for K-fold CV in sample order (as himalaya's ``KernelRidgeCV(cv=K)``).
    solver : ``"auto"`` (dual when n_samples < n_features), ``"dual"``, ``"primal"``.
    target_batch : targets per batch (bounds memory; None = all at once).
    device : ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, cv="gcv", fit_intercept=True, solver="auto",
                 target_batch: int | None = 4096, device="auto", dtype=DTYPE):
        self.alphas = alphas
        self.cv = cv
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.target_batch = target_batch
        self.device = device
        self.dtype = dtype

    # -- validation ------------------------------------------------------------------
    def _alphas(self, device) -> torch.Tensor:
        alphas = torch.as_tensor(np.atleast_1d(np.asarray(self.alphas, dtype=np.float64)), device=device)
        if alphas.numel() == 0 or not torch.isfinite(alphas).all() or (alphas <= 0).any():
            raise ConfigError(f"ridge alphas must be finite and > 0, got {self.alphas!r}")
        return alphas.to(self.dtype)

    def _check_cv(self, n: int):
        if self.cv in ("gcv", "loo"):
            return self.cv
        if isinstance(self.cv, (int, np.integer)) and not isinstance(self.cv, bool) and 2 <= self.cv <= n:
            return int(self.cv)
        raise ConfigError(f"ridge cv must be 'gcv', 'loo' or an int K in [2, n_samples], got {self.cv!r}")

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X, Y, decomposition: Decomposition | None = None, overwrite_X: bool = False) -> "RidgeCV":
        """``overwrite_X``: ``X`` (a float32 array or tensor the caller no longer needs) may be
        centred in place, saving a copy of the features (see :meth:`Decomposition.of`)."""
        device = resolve_device(self.device) if decomposition is None else decomposition.Xc.device
        kfold = self.cv not in ("gcv", "loo")  # GCV/LOO read every α from one decomposition: always float64
        d = decomposition or Decomposition.of(X, fit_intercept=self.fit_intercept, solver=self.solver, device=device,
                                               dtype=self.dtype, keep_gram=kfold, eigen=not kfold,
                                               overwrite_X=overwrite_X)
        Y = _as_tensor(Y, device, self.dtype)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.shape[0] != d.n_samples:
            raise DataError(f"features have {d.n_samples} samples but targets have {Y.shape[0]}")
        _check_finite("targets", Y)
        cv = self._check_cv(d.n_samples)
        alphas = self._alphas(device)
        Y_mean = Y.mean(0) if d.fit_intercept else torch.zeros(Y.shape[1], device=device, dtype=self.dtype)
        p = d.Xc.shape[1]
        coef = torch.empty(p, Y.shape[1], device=device, dtype=self.dtype)
        # targets per batch: at most target_batch, and a batch's n × batch temporaries ≤ BATCH_BYTES each
        step = max(256, min(self.target_batch or Y.shape[1], BATCH_BYTES // (4 * d.n_samples)))
        refitted = False
        if isinstance(cv, int):
            # one Gram for the folds (dual) and the Cholesky refit; dropped after this fit
            gram = d.gram_matrix() if d.mode == "dual" or d.eigvals is None else None
            d.gram = None
            errors = self._kfold_errors(X, Y, cv, alphas, device, d.fit_intercept, d.mode, gram)
            chosen = errors.argmin(0)
            if d.eigvals is None:
                refitted = _cholesky_refit(d, gram, Y, Y_mean, chosen, alphas, coef, step)
                if not refitted:
                    d.gram = gram  # the eigendecomposition below reuses it
                    d.eigen(min_alpha=float(alphas[chosen.unique()].min()))
                    d.gram = None
            del gram
        else:
            errors = torch.empty(len(alphas), Y.shape[1], device=device, dtype=self.dtype)
            d.eigen()  # no-op unless the decomposition came from a K-fold fit
        if not refitted:
            U = d.left_vectors()
            for start in range(0, Y.shape[1], step):
                sl = slice(start, start + step)
                Yc = Y[:, sl] - Y_mean[sl]
                Q = U.T @ Yc
                if not isinstance(cv, int):
                    errors[:, sl] = _efficient_cv_errors(d, U, Q, Yc, alphas, loo=(cv == "loo"))
                del Yc  # the refit needs only Q, scaled in place (peak memory: one batch's worth less)
                Q.mul_(1.0 / (d.eigvals[:, None] + alphas[errors[:, sl].argmin(0)][None, :]))
                if d.mode == "dual":
                    coef[:, sl] = d.Xc.T @ (U @ Q)
                else:
                    coef[:, sl] = d.eigvecs @ Q.mul_(d.eigvals.sqrt()[:, None])
        self.decomposition_ = d
        self.cv_errors_ = errors
        self.best_alphas_ = alphas[errors.argmin(0)]
        self.coef_ = coef
        self.intercept_ = Y_mean - d.X_mean @ coef
        return self

    def _kfold_errors(self, X, Y, k, alphas, device, fit_intercept, mode, gram=None) -> torch.Tensor:
        """Mean over K contiguous folds of the per-fold mean squared validation error (himalaya's
        criterion), per α and target, with the decomposition's intercept and mode ("dual" or
        "primal"). Dual: ``gram`` is the Gram of X as centred (or not) by the decomposition; one
        for all folds (any common shift of the rows is fine: the fold centring in _fold_solvers
        is exact), X is not read. Primal: each fold decomposes its own rows of X."""
        dual = mode == "dual"
        if not dual:
            X = _as_tensor(X, device, self.dtype)
        n = Y.shape[0]
        errors = torch.zeros(len(alphas), Y.shape[1], device=device, dtype=self.dtype)
        # Contiguous folds, the n % k extra samples in the first folds (scikit-learn's KFold).
        bounds = np.concatenate([[0], np.cumsum([n // k + (i < n % k) for i in range(k)])])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            val = torch.zeros(n, dtype=torch.bool, device=device)
            val[lo:hi] = True
            exact = {}  # α index -> (n_train, n_val) solve matrix, for α the fold's eigenpairs cannot serve
            if dual:
                eigvals, U, proj, exact = _fold_solvers(gram, val, fit_intercept, alphas, self.dtype)
            else:
                d = Decomposition.of(X[~val], fit_intercept=fit_intercept, solver="primal", device=device,
                                     dtype=self.dtype)
                eigvals, U = d.eigvals, d.left_vectors()
                proj = (X[val] - d.X_mean) @ d.eigvecs  # (n_val, k)
            # Validation predictions for every α: proj diag(f(α)) Q.
            f_of = (lambda a: 1.0 / (eigvals + a)) if dual else (lambda a: eigvals.sqrt() / (eigvals + a))
            step = self.target_batch or Y.shape[1]
            for start in range(0, Y.shape[1], step):
                sl = slice(start, start + step)
                Yb = Y[:, sl]  # slice targets first: no copy of all of Y per batch
                Ytr = Yb[~val]
                mu = Ytr.mean(0) if fit_intercept else torch.zeros_like(Ytr[0])
                Ytr = Ytr - mu
                Q = U.T @ Ytr if len(exact) < len(alphas) else None
                Yv = Yb[val] - mu
                for i, a in enumerate(alphas):
                    err = Yv - (exact[i].T @ Ytr if i in exact else proj @ (Q * f_of(a)[:, None]))
                    errors[i, sl] += (err * err).mean(0)
        return errors / k

    # -- prediction ------------------------------------------------------------------
    def predict(self, X):
        as_numpy = not isinstance(X, torch.Tensor)
        X = _as_tensor(X, self.coef_.device, self.dtype)
        if X.shape[-1] != self.coef_.shape[0]:
            raise DataError(f"model was fitted on {self.coef_.shape[0]} features, got {X.shape[-1]}")
        out = X @ self.coef_ + self.intercept_
        return out.cpu().numpy() if as_numpy else out


FOLD_EIG_TOL = 3e-4  # largest relative error bound accepted from K-fold eigenpairs in ``dtype``
REFIT_CHOLESKY_MAX = 6
"""Most distinct chosen α refitted by one Cholesky each; more: one eigendecomposition instead.
Measured on the 2-core development machine (n 1,000-4,000): a float64 Cholesky of the Gram costs
1/6-1/10 of a float32 ``eigh`` and 1/11-1/24 of a float64 one (the solves cost the same either way)."""


def _cholesky_refit(d: Decomposition, gram: torch.Tensor, Y, Y_mean, chosen, alphas, coef, step) -> bool:
    """Refit with each target's chosen α, one Cholesky of ``G + αI`` per distinct α (targets grouped
    by α): dual ``W = Xcᵀ (K + αI)⁻¹ Yc``; primal ``W = (XcᵀXc + αI)⁻¹ Xcᵀ Yc``. The factor is in
    the features' dtype where the error bound ``eps·tr(G)/α`` (tr(G) ≥ λ_max: the bound of
    ``_eig_error_bound``, looser) is within ``FOLD_EIG_TOL``, else in float64. Writes ``coef``;
    returns False (nothing usable written) when more than ``REFIT_CHOLESKY_MAX`` distinct α were
    chosen or a factorisation failed (G + αI numerically singular)."""
    groups = chosen.unique().tolist()
    if len(groups) > REFIT_CHOLESKY_MAX:
        return False
    dtype = coef.dtype
    diag = gram.diagonal()
    diag0, trace = diag.clone(), float(diag.sum())
    try:
        for i in groups:
            a = float(alphas[i])
            diag.copy_(diag0 + a)  # G + αI in place (restored exactly below): no second n × n copy
            fdtype = dtype if float(torch.finfo(dtype).eps) * trace / a <= FOLD_EIG_TOL else gram.dtype
            L, info = torch.linalg.cholesky_ex(gram.to(fdtype))
            if info and fdtype != gram.dtype:
                fdtype = gram.dtype
                L, info = torch.linalg.cholesky_ex(gram)
            if info:
                return False
            cols = (chosen == i).nonzero().flatten()
            for start in range(0, len(cols), step):
                idx = cols[start:start + step]
                R = Y[:, idx] - Y_mean[idx]
                if d.mode == "primal":
                    R = d.Xc.T @ R
                S = torch.cholesky_solve(R.to(fdtype), L).to(dtype)
                coef[:, idx] = d.Xc.T @ S if d.mode == "dual" else S
            del L
    finally:
        diag.copy_(diag0)
    return True


def _eig_error_bound(eigvals: torch.Tensor, dtype, alphas):
    """Bound on the relative error of the filter 1/(λ+α) from eigenvalues computed in ``dtype``
    (absolute error ~ eps·λ_max). It overestimates the measured error ~10-20×."""
    return torch.finfo(dtype).eps * eigvals.max() / (eigvals.min() + alphas)


def _fold_solvers(gram: torch.Tensor, val: torch.Tensor, fit_intercept: bool, alphas, dtype):
    """A fold's dual solvers from the full (float64) Gram, centred on the training rows' mean ``μ``:
    ``(x_a − μ)·(x_b − μ) = G_ab − mean_t G_at − mean_t G_tb + mean_tt G`` (one Gram for all folds
    instead of one per fold, O(n²p) each).

    The training kernel is eigendecomposed in ``dtype`` (float32 by default: several times faster
    than float64). Its eigenvalues carry an absolute error ~ eps·λ_max, so the filter 1/(λ+α)
    is accurate to ~ eps·λ_max / (λ_min + α) (λ_min: the smallest kept eigenvalue). For every α
    where that bound exceeds ``FOLD_EIG_TOL`` (small α on correlated, ill-conditioned features)
    the fold is solved exactly in float64 instead: a Cholesky of ``K_tt + αI`` per such α gives
    ``S_α = (K_tt + αI)⁻¹ K_tv``, and the validation predictions are ``S_αᵀ Y_t``.
    Returns eigenvalues, U, ``K_vt U`` (None when no α uses them) and {α index: S_α}."""
    G_tt, G_vt = gram[~val][:, ~val], gram[val][:, ~val]
    if fit_intercept:
        r = G_tt.mean(1)
        s = r.mean()
        G_tt = G_tt - r[:, None] - r[None, :] + s
        G_vt = G_vt - G_vt.mean(1, keepdim=True) - r[None, :] + s
    eigvals, U = _eig(G_tt.to(dtype), dtype)
    bound = _eig_error_bound(eigvals, dtype, alphas)
    exact = {}
    eye = torch.eye(G_tt.shape[0], dtype=G_tt.dtype, device=G_tt.device)
    for i in (bound > FOLD_EIG_TOL).nonzero().flatten().tolist():
        L = torch.linalg.cholesky(G_tt + float(alphas[i]) * eye)
        exact[i] = torch.cholesky_solve(G_vt.T.contiguous(), L).to(dtype)
    proj = (G_vt.to(dtype) @ U) if len(exact) < len(alphas) else None
    return eigvals, U, proj, exact


def _efficient_cv_errors(d: Decomposition, U, Q, Yc, alphas, loo: bool) -> torch.Tensor:
    """Mean squared GCV or exact-LOO error per α for targets ``Yc`` (n, t)."""
    n = d.n_samples
    s = d.eigvals[:, None]
    # Part of Yc outside span(U): residual at every α (e.g. primal with n > p).
    outside = torch.linalg.vector_norm(Yc, dim=0).square() - (Q * Q).sum(0)  # no n × t temporary
    out = torch.empty(len(alphas), Yc.shape[1], device=Yc.device, dtype=Yc.dtype)
    base = 1.0 / n if d.fit_intercept else 0.0
    if loo:
        U2 = U * U
        resid_out = Yc - U @ Q  # component outside span(U), same for every α
    for i, a in enumerate(alphas):
        shrink = a / (s + a)  # (k, 1)
        if loo:
            h = base + U2 @ (d.eigvals / (d.eigvals + a))  # diag of the hat matrix, (n,)
            resid = resid_out + U @ (Q * shrink)
            out[i] = ((resid / (1.0 - h)[:, None]) ** 2).mean(0)
        else:
            trace = base * n + (d.eigvals / (d.eigvals + a)).sum()
            rss = outside.clamp_min(0) + ((Q * shrink) ** 2).sum(0)
            out[i] = rss / n / (1.0 - trace / n) ** 2
    return out
