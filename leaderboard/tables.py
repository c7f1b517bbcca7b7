"""Results store → one leaderboard table per task (Markdown, CSV, LaTeX, static HTML).

The leaderboard is built from the results store alone (:class:`brainharness.results.ResultStore`).
Only records with ``status == "complete"`` and ``evaluated_on == "test"`` are used: sweep
trials and other model-selection records (``evaluated_on == "validation"``) and failed runs
never appear.

Rules (each one is tested in ``tests/test_leaderboard.py``):

* **Missing stays missing.** A metric a record does not have is ``NaN`` in the DataFrame,
  empty in the CSV and ``—`` in Markdown / LaTeX / HTML. Nothing is filled, and no summary is
  ever computed over a row or column with gaps: the ``all`` column of the encoding table is the
  record's own whole-brain score, not an average of its ROI cells.
* **Where the weights came from is a column** (``weights``: ``pretrained:<id>``, ``local``,
  ``random-init``, ``none (no learned weights)``). Rows whose weights are ``random-init`` (or
  whose weights source is unknown) are never ranked: they are listed in a separate
  "Not ranked" section below the ranked table and have no rank. ``none`` means the backbone has
  no learned weights at all (pixels, fixed baselines): that is a fixed, reproducible reference
  point, so it *is* ranked.
* **Ranking** is by the table's main score (the ``main_score`` most records of the task name),
  descending, within each dataset × subject (scores on different datasets or subjects are not
  comparable). Ties share the lower rank. A ranked-weights row without a main score gets no
  rank and sorts last.
* **No silent duplicates.** Every record is one row; the row identity (dataset, subject,
  backbone, weights, layer, readout, experiment, seed) keeps experiment and seed as columns so
  two experiments on one backbone stay distinguishable. If two records still share an identity
  both rows are kept and flagged, with their record paths shown.

Task layouts: ``encoding`` (and any task whose records carry a ``per_roi`` table) follows seed
003 Table 13 — one column per ROI (all, V1, V2, V3, V4, EBA, FBA, OFA, FFA, OPA, PPA, OWFA, VWFA;
``hV4`` is shown as V4; other ROIs follow), cells = per-ROI median noise-ceiling-normalised R²
in %. ``layerwise_encoding`` (records with a ``layer_scores`` table) has the same Table 13 columns, with
each ROI's cell taken at the layer chosen for it on validation, plus the chosen layers (CSV
columns ``<ROI> layer``; a "Best layer per ROI" table in Markdown / LaTeX / HTML) and one
ROI × layer heatmap PNG per record (:func:`brainharness.leaderboard.plots.layer_heatmap`).
``retrieval`` follows seed 000 Table 1 (top-1 accuracy, mean ± half 95 % CI per
direction; the CSV keeps mean / ci_low / ci_high as numbers). ``captioning`` follows seed 000
Table 2 (METEOR, ROUGE-1, ROUGE-L, Sentence, CLIP-B, CLIP-L, then any other scores). Any other
task gets one column per scalar entry of ``scores``.
"""
from __future__ import annotations

import html
import io
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from brainharness.results import ResultStore, atomic_write_bytes

from .decoding import expand

MISSING = "—"

ROI_ORDER = ("all", "V1", "V2", "V3", "V4", "EBA", "FBA", "OFA", "FFA", "OPA", "PPA", "OWFA", "VWFA")
ROI_ALIASES = {"hv4": "V4", "v4": "V4"}
"""ROI names in records → column names (matched case-insensitively)."""

RETRIEVAL_DIRECTIONS = ("brain→image", "image→brain", "text→brain", "brain→text")
DELTA_PARTS = ("delta", "delta_ci_low", "delta_ci_high")

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

LAYERWISE = "layerwise_encoding"
"""Task name whose records get the layer-wise layout (also detected from a ``layer_scores`` table)."""

RANKED_SOURCES = ("pretrained", "local", "none")
NOT_RANKED_REASONS = {"random-init": "random-init weights", None: "weights source unknown"}

IDENTITY = ("dataset", "subject", "backbone", "system", "roi", "weights", "layer", "readout", "experiment", "seed")
META = ("main_score", "weights_source", "ranked", "not_ranked_reason", "flags", "record")

BEST_LAYER_SECTION = "Best layer per ROI (chosen on a validation part of the training split)"

_EMPTY_NOTE_MARK = "<!-- brainharness-leaderboard: empty -->"


# --------------------------------------------------------------------------------------------
# records


def leaderboard_records(results_root: str | Path) -> list[dict]:
    """The records the leaderboard uses: complete, scored on the test split, with a key."""
    out = []
    for record in ResultStore(results_root).records():
        if record.get("status") != "complete" or record.get("evaluated_on") != "test":
            continue
        key = record.get("key")
        if not isinstance(key, dict) or not key.get("task"):
            continue
        out.append(record)
    return out


def _num(value) -> float:
    """A score as float; anything that is not a finite-or-NaN number is missing (NaN)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _norm(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def weights_info(record: dict) -> tuple[str | None, str]:
    """``(source, readable label)`` of a record's weights."""
    backbone = record.get("backbone") or {}
    w = backbone.get("weights") if isinstance(backbone, dict) else None
    if isinstance(w, str):
        w = {"source": w}
    w = w if isinstance(w, dict) else {}
    source = w.get("source")
    source = str(source).strip().lower() if source else None
    ident = w.get("id")
    revision = w.get("revision")
    if source == "pretrained":
        label = f"pretrained:{ident}" if ident else "pretrained"
        if revision and str(revision) not in str(ident or ""):
            label += f"@{revision}"
    elif source == "local":
        label = f"local:{os.path.basename(str(ident).rstrip('/'))}" if ident else "local"
    elif source == "random-init":
        label = "random-init"
    elif source == "none":
        label = "none (no learned weights)"
    else:
        key_w = (record.get("key") or {}).get("weights")
        label = f"unknown ({key_w})" if key_w else "unknown"
        source = None
    return source, label


def _text(value) -> str | float:
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value) if value else math.nan
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) if value else math.nan
    return str(value)


def _identity(record: dict, root: Path) -> dict:
    key = record["key"]
    backbone = record.get("backbone") if isinstance(record.get("backbone"), dict) else {}
    provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    source, label = weights_info(record)
    seed = provenance.get("seed")
    try:
        path = str(Path(record.get("_path", "")).resolve().relative_to(root.resolve()))
    except ValueError:
        path = str(record.get("_path", ""))
    return {
        "dataset": _text(key.get("dataset")),
        "subject": _text(key.get("subject")),
        "backbone": _text(key.get("backbone") or backbone.get("name")),  # the label: oracle vs oracle-shuffled
        "system": _text(record.get("_system")),  # rows derived from one decoding record (brainharness.leaderboard.decoding)
        "roi": _text(record.get("_roi")),
        "weights": label,
        "layer": _text(backbone.get("layer")),
        "readout": _text(backbone.get("readout")),
        "experiment": _text(key.get("experiment")),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else math.nan,
        "weights_source": source if source else math.nan,
        "record": path,
    }


# --------------------------------------------------------------------------------------------
# task layouts: each returns (value columns in order, {column: value} per record, formats, extras)


def _layout_of(task: str, records: list[dict]) -> str:
    hints = {r["_layout"] for r in records if r.get("_layout")}
    if len(hints) == 1:  # derived records (brainharness.leaderboard.decoding) name their layout
        return hints.pop()
    tables = [r.get("tables") or {} for r in records]
    if task == LAYERWISE or any((r.get("task") or {}).get("name") == LAYERWISE or t.get("layer_scores")
                                for r, t in zip(records, tables)):
        return "layerwise"
    if task in ("encoding", "retrieval", "captioning"):
        return task
    if any(t.get("per_roi") for t in tables):
        return "encoding"
    if any(t.get("retrieval") for t in tables):
        return "retrieval"
    return "generic"


def _roi_column(name: str) -> str:
    return ROI_ALIASES.get(str(name).lower(), str(name))


def _encoding_values(record: dict) -> tuple[dict, list[str]]:
    values = {"all": _num((record.get("scores") or {}).get("median_nc_r2"))}
    flags = []
    for row in (record.get("tables") or {}).get("per_roi") or []:
        if not isinstance(row, dict) or row.get("roi") in (None, "nsdgeneral"):
            continue  # nsdgeneral is the whole-brain mask: its score is the "all" column
        col = _roi_column(row["roi"])
        if col == "all":
            col = "all (ROI table)"
        value = _num(row.get("median_nc_r2"))
        if col in values:
            if not (values[col] == value or (math.isnan(values[col]) and math.isnan(value))):
                flags.append(f"conflicting {col} entries in per_roi; first kept")
            continue
        values[col] = value
    return values, flags


def _layerwise_values(record: dict) -> tuple[dict, dict, dict]:
    """Table 13 cells (test score at each ROI's validation-chosen layer), the chosen layer per
    ROI (``"<ROI> layer"`` columns) and the ROI × layer matrix for the heatmap."""
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    layers_by_roi = {"all layer": _text(details.get("best_layer"))}
    for row in (record.get("tables") or {}).get("per_roi") or []:
        if isinstance(row, dict) and row.get("roi") not in (None, "nsdgeneral"):
            layers_by_roi.setdefault(f"{_roi_column(row['roi'])} layer", _text(row.get("layer")))
    layers = [str(x) for x in details.get("layers") or []]
    rows = [r for r in (record.get("tables") or {}).get("layer_scores") or [] if isinstance(r, dict)]
    if not layers:
        layers = list(dict.fromkeys(str(r.get("layer")) for r in rows))
    rois = list(dict.fromkeys(_roi_column(r.get("roi")) for r in rows if r.get("roi") != "nsdgeneral"))
    rois = [c for c in ROI_ORDER if c in rois] + [c for c in rois if c not in ROI_ORDER]
    test = np.full((len(rois), len(layers)), np.nan)
    selected = np.zeros(test.shape, dtype=bool)
    for r in rows:
        col, layer = _roi_column(r.get("roi")), str(r.get("layer"))
        if col in rois and layer in layers:
            test[rois.index(col), layers.index(layer)] = _num(r.get("test"))
            selected[rois.index(col), layers.index(layer)] = bool(r.get("selected"))
    metric = next((str(r["metric"]) for r in rows if r.get("metric")), "median_nc_r2")
    matrix = {"rois": rois, "layers": layers, "test": test.tolist(), "selected": selected.tolist(), "metric": metric}
    shown = f"{layers[0]}…{layers[-1]} ({len(layers)})" if len(layers) > 1 else layers[0] if layers else math.nan
    return layers_by_roi, matrix, {"layer": shown}


def _direction(name) -> str | None:
    """Canonical retrieval direction (``brain→image`` …) of a table entry or score name."""
    text = str(name).lower().replace("->", "→")
    text = re.sub(r"[\s_-]to[\s_-]", "→", text)
    text = re.sub(r"(?<=[a-z])2(?=[a-z])", "→", text)  # b2i, brain2image
    abbrev = {"i": "image", "b": "brain", "t": "text", "img": "image", "txt": "text", "fmri": "brain"}
    m = re.search(r"(?<![a-z])(image|brain|text|img|txt|fmri|[ibt])\s*→\s*(image|brain|text|img|txt|fmri|[ibt])(?![a-z])",
                  text)
    if not m:
        return None
    a, b = (abbrev.get(x, x) for x in m.groups())
    return f"{a}→{b}" if a != b else None


def _retrieval_values(record: dict) -> tuple[dict, dict]:
    values, protocol = {}, {}
    for row in (record.get("tables") or {}).get("retrieval") or []:
        if not isinstance(row, dict):
            continue
        d = _direction(row.get("direction", ""))
        if d is None or f"{d} mean" in values:
            continue
        values[f"{d} mean"] = _num(row.get("mean"))
        values[f"{d} ci_low"] = _num(row.get("ci_low"))
        values[f"{d} ci_high"] = _num(row.get("ci_high"))
        if "delta" in row:  # paired difference to a reference model (decoding: stage 2 − stage 1)
            values.update({f"{d} {k}": _num(row.get(k)) for k in DELTA_PARTS})
        protocol[d] = (row.get("n_candidates"), row.get("n_trials"), _num(row.get("chance")))
    return values, protocol


def _caption_column(name: str) -> str:
    n = _norm(name)
    for column, aliases in CAPTION_COLUMNS:
        if n in aliases:
            return column
    return str(name)


def _scalar_scores(record: dict) -> dict:
    out = {}
    for name, value in (record.get("scores") or {}).items():
        if isinstance(value, (dict, list, str, bool)):
            continue
        out[str(name)] = _num(value)
    return out


def _fmt_kind(column: str, layout: str) -> str:
    if layout in ("encoding", "layerwise"):
        return "pct"
    if layout == "roi_captions":
        return "text"
    n = column.lower()
    if "nc_r2" in n or n.endswith("_pct") or "%" in n or "percent" in n:
        return "pct"
    if n.startswith("n_") or n in ("n", "seed"):
        return "int"
    return "acc"


# --------------------------------------------------------------------------------------------
# building


def _main_score_name(records: list[dict]) -> str | None:
    names = Counter(str(r["main_score"]) for r in records if r.get("main_score"))
    if not names:
        return None
    top = max(names.values())
    return sorted(n for n, c in names.items() if c == top)[0]


def _main_value(record: dict, name: str | None, layout: str, row: dict, main_column: str | None) -> float:
    if name is None:
        return math.nan
    value = _num((record.get("scores") or {}).get(name))
    if math.isnan(value) and main_column is not None:
        value = _num(row.get(main_column))
    return value


def _build_task(task: str, records: list[dict], root: Path) -> pd.DataFrame:
    layout = _layout_of(task, records)
    main = _main_score_name(records)
    rows, notes, protocols = [], [], {}
    value_cols: list[str] = []
    layer_cols: list[str] = []

    def add_cols(cols):
        for c in cols:
            if c not in value_cols:
                value_cols.append(c)

    for record in records:
        row = _identity(record, root)
        flags = []
        if layout in ("encoding", "layerwise"):
            values, f = _encoding_values(record)
            flags += f
            if layout == "layerwise":
                chosen, row["_matrix"], shown = _layerwise_values(record)
                row.update(chosen, **shown)
                layer_cols.extend(c for c in chosen if c not in layer_cols)
        elif layout == "retrieval":
            values, protocol = _retrieval_values(record)
            for d, p in protocol.items():
                protocols.setdefault(d, set()).add(p)
            if not values:  # no table: fall back to direction-named scores (no CI)
                for name, v in _scalar_scores(record).items():
                    d = _direction(name)
                    if d and f"{d} mean" not in values:
                        values.update({f"{d} mean": v, f"{d} ci_low": math.nan, f"{d} ci_high": math.nan})
        elif layout == "captioning":
            values = {}
            for name, v in _scalar_scores(record).items():
                values.setdefault(_caption_column(name), v)
        elif layout == "roi_captions":
            values = {str(k): v if isinstance(v, str) else math.nan for k, v in (record.get("scores") or {}).items()}
        else:
            values = _scalar_scores(record)
        add_cols(values)
        row.update(values)
        if record.get("main_score") and main and str(record["main_score"]) != main:
            flags.append(f"record's own main score is {record['main_score']}")
        row["_flags"] = flags
        row["_record"] = record
        rows.append(row)

    # column order per layout
    if layout in ("encoding", "layerwise"):
        extras = [c for c in value_cols if c not in ROI_ORDER]
        value_cols = list(ROI_ORDER) + extras
    elif layout == "retrieval":
        dirs = [d for d in RETRIEVAL_DIRECTIONS] + sorted(
            {c.rsplit(" ", 1)[0] for c in value_cols} - set(RETRIEVAL_DIRECTIONS))
        parts = ("mean", "ci_low", "ci_high") + (DELTA_PARTS if any(c.endswith(" delta") for c in value_cols) else ())
        value_cols = [f"{d} {part}" for d in dirs for part in parts]
    elif layout == "captioning":
        known = [c for c, _ in CAPTION_COLUMNS[:6]]
        value_cols = known + [c for c, _ in CAPTION_COLUMNS[6:] if c in value_cols] + \
            [c for c in value_cols if c not in dict(CAPTION_COLUMNS)]
    elif layout == "roi_captions":
        value_cols = sorted(value_cols)
    else:
        if main in value_cols:
            value_cols = [main] + [c for c in value_cols if c != main]

    # where the main score is shown
    main_column = None
    if main is not None:
        if layout in ("encoding", "layerwise") and main == "median_nc_r2":
            main_column = "all"
        elif layout == "retrieval" and _direction(main):
            main_column = f"{_direction(main)} mean"
        elif layout == "captioning" and _caption_column(main) in value_cols:
            main_column = _caption_column(main)
        elif main in value_cols:
            main_column = main
    for row in rows:
        row["main_score"] = _main_value(row["_record"], main, layout, row, main_column)
    if main is not None and main_column is None:
        main_column = "main_score"

    # ranking
    for row in rows:
        source = row["weights_source"] if isinstance(row["weights_source"], str) else None
        row["ranked"] = source in RANKED_SOURCES
        row["not_ranked_reason"] = "" if row["ranked"] else NOT_RANKED_REASONS.get(source, NOT_RANKED_REASONS[None])
        if row["ranked"] and row["_record"].get("_reference"):
            row["ranked"], row["not_ranked_reason"] = False, str(row["_record"]["_reference"])
        if layout == "roi_captions":  # captions: nothing to rank
            row["ranked"], row["not_ranked_reason"] = False, ""
        if row["ranked"] and math.isnan(row["main_score"]):
            row["_flags"].append("main score missing: not ranked")

    ident_cols = [c for c in IDENTITY if c in ("dataset", "subject", "backbone", "weights", "experiment", "seed")
                  or any(isinstance(r[c], str) for r in rows)]
    dup = Counter(tuple(_key_part(r[c]) for c in IDENTITY) for r in rows)
    n_dups = 0
    for row in rows:
        if dup[tuple(_key_part(row[c]) for c in IDENTITY)] > 1:
            row["_flags"].append("duplicate identity: see record column")
            n_dups += 1
    if n_dups:
        notes.append(f"{n_dups} rows share their identity with another row; both are kept and flagged "
                     "(the record column names each file).")
    for row in rows:
        row["flags"] = "; ".join(row.pop("_flags"))
        row.pop("_record")

    df = pd.DataFrame(rows)
    for c in value_cols + ["main_score"]:
        if c not in df:
            df[c] = math.nan
        if layout != "roi_captions" or c == "main_score":
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["seed"] = pd.array(df["seed"].tolist(), dtype="Int64") if "seed" in df else pd.array([], dtype="Int64")

    # order: dataset, subject, ranked first, main score descending (missing last), then identity
    df["_ds"] = df["dataset"].astype(str)
    df["_sub"] = df["subject"].astype(str)
    df["_unranked"] = (~df["ranked"]).astype(int)
    df["_nomain"] = df["main_score"].isna().astype(int)
    df["_neg"] = -df["main_score"].fillna(0.0)
    tie = [c for c in ("backbone", "weights", "layer", "readout", "experiment") if c in df]
    for c in tie:
        df[f"_t_{c}"] = df[c].astype(str)
    df = df.sort_values(["_unranked", "_ds", "_sub", "_nomain", "_neg"] + [f"_t_{c}" for c in tie] + ["seed"],
                        kind="mergesort", na_position="last").reset_index(drop=True)
    rankable = df["ranked"] & df["main_score"].notna()
    rank = pd.Series(pd.NA, index=df.index, dtype="Int64")
    if rankable.any():
        r = df[rankable].groupby(["_ds", "_sub"])["main_score"].rank(method="min", ascending=False)
        rank.loc[r.index] = r.astype("int64").to_numpy()
    df.insert(0, "rank", rank)
    if layout == "layerwise":
        layer_cols = [f"{c} layer" for c in ROI_ORDER] + sorted(set(layer_cols) - {f"{c} layer" for c in ROI_ORDER})
        for c in layer_cols:
            if c not in df:
                df[c] = math.nan
        df.attrs["layer_maps"] = df["_matrix"].tolist()  # row order; for the ROI × layer heatmaps
    df = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    df = df[["rank"] + ident_cols + value_cols + layer_cols + [c for c in META if c != "main_score"] + ["main_score"]]

    title, unit = {
        "encoding": ("median noise-ceiling-normalised R² (%)",
                     "cells: per-ROI median of 100·R²/NC over voxels above the noise-ceiling threshold; "
                     "all = the record's whole-brain median (not an average of the ROI cells)"),
        "retrieval": ("top-1 retrieval accuracy (mean ± half 95 % CI)",
                      "brain→image: for each brain sample, is its own image the best of the candidates; "
                      "image→brain: for each image, is its own brain sample the best (seed 000 writes "
                      "X→Y for 'retrieve X given Y', so its I→B is brain→image here)"),
        "captioning": ("caption similarity to the references", "seed 000 Table 2 columns first"),
        "roi_captions": ("captions of ROI-synthetic brain inputs",
                         "seed 000 Table 3: the brain model's input is 1 on the ROI's voxels and 0 elsewhere; its "
                         "prediction, normalised and scaled, is captioned by the language model (one column per "
                         "brain-model stage; one table per subject)"),
        "layerwise": ("brain score per ROI at its best layer, median noise-ceiling-normalised R² (%)",
                      "seed 003 Table 13 layout. Cells: per-ROI median of 100·R²/NC on the test split, at the "
                      "layer chosen for that ROI on a validation part of the training split (never on test); "
                      "all = the whole-brain median of the one layer best on validation. The chosen layers are "
                      "in the 'best layer per ROI' table and the '<ROI> layer' CSV columns; per-record ROI × "
                      "layer heatmaps show every layer's test score (descriptive)"),
    }.get(layout, ("scores", "one column per scalar score"))
    if layout == "retrieval" and any(c.endswith(" delta") for c in value_cols):
        notes.append("Δ = this row − stage 1 of the same record on the same trials, with a 95 % CI over test images "
                     "(the ± column's CI resamples one test set: it is not a test of a difference)")
    if layout == "retrieval":
        for d in RETRIEVAL_DIRECTIONS + tuple(sorted(set(protocols) - set(RETRIEVAL_DIRECTIONS))):
            for n_cand, n_trials, chance in sorted(protocols.get(d, ()), key=str):
                chance_s = f"{chance:.4f}" if not math.isnan(chance) else MISSING
                notes.append(f"{d}: chance = {chance_s} ({n_cand} candidates, {n_trials} trials)")
    df.attrs.update(
        task=task, layout=layout, title=title, description=unit[:1].upper() + unit[1:], main_score=main, main_column=main_column,
        value_columns=value_cols, identity_columns=ident_cols, layer_columns=layer_cols,
        formats={c: _fmt_kind(c, layout) for c in value_cols + ["main_score"]}, notes=notes,
        group_note="ranks restart within each dataset × subject" if
        df[["dataset", "subject"]].astype(str).drop_duplicates().shape[0] > 1 else "",
    )
    if layout in ("encoding", "layerwise") or main_column == "main_score" and main and "nc_r2" in main:
        df.attrs["formats"]["main_score"] = "pct"
    return df


def _key_part(v):
    return "\0nan" if isinstance(v, float) and math.isnan(v) else str(v)


def build_tables(results_root: str | Path) -> dict[str, pd.DataFrame]:
    """One numeric DataFrame per task (NaN for missing cells), in ranked order.

    Columns: ``rank`` (nullable int; empty for rows that are not ranked), the identity columns,
    the task's value columns, then ``weights_source``, ``ranked``, ``not_ranked_reason``,
    ``flags``, ``record`` and ``main_score`` (the value of the table's main score). Layout
    metadata (title, main score, formats, notes) is in ``df.attrs``.
    """
    root = Path(results_root)
    by_task: dict[str, list[dict]] = {}
    for record in leaderboard_records(root):
        for task, rec in expand(record):  # a decoding record → its three tables
            by_task.setdefault(task, []).append(rec)
    return {task: _build_task(task, recs, root) for task, recs in sorted(by_task.items())}


# --------------------------------------------------------------------------------------------
# display


def _fmt(value, kind: str) -> str:
    if value is None or value is pd.NA:
        return MISSING
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return MISSING
        if kind == "pct":
            return f"{value:.1f}"
        if kind == "int":
            return f"{value:.0f}"
        return f"{value:.3f}"
    text = str(value)
    return text if text else MISSING


def _display_columns(df: pd.DataFrame) -> list[str]:
    a = df.attrs
    layout = a.get("layout", "generic")
    cols = list(a.get("identity_columns") or [c for c in IDENTITY if c in df])
    if layout == "retrieval":
        dirs = [c[: -len(" mean")] for c in a.get("value_columns", []) if c.endswith(" mean")]
        cols += [d for d in dirs if d in RETRIEVAL_DIRECTIONS or df[f"{d} mean"].notna().any()]
    else:
        cols += [c for c in a.get("value_columns", []) if c in df]
    if a.get("main_column") == "main_score":
        cols.append("main_score")
    if "flags" in df and (df["flags"].astype(str).str.len() > 0).any():
        cols.append("flags")
    if "flags" in df and df["flags"].astype(str).str.contains("duplicate identity").any():
        cols.append("record")
    return cols


def _cell(df: pd.DataFrame, i, col: str) -> str:
    a = df.attrs
    formats = a.get("formats", {})
    if a.get("layout") == "retrieval" and f"{col} mean" in df:
        mean = df.at[i, f"{col} mean"]
        lo, hi = df.at[i, f"{col} ci_low"], df.at[i, f"{col} ci_high"]
        if pd.isna(mean):
            return MISSING
        text = f"{mean:.3f} ± {MISSING}" if pd.isna(lo) or pd.isna(hi) else f"{mean:.3f} ± {(hi - lo) / 2:.3f}"
        if f"{col} delta" in df and not pd.isna(df.at[i, f"{col} delta"]):
            d, dlo, dhi = (df.at[i, f"{col} {k}"] for k in DELTA_PARTS)
            text += f" (Δ {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}])"
        return text
    if col in ("flags", "not_ranked_reason", "record"):
        value = df.at[i, col]
        return "" if pd.isna(value) else str(value)
    return _fmt(df.at[i, col], formats.get(col, "acc") if col in formats else "text")


def _header(df: pd.DataFrame, col: str) -> str:
    if col == "main_score":
        return f"main score ({df.attrs.get('main_score')})"
    return col


def sections(df: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]]]]:
    """``[(title, header, rows of display strings)]``: the ranked table, then one
    "Not ranked: <reason>" section per reason. Ranked rows carry the rank column."""
    cols = _display_columns(df)
    if df.attrs.get("layout") == "roi_captions":  # text only: one unranked table
        return [("Captions", [_header(df, c) for c in cols], [[_cell(df, i, c) for c in cols] for i in df.index])]
    out = []
    ranked = df[df["ranked"].astype(bool)] if len(df) else df
    if len(ranked):
        header = ["rank"] + [_header(df, c) for c in cols]
        body = [[_fmt(r, "int") if not pd.isna(r) else MISSING for r in [ranked.at[i, "rank"]]]
                + [_cell(df, i, c) for c in cols] for i in ranked.index]
        out.append(("Ranked", header, body))
    rest = df[~df["ranked"].astype(bool)] if len(df) else df
    for reason in dict.fromkeys(rest["not_ranked_reason"].tolist()) if len(rest) else ():
        part = rest[rest["not_ranked_reason"] == reason]
        body = [[_cell(df, i, c) for c in cols] for i in part.index]
        out.append((f"Not ranked: {reason}", [_header(df, c) for c in cols], body))
    layer_cols = [c for c in df.attrs.get("layer_columns") or [] if c in df and
                  (c.removesuffix(" layer") in ROI_ORDER or df[c].notna().any())]
    if layer_cols and len(df):
        ident = list(df.attrs.get("identity_columns") or [])
        header = ["rank"] + ident + [c.removesuffix(" layer") for c in layer_cols]
        body = [[_fmt(df.at[i, "rank"], "int") if df.at[i, "ranked"] else "not ranked"]
                + [_cell(df, i, c) for c in ident] + [_fmt(df.at[i, c], "text") for c in layer_cols]
                for i in df.index]
        out.append((BEST_LAYER_SECTION, header, body))
    return out


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _ranking_sentence(df: pd.DataFrame, quote: str = "`") -> str:
    a = df.attrs
    main = a.get("main_score")
    if a.get("layout") == "roi_captions":
        return "Generated text: not ranked."
    if not main:
        return "No main score is named in these records, so no row is ranked."
    shown = a.get("main_column")
    where = f" (column {shown})" if shown and shown != "main_score" else ""
    extra = f"; {a['group_note']}" if a.get("group_note") else ""
    return (f"Ranked by {quote}{main}{quote}{where}, descending{extra}. Random-init weights are never ranked; "
            f"'none' = a fixed baseline without learned weights (ranked). {MISSING} = not reported.")


def render_markdown(task: str, df: pd.DataFrame) -> str:
    """The task's leaderboard as Markdown: ranked table, then the not-ranked sections."""
    a = df.attrs
    lines = [f"## {task} — {a.get('title', 'scores')}", ""]
    if a.get("description"):
        lines += [a["description"] + ".", ""]
    lines += [_ranking_sentence(df), ""]
    secs = sections(df)
    if not secs:
        lines += ["_No results._", ""]
    for title, header, body in secs:
        if title != "Ranked":
            lines += [f"### {title}", ""]
        lines += [_md_table(header, body), ""]
    notes = a.get("notes") or []
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def render_all_markdown(results_root: str | Path) -> str:
    tables = build_tables(results_root)
    if not tables:
        return _empty_note(results_root)
    return "\n".join(render_markdown(task, df) for task, df in tables.items())


def _empty_note(results_root) -> str:
    return (f"# brainharness leaderboard\n\nNo complete test-split results in `{results_root}` yet. "
            "Run an experiment (e.g. `brainharness run configs/demo.yaml`) and regenerate the "
            "leaderboard.\n")


def to_csv(df: pd.DataFrame) -> str:
    """Numeric CSV: missing cells are empty, floats at full precision."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, na_rep="")
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "→": r"$\rightarrow$", "±": r"$\pm$", "²": r"$^2$", "—": "---", "·": r"$\cdot$", "×": r"$\times$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_align(secs, n: int) -> str:
    """Right-align rank and value columns, left-align identity/text columns."""
    if not secs:
        return "l" * n
    header = secs[0][1]
    header = [""] * (n - len(header)) + header
    text = set(IDENTITY) | {"flags", "record"}
    return "".join("l" if h in text else "r" for h in header)


def render_latex(task: str, df: pd.DataFrame) -> str:
    """A booktabs ``table`` with the ranked rows, then the not-ranked sections."""
    secs = sections(df)
    a = df.attrs
    n = max((len(h) for _, h, _ in secs), default=1)
    lines = [f"% brainharness leaderboard: {task} (generated from the results store; do not edit)",
             "% needs \\usepackage{booktabs}", r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{_tex(task)}: {_tex(a.get('title', 'scores'))}. {_tex(_ranking_sentence(df, quote=''))}}}",
             rf"\label{{tab:leaderboard-{re.sub(r'[^A-Za-z0-9-]', '-', task)}}}",
             r"\begin{tabular}{" + _tex_align(secs, n) + "}", r"\toprule"]
    for k, (title, header, body) in enumerate(secs):
        if title != "Ranked":
            lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex(title)}}}}} \\"]
            # not-ranked sections have no rank column: keep alignment with an empty first cell
            if len(header) < n:
                header = [""] * (n - len(header)) + header
                body = [[""] * (n - len(row)) + row for row in body]
        if k == 0 or title != "Ranked":
            lines.append(" & ".join(_tex(h) for h in header) + r" \\")
            lines.append(r"\midrule")
        lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in a.get("notes") or []:
        lines.append(rf"\par\footnotesize {_tex(note)}")
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:80em;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1em;color:#a33}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.t{text-align:left}td.m{color:#999;text-align:center}
tr.nr td{background:#fbf4f4}p.d{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}
"""


def _html_table(header, body, unranked: bool) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    for row in body:
        cells = []
        for h, c in zip(header, row):
            cls = "m" if c == MISSING else ("t" if h in IDENTITY or h in ("flags", "record") else "")
            cells.append(f'<td class="{cls}">{html.escape(c)}</td>' if cls else f"<td>{html.escape(c)}</td>")
        out.append(f'<tr{" class=nr" if unranked else ""}>' + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def render_html(tables: dict[str, pd.DataFrame], images: dict[str, dict[str, bytes]] | None = None,
                title: str = "brainharness leaderboard") -> str:
    """A static, self-contained page: inline CSS, images embedded as data URIs, no scripts."""
    import base64

    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p class=d>Generated from the results store (complete, test-split records only). "
             f"{MISSING} = not reported; nothing is filled or averaged over gaps.</p>"]
    if not tables:
        parts.append("<p>No complete test-split results yet.</p>")
    if len(tables) > 1:
        parts.append("<p>" + " · ".join(f'<a href="#{html.escape(t)}">{html.escape(t)}</a>' for t in tables) + "</p>")
    for task, df in tables.items():
        a = df.attrs
        parts.append(f'<h2 id="{html.escape(task)}">{html.escape(task)} — {html.escape(a.get("title", ""))}</h2>')
        if a.get("description"):
            parts.append(f"<p class=d>{html.escape(a['description'])}.</p>")
        parts.append(f"<p class=d>{html.escape(_ranking_sentence(df, quote=''))}</p>")
        for sec_title, header, body in sections(df):
            if sec_title != "Ranked":
                parts.append(f"<h3>{html.escape(sec_title)}</h3>")
            parts.append(_html_table(header, body, sec_title != "Ranked"))
        if a.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in a["notes"]) + "</ul>")
        for name, png in (images or {}).get(task, {}).items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<p><img alt="{html.escape(task)} {html.escape(name)}" '
                         f'src="data:image/png;base64,{data}"></p>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# writing


def _write(path: Path, data: bytes) -> None:
    """Atomic write, then the usual permissions (the temporary file is created 0600, which
    would make a published leaderboard unreadable to a web server or a colleague)."""
    atomic_write_bytes(path, data)
    try:
        os.chmod(path, 0o666 & ~_umask())
    except OSError:
        pass


def _umask() -> int:
    # read it without os.umask(), which would briefly change it for every thread of the process
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_leaderboard(results_root: str | Path, out_dir: str | Path, plots: bool = True) -> dict[str, dict[str, Path]]:
    """Write ``<task>.md``, ``<task>.csv``, ``<task>.tex`` (and PNG plots) per task, plus
    ``index.html`` with every table; all atomically. Returns ``{task: {fmt: path}}`` (each
    task's ``html`` entry is the shared index page). With no usable results it writes a short
    ``README.md`` note (and an index page saying so) and returns ``{}``."""
    out = Path(out_dir)
    tables = build_tables(results_root)
    note = out / "README.md"
    if not tables:
        _write(note, (_EMPTY_NOTE_MARK + "\n" + _empty_note(results_root)).encode())
        _write(out / "index.html", render_html({}).encode())
        return {}
    if note.exists() and note.read_text(errors="replace").startswith(_EMPTY_NOTE_MARK):
        note.unlink(missing_ok=True)  # our own stale "no results" note

    paths: dict[str, dict[str, Path]] = {}
    images: dict[str, dict[str, bytes]] = {}
    for task, df in tables.items():
        stem = re.sub(r"[^A-Za-z0-9._=+-]+", "_", task)
        p = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "tex": out / f"{stem}.tex"}
        _write(p["md"], render_markdown(task, df).encode())
        _write(p["csv"], to_csv(df).encode())
        _write(p["tex"], render_latex(task, df).encode())
        if plots:
            try:
                from .plots import task_plots

                pngs = task_plots(task, df)
            except Exception as e:  # a plotting problem never costs the tables
                warnings.warn(f"leaderboard plots for {task} skipped: {type(e).__name__}: {e}", stacklevel=2)
                pngs = {}
            images[task] = pngs
            if pngs:
                for name, data in pngs.items():
                    path = out / f"{stem}{'' if name == 'png' else '_' + name.removesuffix('_png')}.png"
                    _write(path, data)
                    p[name] = path
        paths[task] = p
    index = out / "index.html"
    _write(index, render_html(tables, images).encode())
    for p in paths.values():
        p["html"] = index
    return paths
