"""The synthetic dataset's generating features and voxel model.

Features of a scene (low-level contrast energy from the pixels, category features from the scene
content) and the simulated voxels that read them (ROIs, receptive fields, category tuning).
Changing anything here changes the numbers: bump ``SyntheticDataset.VERSION``.
"""
from __future__ import annotations

import numpy as np

from .synthetic_scenes import CATEGORIES, GROUNDS, OBJECT_KINDS, Scene

GRID = 8  # low-level features: GRID × GRID cells
LOW_CHANNELS = ("lum", "rg", "by")
PRESENCE_COLUMNS = ("face", "body", "place", "word", "object")

LOW_FEATURE_NAMES = [f"{c}_energy_r{r}c{k}" for c in LOW_CHANNELS for r in range(GRID) for k in range(GRID)]
CATEGORY_FEATURE_NAMES = (
    [f"{c}_{q}" for c in CATEGORIES for q in ("present", "count", "size", "x", "y")]
    + ["place_present", "place_horizon", "place_house", "place_tower", "place_building_x",
       "place_building_size", "place_grass", "place_street", "place_sand"]
    + [f"object_{k}" for k in OBJECT_KINDS]
)
_CAT = {name: i for i, name in enumerate(CATEGORY_FEATURE_NAMES)}
N_LOW, N_CAT = len(LOW_FEATURE_NAMES), len(CATEGORY_FEATURE_NAMES)

# (ROI, tuning, share of voxels, parameter): retinotopic areas carry the receptive-field sd
# in grid cells, category areas the share of signal variance that is low-level.
ROI_SPEC = (
    ("V1", "retinotopic", 0.11, 0.7),
    ("V2", "retinotopic", 0.09, 1.0),
    ("V3", "retinotopic", 0.07, 1.4),
    ("hV4", "retinotopic", 0.06, 1.9),
    ("EBA", "body", 0.06, 0.15),
    ("FBA", "body", 0.04, 0.15),
    ("OFA", "face", 0.04, 0.35),
    ("FFA", "face", 0.06, 0.15),
    ("OPA", "place", 0.05, 0.35),
    ("PPA", "place", 0.06, 0.15),
    ("OWFA", "word", 0.04, 0.35),
    ("VWFA", "word", 0.05, 0.15),
    (None, "mixed", 0.27, None),  # in no named ROI
)
ROI_NAMES = [r[0] for r in ROI_SPEC if r[0]] + ["nsdgeneral"]
SNR_RANGE = (0.1, 2.5)  # signal sd / noise sd, log-uniform over signal voxels


# --------------------------------------------------------------------------------------------
# Generating features
# --------------------------------------------------------------------------------------------
def low_level_features(images: np.ndarray) -> np.ndarray:
    """RMS gradient energy per GRID×GRID cell of luminance, red–green and blue–yellow.

    ``images``: uint8 (N, H, W, 3) → float32 (N, 3·GRID²), channel-major, not yet z-scored.
    """
    x = images.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    n, h, w = r.shape
    channels = (0.299 * r + 0.587 * g + 0.114 * b, r - g, b - 0.5 * (r + g))
    ys = np.linspace(0, h, GRID + 1).astype(int)
    xs = np.linspace(0, w, GRID + 1).astype(int)
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    out = np.empty((n, len(channels), GRID, GRID), dtype=np.float32)
    for k, c in enumerate(channels):
        energy = np.zeros((n, h, w), dtype=np.float32)
        energy[:, :, :-1] += np.diff(c, axis=2) ** 2
        energy[:, :-1, :] += np.diff(c, axis=1) ** 2
        cells = np.add.reduceat(np.add.reduceat(energy, ys[:-1], axis=1), xs[:-1], axis=2)
        out[:, k] = np.sqrt(cells / area)
    return out.reshape(n, -1)


def category_features(scene: Scene) -> np.ndarray:
    """Raw (not yet z-scored) category features of one scene, in CATEGORY_FEATURE_NAMES order."""
    f = np.zeros(N_CAT, dtype=np.float32)
    for c in CATEGORIES:
        items = [it for it in scene.items if it.category == c]
        if not items:
            continue
        sizes = np.array([np.prod(it.box()) for it in items])
        f[_CAT[f"{c}_present"]] = 1
        f[_CAT[f"{c}_count"]] = len(items)
        f[_CAT[f"{c}_size"]] = sizes.sum()
        f[_CAT[f"{c}_x"]] = np.average([2 * it.cx - 1 for it in items], weights=sizes)
        f[_CAT[f"{c}_y"]] = np.average([2 * it.cy - 1 for it in items], weights=sizes)
    for it in scene.items:
        if it.category == "object":
            f[_CAT[f"object_{it.kind}"]] = 1
    if scene.background == "place":
        f[_CAT["place_present"]] = 1
        f[_CAT["place_horizon"]] = scene.horizon
        f[_CAT[f"place_{scene.building}"]] = 1
        f[_CAT["place_building_x"]] = 2 * scene.building_x - 1
        f[_CAT["place_building_size"]] = scene.building_w * scene.building_h
        f[_CAT[f"place_{scene.ground}"]] = 1
    return f


def presence(scene: Scene) -> np.ndarray:
    cats = {it.category for it in scene.items} | ({"place"} if scene.background == "place" else set())
    return np.array([c in cats for c in PRESENCE_COLUMNS], dtype=bool)


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Column-wise z-score (ddof=0) in float32; constant columns become 0."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0)
    ok = sd > 1e-8 * np.maximum(1.0, np.abs(mu))
    return np.where(ok, (x - mu) / np.where(ok, sd, 1.0), 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Voxel model
# --------------------------------------------------------------------------------------------
def _allocate(n: int, shares: np.ndarray) -> np.ndarray:
    """Largest-remainder allocation of ``n`` voxels by ``shares``, at least one per group."""
    k = len(shares)
    extra = (n - k) * shares / shares.sum()
    counts = 1 + np.floor(extra).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(extra - np.floor(extra)), kind="stable")[:rest]] += 1
    return counts


def _rf(rng, sigma: float) -> np.ndarray:
    centre = rng.uniform(0, GRID, size=2)
    cy, cx = np.meshgrid(np.arange(GRID) + 0.5, np.arange(GRID) + 0.5, indexing="ij")
    return np.exp(-((cx - centre[0]) ** 2 + (cy - centre[1]) ** 2) / (2 * sigma**2)).ravel()


def _low_weights(rng, sigma: float, colour: float) -> np.ndarray:
    chan = np.array([1.0, abs(rng.normal(0, colour)), abs(rng.normal(0, colour))])
    return (chan[:, None] * _rf(rng, sigma)[None, :]).ravel()


def _category_weights(rng, tuning: str) -> np.ndarray:
    w = np.zeros(N_CAT)
    if tuning == "place":
        w[_CAT["place_present"]] = rng.uniform(0.6, 1.0)
        w[_CAT["place_building_size"]] = rng.uniform(0.1, 0.4)
        w[_CAT["place_building_x"]] = rng.normal(0, 0.3)
        for name in ("place_horizon", "place_house", "place_tower"):
            w[_CAT[name]] = rng.normal(0, 0.2)
        for g in GROUNDS:
            w[_CAT[f"place_{g}"]] = rng.normal(0, 0.15)
    else:
        w[_CAT[f"{tuning}_present"]] = rng.uniform(0.6, 1.0)
        w[_CAT[f"{tuning}_size"]] = rng.uniform(0.2, 0.6)
        w[_CAT[f"{tuning}_count"]] = rng.uniform(0.0, 0.3)
        w[_CAT[f"{tuning}_x"]] = rng.normal(0, 0.3)  # lateralisation
        w[_CAT[f"{tuning}_y"]] = rng.normal(0, 0.15)
    for other in PRESENCE_COLUMNS:  # mild suppression by the other categories
        if other != tuning:
            w[_CAT[f"{other}_present"]] = -rng.uniform(0, 0.15)
    return w


def voxel_model(rng: np.random.Generator, n_voxels: int, noise_fraction: float):
    """ROI labels, raw low-level / category weights, low-level variance shares, pure-noise mask."""
    shares = np.array([r[2] for r in ROI_SPEC])
    group = rng.permutation(np.repeat(np.arange(len(ROI_SPEC)), _allocate(n_voxels, shares)))
    pure = np.zeros(n_voxels, dtype=bool)
    for g in range(len(ROI_SPEC)):
        idx = np.flatnonzero(group == g)
        k = int(round(noise_fraction * len(idx)))
        if noise_fraction < 1:
            k = min(k, len(idx) - 1)  # every ROI keeps a signal voxel
        pure[rng.choice(idx, size=k, replace=False)] = True
    w_low = np.zeros((N_LOW, n_voxels), dtype=np.float32)
    w_cat = np.zeros((N_CAT, n_voxels), dtype=np.float32)
    frac_low = np.zeros(n_voxels)
    for v in range(n_voxels):
        name, tuning, _, param = ROI_SPEC[group[v]]
        if tuning == "retinotopic":
            w_low[:, v] = _low_weights(rng, param, 0.7 if name == "hV4" else 0.3)
            frac_low[v] = 1.0
        elif tuning == "mixed":
            for w, n in ((w_low, N_LOW), (w_cat, N_CAT)):
                idx = rng.choice(n, size=int(rng.integers(2, 7)), replace=False)
                w[idx, v] = rng.normal(0, 1, size=len(idx))
            frac_low[v] = rng.uniform(0.2, 0.8)
        else:
            w_cat[:, v] = _category_weights(rng, tuning)
            w_low[:, v] = _low_weights(rng, 3.0, 0.3)
            frac_low[v] = param
    w_low[:, pure] = 0
    w_cat[:, pure] = 0
    return group, w_low, w_cat, frac_low, pure


def voxel_signal(f_low, f_cat, w_low, w_cat, frac_low):
    """Unit-variance (over stimuli) signal of a block of voxels and its effective weights on features_all.

    The low-level and category parts are first scaled to the voxel's variance shares, then
    the sum to unit variance; voxels without weights get signal 0.
    """
    s_low, s_cat = f_low @ w_low, f_cat @ w_cat
    sd_low, sd_cat = s_low.std(0), s_cat.std(0)
    a = np.where(sd_low > 0, np.sqrt(frac_low) / np.where(sd_low > 0, sd_low, 1), 0)
    b = np.where(sd_cat > 0, np.sqrt(1 - frac_low) / np.where(sd_cat > 0, sd_cat, 1), 0)
    signal = s_low * a + s_cat * b
    sd = signal.std(0)
    scale = np.where(sd > 0, 1 / np.where(sd > 0, sd, 1), 0)
    weights = np.concatenate([w_low * (a * scale), w_cat * (b * scale)]).astype(np.float32)
    return (signal * scale).astype(np.float32), weights
