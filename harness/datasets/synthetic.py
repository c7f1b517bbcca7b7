"""The built-in synthetic dataset: procedural scenes, captions and simulated voxel responses.

Everything is deterministic from ``seed`` and generated on first use into one HDF5 file,
``<cache_dir>/datasets/synthetic-<hash>.h5`` (hash of all parameters and :attr:`VERSION`).
The file is written under a temporary name and renamed when complete, so an interrupted
generation never leaves a file that looks finished; later loads open it without regenerating.
A lock file (``….h5.lock``) makes concurrent loaders wait for one generator.

The generative model
--------------------
* **Scenes** (one per stimulus id, drawn from ``(seed, id)`` alone, so stimulus ``i`` is the
  same image whatever the dataset size): a background — a plain colour, or a *place* (sky,
  horizon, grass / street / sand ground, a house or a tall building) — and 1–3 items, each a
  *face*, a *body* (a standing person), a *word* sign (rows of letter-like glyphs) or an
  *object* (ball, box, triangle), with a colour and a position (left / centre / right,
  top / bottom).
* **Captions**: five COCO-like sentences per image from the scene content (varied templates
  and synonyms; de-duplicated); the first one always names every item. ``Stimuli.descriptions``
  holds one exhaustive, templated description per image.
* **Generating features** (``Stimuli.extras``, float32, z-scored over all stimuli, constant
  columns 0): ``features_low`` — RMS gradient energy (local contrast) of luminance and two
  colour-opponent channels in an 8×8 grid of cells (192 dims, nonlinear in the pixels);
  ``features_category`` — presence, count, size and position of faces, bodies, words,
  objects, and the place layout (32 dims, names in ``Dataset.info["feature_names"]``);
  ``features_all`` — both, concatenated. ``category_presence`` (bool, columns
  ``face, body, place, word, object``) is the raw presence of each category.
* **Voxels** (per subject): ROIs V1, V2, V3, hV4 (weighted low-level energy in a Gaussian
  receptive field around a random grid location, wider in later areas), EBA/FBA (bodies),
  OFA/FFA (faces), OPA/PPA (places), OWFA/VWFA (words) — the category areas with a smaller
  low-level share (larger for the occipital OFA/OPA/OWFA) — and mixed-tuning voxels in no
  named ROI; ``nsdgeneral`` is every voxel. The signal of a voxel is *linear* in
  ``features_all`` (so the oracle backbone can reach the noise ceiling), scaled to unit
  variance over all stimuli; a fraction ``noise_fraction`` of the voxels of every ROI are pure
  noise (signal 0). Each voxel has its own noise sd (SNR log-uniform in [0.1, 2.5]).
* **Trials**: each stimulus is shown ``repeats`` times in a random order, split into sessions
  of about ``trials_per_session`` trials; a trial is signal + Gaussian noise, then a per-session
  gain and offset per voxel (drift), then each voxel is z-scored within each session.
  ``Responses.averaged`` is the mean of a stimulus's z-scored trials.
* **Noise ceiling**: ``Subject.noise_ceiling`` is *estimated* from all single trials with the
  NSD formula (:mod:`brainharness.metrics.noise_ceiling`); ``Subject.truth`` holds the true values:
  ``noise_ceiling`` (``100·s²/(s² + σ²·mean(1/n))`` with ``s`` the sd of the signal over the
  test stimuli and ``n`` their repeat counts), ``signal_sd``, ``noise_sd`` (generating units,
  before the session drift and z-scoring), ``ncsnr`` (= signal_sd / noise_sd) and
  ``pure_noise`` (bool).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import numbers
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from brainharness.data import Dataset, Responses, Stimuli, Subject
from brainharness.errors import ConfigError, DataError
from brainharness.metrics.noise_ceiling import inverse_repeats, noise_ceiling, zscore_within_sessions
from brainharness.registry import register_dataset

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Constants of the generative model (changing any of them changes the numbers: bump VERSION)
# --------------------------------------------------------------------------------------------
GRID = 8  # low-level features: GRID × GRID cells
LOW_CHANNELS = ("lum", "rg", "by")
CATEGORIES = ("face", "body", "word", "object")
PRESENCE_COLUMNS = ("face", "body", "place", "word", "object")
OBJECT_KINDS = ("ball", "box", "triangle")
GROUNDS = ("grass", "street", "sand")
BUILDINGS = ("house", "tower")
SKIES = ("blue", "grey", "sunset")

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
VOXEL_CHUNK = 512  # voxels simulated at once (fixed: it seeds the per-chunk noise streams)
IMAGE_BATCH = 256

# Colours ------------------------------------------------------------------------------------
ITEM_COLOURS = {
    "red": (210, 40, 40), "orange": (240, 140, 30), "yellow": (240, 215, 40), "green": (50, 160, 60),
    "blue": (40, 80, 210), "purple": (130, 60, 170), "pink": (240, 130, 180), "brown": (120, 75, 40),
}
BG_COLOURS = {
    "white": (240, 240, 240), "grey": (150, 150, 150), "black": (25, 25, 25), "beige": (225, 210, 180),
    "light blue": (180, 210, 235),
}
SKIN = ((250, 215, 185), (225, 180, 140), (175, 120, 80), (110, 70, 45))
TROUSERS = ((40, 40, 60), (30, 30, 30), (70, 60, 50), (50, 70, 120))
SKY = {"blue": ((90, 150, 230), (185, 215, 245)), "grey": ((150, 155, 165), (205, 205, 210)),
       "sunset": ((240, 130, 70), (250, 210, 150))}
GROUND = {"grass": ((80, 160, 65), (40, 110, 40)), "street": ((120, 120, 125), (80, 80, 85)),
          "sand": ((225, 205, 145), (200, 175, 110))}
WALLS = ((190, 80, 60), (230, 230, 220), (210, 190, 140), (120, 150, 190), (150, 150, 160), (100, 110, 130))
ROOFS = ((120, 40, 30), (80, 80, 80), (60, 60, 90))
DARK = (25, 25, 25)

# 5×3 letter-like glyphs for the word signs (the last one is a space)
_GLYPH_ROWS = {
    "A": "010101111101101", "E": "111100110100111", "H": "101101111101101", "L": "100100100100111",
    "T": "111010010010010", "O": "111101101101111", "U": "101101101101111", "N": "110101101101101",
    "C": "111100100100111", "P": "110101110100100", "S": "111100111001111", "R": "110101110101101",
    " ": "000000000000000",
}
GLYPHS = np.array([[c == "1" for c in g] for g in _GLYPH_ROWS.values()], dtype=bool).reshape(-1, 5, 3)
SPACE = len(GLYPHS) - 1

H_SLOTS = {"left": 0.2, "centre": 0.5, "right": 0.8}
V_SLOTS = {"top": 0.3, "bottom": 0.7}


# --------------------------------------------------------------------------------------------
# Scene content
# --------------------------------------------------------------------------------------------
@dataclass
class Item:
    category: str  # face | body | word | object
    kind: str  # object: ball | box | triangle; otherwise the category
    colour: str
    rgb: np.ndarray
    hpos: str  # left | centre | right
    vpos: str  # top | bottom
    cx: float  # centre, fraction of the image width / height
    cy: float
    scale: float  # fraction of the image size
    skin: tuple = SKIN[0]
    trousers: tuple = TROUSERS[0]
    chars: np.ndarray | None = None  # word signs: glyph indices (rows, cols)

    def box(self) -> tuple[float, float]:
        """Width and height of the item's bounding box (fractions of the image size)."""
        s = self.scale
        return {"face": (s, s), "body": (0.6 * s, 1.5 * s), "word": (1.35 * s, 0.75 * s),
                "ball": (0.85 * s, 0.85 * s), "box": (0.8 * s, 0.8 * s), "triangle": (0.9 * s, 0.85 * s)}[
            self.kind if self.category == "object" else self.category]


@dataclass
class Scene:
    background: str  # plain | place
    bg_colour: str = "white"
    bg_rgb: np.ndarray | None = None
    sky: str = "blue"
    ground: str = "grass"
    building: str = "house"
    horizon: float = 0.5
    building_x: float = 0.5
    building_hpos: str = "centre"
    building_w: float = 0.0
    building_h: float = 0.0
    wall: tuple = WALLS[0]
    roof: tuple = ROOFS[0]
    items: list = field(default_factory=list)


def _jitter(rng, rgb, amount=15):
    return np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255).astype(np.float32)


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw the content of one scene."""
    if rng.random() < 0.5:
        name = list(BG_COLOURS)[rng.integers(len(BG_COLOURS))]
        scene = Scene("plain", bg_colour=name, bg_rgb=_jitter(rng, BG_COLOURS[name], 8))
    else:
        building = BUILDINGS[rng.integers(2)]
        hpos = list(H_SLOTS)[rng.integers(3)]
        w, h = (rng.uniform(0.28, 0.36), rng.uniform(0.16, 0.22)) if building == "house" else \
            (rng.uniform(0.16, 0.24), rng.uniform(0.32, 0.42))
        scene = Scene("place", sky=SKIES[rng.integers(3)], ground=GROUNDS[rng.integers(3)], building=building,
                      horizon=rng.uniform(0.42, 0.62), building_x=H_SLOTS[hpos] + rng.uniform(-0.05, 0.05),
                      building_hpos=hpos, building_w=w, building_h=h,
                      wall=WALLS[rng.integers(len(WALLS))], roof=ROOFS[rng.integers(len(ROOFS))])
    n_items = 1 + rng.choice(3, p=(0.35, 0.4, 0.25))
    slots = rng.choice(6, size=n_items, replace=False)
    for slot in slots:
        category = CATEGORIES[rng.integers(4)]
        kind = OBJECT_KINDS[rng.integers(3)] if category == "object" else category
        colour = list(ITEM_COLOURS)[rng.integers(len(ITEM_COLOURS))]
        hpos, vpos = list(H_SLOTS)[slot % 3], list(V_SLOTS)[slot // 3]
        item = Item(category, kind, colour, _jitter(rng, ITEM_COLOURS[colour]), hpos, vpos,
                    cx=H_SLOTS[hpos] + rng.uniform(-0.06, 0.06), cy=V_SLOTS[vpos] + rng.uniform(-0.05, 0.05),
                    scale=rng.uniform(0.24, 0.4), skin=SKIN[rng.integers(len(SKIN))],
                    trousers=TROUSERS[rng.integers(len(TROUSERS))])
        if category == "word":
            rows, cols = 2 + int(item.scale > 0.33), int(rng.integers(4, 7))
            chars = rng.integers(0, SPACE, size=(rows, cols))
            if cols >= 5:
                chars[np.arange(rows), rng.integers(1, cols - 1, size=rows)] = SPACE
            item.chars = chars
        scene.items.append(item)
    scene.items.sort(key=lambda it: it.cy)  # draw the upper ones first (lower ones occlude)
    return scene


def scene_rng(seed: int, stim_id: int, stream: int) -> np.random.Generator:
    """The random stream of one stimulus (0: scene content, 1: captions)."""
    return np.random.default_rng([seed, 1000 + stream, stim_id])


# --------------------------------------------------------------------------------------------
# Rendering (numpy masks on the bounding box of each shape)
# --------------------------------------------------------------------------------------------
def _grid(img, x0, y0, x1, y1):
    """Slices of the pixels whose centres may lie in [x0, x1] × [y0, y1], and their centres."""
    size_y, size_x = img.shape[:2]
    xa, xb = max(0, int(np.floor(x0))), min(size_x, int(np.ceil(x1)) + 1)
    ya, yb = max(0, int(np.floor(y0))), min(size_y, int(np.ceil(y1)) + 1)
    if xa >= xb or ya >= yb:
        return None
    yy = (np.arange(ya, yb, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(xa, xb, dtype=np.float32) + 0.5)[None, :]
    return (slice(ya, yb), slice(xa, xb)), yy, xx


def _paint(img, sl, mask, rgb):
    img[sl][np.broadcast_to(mask, img[sl].shape[:2])] = rgb


def _ellipse(img, cx, cy, rx, ry, rgb, lower_band=None):
    g = _grid(img, cx - rx, cy - ry, cx + rx, cy + ry)
    if g is None or rx <= 0 or ry <= 0:
        return
    sl, yy, xx = g
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    mask = d <= 1
    if lower_band is not None:  # a smile: the lower half of an elliptic ring
        mask &= (d >= lower_band) & (yy >= cy)
    _paint(img, sl, mask, rgb)


def _rect(img, x0, y0, x1, y1, rgb):
    g = _grid(img, x0, y0, x1, y1)
    if g is not None:
        sl, yy, xx = g
        _paint(img, sl, (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1), rgb)


def _triangle(img, cx, top, bottom, half_w, rgb):
    g = _grid(img, cx - half_w, top, cx + half_w, bottom)
    if g is None or bottom <= top:
        return
    sl, yy, xx = g
    mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_w * (yy - top) / (bottom - top))
    _paint(img, sl, mask, rgb)


def _segment(img, x0, y0, x1, y1, width, rgb):
    r = width / 2
    g = _grid(img, min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
    if g is None:
        return
    sl, yy, xx = g
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    _paint(img, sl, (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= r * r, rgb)


def _text(img, x0, y0, x1, y1, chars, rgb):
    g = _grid(img, x0, y0, x1, y1)
    if g is None or x1 <= x0 or y1 <= y0:
        return
    sl, yy, xx = g
    rows, cols = chars.shape
    fx = (xx - x0) / (x1 - x0) * cols
    fy = (yy - y0) / (y1 - y0) * rows
    ci = np.clip(np.floor(fx), 0, cols - 1).astype(np.int64)
    ri = np.clip(np.floor(fy), 0, rows - 1).astype(np.int64)
    gx = np.floor((fx - ci) * 4).astype(np.int64)  # 3 glyph columns + 1 spacing column
    gy = np.floor((fy - ri) * 7).astype(np.int64) - 1  # 5 glyph rows + 2 spacing rows
    inside = (fx >= 0) & (fx < cols) & (fy >= 0) & (fy < rows) & (gx < 3) & (gy >= 0) & (gy < 5)
    mask = inside & GLYPHS[chars[ri, ci], np.clip(gy, 0, 4), np.clip(gx, 0, 2)]
    _paint(img, sl, mask, rgb)


def _draw_place(img, scene: Scene):
    size = img.shape[0]
    hy = scene.horizon * size
    rows = np.arange(size, dtype=np.float32) + 0.5
    sky_top, sky_bottom = (np.asarray(c, np.float32) for c in SKY[scene.sky])
    g_top, g_bottom = (np.asarray(c, np.float32) for c in GROUND[scene.ground])
    t_sky = np.clip(rows / hy, 0, 1)[:, None]
    t_ground = np.clip((rows - hy) / max(size - hy, 1), 0, 1)[:, None]
    colour = np.where((rows < hy)[:, None], sky_top + (sky_bottom - sky_top) * t_sky,
                      g_top + (g_bottom - g_top) * t_ground)
    img[:] = colour[:, None, :]
    if scene.ground == "street":  # dashed lane marking
        y = hy + 0.55 * (size - hy)
        g = _grid(img, 0, y - 0.012 * size, size, y + 0.012 * size)
        if g is not None:
            sl, yy, xx = g
            period = 0.16 * size
            mask = (np.abs(yy - y) <= max(0.012 * size, 0.5)) & ((xx % period) < 0.55 * period)
            _paint(img, sl, mask, (235, 235, 210))
    bx, w, h = scene.building_x * size, scene.building_w * size, scene.building_h * size
    base = hy + 0.03 * size
    x0, x1, top = bx - w / 2, bx + w / 2, base - h
    _rect(img, x0, top, x1, base, scene.wall)
    if scene.building == "house":
        _triangle(img, bx, top - 0.55 * h, top, 0.62 * w, scene.roof)
        _rect(img, bx - 0.1 * w, base - 0.55 * h, bx + 0.1 * w, base, (90, 60, 40))  # door
        for wx in (x0 + 0.12 * w, x1 - 0.32 * w):
            _rect(img, wx, top + 0.2 * h, wx + 0.2 * w, top + 0.5 * h, (200, 225, 245))
    else:  # a tower with a grid of windows
        g = _grid(img, x0 + 0.1 * w, top + 0.05 * h, x1 - 0.1 * w, base - 0.1 * h)
        if g is not None:
            sl, yy, xx = g
            px, py = w / 4, h / 8
            mask = ((xx - x0 - 0.1 * w) % px < 0.5 * px) & ((yy - top - 0.05 * h) % py < 0.5 * py)
            mask &= (xx <= x1 - 0.1 * w) & (yy <= base - 0.1 * h)
            _paint(img, sl, mask, (200, 225, 245))


def _draw_item(img, it: Item):
    size = img.shape[0]
    cx, cy, s = it.cx * size, it.cy * size, it.scale * size
    if it.category == "face":
        r = 0.45 * s
        _ellipse(img, cx, cy - 0.1 * r, 1.08 * r, 1.02 * r, it.rgb)  # hair (its colour is the item's)
        _ellipse(img, cx, cy + 0.06 * r, 0.95 * r, 0.95 * r, it.skin)
        for ex in (cx - 0.38 * r, cx + 0.38 * r):
            _ellipse(img, ex, cy - 0.05 * r, 0.2 * r, 0.16 * r, (245, 245, 245))
            _ellipse(img, ex, cy - 0.05 * r, 0.1 * r, 0.1 * r, DARK)
        _ellipse(img, cx, cy + 0.3 * r, 0.45 * r, 0.32 * r, (150, 30, 40), lower_band=0.45)
    elif it.category == "body":
        h = 1.5 * s
        top = cy - h / 2
        shoulder, hip = top + 0.25 * h, top + 0.58 * h
        for side in (-1, 1):
            _segment(img, cx + side * 0.06 * h, hip, cx + side * 0.1 * h, top + h, 0.09 * h, it.trousers)
            _segment(img, cx + side * 0.13 * h, shoulder + 0.02 * h, cx + side * 0.25 * h, top + 0.55 * h,
                     0.07 * h, it.rgb)
            _ellipse(img, cx + side * 0.25 * h, top + 0.56 * h, 0.04 * h, 0.04 * h, it.skin)
        _rect(img, cx - 0.14 * h, shoulder, cx + 0.14 * h, hip, it.rgb)
        _ellipse(img, cx, top + 0.12 * h, 0.11 * h, 0.11 * h, it.skin)
    elif it.category == "word":
        w, h = 1.35 * s, 0.75 * s
        x0, y0 = cx - w / 2, cy - h / 2
        _rect(img, x0, y0, x0 + w, y0 + h, it.rgb)  # frame
        m = 0.08 * h
        _rect(img, x0 + m, y0 + m, x0 + w - m, y0 + h - m, (240, 238, 228))  # panel
        _text(img, x0 + 2 * m, y0 + 1.5 * m, x0 + w - 2 * m, y0 + h - 1.5 * m, it.chars, DARK)
    elif it.kind == "ball":
        r = 0.425 * s
        _ellipse(img, cx, cy, r, r, it.rgb)
        _ellipse(img, cx - 0.35 * r, cy - 0.35 * r, 0.22 * r, 0.22 * r, np.minimum(it.rgb + 90, 255))
    elif it.kind == "box":
        a = 0.4 * s
        _rect(img, cx - a, cy - a, cx + a, cy + a, it.rgb)
        _rect(img, cx - a, cy - a, cx + a, cy - 0.6 * a, np.minimum(it.rgb + 60, 255))  # lit top
        _rect(img, cx + 0.7 * a, cy - 0.6 * a, cx + a, cy + a, it.rgb * 0.6)  # shaded side
    else:  # triangle
        _triangle(img, cx, cy - 0.425 * s, cy + 0.425 * s, 0.45 * s, it.rgb)


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) image."""
    img = np.empty((size, size, 3), dtype=np.float32)
    if scene.background == "plain":
        img[:] = scene.bg_rgb
    else:
        _draw_place(img, scene)
    for it in scene.items:
        _draw_item(img, it)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


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
# Captions
# --------------------------------------------------------------------------------------------
def _pick(rng, options):
    return options[rng.integers(len(options))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _item_phrase(it: Item, rng) -> str:
    c = it.colour
    if it.category == "face":
        return _pick(rng, [f"a face with {c} hair", "a smiling face", "a cartoon face", f"a smiling face with {c} hair",
                           "a face", "a human face", f"a close-up of a face with {c} hair"])
    if it.category == "body":
        return _pick(rng, [f"a person in a {c} shirt", f"a man wearing a {c} shirt", f"a woman in {c}",
                           "a person standing", "a standing person", f"someone in a {c} top",
                           f"a person wearing {c}", f"a man in a {c} shirt"])
    if it.category == "word":
        return _pick(rng, [f"{_article(c)} sign with writing on it", "a sign with writing", "a sign with words on it",
                           f"{_article(c)} sign with text", "a board with letters on it", "some text on a sign",
                           f"{_article(c)} framed sign with words"])
    nouns = {"ball": ["ball", "ball", "sphere", "round ball"], "box": ["box", "cube", "square box", "crate"],
             "triangle": ["triangle", "pyramid", "triangular shape", "cone"]}[it.kind]
    noun = _pick(rng, nouns)
    return _article(f"{c} {noun}") if rng.random() < 0.8 else _article(noun)


def _plural_phrase(category: str, kinds: list[str], rng) -> str:
    n = len(kinds)
    count = {2: _pick(rng, ["two", "a pair of"]), 3: _pick(rng, ["three", "several"])}[n]
    if category == "object":
        noun = ({"ball": "balls", "box": "boxes", "triangle": "triangles"}[kinds[0]] if len(set(kinds)) == 1
                else _pick(rng, ["objects", "shapes", "toys"]))
    else:
        noun = _pick(rng, {"face": ["faces", "smiling faces", "cartoon faces"],
                           "body": ["people", "people standing", "persons"],
                           "word": ["signs with writing", "signs", "boards with text"]}[category])
    return f"{count} {noun}"


def _position_phrase(it: Item, rng) -> str:
    h = {"left": ["on the left", "on the left side", "to the left"],
         "centre": ["in the middle", "in the centre", "in the center"],
         "right": ["on the right", "on the right side", "to the right"]}[it.hpos]
    v = {"top": ["near the top", "at the top", "up high"], "bottom": ["near the bottom", "at the bottom", "down low"]}[it.vpos]
    up, low = ("top", "upper") if it.vpos == "top" else ("bottom", "lower")
    corner = ([f"in the {up} {it.hpos} corner", f"in the {low} {it.hpos}", f"at the {up} {it.hpos}"]
              if it.hpos != "centre" else [f"in the {low} middle", f"at the {up} centre"])
    return _pick(rng, [_pick(rng, h), _pick(rng, h), _pick(rng, v), _pick(rng, corner)])


_PLACE_ADV = {
    ("grass", "house"): ["in a field", "in front of a house", "on the grass near a house", "in a yard with a house",
                         "in a grassy park", "near a small house"],
    ("grass", "tower"): ["in front of a tall building", "in a park near a building", "on a lawn near an apartment building"],
    ("street", "house"): ["on a street", "on a road in front of a house", "on a street near a house"],
    ("street", "tower"): ["on a city street", "in front of a tall building", "on a street next to an office building",
                          "in the city"],
    ("sand", "house"): ["on a beach", "on the sand near a house", "in the desert near a house"],
    ("sand", "tower"): ["on a beach near a tall building", "in the desert near a tower", "on the sand by a building"],
}
_PLACE_NP = {
    ("grass", "house"): ["a field with a house", "a grassy yard", "a house on a lawn", "a park with a house"],
    ("grass", "tower"): ["a park with a tall building", "a lawn in front of an apartment building"],
    ("street", "house"): ["a street with a house", "a quiet road", "a house by the road"],
    ("street", "tower"): ["a city street", "a street with a tall building", "an office building by a road"],
    ("sand", "house"): ["a beach with a house", "a sandy beach", "a house in the desert"],
    ("sand", "tower"): ["a beach with a tall building", "a tower in the desert"],
}
_SKY_ADV = {"blue": ["under a blue sky", "on a sunny day"], "grey": ["on a cloudy day", "under a grey sky"],
            "sunset": ["at sunset", "in the evening light"]}


def _background_adverbial(scene: Scene, rng) -> str:
    if scene.background == "plain":
        b = scene.bg_colour
        return _pick(rng, [f"on {_article(b)} background", f"against a plain {b} background", f"in front of {_article(b)} wall",
                           f"on a plain {b} backdrop"])
    phrase = _pick(rng, _PLACE_ADV[(scene.ground, scene.building)])
    return f"{phrase} {_pick(rng, _SKY_ADV[scene.sky])}" if rng.random() < 0.25 else phrase


def _background_np(scene: Scene, rng) -> str:
    if scene.background == "plain":
        b = scene.bg_colour
        return _pick(rng, [f"a plain {b} background", f"{_article(b)} backdrop", f"{_article(b)} wall"])
    return _pick(rng, _PLACE_NP[(scene.ground, scene.building)])


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _all_items(scene: Scene, rng) -> str:
    """A phrase naming every item (grouping repeated categories now and then)."""
    items = sorted(scene.items, key=lambda it: it.cx)
    by_cat: dict[str, list[Item]] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
    if any(len(v) > 1 for v in by_cat.values()) and rng.random() < 0.5:
        return _join([_item_phrase(v[0], rng) if len(v) == 1 else _plural_phrase(c, [i.kind for i in v], rng)
                      for c, v in by_cat.items()])
    return _join([_item_phrase(it, rng) for it in items])


def _relation(a: Item, b: Item, rng) -> str:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dy) > abs(dx) and abs(dy) > 0.15:
        return _pick(rng, ["above", "over"]) if dy > 0 else _pick(rng, ["below", "under"])
    if abs(dx) > 0.15:
        return _pick(rng, ["to the left of", "next to", "beside"]) if dx > 0 else \
            _pick(rng, ["to the right of", "next to", "beside"])
    return _pick(rng, ["next to", "near"])


def _caption(scene: Scene, rng, mention_all: bool) -> str:
    form = rng.integers(3) if mention_all else rng.integers(7)
    if form == 0:
        text = f"{_all_items(scene, rng)} {_background_adverbial(scene, rng)}"
    elif form == 1:
        text = f"{_background_np(scene, rng)} with {_all_items(scene, rng)}"
    elif form == 2:
        frame = _pick(rng, ["an image of", "a picture of", "a drawing of", "a photo of", "there is"])
        text = f"{frame} {_all_items(scene, rng)} {_background_adverbial(scene, rng)}"
    elif form in (3, 4):
        it = scene.items[rng.integers(len(scene.items))]
        text = f"{_item_phrase(it, rng)} {_position_phrase(it, rng)}"
        if rng.random() < 0.6:
            text += f" {_background_adverbial(scene, rng)}"
    elif form == 5 and len(scene.items) > 1:
        i, j = rng.choice(len(scene.items), 2, replace=False)
        a, b = scene.items[i], scene.items[j]
        text = f"{_item_phrase(a, rng)} {_relation(a, b, rng)} {_item_phrase(b, rng)}"
    else:
        it = scene.items[rng.integers(len(scene.items))]
        text = f"{_pick(rng, ['a view of', 'a scene with', 'a simple scene of'])} {_item_phrase(it, rng)} " \
               f"{_background_adverbial(scene, rng)}"
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.5 else text


def make_captions(scene: Scene, rng, n: int = 5) -> list[str]:
    """``n`` distinct captions (fewer only if the templates run out); the first names every item."""
    out: list[str] = [_caption(scene, rng, mention_all=True)]
    for _ in range(40 * n):
        if len(out) == n:
            break
        c = _caption(scene, rng, mention_all=False)
        if c not in out:
            out.append(c)
    return out


def describe_scene(scene: Scene) -> str:
    """An exhaustive, templated description of the scene."""
    if scene.background == "plain":
        bg = f"A plain {scene.bg_colour} background."
    else:
        bg = (f"An outdoor place: {scene.sky} sky, {scene.ground} ground, horizon at {scene.horizon:.0%} of the height, "
              f"a {'house' if scene.building == 'house' else 'tall building'} "
              f"{'in the centre' if scene.building_hpos == 'centre' else 'on the ' + scene.building_hpos}.")
    parts = []
    for it in scene.items:
        what = it.kind if it.category == "object" else {"face": "face", "body": "person", "word": "sign with writing"}[
            it.category]
        parts.append(f"{_article(it.colour)} {what} ({it.category}) at the {it.vpos} {it.hpos}, size {it.scale:.2f}")
    return f"{bg} Items: {'; '.join(parts)}."


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


def _ncsnr_grouped(grouped: np.ndarray, means: np.ndarray) -> np.ndarray:
    """:func:`brainharness.metrics.noise_ceiling.ncsnr` for trials already grouped as (stimuli, repeats, voxels).

    The same formula (mean over stimuli of the ddof=1 variance across repeats), computed
    without re-sorting the trials — it is the bottleneck at NSD size otherwise. The tests
    check it against :func:`~brainharness.metrics.noise_ceiling.ncsnr` on the stored trials.
    """
    dev = grouped - means[:, None, :]
    noise_var = np.einsum("irv,irv->iv", dev, dev).mean(0, dtype=np.float64) / (grouped.shape[1] - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.sqrt(np.clip(1.0 - noise_var, 0.0, None)) / np.sqrt(noise_var)
    return np.nan_to_num(snr, nan=0.0, posinf=0.0).astype(np.float32)


def _read_matrix(dset) -> np.ndarray:
    """Read a 2-D HDF5 dataset in blocks of whole chunk columns (much faster than one big read)."""
    out = np.empty(dset.shape, dtype=dset.dtype)
    step = dset.chunks[1] if dset.chunks else dset.shape[1]
    for v0 in range(0, dset.shape[1], max(1, step)):
        v1 = min(dset.shape[1], v0 + step)
        dset.read_direct(out, np.s_[:, v0:v1], np.s_[:, v0:v1])
    return out


# --------------------------------------------------------------------------------------------
# The dataset plugin
# --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("BRAINHARNESS_CACHE") or Path.home() / ".cache" / "brainharness")


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _int_param(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"synthetic: {name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"synthetic: {name} must be {bound}, got {value}")
    return int(value)


class _ImageReader:
    """Reads images by row from the dataset's HDF5 file; opens the file per call (fork-safe, picklable)."""

    def __init__(self, path: Path, n: int, size: int):
        self.path, self.n, self.size = Path(path), n, size

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.empty((0, self.size, self.size, 3), dtype=np.uint8)
        if rows.min() < 0 or rows.max() >= self.n:
            raise DataError(f"image rows must be in [0, {self.n}), got {rows.min()}..{rows.max()}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        try:
            with h5py.File(self.path, "r") as f:
                images = f["stimuli/images"]
                lo, hi = int(uniq[0]), int(uniq[-1]) + 1
                if hi - lo <= 2 * len(uniq):  # dense: one contiguous read
                    block = images[lo:hi][uniq - lo]
                else:  # h5py fancy indexing needs increasing indices
                    block = images[uniq]
        except OSError as e:
            raise DataError(f"cannot read synthetic images from {self.path}: {e}") from None
        return block[inverse.reshape(-1)]


@register_dataset("synthetic")
class SyntheticDataset:
    """Procedural scenes with captions and simulated voxel responses with a known truth.

    Parameters: ``n_train``, ``n_test`` (stimuli per split; the test ids are a seeded random
    subset of ``0..n_train+n_test-1``), ``n_voxels`` (per subject, ≥ 13 so that every ROI has
    a voxel), ``image_size`` (pixels, ≥ 16), ``n_subjects``, ``seed``, ``repeats`` (trials per
    stimulus, ≥ 2), ``trials_per_session``, ``noise_fraction`` (share of pure-noise voxels, in
    [0, 1]) and ``cache_dir`` (default ``$BRAINHARNESS_CACHE`` or ``~/.cache/brainharness``;
    the file goes under ``<cache_dir>/datasets/``). See the module docstring for the model.
    """

    VERSION = "1"
    accepts = ("n_train", "n_test", "n_voxels", "image_size", "n_subjects", "seed", "repeats",
               "trials_per_session", "noise_fraction", "cache_dir")

    def __init__(self, n_train: int = 1000, n_test: int = 300, n_voxels: int = 1000, image_size: int = 64,
                 n_subjects: int = 1, seed: int = 0, repeats: int = 3, trials_per_session: int = 750,
                 noise_fraction: float = 0.1, cache_dir: str | os.PathLike | None = None):
        self.n_train = _int_param("n_train", n_train, 2)
        self.n_test = _int_param("n_test", n_test, 2)
        self.n_voxels = _int_param("n_voxels", n_voxels, len(ROI_SPEC))
        self.image_size = _int_param("image_size", image_size, 16, 1024)
        self.n_subjects = _int_param("n_subjects", n_subjects, 1, 99)
        self.seed = _int_param("seed", seed, 0)
        self.repeats = _int_param("repeats", repeats, 2, 100)
        self.trials_per_session = _int_param("trials_per_session", trials_per_session, 10)
        if isinstance(noise_fraction, bool) or not isinstance(noise_fraction, numbers.Real) \
                or not 0 <= float(noise_fraction) <= 1:
            raise ConfigError(f"synthetic: noise_fraction must be a number in [0, 1], got {noise_fraction!r}")
        self.noise_fraction = float(noise_fraction)
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise ConfigError(f"synthetic: cache_dir must be a path, got {cache_dir!r}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    # -- identity ----------------------------------------------------------------------
    def params(self) -> dict:
        """The parameters that determine the numbers (everything but the cache folder)."""
        return {"n_train": self.n_train, "n_test": self.n_test, "n_voxels": self.n_voxels,
                "image_size": self.image_size, "n_subjects": self.n_subjects, "seed": self.seed,
                "repeats": self.repeats, "trials_per_session": self.trials_per_session,
                "noise_fraction": self.noise_fraction}

    @property
    def hash(self) -> str:
        return _short_hash({"params": self.params(), "version": self.VERSION})

    @property
    def fingerprint(self) -> str:
        """Identifies the stimulus set (ids and images) only: voxel parameters do not change it."""
        n = self.n_train + self.n_test
        return "synthetic-" + _short_hash({"n_stimuli": n, "image_size": self.image_size, "seed": self.seed,
                                           "version": self.VERSION})

    @property
    def path(self) -> Path:
        return self.cache_dir / "datasets" / f"synthetic-{self.hash}.h5"

    def describe(self) -> dict:
        return {"name": "synthetic", "version": self.VERSION, **self.params(), "cache_dir": str(self.cache_dir),
                "hash": self.hash, "path": str(self.path), "fingerprint": self.fingerprint}

    # -- loading -----------------------------------------------------------------------
    def load(self) -> Dataset:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One generator per file: concurrent workers wait for it instead of repeating the work.
            with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if not self.path.exists():
                        for stale in self.path.parent.glob(self.path.name + ".tmp-*"):
                            stale.unlink(missing_ok=True)  # left by a killed generator
                        self.generate()
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        try:
            return self._read()
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"synthetic dataset file {self.path} is unreadable ({e}); delete it to regenerate") from None

    def generate(self) -> Path:
        """Write the HDF5 file (temporary name, renamed when complete). Returns its path."""
        final = self.path
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        log.info("generating the synthetic dataset into %s", final)
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["version"] = self.VERSION
                f.attrs["params"] = json.dumps(self.params(), sort_keys=True)
                feats = self._write_stimuli(f)
                for k in range(self.n_subjects):
                    self._write_subject(f, k, feats)
                f.attrs["complete"] = True
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    # -- generation --------------------------------------------------------------------
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_train + self.n_test
        rng = np.random.default_rng([self.seed, 2000])
        test = np.zeros(n, dtype=bool)
        test[rng.choice(n, size=self.n_test, replace=False)] = True
        return np.flatnonzero(~test), np.flatnonzero(test)

    def _write_stimuli(self, f: h5py.File) -> dict:
        n, size = self.n_train + self.n_test, self.image_size
        ids = np.arange(n, dtype=np.int64)
        train_ids, test_ids = self._split()
        g = f.create_group("stimuli")
        g.create_dataset("ids", data=ids)
        g.create_dataset("train_ids", data=train_ids)
        g.create_dataset("test_ids", data=test_ids)
        images = g.create_dataset("images", shape=(n, size, size, 3), dtype=np.uint8, chunks=(1, size, size, 3),
                                  compression="gzip", compression_opts=1)
        low = np.empty((n, N_LOW), dtype=np.float32)
        cat = np.empty((n, N_CAT), dtype=np.float32)
        pres = np.empty((n, len(PRESENCE_COLUMNS)), dtype=bool)
        captions, descriptions = [], []
        for start in range(0, n, IMAGE_BATCH):
            stop = min(n, start + IMAGE_BATCH)
            batch = np.empty((stop - start, size, size, 3), dtype=np.uint8)
            for i in range(start, stop):
                scene = make_scene(scene_rng(self.seed, i, 0))
                batch[i - start] = render(scene, size)
                cat[i] = category_features(scene)
                pres[i] = presence(scene)
                captions.append(make_captions(scene, scene_rng(self.seed, i, 1)))
                descriptions.append(describe_scene(scene))
            images[start:stop] = batch
            low[start:stop] = low_level_features(batch)
        feats = {"features_low": zscore_columns(low), "features_category": zscore_columns(cat)}
        for name, arr in feats.items():
            g.create_dataset(name, data=arr)
        g.create_dataset("category_presence", data=pres)
        g.create_dataset("captions_json", data=json.dumps(captions), dtype=h5py.string_dtype())
        g.create_dataset("descriptions_json", data=json.dumps(descriptions), dtype=h5py.string_dtype())
        return feats

    def _write_subject(self, f: h5py.File, k: int, feats: dict) -> None:
        n = self.n_train + self.n_test
        rng = np.random.default_rng([self.seed, 3000, k])
        group, w_low, w_cat, frac_low, pure = voxel_model(rng, self.n_voxels, self.noise_fraction)
        snr = np.exp(rng.uniform(*np.log(SNR_RANGE), size=self.n_voxels))
        noise_sd = (1.0 / snr).astype(np.float32)

        trial_rows = rng.permutation(np.repeat(np.arange(n), self.repeats))  # stimulus row of each trial (ids = rows)
        n_trials = len(trial_rows)
        n_sessions = max(1, int(round(n_trials / self.trials_per_session)))
        sessions = np.repeat(np.arange(n_sessions), [len(a) for a in np.array_split(np.arange(n_trials), n_sessions)])
        by_stim = np.argsort(trial_rows, kind="stable")  # trials grouped by stimulus row

        train_ids, test_ids = self._split()
        is_test = np.zeros(n, dtype=bool)
        is_test[test_ids] = True
        trial_test = is_test[trial_rows]

        g = f.create_group(f"subjects/{self.subject_name(k)}")
        splits = {}
        for split, ids, sel in (("train", train_ids, ~trial_test), ("test", test_ids, trial_test)):
            sg = g.create_group(split)
            sg.create_dataset("stim_ids", data=ids)
            sg.create_dataset("trial_stim", data=trial_rows[sel].astype(np.int64))
            sg.create_dataset("trial_session", data=sessions[sel].astype(np.int32))
            nt = int(sel.sum())
            sg.create_dataset("trials", shape=(nt, self.n_voxels), dtype=np.float32,
                              chunks=(max(1, min(nt, 1024)), min(self.n_voxels, 256)))
            sg.create_dataset("averaged", shape=(len(ids), self.n_voxels), dtype=np.float32,
                              chunks=(max(1, min(len(ids), 1024)), min(self.n_voxels, 256)))
            splits[split] = (sg, ids, sel)

        signal_sd = np.zeros(self.n_voxels, dtype=np.float32)
        est_snr = np.zeros(self.n_voxels, dtype=np.float32)
        for c, v0 in enumerate(range(0, self.n_voxels, VOXEL_CHUNK)):
            v1 = min(self.n_voxels, v0 + VOXEL_CHUNK)
            crng = np.random.default_rng([self.seed, 4000, k, c])
            signal, _ = voxel_signal(feats["features_low"], feats["features_category"], w_low[:, v0:v1],
                                     w_cat[:, v0:v1], frac_low[v0:v1])
            signal_sd[v0:v1] = signal[test_ids].std(0)
            raw = crng.standard_normal((n_trials, v1 - v0), dtype=np.float32)
            raw *= noise_sd[v0:v1]
            raw += signal[trial_rows]
            del signal
            total_sd = np.sqrt(1.0 + noise_sd[v0:v1] ** 2)
            gain = np.exp(crng.normal(0, 0.15, size=(n_sessions, v1 - v0))).astype(np.float32)
            offset = (crng.normal(0, 0.5, size=(n_sessions, v1 - v0)) * total_sd).astype(np.float32)
            raw *= gain[sessions]
            raw += offset[sessions]
            z = zscore_within_sessions(raw, sessions)
            del raw
            grouped = z[by_stim].reshape(n, self.repeats, v1 - v0)  # rows = stimulus rows
            averaged = grouped.mean(1)
            est_snr[v0:v1] = _ncsnr_grouped(grouped, averaged)
            del grouped
            for sg, ids, sel in splits.values():
                sg["trials"][:, v0:v1] = z[sel]
                sg["averaged"][:, v0:v1] = averaged[ids]
            del z, averaged

        counts = np.full(len(test_ids), self.repeats)
        inv_n = inverse_repeats(counts)
        true_nc = (100.0 * signal_sd.astype(np.float64) ** 2
                   / (signal_sd.astype(np.float64) ** 2 + noise_sd.astype(np.float64) ** 2 * inv_n)).astype(np.float32)
        g.create_dataset("noise_ceiling", data=noise_ceiling(est_snr, counts))
        tg = g.create_group("truth")
        tg.create_dataset("noise_ceiling", data=true_nc)
        tg.create_dataset("signal_sd", data=signal_sd)
        tg.create_dataset("noise_sd", data=noise_sd)
        tg.create_dataset("ncsnr", data=(signal_sd / noise_sd).astype(np.float32))
        tg.create_dataset("pure_noise", data=pure)
        rg = g.create_group("rois")
        for gi, (name, *_rest) in enumerate(ROI_SPEC):
            if name:
                rg.create_dataset(name, data=group == gi)
        rg.create_dataset("nsdgeneral", data=np.ones(self.n_voxels, dtype=bool))
        g.attrs["n_sessions"] = n_sessions

    @staticmethod
    def subject_name(k: int) -> str:
        return f"subj{k + 1:02d}"

    # -- reading -----------------------------------------------------------------------
    def _read(self) -> Dataset:
        with h5py.File(self.path, "r") as f:
            if not f.attrs.get("complete", False) or str(f.attrs.get("version")) != self.VERSION:
                raise DataError(f"synthetic dataset file {self.path} is incomplete or of another version; "
                                "delete it to regenerate")
            s = f["stimuli"]
            ids = s["ids"][:]
            extras = {"features_low": s["features_low"][:], "features_category": s["features_category"][:]}
            extras["features_all"] = np.concatenate([extras["features_low"], extras["features_category"]], axis=1)
            extras["category_presence"] = s["category_presence"][:]
            captions = json.loads(s["captions_json"].asstr()[()])
            descriptions = json.loads(s["descriptions_json"].asstr()[()])
            stimuli = Stimuli(
                ids=ids, read_images=_ImageReader(self.path, len(ids), self.image_size),
                captions={int(i): c for i, c in zip(ids, captions)},
                descriptions={int(i): d for i, d in zip(ids, descriptions)},
                extras=extras, fingerprint=self.fingerprint)
            subjects = {}
            n_sessions = {}
            for name in sorted(f["subjects"]):
                g = f["subjects"][name]
                resp = {split: Responses(g[split]["stim_ids"][:], _read_matrix(g[split]["averaged"]),
                                         _read_matrix(g[split]["trials"]), g[split]["trial_stim"][:])
                        for split in ("train", "test")}
                subjects[name] = Subject(
                    name=name, train=resp["train"], test=resp["test"],
                    rois={r: g["rois"][r][:] for r in ROI_NAMES},
                    noise_ceiling=g["noise_ceiling"][:], nc_source="estimated from single trials (NSD formula)",
                    truth={key: g["truth"][key][:] for key in g["truth"]})
                n_sessions[name] = int(g.attrs["n_sessions"])
        info = {**self.describe(), "n_sessions": n_sessions, "roi_names": list(ROI_NAMES),
                "feature_names": {"features_low": list(LOW_FEATURE_NAMES),
                                  "features_category": list(CATEGORY_FEATURE_NAMES)},
                "category_presence_columns": list(PRESENCE_COLUMNS)}
        return Dataset(name="synthetic", stimuli=stimuli, subjects=subjects, info=info)
