"""Leaderboard tables as Markdown, CSV, LaTeX (booktabs) and one static HTML page."""
from __future__ import annotations

import html
import io
import re

import pandas as pd

from brainharness.layout import MISSING

from .display import REFERENCE_TITLE, grouped_sections, ranking_sentence, text_header


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_markdown(task: str, df: pd.DataFrame) -> str:
    """The task's leaderboard as Markdown: one block per dataset variant, each with its ranked
    table, then its reference rows and not-ranked sections."""
    a = df.attrs
    lines = [f"## {task} — {a.get('title', 'scores')}", ""]
    if a.get("description"):
        lines += [a["description"] + ".", ""]
    lines += [ranking_sentence(df), ""]
    blocks = grouped_sections(df)
    if not blocks:
        lines += ["_No results._", ""]
    for heading, secs in blocks:
        lines += [f"### {heading}", ""]
        for title, header, body in secs:
            if title != "Ranked":
                lines += [f"#### {title}", ""]
            lines += [_md_table(header, body), ""]
    notes = a.get("notes") or []
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


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


def _tex_align(df: pd.DataFrame, blocks, n: int) -> str:
    """Right-align rank and value columns, left-align identity/text columns."""
    if not blocks or not blocks[0][1]:
        return "l" * n
    header = blocks[0][1][0][1]
    header = [""] * (n - len(header)) + header
    return "".join("l" if text_header(df, h) else "r" for h in header)


def render_latex(task: str, df: pd.DataFrame) -> str:
    """A booktabs ``table``: per dataset variant a bold heading row, the ranked rows, then the
    reference rows and not-ranked sections."""
    blocks = grouped_sections(df)
    a = df.attrs
    n = max((len(h) for _, secs in blocks for _, h, _ in secs), default=1)
    lines = [f"% brainharness leaderboard: {task} (generated from the results store; do not edit)",
             "% needs \\usepackage{booktabs}", r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{_tex(task)}: {_tex(a.get('title', 'scores'))}. {_tex(ranking_sentence(df, quote=''))}}}",
             rf"\label{{tab:leaderboard-{re.sub(r'[^A-Za-z0-9-]', '-', task)}}}",
             r"\begin{tabular}{" + _tex_align(df, blocks, n) + "}", r"\toprule"]
    for g, (heading, secs) in enumerate(blocks):
        if g:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{n}}}{{l}}{{\textbf{{{_tex(heading)}}}}} \\")
        for title, header, body in secs:
            if title != "Ranked":
                lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\textit{{{_tex(title)}}}}} \\"]
            # not-ranked sections have no rank column: keep alignment with an empty first cell
            if len(header) < n:
                header = [""] * (n - len(header)) + header
                body = [[""] * (n - len(row)) + row for row in body]
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
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1.1em}h4{font-size:1em;color:#a33}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.t{text-align:left}td.m{color:#999;text-align:center}
tr.nr td{background:#fbf4f4}tr.rf td{background:#f3f6fb}p.d{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee}
div.warn{background:#fff3cd;border:2px solid #c60;padding:.5em 1em;margin:1em 0}div.warn li{font-family:monospace}
"""


def _html_table(df: pd.DataFrame, header, body, row_class: str) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    for row in body:
        cells = []
        for h, c in zip(header, row):
            cls = "m" if c == MISSING else ("t" if text_header(df, h) else "")
            cells.append(f'<td class="{cls}">{html.escape(c)}</td>' if cls else f"<td>{html.escape(c)}</td>")
        out.append(f'<tr{" class=" + row_class if row_class else ""}>' + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def render_html(tables: dict[str, pd.DataFrame], images: dict[str, dict[str, bytes]] | None = None,
                title: str = "brainharness leaderboard", warnings: list[str] | None = None) -> str:
    """A static, self-contained page: inline CSS, images embedded as data URIs, no scripts.
    ``warnings`` (problems of the results store, one line each) become a banner at the top."""
    import base64

    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p class=d>Generated from the results store (complete, test-split records only). "
             f"{MISSING} = not reported; nothing is filled or averaged over gaps.</p>"]
    if warnings:
        parts.append(f'<div class="warn" role="alert"><strong>Warning: {len(warnings)} problem(s) in the results '
                     'store; the rows of broken records are missing from these tables</strong> (run '
                     '<code>brainharness results check</code>):<ul>'
                     + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
    if not tables:
        parts.append("<p>No complete test-split results yet.</p>")
    if len(tables) > 1:
        parts.append("<p>" + " · ".join(f'<a href="#{html.escape(t)}">{html.escape(t)}</a>' for t in tables) + "</p>")
    for task, df in tables.items():
        a = df.attrs
        parts.append(f'<h2 id="{html.escape(task)}">{html.escape(task)} — {html.escape(a.get("title", ""))}</h2>')
        if a.get("description"):
            parts.append(f"<p class=d>{html.escape(a['description'])}.</p>")
        parts.append(f"<p class=d>{html.escape(ranking_sentence(df, quote=''))}</p>")
        for heading, secs in grouped_sections(df):
            parts.append(f"<h3>{html.escape(heading)}</h3>")
            for sec_title, header, body in secs:
                if sec_title != "Ranked":
                    parts.append(f"<h4>{html.escape(sec_title)}</h4>")
                row_class = "" if sec_title == "Ranked" else "rf" if sec_title == REFERENCE_TITLE else "nr"
                parts.append(_html_table(df, header, body, row_class))
        if a.get("notes"):
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in a["notes"]) + "</ul>")
        for name, png in (images or {}).get(task, {}).items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<p><img alt="{html.escape(task)} {html.escape(name)}" '
                         f'src="data:image/png;base64,{data}"></p>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
