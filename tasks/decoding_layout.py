"""The ``decoding`` task's leaderboard layout: one record → the three tables of seed 000.

A decoding record holds Table 1 (``tables.retrieval``, rows per ``stage``), Table 2
(``tables.captioning``, rows per ``system``) and Table 3 (``tables.roi_captions``, per ROI and
stage). The leaderboard shows them as ``<task>-retrieval`` (a row per stage, with the paired
Δ to stage 1), ``<task>-captioning`` (a row per system) and ``<task>-roi-captions`` (a row per
ROI, a column per stage, nothing ranked). Reference systems that are not brain decoders — the
caption the model writes for the true image (the ceiling) and the shuffled-brain floor — are
listed but never ranked.
"""
from __future__ import annotations

from dataclasses import replace

from brainharness.layout import Layout, Row, Scores, Table, Texts
from brainharness.tasks.retrieval import RETRIEVAL_TABLE, chance_notes, direction_name

PAPER_COLUMNS = {"I→B": "image→brain", "B→I": "brain→image", "T→B": "brain→text", "B→T": "text→brain"}
"""Seed 000 Table 1's column labels → the direction its authors' code computed (``inference.py``).
The images use MindEye's ``batchwise_cosine_similarity``, which returns the transposed matrix
(rows: images), so the value printed as ``img_to_brain`` (the paper's I→B) ranks the brain
samples for each image: image→brain here. The texts' ``logits_per_brain`` has brain rows, so
``text_to_brain`` (the paper's T→B, "retrieving text from fMRI") ranks texts per brain sample:
brain→text here."""

REFERENCE_SYSTEMS = {"true image": "reference row: the true image, not a brain decoder",
                     "shuffled brain": "reference row: brain captions scored against another image's references"}
CAPTION_META = ("system", "n_images", "brain_model")

CAPTION_COLUMNS = (
    ("METEOR", ("meteor",)),
    ("ROUGE-1", ("rouge1",)),
    ("ROUGE-L", ("rougel",)),
    ("Sentence", ("sentence", "sentencesim", "sentencesimilarity", "sentencetransformer", "minilm",
                  "allminilml6v2", "sbert")),
    ("CLIP-B", ("clipb", "clipb32", "clipvitb32", "clipbase")),
    ("CLIP-L", ("clipl", "clipl14", "clipvitl14", "cliplarge")),
    ("BLEU-1", ("bleu1",)),
    ("BLEU-2", ("bleu2",)),
    ("BLEU-3", ("bleu3",)),
    ("BLEU-4", ("bleu4",)),
    ("CIDEr", ("cider",)),
)
"""Seed 000 Table 2 columns (the first six always shown), with the score names they gather."""


def _rows(record: dict, table: str, field: str) -> list[dict]:
    return [r for r in (record.get("tables") or {}).get(table) or [] if isinstance(r, dict) and field in r]


def _part(record: dict, tables: dict, scores: dict, main: str | None) -> dict:
    return {**record, "tables": tables, "scores": scores, "main_score": main}


def split_stages(record: dict) -> list[Row]:
    """Table 1: a row per model stage, scored by its retrieval rows."""
    rows = _rows(record, "retrieval", "stage")
    out = []
    for stage in sorted({r.get("stage") for r in rows}, key=str):
        part = [r for r in rows if r.get("stage") == stage]
        scores = {r["direction"]: r.get("mean") for r in part if "direction" in r}
        out.append(Row(_part(record, {"retrieval": part}, scores, "brain→image"), {"system": f"stage {stage}"}))
    return out


def split_systems(record: dict) -> list[Row]:
    """Table 2: a row per captioning system; the reference systems are reference rows."""
    out = []
    for row in _rows(record, "captioning", "system"):
        system = str(row["system"])
        scores = {k: v for k, v in row.items() if k not in CAPTION_META}
        main = record.get("main_score") if record.get("main_score") in scores else "meteor"
        out.append(Row(_part(record, {}, scores, main), {"system": system}, REFERENCE_SYSTEMS.get(system)))
    return out


def split_rois(record: dict) -> list[Row]:
    """Table 3: a row per ROI, its caption per stage."""
    by_roi: dict[str, dict] = {}
    for row in _rows(record, "roi_captions", "roi"):
        by_roi.setdefault(str(row["roi"]), {})[f"stage {row.get('stage')}"] = row.get("caption")
    return [Row(_part(record, {}, captions, None), {"roi": roi}) for roi, captions in by_roi.items()]


def stage_notes(records: list[dict]) -> list[str]:
    paired = any("delta" in r and direction_name(r.get("direction", ""))
                 for rec in records for r in _rows(rec, "retrieval", "direction"))
    delta = ["Δ = this row − stage 1 of the same record on the same trials, with a 95 % CI over test images "
             "(the ± column's CI resamples one test set: it is not a test of a difference)"] if paired else []
    if any(direction_name(r.get("direction", "")) for rec in records for r in _rows(rec, "retrieval", "direction")):
        delta.append(paper_columns_note())
    rows = [r for rec in records for r in _rows(rec, "retrieval", "direction")]
    if any(r.get("space") == "projected" and "image" in str(r.get("direction")) for r in rows):
        delta.append("stage 2 image↔brain: projected, per-token-normalised features (the authors' code); "
                     "stage 1: Q-Former outputs")
    if any(r.get("text_caption") == "random" for r in rows):
        delta.append("text: a random caption of each image per trial (seeded), as the authors' code")
    return delta + chance_notes(records)


def paper_columns_note() -> str:
    """The note that sets these columns beside seed 000's Table 1 (:data:`PAPER_COLUMNS`)."""
    pairs = ", ".join(f"{label} = {d}" for label, d in PAPER_COLUMNS.items())
    return (f"seed 000 Table 1 columns: {pairs} — what the authors' inference.py computed (MindEye's "
            "batchwise_cosine_similarity transposes the image matrix), not the paper's wording")


DECODING_LAYOUT = Layout(
    replace(RETRIEVAL_TABLE, suffix="retrieval", split=split_stages, labels=("system",), notes=stage_notes),
    Table(suffix="captioning", name="captioning", title="caption similarity to the references",
          description="seed 000 Table 2 columns first", columns=Scores(CAPTION_COLUMNS, always=6, main_first=False),
          split=split_systems, labels=("system",)),
    Table(suffix="roi-captions", name="roi_captions", title="captions of ROI-synthetic brain inputs",
          description="seed 000 Table 3: the brain model's input is 1 on the ROI's voxels and 0 elsewhere; its "
                      "prediction, normalised and scaled, is captioned by the language model (one column per "
                      "brain-model stage; one table per subject)",
          columns=Texts(), split=split_rois, labels=("roi",), ranked=False, unranked_title="Captions",
          unranked_note="Generated text: not ranked.", plots=()),
)
