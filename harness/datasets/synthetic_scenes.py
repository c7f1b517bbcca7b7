"""Scenes of the synthetic dataset: their content, drawn from one seeded stream per stimulus, and
their rendering to pixels (numpy masks; no drawing library, so images are identical everywhere).

Used by :mod:`brainharness.datasets.synthetic` and by the ``blip2-synthetic`` backbone's corpus.
Changing anything here changes the images: bump ``SyntheticDataset.VERSION``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CATEGORIES = ("face", "body", "word", "object")
OBJECT_KINDS = ("ball", "box", "triangle")
GROUNDS = ("grass", "street", "sand")
BUILDINGS = ("house", "tower")
SKIES = ("blue", "grey", "sunset")

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
