"""A seed-000 ``decoding`` record → the three tables of the paper, as derived records.

One decoding record holds Table 1 (retrieval rows per ``stage``), Table 2 (captioning rows per
``system``) and Table 3 (``roi_captions`` per ROI and stage). The leaderboard shows them as three
tables, ``<task>-retrieval``, ``<task>-captioning`` and ``<task>-roi-captions``; each derived record
is the original with one row's worth of ``tables`` / ``scores`` and the row's label in
``_system`` (or ``_roi``), so the ordinary layouts build them. Reference rows that are not brain
decoders — the caption the model writes for the true image (the ceiling) and the shuffled-brain
floor — are listed but never ranked (``_reference``).
"""
from __future__ import annotations

REFERENCE_SYSTEMS = {"true image": "reference row: the true image, not a brain decoder",
                     "shuffled brain": "reference row: brain captions scored against another image's references"}
CAPTION_META = ("system", "n_images", "brain_model")


def is_decoding(record: dict) -> bool:
    tables = record.get("tables") or {}
    retrieval = tables.get("retrieval") or []
    captioning = tables.get("captioning") or []
    return any(isinstance(r, dict) and "stage" in r for r in retrieval) or \
        any(isinstance(r, dict) and "system" in r for r in captioning)


def _derived(record: dict, task: str, layout: str, tables: dict, scores: dict, main: str | None, **extra) -> dict:
    return {**record, "key": {**record["key"], "task": task}, "tables": tables, "scores": scores,
            "main_score": main, "_layout": layout, **extra}


def expand(record: dict) -> list[tuple[str, dict]]:
    """``[(table name, derived record)]`` for a decoding record; ``[(task, record)]`` otherwise."""
    task = str(record["key"]["task"])
    if not is_decoding(record):
        return [(task, record)]
    tables = record.get("tables") or {}
    out = []
    retrieval = [r for r in tables.get("retrieval") or [] if isinstance(r, dict)]
    for stage in sorted({r.get("stage") for r in retrieval}, key=str):
        rows = [r for r in retrieval if r.get("stage") == stage]
        name = f"{task}-retrieval"
        out.append((name, _derived(record, name, "retrieval", {"retrieval": rows},
                                   {r["direction"]: r.get("mean") for r in rows if "direction" in r},
                                   "brain→image", _system=f"stage {stage}")))
    for row in tables.get("captioning") or []:
        if not isinstance(row, dict) or "system" not in row:
            continue
        name, system = f"{task}-captioning", str(row["system"])
        scores = {k: v for k, v in row.items() if k not in CAPTION_META}
        extra = {"_system": system}
        if system in REFERENCE_SYSTEMS:
            extra["_reference"] = REFERENCE_SYSTEMS[system]
        main = record.get("main_score") if record.get("main_score") in scores else "meteor"
        out.append((name, _derived(record, name, "captioning", {}, scores, main, **extra)))
    by_roi: dict[str, dict] = {}
    for row in tables.get("roi_captions") or []:
        if isinstance(row, dict) and "roi" in row:
            by_roi.setdefault(str(row["roi"]), {})[f"stage {row.get('stage')}"] = row.get("caption")
    for roi, captions in by_roi.items():
        name = f"{task}-roi-captions"
        out.append((name, _derived(record, name, "roi_captions", {}, captions, None, _roi=roi)))
    return out
