"""``leaderboard.json``: the static site's content, machine-readable, one entry per record.

Each entry names the record (its identity hash, its path in the store, its page on the site),
who it is (dataset, variant, subject, backbone, weights, …) and, per leaderboard row it makes
(a record may make several, e.g. one per model stage), the rank or the reason it is not ranked
and every value column as ``{"value", "ci_low", "ci_high"}`` (intervals where the record has
them — e.g. bootstrap intervals over test images, stored when the record was scored; ``null`` where a
value is missing — never filled), and the comparison with its block's best row
(``tied_with_best``: true / false, null where no paired test was possible or the row is not
ranked; ``p_vs_best``: the Holm-adjusted p-value, see :mod:`.compare`). The file validates against
``leaderboard.schema.json`` (shipped in this package, copied beside the file).
"""
from __future__ import annotations

import math
from importlib import resources

import pandas as pd

from .build import VARIANT
from .compare import P_VALUE, TIED

SCHEMA_ID = "brainharness.leaderboard/1"
SCHEMA_FILE = "leaderboard.schema.json"
IDENTITY = ("dataset", VARIANT, "data_id", "subject", "backbone", "weights", "weights_source", "layer", "readout",
            "experiment", "seed")


def schema_text() -> str:
    """The JSON Schema of ``leaderboard.json`` (package data)."""
    return resources.files("brainharness.leaderboard").joinpath(SCHEMA_FILE).read_bytes().decode("utf-8")


def _plain(value):
    """A cell as JSON: NaN / NA → None, numpy scalars → Python, everything else as is."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _scores(df: pd.DataFrame, i, position: int) -> dict:
    a = df.attrs
    groups = a.get("interval_groups") or []
    out = {}
    if groups:
        for g in groups:
            if f"{g} mean" in df:
                out[g] = {"value": _plain(df.at[i, f"{g} mean"]), "ci_low": _plain(df.at[i, f"{g} ci_low"]),
                          "ci_high": _plain(df.at[i, f"{g} ci_high"])}
    else:
        intervals = (a.get("cell_intervals") or [])
        cis = intervals[position] if position < len(intervals) else {}
        for c in a.get("value_columns") or []:
            if c in df:
                lo, hi = cis.get(c, (None, None))
                out[c] = {"value": _plain(df.at[i, c]), "ci_low": _plain(lo), "ci_high": _plain(hi)}
    return out


def entries(tables: dict[str, pd.DataFrame], records: dict[str, dict], pages: dict[str, str]) -> list[dict]:
    """One entry per record shown (``records``: record path → record; ``pages``: record path →
    its page on the site), in table order."""
    out: dict[str, dict] = {}
    for task, df in tables.items():
        a = df.attrs
        labels = a.get("label_columns") or []
        for position, i in enumerate(df.index):
            path = str(df.at[i, "record"])
            record = records.get(path, {})
            key = record.get("key") or {}
            entry = out.setdefault(path, {
                "id": key.get("id"), "record": path, "page": pages.get(path),
                "task": key.get("task"), "created": (record.get("provenance") or {}).get("created"),
                "identity": {c.replace(" ", "_"): _plain(df.at[i, c]) if c in df else None for c in IDENTITY},
                "rows": []})
            entry["rows"].append({
                "table": task,
                "labels": {c: _plain(df.at[i, c]) for c in labels if c in df},
                "rank": _plain(df.at[i, "rank"]),
                "ranked": bool(df.at[i, "ranked"]),
                "reference": bool(df.at[i, "reference"]),
                "not_ranked_reason": str(df.at[i, "not_ranked_reason"] or "") or None,
                "main_score": {"name": a.get("main_score"), "value": _plain(df.at[i, "main_score"]),
                               "higher_is_better": not a.get("ascending", False)},
                "scores": _scores(df, i, position),
                "tied_with_best": _plain(df.at[i, TIED]) if TIED in df else None,
                "p_vs_best": _plain(df.at[i, P_VALUE]) if P_VALUE in df else None,
                "flags": str(df.at[i, "flags"] or "") or None,
            })
    return list(out.values())


def document(tables: dict[str, pd.DataFrame], records: dict[str, dict], pages: dict[str, str], meta: dict) -> dict:
    """The whole ``leaderboard.json`` object."""
    return {
        "schema": SCHEMA_ID,
        "generated_by": meta,
        "tables": [{"name": t, "title": df.attrs.get("title"), "main_score": df.attrs.get("main_score"),
                    "higher_is_better": not df.attrs.get("ascending", False), "ranked": df.attrs.get("ranked_table", True),
                    "levels": [{"data_id": d, "subject": s, "label": n, "value": v}
                               for (d, s), lv in (df.attrs.get("levels") or {}).items() for n, v in lv]}
                   for t, df in tables.items()],
        "entries": entries(tables, records, pages),
    }
