"""Captions of the synthetic scenes: five COCO-like sentences per image (varied templates and
synonyms, drawn from the stimulus's caption stream) and one exhaustive templated description.

Changing anything here changes the captions: bump ``SyntheticDataset.VERSION``.
"""
from __future__ import annotations

from .synthetic_scenes import Item, Scene


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
