"""Results store → one numeric DataFrame per leaderboard table, following each task's layout.

The leaderboard is built from the results store alone (:class:`brainharness.results.ResultStore`).
Only records with ``status == "complete"`` and ``evaluated_on == "test"`` are used: sweep
trials and other model-selection records (``evaluated_on == "validation"``) and failed runs
never appear.

Rules (each one is tested in ``tests/test_leaderboard.py`` and ``tests/test_leaderboard_groups.py``):

* **Missing stays missing.** A metric a record does not have is ``NaN`` in the DataFrame,
  empty in the CSV and ``—`` in Markdown / LaTeX / HTML. Nothing is filled, and no summary is
  ever computed over a row or column with gaps (a whole-brain column is the record's own
  whole-brain score, not an average of its ROI cells).
* **Where the weights came from is a column** (``weights``: ``pretrained:<id>``, ``local``,
  ``random-init``, ``none (no learned weights)``). Rows whose weights are ``random-init`` (or
  whose weights source is unknown) are never ranked: they are listed in a separate
  "Not ranked" section below the ranked table and have no rank. ``none`` means the backbone has
  no learned weights at all (pixels, fixed baselines): that is a fixed, reproducible reference
  point, so it *is* ranked.
* **Controls are reference rows, never ranked**: a backbone that declares itself a control
  (``record["backbone"]["control"]``, e.g. the oracle ceiling and its shuffled floor) and the
  rows a layout marks as references (:attr:`brainharness.layout.Row.reference`: a true-image
  caption, a shuffled-brain floor, chance). They are listed with their reason (``reference``
  True, ``not_ranked_reason``); levels such as chance are lines on the plots
  (:attr:`brainharness.layout.Table.levels`).
* **Dataset variants are never pooled.** A row's dataset variant is the dataset's name plus the
  parameters that change its data (:mod:`brainharness.leaderboard.identity`): ``dataset
  variant`` (readable) and ``data_id`` columns. Rows are shown one block per variant.
* **Ranking** is by the table's main score (the ``main_score`` most of its records name), in
  the layout's direction, within each dataset variant × subject (scores on different data or
  subjects are not comparable). Ties share the lower rank. A ranked-weights row without a main
  score gets no rank and sorts last.
* **Uncertainty is the record's.** Cell intervals come from the record (stored when it was
  scored, ``df.attrs["cell_intervals"]``); each ranked row is compared with its block's rank-1
  row by a paired test, Holm-corrected (``tied_with_best``, ``p_vs_best``; :mod:`.compare`).
* **No silent duplicates.** Every row has an identity (dataset, variant, subject, backbone, the
  layout's row labels, weights, layer, readout, experiment, seed); experiment and seed are
  columns so two experiments on one backbone stay distinguishable. If two rows still share an
  identity both are kept and flagged, with their record paths shown.

Which tables a record makes, their columns, titles, notes and plots come from the task's
layout (:mod:`brainharness.layout`, found by :mod:`brainharness.leaderboard.layouts`).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from brainharness.identity import flatten
from brainharness.layout import DEFAULT_TABLE, Intervals, RoiColumns, Row, Table, num, text
from brainharness.results import ResultStore

from .compare import P_VALUE, TIED, compare_to_best
from .identity import control_of, dataset_variant
from .layouts import Layouts

RANKED_SOURCES = ("pretrained", "local", "none")
NOT_RANKED_REASONS = {"random-init": "random-init weights", None: "weights source unknown"}

VARIANT = "dataset variant"
HEAD = ("dataset", VARIANT, "subject", "backbone")
TAIL = ("weights", "layer", "readout", "experiment", "seed")
ALWAYS_SHOWN = ("dataset", VARIANT, "subject", "backbone", "weights", "experiment", "seed")
META = ("data_id", "weights_source", "ranked", "reference", "not_ranked_reason", "flags", "record")


def leaderboard_records(results_root: str | Path, problems: list | None = None) -> list[dict]:
    """The records the leaderboard uses: complete, scored on the test split, with a key.
    Broken records and corrupt sidecars are appended to ``problems`` (logged without a list)."""
    out = []
    for record in ResultStore(results_root).records(errors=problems, verify=True):
        if record.get("status") != "complete" or record.get("evaluated_on") != "test":
            continue
        key = record.get("key")
        if not isinstance(key, dict) or not key.get("task"):
            continue
        out.append(record)
    return out


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


def record_path(record: dict, root: Path) -> str:
    """Where a record lies: relative to the store root (absolute when outside it); the ``record``
    column of a table, and how the static site finds a row's record."""
    try:
        return str(Path(record.get("_path", "")).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(record.get("_path", ""))


def _identity(row: Row, labels: tuple[str, ...], root: Path) -> dict:
    record = row.record
    key = record["key"]
    backbone = record.get("backbone") if isinstance(record.get("backbone"), dict) else {}
    provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    source, label = weights_info(record)
    variant = dataset_variant(record)
    seed = provenance.get("seed")
    path = record_path(record, root)
    return {
        "dataset": text(key.get("dataset")),
        VARIANT: variant.label,  # made unique per data_id within the table by _variant_labels
        "subject": text(key.get("subject")),
        "backbone": text(key.get("backbone") or backbone.get("name")),  # the label: oracle vs oracle-shuffled
        **{c: text(row.labels.get(c)) for c in labels},  # rows split from one record (e.g. per stage)
        "weights": label,
        "layer": text(backbone.get("layer")),
        "readout": text(backbone.get("readout")),
        "experiment": text(key.get("experiment")),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else math.nan,
        "weights_source": source if source else math.nan,
        "record": path,
        "data_id": variant.id,
        "_control": control_of(record),
    }


def _variant_labels(rows: list[dict]) -> None:
    """One label per data_id (its first, sorted); two variants of a dataset whose labels read the
    same get their id appended, so a label never names two variants."""
    first: dict[str, tuple[str, str]] = {}
    for row in sorted(rows, key=lambda r: (r["data_id"], r[VARIANT])):
        first.setdefault(row["data_id"], (str(row["dataset"]), row[VARIANT]))
    shared = Counter(first.values())
    for row in rows:
        name, label = first[row["data_id"]]
        row[VARIANT] = f"{label} [{row['data_id'].removeprefix('info-')[:8]}]" if shared[(name, label)] > 1 else label


def _main_score_name(records: list[dict]) -> str | None:
    names = Counter(str(r["main_score"]) for r in records if r.get("main_score"))
    if not names:
        return None
    top = max(names.values())
    return sorted(n for n, c in names.items() if c == top)[0]


def _main_value(record: dict, name: str | None, row: dict, main_column: str | None) -> float:
    if name is None:
        return math.nan
    value = num((record.get("scores") or {}).get(name))
    if math.isnan(value) and main_column is not None:
        value = num(row.get(main_column))
    return value


def _key_part(v):
    return "\0nan" if isinstance(v, float) and math.isnan(v) else str(v)


def _ranking(row: dict, ref: Row, table: Table) -> None:
    source = row["weights_source"] if isinstance(row["weights_source"], str) else None
    row["ranked"] = source in RANKED_SOURCES
    row["not_ranked_reason"] = "" if row["ranked"] else NOT_RANKED_REASONS.get(source, NOT_RANKED_REASONS[None])
    control = row.pop("_control")
    reference = ref.reference or (f"control: {control}" if control else None)
    row["reference"] = bool(reference) and table.ranked
    if row["reference"]:  # a reference whatever its weights: listed with its reason, never ranked
        row["ranked"], row["not_ranked_reason"] = False, str(reference)
    if not table.ranked:  # e.g. generated text: nothing to rank
        row["ranked"], row["not_ranked_reason"] = False, ""
    if row["ranked"] and math.isnan(row["main_score"]):
        row["_flags"].append("main score missing: not ranked")


def _build_table(name: str, table: Table, items: list[Row], notes: list[str], root: Path) -> pd.DataFrame:
    family = table.columns
    main = _main_score_name([r.record for r in items])
    labels = tuple(table.labels)
    identity = HEAD + labels + TAIL
    rows = []
    seen: list[str] = []
    side_seen: list[str] = []
    side = table.side
    for item in items:
        record = item.record
        row = _identity(item, labels, root)
        row["_rec"] = record  # for the paired comparison with the best row (dropped below)
        row["_ci"] = _cell_intervals(family, record)
        values, flags = family.values(record)
        if side is not None:
            side_values, _ = side.columns.values(record)
            side_values = {f"{c}{side.suffix}": v for c, v in side_values.items()}
            row.update(side_values)
            side_seen.extend(c for c in side_values if c not in side_seen)
        if table.cells is not None:
            row.update(table.cells(record))
        if table.row_data is not None:
            row["_row_data"] = table.row_data(record)
        seen.extend(c for c in values if c not in seen)
        row.update(values)
        if record.get("main_score") and main and str(record["main_score"]) != main:
            flags.append(f"record's own main score is {record['main_score']}")
        row["_flags"] = list(flags)
        rows.append(row)
    _variant_labels(rows)
    value_cols = family.order(seen, main)

    main_column = None  # where the main score is shown
    if main is not None:
        main_column = family.column_of(main, value_cols)
        if main_column is None and main in value_cols:
            main_column = main
    for row, item in zip(rows, items):
        row["main_score"] = _main_value(item.record, main, row, main_column)
    if main is not None and main_column is None:
        main_column = "main_score"
    for row, item in zip(rows, items):
        _ranking(row, item, table)

    n_old = _mark_superseded(rows, items, identity)
    if n_old:
        notes.append(f"{n_old} rows come from earlier parameters of a unit that has a newer record: listed as "
                     "superseded, never ranked (`brainharness results diff` shows what changed).")
    ident_cols = [c for c in identity if c in ALWAYS_SHOWN or any(isinstance(r[c], str) for r in rows)]
    current = [r for r in rows if not r.get("_superseded")]
    dup = Counter(tuple(_key_part(r[c]) for c in identity) for r in current)
    n_dups = 0
    for row in current:
        if dup[tuple(_key_part(row[c]) for c in identity)] > 1:
            row["_flags"].append("duplicate identity: see record column")
            n_dups += 1
    if n_dups:
        notes.append(f"{n_dups} rows share their identity with another row; both are kept and flagged "
                     "(the record column names each file).")
    for row in rows:
        row["flags"] = "; ".join(row.pop("_flags"))

    df = pd.DataFrame(rows)
    kinds = {c: family.kind(c) for c in value_cols}
    for c in value_cols + ["main_score"]:
        if c not in df:
            df[c] = math.nan
        if c == "main_score" or kinds[c] != "text":
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["seed"] = pd.array(df["seed"].tolist(), dtype="Int64") if "seed" in df else pd.array([], dtype="Int64")
    df = _sort_and_rank(df, table.higher_is_better)
    compare_to_best(df, df["_rec"].tolist(), main, root)
    intervals = df["_ci"].tolist()  # row order: {column: (ci_low, ci_high)}
    levels = _levels(table, main, rows, items)

    side_cols: list[str] = []
    if side is not None:
        fixed = [f"{c}{side.suffix}" for c in side.columns.fixed()]
        side_cols = fixed + sorted(set(side_seen) - set(fixed))
        for c in side_cols:
            if c not in df:
                df[c] = math.nan
    row_data = df["_row_data"].tolist() if "_row_data" in df else []  # row order, for per-row plots
    df = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    df = df[["rank"] + ident_cols + value_cols + side_cols + list(META) + ["main_score", TIED, P_VALUE]]

    notes.extend(table.notes([r.record for r in items]) if table.notes else [])
    formats = {**kinds, "main_score": family.kind("main_score")}
    if main_column == "main_score" and main and "nc_r2" in main:
        formats["main_score"] = "pct"
    interval = [c[: -len(" mean")] for c in value_cols if c.endswith(" mean")] if isinstance(family, Intervals) else []
    df.attrs.update(
        task=name, layout=table.name, title=table.title,
        description=table.description[:1].upper() + table.description[1:], main_score=main,
        main_column=main_column, value_columns=value_cols, identity_columns=ident_cols, label_columns=list(labels),
        fixed_columns=family.fixed(), interval_groups=interval, formats=formats, notes=notes,
        group_note="ranks restart within each dataset variant × subject" if
        df[["data_id", "subject"]].astype(str).drop_duplicates().shape[0] > 1 else "",
        levels=levels,
        ranked_table=table.ranked, ascending=not table.higher_is_better, unranked_title=table.unranked_title,
        unranked_note=table.unranked_note, side_columns=side_cols,
        side_title=side.title if side else "", side_suffix=side.suffix if side else "",
        side_fixed=[f"{c}{side.suffix}" for c in side.columns.fixed()] if side else [],
        plots=[(p.kind, dict(p.params)) for p in table.plots], row_data=row_data, cell_intervals=intervals,
    )
    return df


def _cell_intervals(family, record: dict) -> dict:
    """``{column: (ci_low, ci_high)}`` of a per-ROI table's cells from the record: the whole-brain
    cell from ``scores["<score>_ci_low/high"]``, each ROI cell from its ``per_roi`` row's
    ``<field>_ci_low/high`` (stored by the task when it scored the record; never recomputed)."""
    if not isinstance(family, RoiColumns):
        return {}
    scores = record.get("scores") or {}
    out = {family.whole: (num(scores.get(f"{family.score}_ci_low")), num(scores.get(f"{family.score}_ci_high")))}
    field = family.value or family.score
    for row in (record.get("tables") or {}).get(family.table) or []:
        if isinstance(row, dict) and row.get(family.key) is not None and row.get(family.key) not in family.skip:
            out.setdefault(family.column(row[family.key]), (num(row.get(f"{field}_ci_low")),
                                                           num(row.get(f"{field}_ci_high"))))
    return {c: v for c, v in out.items() if not (math.isnan(v[0]) or math.isnan(v[1]))}


def _created(item: Row) -> tuple[str, float]:
    record = item.record
    path = record.get("_path")
    mtime = os.path.getmtime(path) if path and os.path.exists(path) else 0.0
    return str((record.get("provenance") or {}).get("created", "")), mtime


def _mark_superseded(rows: list[dict], items: list[Row], identity: tuple) -> int:
    """Rows of one unit (same identity columns) from records with different ids — a parameter
    changed between runs: the newest record is current; the older ones stay visible but are never
    ranked, with the parameters that differ. Returns how many rows were marked."""
    groups: dict[tuple, list[tuple[dict, Row]]] = {}
    for row, item in zip(rows, items):
        groups.setdefault(tuple(_key_part(row[c]) for c in identity), []).append((row, item))
    marked = 0
    for members in groups.values():
        ids = {(m[1].record.get("key") or {}).get("id") for m in members}
        if len(ids) < 2 or None in ids:
            continue
        _, newest = max(members, key=lambda m: _created(m[1]))
        new_id = newest.record["key"]["id"]
        new_params = flatten(newest.record.get("identity") or {})
        for row, item in members:
            if item.record["key"]["id"] == new_id:
                continue
            old_params = flatten(item.record.get("identity") or {})
            changed = [k for k in dict.fromkeys([*old_params, *new_params]) if old_params.get(k) != new_params.get(k)]
            row["ranked"] = row["reference"] = False
            row["_superseded"] = True
            row["not_ranked_reason"] = f"superseded by {new_id[:12]}" + (
                f" (differs in {', '.join(changed[:3])}{', …' if len(changed) > 3 else ''})" if changed else "")
            marked += 1
    return marked


def _levels(table: Table, main: str | None, rows: list[dict], items: list[Row]) -> dict:
    """``{(data_id, subject): [(label, value)]}``: the layout's reference levels per group."""
    if table.levels is None:
        return {}
    groups: dict[tuple, list[dict]] = {}
    for row, item in zip(rows, items):
        groups.setdefault((row["data_id"], str(row["subject"])), []).append(item.record)
    return {g: [(str(n), float(v)) for n, v in table.levels(records, main)] for g, records in groups.items()}


def _sort_and_rank(df: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Order: one block per dataset variant (by name and label); in it ranked rows first, then
    reference rows, then the other not-ranked rows; then subject, main score best first (missing
    last), identity. Ranks restart within each dataset variant × subject."""
    df["_ds"] = df["dataset"].astype(str) + "\0" + df[VARIANT].astype(str) + "\0" + df["data_id"].astype(str)
    df["_sub"] = df["subject"].astype(str)
    df["_unranked"] = np.where(df["ranked"], 0, np.where(df["reference"], 1, 2))
    df["_nomain"] = df["main_score"].isna().astype(int)
    df["_neg"] = (-1 if higher_is_better else 1) * df["main_score"].fillna(0.0)
    tie = [c for c in ("backbone", "weights", "layer", "readout", "experiment") if c in df]
    for c in tie:
        df[f"_t_{c}"] = df[c].astype(str)
    df = df.sort_values(["_ds", "_unranked", "_sub", "_nomain", "_neg"] + [f"_t_{c}" for c in tie] + ["seed"],
                        kind="mergesort", na_position="last").reset_index(drop=True)
    rankable = df["ranked"] & df["main_score"].notna()
    rank = pd.Series(pd.NA, index=df.index, dtype="Int64")
    if rankable.any():
        r = df[rankable].groupby(["_ds", "_sub"])["main_score"].rank(method="min", ascending=not higher_is_better)
        rank.loc[r.index] = r.astype("int64").to_numpy()
    df.insert(0, "rank", rank)
    return df


def build_tables(results_root: str | Path, problems: list | None = None,
                 records: list[dict] | None = None) -> dict[str, pd.DataFrame]:
    """One numeric DataFrame per leaderboard table (NaN for missing cells), in ranked order.

    Columns: ``rank`` (nullable int; empty for rows that are not ranked), the identity columns
    (``dataset variant`` among them), the layout's value columns (and side columns), then
    ``data_id``, ``weights_source``, ``ranked``, ``reference`` (a control or reference row),
    ``not_ranked_reason``, ``flags``, ``record`` and ``main_score`` (the value of the table's
    main score). Layout metadata (title, main score, formats, notes, plots, ``levels`` per
    ``(data_id, subject)``) is in ``df.attrs``.
    Problems of the store (:class:`brainharness.results.Problem`) are appended to ``problems``.
    ``records``: the store's :func:`leaderboard_records`, when the caller has read them already.
    """
    root = Path(results_root)
    layouts = Layouts()
    groups: dict[str, tuple[Table, list[Row], list[str]]] = {}

    def add(name: str, table: Table, rows: list[Row], note: str | None) -> None:
        first, items, notes = groups.setdefault(name, (table, [], []))
        if table != first:  # two task plugins under one label
            note = f"records with different layouts share the name {name}: shown with the first one's layout"
        if note and note not in notes:
            notes.append(note)
        items.extend(rows)

    for record in leaderboard_records(root, problems) if records is None else records:
        layout, note = layouts.of(record)
        task = str(record["key"]["task"])
        taken = False
        for table in layout.tables:
            rows = table.rows(record)
            if rows:
                add(table.table_name(task), table, rows, note)
                taken = True
        if not taken:  # no table of its layout takes it: never dropped silently
            add(task, DEFAULT_TABLE, [Row(record)], note)
    return {name: _build_table(name, table, items, notes, root)
            for name, (table, items, notes) in sorted(groups.items())}
