"""One static page per result record (``r/<name>.html``), with its downloads beside it.

A page shows what produced the numbers and the numbers themselves: the rows the record makes on
the leaderboard (rank, or why it is not ranked), its scalar scores, each of its tables (the
per-ROI table with voxel counts and noise ceiling), its plots, the W&B run (a link when the run
has a URL), provenance (package versions, commit, device, precision, timings, feature-cache hit
or miss) and the resolved configuration. Downloads: the record JSON exactly as stored, and a CSV
of its scores and tables. Everything links relatively, so the site works from ``file://``.
"""
from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from brainharness.layout import MISSING

PAGES = "r"
"""The site folder holding the result pages and their downloads."""

Writer = Callable[[Path, bytes], None]


def esc(value) -> str:
    return html.escape(str(value))


def head(title: str, depth: int) -> str:
    """The document start: a page ``depth`` folders below the site root links ``static/`` up."""
    up = "../" * depth
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      '<link rel="icon" href="data:,">',  # no favicon request (a 404 is a console error)
                      f"<title>{esc(title)}</title>", f'<link rel="stylesheet" href="{up}static/site.css">',
                      f'<script src="{up}static/site.js"></script>', "</head>", "<body>"])


def page_stem(record_path: str) -> str:
    """A record's page name (without extension) from its path in the store."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(record_path).removesuffix(".json")).strip("_") or "record"


def page_of(record_path: str) -> str:
    """The page of a record, relative to the site root."""
    return f"{PAGES}/{page_stem(record_path)}.html"


def _value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def kv_table(pairs: list[tuple[str, object]], mark: str | None = None) -> str:
    rows = "".join(f"<tr><td>{'<strong>' + esc(k) + '</strong> (main)' if k == mark else esc(k)}</td>"
                   f"<td class=t>{esc(_value(v))}</td></tr>" for k, v in pairs)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def list_table(rows: list[dict], caption: str, table_id: str) -> str:
    """A list of dicts (a record table) as a sortable HTML table, columns in first-seen order."""
    cols = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))
    out = [f'<div class="scroll"><table class="sortable" id="{esc(table_id)}"><caption>{esc(caption)}</caption>',
           "<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for r in rows:
        if not isinstance(r, dict):
            continue
        cells = []
        for n, c in enumerate(cols):
            v = r.get(c)
            pin = ' class="pin"' if n == 0 else ""
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
                cells.append(f'<td{pin} data-v="{v!r}">{esc(_value(v))}</td>')
            else:
                cells.append(f'<td{pin or " class=t"}>{esc(_value(v))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def record_csv(record: dict) -> str:
    """The record's scalar scores (``table`` = scores) then every row of its tables, as one CSV."""
    rows = [{"table": "scores", "name": k, "value": v} for k, v in (record.get("scores") or {}).items()
            if not isinstance(v, (dict, list))]
    for name, table in (record.get("tables") or {}).items():
        if isinstance(table, list):
            rows += [{"table": name, **r} for r in table if isinstance(r, dict)]
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False, na_rep="")
    return buf.getvalue()


def _wandb(record: dict) -> str:
    w = ((record.get("tracking") or {}).get("wandb") or {})
    if not isinstance(w, dict) or not w:
        return "<p class=d>Not tracked with W&amp;B.</p>"
    url = w.get("url") or w.get("run_url")
    if url and str(url).startswith(("http://", "https://")):
        return f'<p><a href="{esc(url)}">W&amp;B run {esc(w.get("run_id", ""))}</a> ({esc(w.get("status", ""))})</p>'
    text = f"W&amp;B run {esc(w.get('run_id', '—'))}: {esc(w.get('status', 'unknown'))}"
    if w.get("dir") and w.get("status") == "offline":
        text += f" — upload it with <code>wandb sync {esc(Path(str(w['dir'])).parent)}</code>"
    return f"<p>{text}</p>"


def _provenance(record: dict) -> list[tuple[str, object]]:
    p = record.get("provenance") or {}
    code = p.get("code") or {}
    packages = p.get("packages") or {}
    pairs = [("created", p.get("created")), ("brainharness", packages.get("brainharness")),
             ("commit", f"{code.get('git_commit') or MISSING}{' (uncommitted changes)' if code.get('git_dirty') else ''}"),
             ("source digest", code.get("source_digest")), ("host", p.get("host")), ("python", p.get("python")),
             ("device", f"{p.get('device', MISSING)} (requested {p.get('device_requested', MISSING)}, "
                        f"backbone on {p.get('backbone_device', MISSING)})"),
             ("seed", p.get("seed"))]
    pairs += [(f"precision: {k}", v) for k, v in (p.get("precision") or {}).items()]
    pairs += [(f"time: {k}", f"{v:.3f} s" if isinstance(v, (int, float)) else v)
              for k, v in (record.get("timings") or {}).items()]
    for name, f in (record.get("features") or {}).items():
        if isinstance(f, dict):
            pairs.append((f"feature cache: {name}", f"{f.get('cache', MISSING)} (key {f.get('key', MISSING)})"))
    pairs += [(f"package: {k}", v) for k, v in packages.items() if k != "brainharness"]
    return pairs


def _rows_html(rows: list[dict]) -> str:
    items = []
    for r in rows:
        status = f"rank {r['rank']}" if r["rank"] is not None else (r["not_ranked_reason"] or "not ranked")
        labels = ", ".join(f"{k} {v}" for k, v in r["labels"].items() if v is not None)
        main = r["main_score"]
        value = MISSING if main["value"] is None else f"{main['value']:.4g}"
        if r.get("tied_with_best") is not None:  # the paired test against the block's rank-1 row
            value += ("; best" if r.get("p_vs_best") is None else
                      f"; {'tied with' if r['tied_with_best'] else 'worse than'} best (Holm p = {r['p_vs_best']:.2g})")
        items.append(f'<li><a href="../index.html#t-{esc(anchor(r["table"]))}">{esc(r["table"])}</a>'
                     f"{' (' + esc(labels) + ')' if labels else ''}: {esc(status)}; {esc(main['name'])} = {esc(value)}"
                     "</li>")
    return "<ul>" + "".join(items) + "</ul>"


def anchor(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-") or "table"


def render_page(record: dict, entry: dict, plots: list[str], stem: str) -> str:
    """One result page (``plots``: image paths relative to the page)."""
    ident = entry["identity"]
    title = " · ".join(str(x) for x in (ident["backbone"], entry.get("task"), ident["dataset_variant"],
                                       ident["subject"]) if x)
    parts = [head(f"{title} — brainharness result", 1), '<p><a href="../index.html">← leaderboard</a></p>',
             f"<h1>{esc(title)}</h1>",
             f'<p class="meta">record <code>{esc(entry["record"])}</code> · id <code>{esc(entry.get("id"))}</code> · '
             f'downloads: <a href="{esc(stem)}.json">record JSON</a> · <a href="{esc(stem)}.csv">CSV</a></p>',
             "<h2>On the leaderboard</h2>", _rows_html(entry["rows"]), "<h2>Scores</h2>",
             kv_table([(k, v) for k, v in (record.get("scores") or {}).items() if not isinstance(v, (dict, list))],
                      mark=record.get("main_score"))]
    for n, (name, table) in enumerate((record.get("tables") or {}).items()):
        if isinstance(table, list) and table:
            caption = f"{name} ({len(table)} rows" + (
                "; voxel counts and noise ceiling per region)" if name == "per_roi" else ")")
            parts += [f"<h3>{esc(name)}</h3>", list_table(table, caption, f"tab-{n}")]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<p><img alt="{esc(Path(p).stem)}" src="{esc(p)}"></p>' for p in plots]
    parts += ["<h2>W&amp;B</h2>", _wandb(record), "<h2>Provenance</h2>", kv_table(_provenance(record)),
              "<h2>Resolved configuration</h2>",
              "<p class=d>Everything that determines the numbers (the record's identity is a hash of it):</p>",
              f"<pre>{esc(json.dumps(record.get('identity') or {}, indent=2, default=str))}</pre>",
              "<details><summary>Dataset, backbone and task as run; the experiment's configuration</summary>",
              f"<pre>{esc(json.dumps({k: record.get(k) for k in ('dataset', 'backbone', 'task')}, indent=2, default=str))}"
              "</pre>",
              f"<pre>{esc(json.dumps((record.get('provenance') or {}).get('config'), indent=2, default=str))}</pre>",
              "</details>", "</body>", "</html>", ""]
    return "\n".join(parts)


def write_pages(out: Path, records: dict[str, dict], entries: list[dict], plots: dict[str, list[str]],
                write: Writer) -> None:
    """Write every entry's page, its record JSON (the stored bytes) and CSV under ``out/r/``.
    ``plots``: record path → image paths relative to the site root."""
    folder = out / PAGES
    for entry in entries:
        record = records[entry["record"]]
        stem = page_stem(entry["record"])
        source = Path(str(record.get("_path", "")))
        data = source.read_bytes() if source.is_file() else json.dumps(
            {k: v for k, v in record.items() if not k.startswith("_")}, indent=2, default=str).encode()
        write(folder / f"{stem}.json", data)
        write(folder / f"{stem}.csv", record_csv(record).encode())
        images = [f"../{p}" for p in plots.get(entry["record"], [])]
        write(folder / f"{stem}.html", render_page(record, entry, images, stem).encode())
