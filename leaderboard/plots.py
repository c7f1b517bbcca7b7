"""PNG plots for the leaderboard, the kinds a layout names (:class:`brainharness.layout.Plot`):
``bars`` (the main score per row, CI error bars for an interval column), ``heatmap`` (value
columns × rows) and ``row_heatmaps`` (one grid per row from the layout's per-row data, marked
cells boxed — e.g. every layer's test score per ROI, the layer chosen on validation boxed).
Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), returned
as PNG bytes so the caller writes them atomically.

Missing values are drawn as missing (no bar / a grey "—" cell), never as zero. Bars come in one
panel per dataset variant × subject. Reference rows (controls: ceilings, shuffled floors) are
hatched in their own colour and labelled with their reason; other rows that are not ranked
(random-init weights) are hatched grey; levels a layout declares (chance) are dashed lines.
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
from .display import variant_heading

COLOURS = {"ranked": "#4c72b0", "reference": "#f0b27a", "other": "#bbbbbb"}
HATCHES = {"reference": "\\\\", "other": "//"}


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _panels(df: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """``[((data_id, subject), rows)]`` in table order: one bar panel per dataset variant × subject."""
    subjects = df["subject"].astype(str)
    keys = list(dict.fromkeys(zip(df["data_id"], subjects)))
    return [(k, df[(df["data_id"] == k[0]) & (subjects == k[1])]) for k in keys]


def _state(df: pd.DataFrame, i) -> str:
    return "ranked" if df.at[i, "ranked"] else "reference" if df.at[i, "reference"] else "other"


def _bars(ax, part: pd.DataFrame, levels: list) -> None:
    """One panel: ranked rows as solid bars, reference rows (controls) hatched in their own colour
    and labelled with their reason, other not-ranked rows hatched grey; levels (chance) as lines."""
    values = part["main_score"].to_numpy(dtype=float)
    states = [_state(part, i) for i in part.index]
    err = None
    col = part.attrs.get("main_column") or ""
    if col.endswith(" mean") and col[: -len(" mean")] in (part.attrs.get("interval_groups") or ()):
        d = col[: -len(" mean")]
        lo, hi = part[f"{d} ci_low"].to_numpy(float), part[f"{d} ci_high"].to_numpy(float)
        err = np.vstack([values - lo, hi - values])
        err = np.where(np.isnan(err), 0.0, err)
    elif any(col in c for c in part.attrs.get("cell_intervals") or []):  # intervals stored in the records
        cis = [part.attrs["cell_intervals"][i].get(col, (math.nan, math.nan)) for i in part.index]
        err = np.vstack([values - [c[0] for c in cis], [c[1] for c in cis] - values])
        err = np.where(np.isnan(err), 0.0, err)
    y = np.arange(len(part))
    shown = np.where(np.isnan(values), 0.0, values)
    bars = ax.barh(y, shown, xerr=err, color=[COLOURS[s] for s in states], edgecolor="#333333", linewidth=0.5,
                   capsize=3 if err is not None else 0)
    for bar, state, v in zip(bars, states, values):
        if state != "ranked":
            bar.set_hatch(HATCHES[state])
        if math.isnan(v):
            bar.set_visible(False)
    fmt = "{:.1f}" if part.attrs.get("formats", {}).get("main_score") == "pct" else "{:.3f}"
    right = values if err is None else values + err[1]
    for yi, i, v, x, state in zip(y, part.index, values, right, states):
        text = MISSING if math.isnan(v) else fmt.format(v)
        suffix = {"ranked": "", "reference": f"  ({part.at[i, 'not_ranked_reason']})", "other": "  (not ranked)"}
        ax.text(0 if math.isnan(v) else x, yi, "  " + text + suffix[state], va="center", fontsize=8)
    for label, value in levels:
        ax.axvline(value, color="#c44e52", linestyle="--", linewidth=1, label=f"{label} = {value:.4g}")
    if levels:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(y, [_row_label(part, i) for i in part.index], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.3)


def bar_plot(task: str, df: pd.DataFrame, params: dict | None = None) -> bytes | None:
    """Horizontal bars of the main score per row, best ranked first; one panel per dataset
    variant × subject (rows from different data are never drawn as competitors)."""
    from matplotlib.figure import Figure

    main = df.attrs.get("main_score")
    if not main or not len(df):
        return None
    panels = _panels(df)
    heights = [0.9 + 0.35 * len(part) for _, part in panels]
    fig = Figure(figsize=(8, 0.5 + sum(heights)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    levels = df.attrs.get("levels") or {}
    for ax, (key, part) in zip(axes, panels):
        _bars(ax, part, levels.get(key, []))
        first = part.index[0]
        ax.set_title(f"{variant_heading(part, first)} · {part.at[first, 'subject']}", fontsize=9)
    axes[-1].set_xlabel(main)
    fig.suptitle(f"{task}: {df.attrs.get('title', main)}", fontsize=10)
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
    tags = {"ranked": "", "reference": " (reference)", "other": " (not ranked)"}
    labels = [_row_label(df, i) + tags[_state(df, i)] for i in df.index]
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
    for r in np.flatnonzero(df["data_id"].to_numpy()[1:] != df["data_id"].to_numpy()[:-1]):
        ax.axhline(r + 0.5, color="white", linewidth=3)  # dataset variants are separate blocks
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
