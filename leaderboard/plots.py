"""PNG plots for the leaderboard: the main score per row (bar plot) for every task, for
encoding an ROI × row heatmap, and for layer-wise encoding also one ROI × layer heatmap per
row (test score of every layer — descriptive — with the layer chosen on validation boxed).
Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), returned
as PNG bytes so the caller writes them atomically.

Missing values are drawn as missing (no bar / a grey "—" cell), never as zero. Rows that are
not ranked (random-init weights) are hatched and labelled.
"""
from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd

from .tables import MISSING, ROI_ORDER


def _row_label(df: pd.DataFrame, i) -> str:
    parts = [str(df.at[i, "backbone"])]
    parts += [str(df.at[i, c]) for c in ("system", "roi") if c in df and not pd.isna(df.at[i, c])]
    parts.append(str(df.at[i, "weights"]))
    for col in ("layer", "readout"):
        if col in df and not pd.isna(df.at[i, col]):
            parts.append(f"{col} {df.at[i, col]}")
    if "experiment" in df and not pd.isna(df.at[i, "experiment"]):
        parts.append(str(df.at[i, "experiment"]))
    if df[["dataset", "subject"]].astype(str).drop_duplicates().shape[0] > 1:
        parts.append(f"{df.at[i, 'dataset']}/{df.at[i, 'subject']}")
    if not pd.isna(df.at[i, "seed"]) and df["seed"].nunique(dropna=False) > 1:
        parts.append(f"seed {df.at[i, 'seed']}")
    return " · ".join(parts)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def bar_plot(task: str, df: pd.DataFrame) -> bytes | None:
    """Horizontal bars of the main score per row, best ranked first."""
    from matplotlib.figure import Figure

    main = df.attrs.get("main_score")
    if not main or not len(df):
        return None
    values = df["main_score"].to_numpy(dtype=float)
    labels = [_row_label(df, i) for i in df.index]
    ranked = df["ranked"].astype(bool).to_numpy()
    err = None
    col = df.attrs.get("main_column") or ""
    if df.attrs.get("layout") == "retrieval" and col.endswith(" mean"):
        d = col[: -len(" mean")]
        lo, hi = df[f"{d} ci_low"].to_numpy(float), df[f"{d} ci_high"].to_numpy(float)
        err = np.vstack([values - lo, hi - values])
        err = np.where(np.isnan(err), 0.0, err)
    n = len(df)
    fig = Figure(figsize=(8, 1.2 + 0.35 * n))
    ax = fig.add_subplot()
    y = np.arange(n)
    shown = np.where(np.isnan(values), 0.0, values)
    bars = ax.barh(y, shown, xerr=err, color=["#4c72b0" if r else "#bbbbbb" for r in ranked],
                   edgecolor="#333333", linewidth=0.5, capsize=3 if err is not None else 0)
    for bar, r, v in zip(bars, ranked, values):
        if not r:
            bar.set_hatch("//")
        if math.isnan(v):
            bar.set_visible(False)
    fmt = "{:.1f}" if df.attrs.get("formats", {}).get("main_score") == "pct" else "{:.3f}"
    right = values if err is None else values + err[1]
    for yi, v, x, r in zip(y, values, right, ranked):
        text = MISSING if math.isnan(v) else fmt.format(v)
        ax.text(0 if math.isnan(v) else x, yi, "  " + text + ("" if r else "  (not ranked)"), va="center",
                fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(main)
    ax.set_title(f"{task}: {df.attrs.get('title', main)}", fontsize=10)
    ax.margins(x=0.25)
    return _png(fig)


def roi_heatmap(task: str, df: pd.DataFrame) -> bytes | None:
    """ROI × row heatmap of the encoding table (missing cells grey with "—")."""
    from matplotlib.figure import Figure

    cols = [c for c in df.attrs.get("value_columns", []) if c in df]
    if df.attrs.get("layout") not in ("encoding", "layerwise") or not cols or not len(df):
        return None
    cols = [c for c in cols if c in ROI_ORDER or df[c].notna().any()]
    data = df[cols].to_numpy(dtype=float)
    labels = [_row_label(df, i) + ("" if r else " (not ranked)") for i, r in zip(df.index, df["ranked"])]
    fig = Figure(figsize=(1.6 + 0.6 * len(cols) + 0.05 * max(len(s) for s in labels), 1.5 + 0.4 * len(df)))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(data)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    finite = data[np.isfinite(data)]
    vmax = float(finite.max()) if finite.size else 1.0
    im = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=0, vmax=vmax if vmax > 0 else 1.0)
    for (r, c), v in np.ndenumerate(data):
        ax.text(c, r, MISSING if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                color="#333333" if math.isnan(v) or v > 0.6 * vmax else "white")
    ax.set_xticks(range(len(cols)), cols, fontsize=8, rotation=45, ha="right")
    ax.set_yticks(range(len(df)), labels, fontsize=8)
    fig.colorbar(im, ax=ax, label="median NC-normalised R² (%)")
    ax.set_title(f"{task}: per-ROI median noise-ceiling-normalised R² (%)", fontsize=10)
    return _png(fig)


def layer_heatmap(task: str, df: pd.DataFrame, i) -> bytes | None:
    """ROI × layer heatmap of one layer-wise row: every layer's test score (descriptive), the
    layer chosen for each ROI on validation boxed; missing cells grey with "—"."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    maps = df.attrs.get("layer_maps") or []
    m = maps[df.index.get_loc(i)] if df.index.get_loc(i) < len(maps) else None
    if not isinstance(m, dict) or not m.get("rois") or not m.get("layers"):
        return None
    data = np.asarray(m["test"], dtype=float)
    rois, layers = m["rois"], m["layers"]
    fig = Figure(figsize=(2.2 + 0.55 * len(layers), 1.4 + 0.32 * len(rois)))
    ax = fig.add_subplot()
    finite = data[np.isfinite(data)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
    for (r, c), v in np.ndenumerate(data):
        ax.text(c, r, MISSING if math.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=6,
                color="#333333" if math.isnan(v) or v > 0.6 * vmax else "white")
    for (r, c), chosen in np.ndenumerate(np.asarray(m["selected"], dtype=bool)):
        if chosen:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
    ax.set_xticks(range(len(layers)), layers, fontsize=7, rotation=45, ha="right")
    ax.set_yticks(range(len(rois)), rois, fontsize=7)
    label = "median NC-normalised R² (%)" if m.get("metric") == "median_nc_r2" else str(m.get("metric"))
    fig.colorbar(im, ax=ax, label=f"test {label}")
    ax.set_title(f"{_row_label(df, i)}\ntest {label} per ROI × layer (descriptive); "
                 "red box = layer chosen on validation", fontsize=8)
    return _png(fig)


def task_plots(task: str, df: pd.DataFrame) -> dict[str, bytes]:
    """``{"png": bar plot, "heatmap_png": ROI heatmap, "layers_<row>_png": ROI × layer heatmap
    per layer-wise row}`` (entries that apply to the task)."""
    out = {}
    bar = bar_plot(task, df)
    if bar is not None:
        out["png"] = bar
    heat = roi_heatmap(task, df)
    if heat is not None:
        out["heatmap_png"] = heat
    if df.attrs.get("layout") == "layerwise":
        for n, i in enumerate(df.index, 1):
            png = layer_heatmap(task, df, i)
            if png is not None:
                name = "_".join(str(df.at[i, c]) for c in ("backbone", "subject", "experiment"))
                out[f"layers_{n:02d}_{re.sub(r'[^A-Za-z0-9.=+-]+', '-', name).strip('-')}_png"] = png
    return out
