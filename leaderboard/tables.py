"""Results store → leaderboard files: per table ``<name>.md``, ``.csv``, ``.tex`` and PNG plots,
plus the static site (:mod:`brainharness.leaderboard.site`). Each table follows its task's layout (:mod:`brainharness.layout`);
how rows are built and ranked is in :mod:`brainharness.leaderboard.build`, the text formats in
:mod:`brainharness.leaderboard.render`, the plots in :mod:`brainharness.leaderboard.plots`.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from brainharness.errors import ConfigError
from brainharness.results import atomic_write_bytes

from .build import build_tables, leaderboard_records, weights_info
from .render import render_html, render_latex, render_markdown, to_csv
from .site import write_site

__all__ = ["build_tables", "check_out_dir", "leaderboard_records", "render_all_markdown", "render_html", "render_latex",
           "render_markdown", "store_warning", "to_csv", "weights_info", "write_leaderboard"]

_EMPTY_NOTE_MARK = "<!-- brainharness-leaderboard: empty -->"


def render_all_markdown(results_root: str | Path, problems: list | None = None) -> str:
    """Every table as Markdown, after a warning block naming each broken file of the store
    (those problems are also appended to ``problems``)."""
    found: list = []
    tables = build_tables(results_root, found)
    if problems is not None:
        problems.extend(found)
    if not tables:
        return store_warning(found) + _empty_note(results_root)
    return store_warning(found) + "\n".join(render_markdown(task, df) for task, df in tables.items())


def store_warning(problems: list) -> str:
    """A Markdown warning block naming every problem of the store ("" when there is none)."""
    if not problems:
        return ""
    lines = [f"> **Warning: {len(problems)} problem(s) in the results store** — the rows of broken records are "
             "missing from these tables (run `brainharness results check`):", ">"]
    lines += [f"> - {str(p).replace(chr(10), ' ')}" for p in problems]
    return "\n".join(lines) + "\n\n"


def _empty_note(results_root) -> str:
    return (f"# brainharness leaderboard\n\nNo complete test-split results in `{results_root}` yet. "
            "Run an experiment (e.g. `brainharness run configs/demo.yaml`) and regenerate the "
            "leaderboard.\n")


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


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` if the leaderboard can be written there (a folder, or creatable in a writable
    one), else one line naming the problem — checked before anything is rendered or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"leaderboard output {out} is a file, not a folder")
    there = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not there.is_dir() or not os.access(there, os.W_OK | os.X_OK):
        raise ConfigError(f"leaderboard output {out}: {there} is not a writable folder")
    return out


def write_leaderboard(results_root: str | Path, out_dir: str | Path, plots: bool = True,
                      problems: list | None = None) -> dict[str, dict[str, Path]]:
    """Write ``<task>.md``, ``<task>.csv``, ``<task>.tex`` (and PNG plots) per task, plus the
    static site (:mod:`.site`: ``index.html``, a page per result under ``r/``, ``leaderboard.json``
    and its schema, ``static/``); all atomically. Returns ``{task: {fmt: path}}`` (each
    task's ``html`` entry is the shared index page). With no usable results it writes a short
    ``README.md`` note (and an index page saying so) and returns ``{}``. Problems of the store
    head every Markdown file and the index page, and are appended to ``problems``."""
    out = check_out_dir(out_dir)
    found: list = []
    records = leaderboard_records(results_root, found)
    tables = build_tables(results_root, found, records=records)
    if problems is not None:
        problems.extend(found)
    warning, banner = store_warning(found), [str(p) for p in found]
    note = out / "README.md"
    if not tables:
        _write(note, (_EMPTY_NOTE_MARK + "\n" + warning + _empty_note(results_root)).encode())
        _write(out / "index.html", render_html({}, warnings=banner).encode())
        return {}
    if note.exists() and note.read_text(errors="replace").startswith(_EMPTY_NOTE_MARK):
        note.unlink(missing_ok=True)  # our own stale "no results" note

    paths: dict[str, dict[str, Path]] = {}
    for task, df in tables.items():
        stem = re.sub(r"[^A-Za-z0-9._=+-]+", "_", task)
        p = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "tex": out / f"{stem}.tex"}
        _write(p["md"], (warning + render_markdown(task, df)).encode())
        _write(p["csv"], to_csv(df).encode())
        _write(p["tex"], render_latex(task, df).encode())
        if plots:
            try:
                from .plots import task_plots

                pngs = task_plots(task, df)
            except Exception as e:  # a plotting problem never costs the tables
                warnings.warn(f"leaderboard plots for {task} skipped: {type(e).__name__}: {e}", stacklevel=2)
                pngs = {}
            if pngs:
                for name, data in pngs.items():
                    path = out / f"{stem}{'' if name == 'png' else '_' + name.removesuffix('_png')}.png"
                    _write(path, data)
                    p[name] = path
        paths[task] = p
    index = write_site(out, Path(results_root), tables, records, paths, banner, _write)
    for p in paths.values():
        p["html"] = index
    return paths
