"""The ridge read-out stage shared by every task that reads out with ridge (DESIGN §2, §5).

One place builds the α grid (:func:`alpha_grid`), fits (:func:`fit_ridge`, :func:`ridge_model`)
and keys the reusable eigendecomposition (:func:`decomposition_key`). A task says what its
features are (:func:`backbone_source`, :func:`voxel_source`, or its own tuple) and which rows it
fits on; the key adds everything else that changes the decomposition. The decomposition does
not depend on the α grid or the targets, so a sweep over α ranges on fixed features reuses it,
while a sweep over ``standardize`` or ``pca`` (which change the features) does not.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, HarnessError
from .features import flatten_rows, ids_digest, pca_readout
from .params import Param
from .task import TaskContext, standardise

RIDGE_PARAMS = {
    "alphas": Param(None, list, items=Param(type=float, gt=0), doc="explicit α candidates (null or []: the log grid)"),
    "alpha_min": Param(1e-2, gt=0, doc="smallest α of the log grid"),
    "alpha_max": Param(1e7, gt=0, doc="largest α of the log grid (≥ alpha_min)"),
    "n_alphas": Param(10, ge=1, doc="number of α on the log grid"),
    "cv": Param("gcv", (str, int), choices=("gcv", "loo"), ge=2,
                doc="α per target by generalised CV, exact leave-one-out, or K-fold (an integer K)"),
    "pca": Param(None, int, ge=0, doc="PCA components of the features, fitted on the fit rows (null or 0: none)"),
    "standardize": Param(True, doc="z-score the features with the fit rows' statistics"),
}
RIDGE_SPACE = {"alpha_min": {"low": 1e-3, "high": 1e3, "log": True},
               "alpha_max": {"low": 1e3, "high": 1e8, "log": True}}


def check_ridge(owner: str, p: dict) -> None:
    """The rule across the ridge parameters (each is checked by its Param): alpha_min ≤ alpha_max."""
    if not p.get("alphas") and p["alpha_min"] > p["alpha_max"]:
        raise ConfigError(f"{owner}: alpha_min must be ≤ alpha_max, got {p['alpha_min']} > {p['alpha_max']}")


def alpha_grid(p: dict) -> np.ndarray:
    """The α candidates: an explicit ``alphas`` list, else a log grid alpha_min..alpha_max."""
    if p.get("alphas"):
        return np.asarray(p["alphas"], dtype=np.float64)
    lo, hi, k = p["alpha_min"], p["alpha_max"], p["n_alphas"]
    if not (0 < lo <= hi) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"need 0 < alpha_min ≤ alpha_max and n_alphas ≥ 1, got {lo}, {hi}, {k}")
    return np.logspace(np.log10(lo), np.log10(hi), k)


def ridge_model(p: dict, device):
    """An unfitted :class:`brainharness.ridge.RidgeCV` with the α grid and CV rule of ``p``."""
    from .ridge import RidgeCV  # torch stays unimported until a task runs

    return RidgeCV(alphas=alpha_grid(p), cv=p["cv"], device=device)


def backbone_source(ctx: TaskContext, *layers) -> tuple:
    """What identifies features read from the unit's backbone: the instance, its read-out, the layers."""
    b = ctx.backbone
    return ("backbone", id(b), getattr(b, "readout", None), *(layer or getattr(b, "layer", None) for layer in layers))


def voxel_source(ctx: TaskContext, roi) -> tuple:
    """What identifies voxel responses used as features: the ROI, z-scored on the fit split."""
    return ("voxels", roi, ids_digest(ctx.fit.stim_ids))


def decomposition_key(p: dict, ctx: TaskContext, source: tuple, fit_ids) -> tuple:
    """The memo key of a fit's decomposition, from everything that changes it: the features
    (``source``, plus the subject and ``evaluated_on``), the fit rows (a digest of their stimulus
    ids), the PCA and standardisation applied here, the CV family (K-fold fits keep the Gram
    matrix, GCV/LOO do not) and the device. The α grid and the targets are not part of it."""
    cv = p.get("cv", "gcv")
    return ("ridge-decomposition", ctx.subject_name, ctx.evaluated_on, tuple(source), ids_digest(np.asarray(fit_ids)),
            int(p["pca"]) if p.get("pca") else None, bool(p.get("standardize", False)),
            "gcv/loo" if cv in ("gcv", "loo") else "kfold", str(ctx.device))


def fit_ridge(p: dict, ctx: TaskContext, X_fit, Y_fit, X_score, source: tuple, fit_ids, keep: bool = True):
    """Shared stage: optional PCA (fit rows only), standardise, ridge with per-target α.

    ``source`` identifies the features and ``fit_ids`` are the stimulus ids of the rows of
    ``X_fit``; the decomposition is looked up in and (with ``keep``) stored into ``ctx.memo``
    under :func:`decomposition_key`. ``keep=False`` leaves nothing behind (bounded memory).
    Returns the fitted model and its predictions for ``X_score``."""
    if len(fit_ids) != len(X_fit):
        raise HarnessError(f"fit_ridge: {len(fit_ids)} fit ids for {len(X_fit)} feature rows")
    X_fit, X_score = flatten_rows(X_fit), flatten_rows(X_score)
    if p["pca"]:
        X_fit, (X_score,) = pca_readout(X_fit, [X_score], int(p["pca"]))
    if p["standardize"]:
        X_fit, X_score = standardise(X_fit, X_score)
    model = ridge_model(p, ctx.device)
    key = decomposition_key(p, ctx, source, fit_ids)
    # PCA and standardising made X_fit here: the ridge may centre it in place (one copy fewer)
    model.fit(X_fit, Y_fit, decomposition=ctx.memo.get(key), overwrite_X=bool(p["pca"] or p["standardize"]))
    if keep:
        ctx.memo[key] = model.decomposition_
    return model, model.predict(X_score)


def scatter(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``values`` of the kept voxels back on the full voxel index (NaN elsewhere), float32."""
    out = np.full(keep.shape, np.nan, dtype=np.float32)
    out[keep] = values
    return out
