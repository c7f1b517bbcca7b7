"""PNG plots for the leaderboard, the kinds a layout names (:class:`brainharness.layout.Plot`):
``bars`` (the main score per row, CI error bars for an interval column), ``heatmap`` (value
columns × rows) and ``row_heatmaps`` (one grid per row from the layout's per-row data, marked
cells boxed — e.g. every layer's test score per ROI, the layer chosen on validation boxed).
Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), returned
as PNG bytes so the caller writes them atomically.

Missing values are drawn as missing (no bar / a grey "—" cell), never as zero. Rows that are
not ranked (random-init weights) are hatched and labelled.
"""
from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
import pandas as pd

from brainharness.layout import MISSING

from .display import row_label as _row_label


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def bar_plot(task: str, df: pd.DataFrame, params: dict | None = None) -> bytes | None:
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
    if col.endswith(" mean") and col[: -len(" mean")] in (df.attrs.get("interval_groups") or ()):
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


def heatmap(task: str, df: pd.DataFrame, params: dict) -> bytes | None:
    """Value column × row heatmap (missing cells grey with "—"); columns nobody has are left out
    unless the layout always shows them."""
    from matplotlib.figure import Figure

    cols = [c for c in df.attrs.get("value_columns", []) if c in df]
    if not cols or not len(df):
        return None
    fixed = set(df.attrs.get("fixed_columns") or ())
    cols = [c for c in cols if c in fixed or df[c].notna().any()]
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
        ax.text(c, r, MISSING if math.isnan(v) else f"{v:.{params.get('digits', 1)}f}", ha="center", va="center",
                fontsize=7, color="#333333" if math.isnan(v) or v > 0.6 * vmax else "white")
    ax.set_xticks(range(len(cols)), cols, fontsize=8, rotation=45, ha="right")
    ax.set_yticks(range(len(df)), labels, fontsize=8)
    fig.colorbar(im, ax=ax, label=params.get("colorbar", df.attrs.get("title", "")))
    ax.set_title(f"{task}: {params.get('title', df.attrs.get('title', ''))}", fontsize=10)
    return _png(fig)


def row_heatmap(task: str, df: pd.DataFrame, i, params: dict) -> bytes | None:
    """One row's grid (``row_data``: ``{"y": names, "x": names, "values": y × x, "marked": y × x
    booleans, "metric": name}``): cells with their values, marked cells boxed in red; missing
    cells grey with "—". ``params``: ``labels`` (metric → readable name), ``title`` and
    ``colorbar`` (formatted with ``{label}``), ``digits``."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    maps = df.attrs.get("row_data") or []
    m = maps[df.index.get_loc(i)] if df.index.get_loc(i) < len(maps) else None
    if not isinstance(m, dict) or not m.get("y") or not m.get("x"):
        return None
    data = np.asarray(m["values"], dtype=float)
    ys, xs = m["y"], m["x"]
    fig = Figure(figsize=(2.2 + 0.55 * len(xs), 1.4 + 0.32 * len(ys)))
    ax = fig.add_subplot()
    finite = data[np.isfinite(data)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
    digits = params.get("digits", 1)
    for (r, c), v in np.ndenumerate(data):
        ax.text(c, r, MISSING if math.isnan(v) else f"{v:.{digits}f}", ha="center", va="center", fontsize=6,
                color="#333333" if math.isnan(v) or v > 0.6 * vmax else "white")
    for (r, c), chosen in np.ndenumerate(np.asarray(m["marked"], dtype=bool)):
        if chosen:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
    ax.set_xticks(range(len(xs)), xs, fontsize=7, rotation=45, ha="right")
    ax.set_yticks(range(len(ys)), ys, fontsize=7)
    label = (params.get("labels") or {}).get(m.get("metric"), str(m.get("metric")))
    fig.colorbar(im, ax=ax, label=params.get("colorbar", "{label}").format(label=label))
    ax.set_title(f"{_row_label(df, i)}\n" + params.get("title", "{label}").format(label=label), fontsize=8)
    return _png(fig)


def task_plots(task: str, df: pd.DataFrame) -> dict[str, bytes]:
    """The plots the table's layout names, in its order: ``{"png": bars, "heatmap_png": heatmap,
    "<prefix>_<nn>_<row>_png": one per row of ``row_heatmaps``}`` (those that apply)."""
    out = {}
    for kind, params in df.attrs.get("plots") or ():
        if kind == "bars":
            png = bar_plot(task, df, params)
            if png is not None:
                out["png"] = png
        elif kind == "heatmap":
            png = heatmap(task, df, params)
            if png is not None:
                out["heatmap_png"] = png
        elif kind == "row_heatmaps":
            for n, i in enumerate(df.index, 1):
                png = row_heatmap(task, df, i, params)
                if png is not None:
                    name = "_".join(str(df.at[i, c]) for c in ("backbone", "subject", "experiment"))
                    prefix = params.get("prefix", "rows")
                    out[f"{prefix}_{n:02d}_{re.sub(r'[^A-Za-z0-9.=+-]+', '-', name).strip('-')}_png"] = png
        else:
            warnings.warn(f"leaderboard plot {kind!r} of {task} skipped: unknown kind (bars, heatmap, row_heatmaps)",
                          stacklevel=2)
    return out
