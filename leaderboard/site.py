"""The static leaderboard site: ``index.html``, a page per result (:mod:`.pages`),
``leaderboard.json`` (:mod:`.export`) and the hand-written ``static/site.js`` + ``site.css``
(package data: no build step, no CDN; the site works from ``file://`` and any static host).

The index has one table per leaderboard table (task layout), every column sortable, and one
filter bar (dataset variant, subject, weights kind, backbone family, experiment) over all
tables. Identity columns with one value in every row are lifted into the table's caption; a
wide table scrolls inside its own box with the model column pinned. Rows keep the leaderboard's
rules (:mod:`.build`): ranks restart per dataset variant × subject, reference rows (controls)
and random-init weights are listed with their reason and never ranked, missing stays ``—``.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pandas as pd

from brainharness import __version__, registry
from brainharness.errors import HarnessError
from brainharness.layout import MISSING

from . import compare, export
from .build import VARIANT, record_path
from .display import cell, display_columns, fmt, header, ranking_sentence, sections
from .pages import Writer, anchor, esc, head, page_of, write_pages

FACETS = (("variant", "dataset variant"), ("subject", "subject"), ("weights", "weights"),
          ("family", "backbone family"), ("experiment", "experiment"))
"""Row filters: ``(data attribute, label)``."""

WEIGHTS_KIND = {"pretrained": "pretrained", "local": "pretrained (local)", "random-init": "random-init",
                "none": "none"}
MODEL = "backbone"
"""The pinned model column."""


def _facets(df: pd.DataFrame, i, record: dict) -> dict[str, str]:
    source = df.at[i, "weights_source"]
    backbone = record.get("backbone") if isinstance(record.get("backbone"), dict) else {}
    return {"variant": str(df.at[i, VARIANT]), "subject": str(df.at[i, "subject"]),
            "weights": WEIGHTS_KIND.get(source, "unknown") if isinstance(source, str) else "unknown",
            "family": str(backbone.get("family") or backbone.get("name") or df.at[i, MODEL]),
            "experiment": "" if pd.isna(df.at[i, "experiment"]) else str(df.at[i, "experiment"])}


def _sort_value(df: pd.DataFrame, i, col: str) -> str | None:
    """``data-v`` of a cell: the number it shows (interval groups: the mean); None for text."""
    if col in (df.attrs.get("interval_groups") or ()):
        col = f"{col} mean"
    if col == "rank" or col == "seed" or (col in df and pd.api.types.is_float_dtype(df[col])):
        v = df.at[i, col]
        return "" if pd.isna(v) else repr(float(v))
    return None


def _status(df: pd.DataFrame, i) -> str:
    if df.at[i, "ranked"]:
        return ""
    reason = str(df.at[i, "not_ranked_reason"] or "")
    if df.at[i, "reference"]:
        return f"Reference: {reason}"
    return f"Not ranked: {reason}" if reason else "Not ranked"


def _lifted(df: pd.DataFrame, cols: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(shown columns, [(column, value)] lifted into the caption)``: identity columns with one
    displayed value in every row (the model column always stays)."""
    ident = set(df.attrs.get("identity_columns") or ()) | {VARIANT}
    shown, lifted = [], []
    for c in cols:
        values = {cell(df, i, c) for i in df.index}
        if c in ident and c != MODEL and len(values) == 1 and len(df) > 1:
            lifted.append((c, values.pop()))
        else:
            shown.append(c)
    return shown, lifted


def table_html(task: str, df: pd.DataFrame, records: dict[str, dict]) -> str:
    """One leaderboard table: model (pinned, linking to the result page), rank, the varying
    identity columns, the value columns, why a row is not ranked, flags."""
    a = df.attrs
    ident = [c for c in a.get("identity_columns") or [] if c != MODEL]
    values = [c for c in display_columns(df) if c not in ident and c not in (MODEL, "flags", "record")]
    cols, lifted = _lifted(df, ident + values)
    has_status = bool(len(df)) and not df["ranked"].all() and a.get("ranked_table", True)
    has_flags = "flags" in df and (df["flags"].astype(str).str.len() > 0).any()
    heads = ([f'<th class="pin">{MODEL}</th>', "<th>rank</th>"] + (["<th>status</th>"] if has_status else [])
             + [f"<th>{esc(header(df, c))}</th>" for c in cols] + (["<th>flags</th>"] if has_flags else []))
    tid = f"t-{anchor(task)}"
    caption = f"{len(df)} rows" + "".join(f" · {esc(c)}: <strong>{esc(v)}</strong>" for c, v in lifted)
    out = [f'<div class="scroll"><table class="sortable filterable" id="{tid}">',
           f"<caption>{caption} · <span class=count id=\"{tid}-count\"></span></caption>",
           "<thead><tr>" + "".join(heads) + "</tr></thead>", "<tbody>"]
    intervals = a.get("cell_intervals") or []
    for position, i in enumerate(df.index):
        path = str(df.at[i, "record"])
        record = records.get(path, {})
        cis = intervals[position] if position < len(intervals) else {}
        facets = " ".join(f'data-{k}="{esc(v)}"' for k, v in _facets(df, i, record).items())
        cls = "" if df.at[i, "ranked"] else ' class="rf"' if df.at[i, "reference"] else ' class="nr"'
        model = esc(cell(df, i, MODEL))
        link = f'<a href="{esc(page_of(path))}">{model}</a>' if path in records else model
        rank = df.at[i, "rank"]
        cells = [f'<td class="pin t">{link}</td>',
                 f'<td data-v="{"" if pd.isna(rank) else int(rank)}">{MISSING if pd.isna(rank) else int(rank)}</td>']
        if has_status:
            cells.append(f'<td class="t">{esc(_status(df, i))}</td>')
        for c in cols:
            text, v = cell(df, i, c), _sort_value(df, i, c)
            klass = "m" if text == MISSING else ("t" if v is None else "")
            attrs = (f' class="{klass}"' if klass else "") + (f' data-v="{esc(v)}"' if v is not None else "")
            if c in cis and text != MISSING:  # the record's stored bootstrap interval (shown for the main column)
                lo, hi = (fmt(x, a.get("formats", {}).get(c, "acc")) for x in cis[c])
                attrs += f' title="95 % CI {esc(lo)}–{esc(hi)}"'
                text += f" [{lo}, {hi}]" if c == a.get("main_column") else ""
            cells.append(f"<td{attrs}>{esc(text)}</td>")
        if has_flags:
            cells.append(f'<td class="why">{esc(df.at[i, "flags"])}</td>')
        out.append(f"<tr{cls} {facets}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _text_table(head_row: list[str], body: list[list[str]], tid: str) -> str:
    """A table of display strings (sortable as text; the first column pinned)."""
    def row(cells, tag):
        return "".join(f'<{tag}{" class=pin" if n == 0 else ""}>{esc(c)}</{tag}>' for n, c in enumerate(cells))
    return (f'<div class="scroll"><table class="sortable" id="{tid}"><thead><tr>{row(head_row, "th")}</tr></thead>'
            "<tbody>" + "".join(f"<tr>{row(r, 'td')}</tr>" for r in body) + "</tbody></table></div>")


def _filters(tables: dict[str, pd.DataFrame], records: dict[str, dict]) -> str:
    values: dict[str, set] = {k: set() for k, _ in FACETS}
    for df in tables.values():
        for i in df.index:
            for k, v in _facets(df, i, records.get(str(df.at[i, "record"]), {})).items():
                values[k].add(v)
    parts = ['<div class="filters" role="search"><strong>Filter:</strong>']
    for key, label in FACETS:
        options = "".join(f'<option value="{esc(v)}">{esc(v or "(none)")}</option>' for v in sorted(values[key]))
        parts.append(f'<label>{esc(label)} <select data-facet="{key}" id="filter-{key}"'
                     f'{" disabled" if len(values[key]) < 2 else ""}><option value="">all</option>{options}'
                     "</select></label>")
    parts.append('<button type="button" id="reset-filters">show all</button></div>')
    return "\n".join(parts)


def newest(records: dict[str, dict]) -> dict | None:
    """Date, brainharness version and commit of the newest record (by its ``created`` time)."""
    dated = [r for r in records.values() if (r.get("provenance") or {}).get("created")]
    if not dated:
        return None
    p = max(dated, key=lambda r: str(r["provenance"]["created"]))["provenance"]
    code = p.get("code") or {}
    return {"created": str(p["created"]), "brainharness": (p.get("packages") or {}).get("brainharness"),
            "commit": code.get("git_commit"), "dirty": code.get("git_dirty")}


def _dataset_doc(name: str) -> str:
    try:
        doc = (registry.datasets.get(name).__doc__ or "").strip()
    except (HarnessError, ImportError):
        return "(dataset plugin not installed)"
    return doc.split("\n\n")[0].replace("\n", " ") if doc else ""


def about(tables: dict[str, pd.DataFrame], records: dict[str, dict]) -> str:
    """What the datasets, metrics, ceilings and chance levels are."""
    out = ['<h2 id="about">About these tables</h2>', '<dl class="about">']
    datasets: dict[str, dict[str, str]] = {}
    for r in records.values():
        d = r.get("dataset") if isinstance(r.get("dataset"), dict) else {}
        entry = datasets.setdefault(str(d.get("name") or (r.get("key") or {}).get("dataset")), {})
        if d.get("noise_ceiling"):
            entry.setdefault("ceiling", str(d["noise_ceiling"]))
    for name, info in sorted(datasets.items()):
        out.append(f"<dt>Dataset {esc(name)}</dt><dd>{esc(_dataset_doc(name))}"
                   + (f" Noise ceiling: {esc(info['ceiling'])}." if info.get("ceiling") else "") + "</dd>")
    for task, df in tables.items():
        a = df.attrs
        refs = sorted({str(r) for r in df.loc[df["reference"].astype(bool), "not_ranked_reason"]}) if len(df) else []
        levels = sorted({f"{n} = {v:.4g}" for lv in (a.get("levels") or {}).values() for n, v in lv})
        out.append(f"<dt>{esc(task)}: {esc(a.get('title', ''))}</dt><dd>{esc(a.get('description', ''))}. "
                   f"{esc(ranking_sentence(df, quote=''))}"
                   + (f" Ceilings and floors (reference rows, never ranked): {esc(', '.join(refs))}." if refs else "")
                   + (f" Chance: {esc(', '.join(levels))}." if levels else "") + "</dd>")
        out += [f"<dd>Note: {esc(n)}</dd>" for n in a.get("notes") or []]
    if any(compare.shown(df) or any(df.attrs.get("cell_intervals") or []) for df in tables.values()):
        out.append("<dt>Intervals and “vs best”</dt><dd>[low, high] after a score (and the tooltip of a cell) is "
                   "its 95 % bootstrap interval over test images, stored in the record when it was scored. "
                   "“vs best” compares each ranked row with the rank-1 row of its block by a paired bootstrap "
                   "over the same resampled test images, Holm-corrected for the number of rows compared: "
                   f"“tied with best” = adjusted p ≥ {compare.ALPHA}; — = no comparable per-image data.</dd>")
    out.append("</dl>")
    return "\n".join(out)


def _warnings(warnings: list[str]) -> str:
    if not warnings:
        return ""
    return (f'<div class="warn" role="alert"><strong>Warning: {len(warnings)} problem(s) in the results store; the '
            "rows of broken records are missing from these tables</strong> (run <code>brainharness results check"
            "</code>):<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")


def render_index(tables: dict[str, pd.DataFrame], records: dict[str, dict], files: dict[str, dict[str, str]],
                 meta: dict, warnings: list[str]) -> str:
    """``files``: per table, format → file name in the site (``md``, ``csv``, ``tex``, plots)."""
    new = meta.get("newest_record")
    stamp = (f"Newest record {esc(new['created'])}, brainharness {esc(new['brainharness'] or MISSING)}, commit "
             f"<code>{esc((new['commit'] or MISSING)[:12])}</code>{' (uncommitted changes)' if new.get('dirty') else ''}"
             if new else "No dated record")
    parts = [head("brainharness leaderboard", 0), "<h1>brainharness leaderboard</h1>",
             f'<p class="meta">{meta["n_records"]} records · {stamp} · generated by brainharness {esc(__version__)} · '
             '<a href="leaderboard.json">leaderboard.json</a> (<a href="leaderboard.schema.json">schema</a>)</p>',
             "<p class=d>Generated from the results store (complete, test-split records only). "
             f"{MISSING} = not reported; nothing is filled or averaged over gaps. Click a column header to sort; "
             "a model name opens its result page.</p>", _warnings(warnings)]
    if not tables:
        parts.append("<p>No complete test-split results yet.</p>")
    parts.append('<nav class="toc">' + "".join(f'<a href="#t-{esc(anchor(t))}-h">{esc(t)}</a>' for t in tables)
                 + '<a href="#about">about</a></nav>')
    if tables:
        parts.append(_filters(tables, records))
    for task, df in tables.items():
        a = df.attrs
        links = " · ".join(f'<a href="{esc(f)}">{k}</a>' for k, f in files.get(task, {}).items()
                           if k in ("md", "csv", "tex"))
        parts += [f'<h2 id="t-{esc(anchor(task))}-h">{esc(task)} — {esc(a.get("title", ""))}</h2>',
                  f"<p class=d>{esc(ranking_sentence(df, quote=''))} Download: {links}</p>",
                  table_html(task, df, records)]
        side = [sec for sec in sections(df) if a.get("side_columns") and sec[0] == a.get("side_title")]
        for title, head_row, body in side:  # a layout's second per-row table (e.g. the layer chosen per ROI)
            parts += [f"<h3>{esc(title)}</h3>", _text_table(head_row, body, f"t-{anchor(task)}-side")]
        if a.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in a["notes"]) + "</ul>")
        for name, f in files.get(task, {}).items():
            if name not in ("md", "csv", "tex"):  # the table's plots, then one per row where the layout has them
                parts.append(f'<p><img alt="{esc(task)} {esc(name)}" src="{esc(f)}" loading="lazy"></p>')
    parts += [about(tables, records), f"<footer>brainharness {esc(__version__)} · static site, no server "
              "needed</footer>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _row_plots(tables: dict[str, pd.DataFrame], files: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Record path → its plots: each table's shared plots, and the per-row plots of its rows."""
    out: dict[str, list[str]] = {}
    for task, df in tables.items():
        shared = [f for k, f in files.get(task, {}).items() if k in ("png", "heatmap_png")]
        rows = {k: f for k, f in files.get(task, {}).items() if k not in ("png", "heatmap_png", "md", "csv", "tex")}
        for n, i in enumerate(df.index, 1):
            mine = [f for k, f in rows.items() if f"_{n:02d}_" in k]
            plots = out.setdefault(str(df.at[i, "record"]), [])
            plots += [f for f in mine + shared if f not in plots]
    return out


def write_site(out: Path, root: Path, tables: dict[str, pd.DataFrame], records: list[dict],
               files: dict[str, dict[str, Path]], warnings: list[str], write: Writer) -> Path:
    """Write ``index.html``, the result pages, ``leaderboard.json`` (+ its schema) and the static
    files into ``out``; ``files``: per table the files already written (md, csv, tex, plots)."""
    by_path = {record_path(r, root): r for r in records}
    shown = {str(p) for df in tables.values() for p in df["record"]}
    by_path = {p: r for p, r in by_path.items() if p in shown}
    names = {t: {k: Path(p).relative_to(out).as_posix() for k, p in f.items()} for t, f in files.items()}
    meta = {"brainharness": __version__, "n_records": len(by_path), "newest_record": newest(by_path)}
    pages = {p: page_of(p) for p in by_path}
    doc = export.document(tables, by_path, pages, meta)
    for name in ("site.js", "site.css"):
        write(out / "static" / name, resources.files("brainharness.leaderboard").joinpath("static", name).read_bytes())
    write(out / export.SCHEMA_FILE, export.schema_text().encode())
    write(out / "leaderboard.json", (_json(doc) + "\n").encode())
    write_pages(out, by_path, doc["entries"], _row_plots(tables, names), write)
    index = out / "index.html"
    write(index, render_index(tables, by_path, names, meta, warnings).encode())
    return index


def _json(doc) -> str:
    """JSON without NaN or infinity (not JSON): a non-finite number is written as null."""
    import json

    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return None if isinstance(o, float) and not math.isfinite(o) else o

    return json.dumps(walk(doc), indent=1, ensure_ascii=False, default=str, allow_nan=False)
