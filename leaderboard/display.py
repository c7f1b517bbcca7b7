"""A leaderboard table (:func:`brainharness.leaderboard.build.build_tables`) as display strings:
one group per dataset variant (:func:`groups`), in each the sections (ranked, reference rows,
then one per not-ranked reason, then a layout's side table), the ranking sentence and row
labels. Shared by the text renderers and the plots."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from brainharness.layout import MISSING, PAIRED

from . import compare
from .build import VARIANT

TEXT_COLUMNS = ("flags", "not_ranked_reason", "record")
REFERENCE_TITLE = "Reference rows (not ranked)"
REASON = "reason"


def fmt(value, kind: str) -> str:
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


def display_columns(df: pd.DataFrame) -> list[str]:
    a = df.attrs
    cols = [c for c in a.get("identity_columns") or [] if c != VARIANT]  # the variant heads its group
    groups = a.get("interval_groups") or []
    if groups:  # one display column per interval group: mean ± half CI
        fixed = set(a.get("fixed_columns") or ())
        cols += [g for g in groups if f"{g} mean" in fixed or df[f"{g} mean"].notna().any()]
    else:
        cols += [c for c in a.get("value_columns", []) if c in df]
    if a.get("main_column") == "main_score":
        cols.append("main_score")
    if compare.shown(df):
        cols.append(compare.VS_BEST)
    if "flags" in df and (df["flags"].astype(str).str.len() > 0).any():
        cols.append("flags")
    if "flags" in df and df["flags"].astype(str).str.contains("duplicate identity").any():
        cols.append("record")
    return cols


def cell(df: pd.DataFrame, i, col: str) -> str:
    a = df.attrs
    formats = a.get("formats", {})
    if col in (a.get("interval_groups") or ()):
        mean = df.at[i, f"{col} mean"]
        lo, hi = df.at[i, f"{col} ci_low"], df.at[i, f"{col} ci_high"]
        if pd.isna(mean):
            return MISSING
        text = f"{mean:.3f} ± {MISSING}" if pd.isna(lo) or pd.isna(hi) else f"{mean:.3f} ± {(hi - lo) / 2:.3f}"
        if f"{col} delta" in df and not pd.isna(df.at[i, f"{col} delta"]):
            d, dlo, dhi = (df.at[i, f"{col} {k}"] for k in PAIRED)
            text += f" (Δ {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}])"
        return text
    if col == compare.VS_BEST:
        return compare.verdict(df, i)
    if col in TEXT_COLUMNS:
        value = df.at[i, col]
        return "" if pd.isna(value) else str(value)
    return fmt(df.at[i, col], formats.get(col, "acc") if col in formats else "text")


def header(df: pd.DataFrame, col: str) -> str:
    if col == "main_score":
        return f"main score ({df.attrs.get('main_score')})"
    return col


def text_header(df: pd.DataFrame, name: str) -> bool:
    """Whether a header names a left-aligned text column (identity, flags, record, reason)."""
    return name in (df.attrs.get("identity_columns") or ()) or name in ("flags", "record", REASON)


def variant_heading(df: pd.DataFrame, i) -> str:
    return f"Dataset {df.at[i, VARIANT]}"  # the variant label names the dataset and its parameters


def groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``[(heading, rows)]``: one group per dataset variant, in table order (never pooled)."""
    if not len(df):
        return []
    ids = list(dict.fromkeys(df["data_id"].tolist()))
    return [(variant_heading(df, part.index[0]), part) for part in (df[df["data_id"] == d] for d in ids)]


def grouped_sections(df: pd.DataFrame) -> list[tuple[str, list[tuple[str, list[str], list[list[str]]]]]]:
    """``[(group heading, sections)]``, one per dataset variant; every group shows the same columns."""
    cols = display_columns(df)
    return [(heading, sections(part, cols)) for heading, part in groups(df)]


def sections(df: pd.DataFrame, cols: list[str] | None = None) -> list[tuple[str, list[str], list[list[str]]]]:
    """``[(title, header, rows of display strings)]`` of one group's rows: the ranked table, the
    reference rows (controls, with the reason in place of the rank), one "Not ranked: <reason>"
    section per other reason, then the layout's side table. A table whose layout ranks nothing is
    one section. ``cols``: the columns shown (default: :func:`display_columns` of ``df``)."""
    a = df.attrs
    cols = display_columns(df) if cols is None else cols
    if not a.get("ranked_table", True):
        return [(a.get("unranked_title", "Rows"), [header(df, c) for c in cols],
                 [[cell(df, i, c) for c in cols] for i in df.index])]
    out = []
    ranked = df[df["ranked"].astype(bool)] if len(df) else df
    if len(ranked):
        head = ["rank"] + [header(df, c) for c in cols]
        body = [[fmt(r, "int") if not pd.isna(r) else MISSING for r in [ranked.at[i, "rank"]]]
                + [cell(df, i, c) for c in cols] for i in ranked.index]
        out.append(("Ranked", head, body))
    refs = df[df["reference"].astype(bool)] if len(df) else df
    if len(refs):
        body = [[str(refs.at[i, "not_ranked_reason"])] + [cell(df, i, c) for c in cols] for i in refs.index]
        out.append((REFERENCE_TITLE, [REASON] + [header(df, c) for c in cols], body))
    rest = df[~df["ranked"].astype(bool) & ~df["reference"].astype(bool)] if len(df) else df
    for reason in dict.fromkeys(rest["not_ranked_reason"].tolist()) if len(rest) else ():
        part = rest[rest["not_ranked_reason"] == reason]
        body = [[cell(df, i, c) for c in cols] for i in part.index]
        out.append((f"Not ranked: {reason}", [header(df, c) for c in cols], body))
    fixed, suffix = set(a.get("side_fixed") or ()), a.get("side_suffix", "")
    side = [c for c in a.get("side_columns") or [] if c in df and (c in fixed or df[c].notna().any())]
    if side and len(df):
        ident = [c for c in a.get("identity_columns") or [] if c != VARIANT]
        head = ["rank"] + ident + [c.removesuffix(suffix) for c in side]
        body = [[fmt(df.at[i, "rank"], "int") if df.at[i, "ranked"] else
                 "reference" if df.at[i, "reference"] else "not ranked"]
                + [cell(df, i, c) for c in ident] + [fmt(df.at[i, c], "text") for c in side]
                for i in df.index]
        out.append((a.get("side_title", ""), head, body))
    return out


def ranking_sentence(df: pd.DataFrame, quote: str = "`") -> str:
    a = df.attrs
    main = a.get("main_score")
    if not a.get("ranked_table", True):
        return a.get("unranked_note", "Not ranked.")
    if not main:
        return "No main score is named in these records, so no row is ranked."
    shown = a.get("main_column")
    where = f" (column {shown})" if shown and shown != "main_score" else ""
    extra = f"; {a['group_note']}" if a.get("group_note") else ""
    order = "ascending" if a.get("ascending") else "descending"
    return (f"Ranked by {quote}{main}{quote}{where}, {order}{extra}; one block per dataset variant, never "
            "pooled. Controls (ceilings, shuffled floors) and other reference rows are listed, never ranked; "
            "random-init weights are never ranked; 'none' = a fixed baseline without learned weights (ranked). "
            f"{MISSING} = not reported.")


def row_label(df: pd.DataFrame, i) -> str:
    """A row's short label for plots: backbone, the layout's row labels, weights, layer, …"""
    parts = [str(df.at[i, "backbone"])]
    parts += [str(df.at[i, c]) for c in df.attrs.get("label_columns") or () if c in df and not pd.isna(df.at[i, c])]
    parts.append(str(df.at[i, "weights"]))
    for col in ("layer", "readout"):
        if col in df and not pd.isna(df.at[i, col]):
            parts.append(f"{col} {df.at[i, col]}")
    if "experiment" in df and not pd.isna(df.at[i, "experiment"]):
        parts.append(str(df.at[i, "experiment"]))
    if df["data_id"].nunique() > 1:
        parts.append(str(df.at[i, VARIANT]))
    if df["subject"].astype(str).nunique() > 1:
        parts.append(str(df.at[i, "subject"]))
    if not pd.isna(df.at[i, "seed"]) and df["seed"].nunique(dropna=False) > 1:
        parts.append(f"seed {df.at[i, 'seed']}")
    return " · ".join(parts)
