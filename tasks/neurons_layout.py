"""The ``neurons`` task's leaderboard layout: one record → three (four) tables of seed 002's analysis.

``<task>-ablation``: a row per (layers, prefix, units) — ``p(c)`` after ablation over ``p(c)``
before, one column per k (the ablation curve; drawn as a heatmap, rows × k). Rows of random
units are the baseline (reference rows). ``<task>-overlap``: a row per layers and brain prefix
(stage 1, and stage 2 where run) against the image prefix (top-k overlap, rank correlation of g,
agreement of the first token c), with the shuffled-brain pairing as a reference row.
``<task>-caption-tokens`` (``tokens: caption`` only): the same figures on every caption token, and
across the tokens of one caption. ``<task>-semantics``: the sentence-model similarity (to the
image's captions) and CLIPScore (to the image) of the decoded top units' tokens, a row per prefix,
and the random image–unit pairing (Table 1's baseline) as a reference row.
"""
from __future__ import annotations

from brainharness.layout import Layout, Plot, Row, Scores, Table

REFERENCES = {"random": "baseline: k random units of the same layers (mean over draws)",
              "shuffled brain vs image": "baseline: the brain prefix of another image",
              "random pairing": "baseline: images and decoded units paired at random"}


def _reference(label: str) -> str | None:
    """The baseline a row is, if it is one (``shuffled brain (stage 2) vs image`` too)."""
    if label.startswith("shuffled "):
        return REFERENCES["shuffled brain vs image"] + ("" if label == "shuffled brain vs image" else
                                                        " (" + label[len("shuffled "):-len(" vs image")] + ")")
    return REFERENCES.get(label)


def _rows(record: dict, table: str) -> list[dict]:
    return [r for r in (record.get("tables") or {}).get(table) or [] if isinstance(r, dict)]


def _row(record: dict, scores: dict, main: str | None, labels: dict, reference: str | None = None) -> Row:
    return Row({**record, "tables": {}, "scores": scores, "main_score": main}, labels, reference)


def split_ablation(record: dict) -> list[Row]:
    curves: dict[tuple, dict] = {}
    for r in _rows(record, "ablation"):
        key = (str(r.get("layers")), str(r.get("prefix")), str(r.get("units")))
        curves.setdefault(key, {})[f"k={r.get('k')}"] = r.get("p_ratio")
    return [_row(record, scores, None, {"layers": lay, "prefix": pre, "units": units}, REFERENCES.get(units))
            for (lay, pre, units), scores in curves.items()]


def split_overlap(record: dict, table: str = "comparison") -> list[Row]:
    rows: dict[tuple, dict] = {}
    for r in _rows(record, table):
        key = (str(r.get("layers")), str(r.get("pair")))
        first = {"token_agreement": r.get("token_agreement")} if table == "comparison" else \
            {"tokens_per_caption": r.get("tokens_per_caption"), "n_images": r.get("n_images")}
        s = rows.setdefault(key, {"rank_corr": r.get("rank_corr"), **first})
        s[f"overlap@{r.get('k')}"] = r.get("overlap")
        s[f"chance@{r.get('k')}"] = r.get("chance_overlap")
    out = []
    for (lay, pair), scores in rows.items():
        main = next((k for k in scores if k.startswith("overlap@")), None)
        out.append(_row(record, scores, main, {"layers": lay, "pair": pair}, _reference(pair)))
    return out


def split_caption_tokens(record: dict) -> list[Row]:
    return split_overlap(record, "caption_tokens")


def split_semantics(record: dict) -> list[Row]:
    out = []
    for r in _rows(record, "semantics"):
        scores = {k: r.get(k) for k in ("sentence", "clipscore", "n_images", "units_per_image")}
        pairing = str(r.get("pairing"))
        label = "random pairing" if pairing == "random" else pairing
        out.append(_row(record, scores, "sentence", {"prefix": str(r.get("prefix")), "pairing": label},
                        REFERENCES.get(label)))
    return out


NEURONS_LAYOUT = Layout(
    Table(suffix="ablation", name="ablation_curves", title="p(c) after zeroing k units / p(c) before",
          description="seed 002 Fig. 6: units ranked by g = Z·∂y/∂Z (top) against k random units of the same "
                      "layers; 'image's top units' zeroes the image prefix's top units in the brain prefix's pass",
          columns=Scores(main_first=False), split=split_ablation, labels=("layers", "prefix", "units"),
          ranked=False, unranked_title="Ablation curves", unranked_note="Curves: lower = the units matter more.",
          plots=(Plot("heatmap", {"title": "ablation curves: p(c) ratio per k", "digits": 2}),)),
    Table(suffix="overlap", name="attribution_overlap", title="brain prefix vs image prefix: the units they drive",
          description="top-k overlap of the units ranked by g, Spearman correlation of g over all units, share of "
                      "images whose first predicted token agrees; chance@k = k / units",
          columns=Scores(main_first=True), split=split_overlap, labels=("layers", "pair")),
    Table(suffix="semantics", name="unit_semantics", title="decoded units vs the image's captions",
          description="seed 002 Table 1: sentence-model similarity of each top unit's decoded tokens to the "
                      "image's captions and CLIPScore to the image (max over units, mean over images); CLIPScore "
                      "missing without CLIP weights in the local caches",
          columns=Scores(main_first=True), split=split_semantics, labels=("prefix", "pairing")),
    Table(suffix="caption-tokens", name="caption_token_attribution",
          title="attribution on every caption token (tokens: caption)",
          description="'<prefix>: across tokens': top-k overlap and rank correlation of g between the tokens of a "
                      "prefix's own greedy caption (mean over token pairs, then images); '<brain> vs image': the "
                      "brain prefix teacher-forced on the image prefix's caption, compared token by token (mean "
                      "over tokens, then images), the shuffled brain prefix on the same caption as baseline",
          columns=Scores(main_first=True), split=split_caption_tokens, labels=("layers", "pair")),
)
