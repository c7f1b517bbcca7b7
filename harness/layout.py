"""How a task's results are shown on the leaderboard: the types a task declares its layout with.

A task plugin sets ``layout = Layout(Table(...), ...)`` on its class. The leaderboard
(:mod:`brainharness.leaderboard`) renders any layout and knows no task by name; a task that
declares none gets :data:`DEFAULT_LAYOUT` (one column per scalar score, ranked by the record's
main score). Everything here is plain data and small functions on record dicts (no pandas, no
plotting), so declaring a layout costs a task module nothing at import.

A :class:`Table` says how a record becomes rows (``split``: one record → several rows, e.g. one
per model stage), which value columns the rows have (a column family: :class:`Scores`,
:class:`RoiColumns`, :class:`Intervals` or :class:`Texts`), which rows are reference rows
(never ranked), the caption text, the ranking direction, notes and plots (:class:`Plot`: a kind
the leaderboard draws generically, with parameters).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

MISSING = "—"
"""How a missing cell is shown (Markdown, LaTeX, HTML, plots)."""

PAIRED = ("delta", "delta_ci_low", "delta_ci_high")
"""Optional fields of an interval row: a paired difference to a reference, with its 95 % CI."""


# -- small helpers on record values ------------------------------------------------------------
def num(value) -> float:
    """A score as float; anything that is not a number (None, text, bool) is missing (NaN)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def text(value) -> str | float:
    """A cell as text (lists joined with ``+``, mappings as ``k=v``); None or empty → NaN."""
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value) if value else math.nan
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) if value else math.nan
    return str(value)


def norm(name) -> str:
    """A name reduced to lower-case letters and digits (for alias matching)."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def scalar_scores(record: dict) -> dict[str, float]:
    """The record's numeric scores (nested tables, text and flags left out)."""
    return {str(k): num(v) for k, v in (record.get("scores") or {}).items()
            if not isinstance(v, (dict, list, str, bool))}


def column_kind(name: str) -> str:
    """Display kind guessed from a score name: ``pct`` (one decimal), ``int`` or ``acc`` (three)."""
    n = str(name).lower()
    if "nc_r2" in n or n.endswith("_pct") or "%" in n or "percent" in n:
        return "pct"
    if n.startswith("n_") or n in ("n", "seed"):
        return "int"
    return "acc"


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# -- column families ---------------------------------------------------------------------------
# Each family turns one row record into ``({column: value}, flags)``, orders the columns seen
# over all rows, names the column that shows a score (``column_of``) and gives a display kind
# per column (``pct``, ``acc``, ``int`` or ``text``).


@dataclass(frozen=True)
class Scores:
    """One column per scalar score. ``columns`` = ``(column, aliases)`` of known scores (aliases
    matched after :func:`norm`), in display order; the first ``always`` of them are shown even
    when no record has them, the others when present; unknown scores follow in the order seen.
    ``main_first`` moves the main score's column to the front."""

    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    always: int = 0
    main_first: bool = True

    def column(self, name: str) -> str:
        n = norm(name)
        return next((c for c, aliases in self.columns if n in aliases), str(name))

    def values(self, record: dict) -> tuple[dict, list[str]]:
        out: dict = {}
        for name, v in scalar_scores(record).items():
            out.setdefault(self.column(name), v)
        return out, []

    def order(self, seen: list[str], main: str | None) -> list[str]:
        names = [c for c, _ in self.columns]
        cols = names[: self.always] + [c for c in names[self.always:] if c in seen] + \
            [c for c in seen if c not in names]
        if self.main_first and main in cols:
            cols = [main] + [c for c in cols if c != main]
        return cols

    def column_of(self, score: str, columns: list[str]) -> str | None:
        c = self.column(score)
        return c if c in columns else None

    def fixed(self) -> list[str]:
        return [c for c, _ in self.columns[: self.always]]

    def kind(self, column: str) -> str:
        return column_kind(column)


@dataclass(frozen=True)
class RoiColumns:
    """One column per region of interest from a record table with one row per ROI.

    Columns: ``whole`` (the record's whole-brain value) then ``rois``, then other ROIs in the
    order seen. ROI names map to columns through ``aliases`` (lower-case name → column); ROIs in
    ``skip`` (the whole-brain mask) are left out — their value is the ``whole`` column. Each cell
    is the row's ``value`` field; the ``whole`` cell is the record score ``score`` (or
    ``whole_value(record)``). ``cell_kind`` ``text`` keeps cells as text (e.g. a chosen layer)."""

    rois: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    score: str = ""
    value: str = ""
    whole: str = "all"
    table: str = "per_roi"
    key: str = "roi"
    skip: tuple[str, ...] = ()
    cell_kind: str = "pct"
    whole_value: Callable[[dict], Any] | None = None

    def column(self, roi) -> str:
        return self.aliases.get(str(roi).lower(), str(roi))

    def _cell(self, value):
        return text(value) if self.cell_kind == "text" else num(value)

    def values(self, record: dict) -> tuple[dict, list[str]]:
        whole = self.whole_value(record) if self.whole_value else (record.get("scores") or {}).get(self.score)
        out, flags = {self.whole: self._cell(whole)}, []
        for row in (record.get("tables") or {}).get(self.table) or []:
            if not isinstance(row, dict) or row.get(self.key) is None or row.get(self.key) in self.skip:
                continue
            col = self.column(row[self.key])
            if col == self.whole:
                col = f"{self.whole} (ROI table)"
            value = self._cell(row.get(self.value or self.score))
            if col in out:
                if not _same(out[col], value):
                    flags.append(f"conflicting {col} entries in {self.table}; first kept")
                continue
            out[col] = value
        return out, flags

    def fixed(self) -> list[str]:
        return [self.whole, *(c for c in self.rois if c != self.whole)]

    def order(self, seen: list[str], main: str | None) -> list[str]:
        fixed = self.fixed()
        return fixed + [c for c in seen if c not in fixed]

    def column_of(self, score: str, columns: list[str]) -> str | None:
        return self.whole if score == self.score else None

    def kind(self, column: str) -> str:
        return self.cell_kind


@dataclass(frozen=True)
class Intervals:
    """Means with a 95 % CI, one group per row of record table ``table`` (named by its ``key``
    field through ``canonical``; None = not a group). Columns ``<group> mean``, ``<group> ci_low``,
    ``<group> ci_high`` (and ``<group> delta…`` when rows carry a paired difference, see
    :data:`PAIRED`); shown as ``mean ± half CI``. Groups in ``groups`` are always shown, in
    that order; others follow sorted. A record without the table falls back to scalar scores
    whose names are groups (mean only, no CI)."""

    table: str
    key: str
    groups: tuple[str, ...] = ()
    canonical: Callable[[Any], str | None] = lambda name: str(name) or None

    def values(self, record: dict) -> tuple[dict, list[str]]:
        out: dict = {}
        for row in (record.get("tables") or {}).get(self.table) or []:
            if not isinstance(row, dict):
                continue
            g = self.canonical(row.get(self.key, ""))
            if g is None or f"{g} mean" in out:
                continue
            out.update({f"{g} {k}": num(row.get(k)) for k in ("mean", "ci_low", "ci_high")})
            if "delta" in row:
                out.update({f"{g} {k}": num(row.get(k)) for k in PAIRED})
        if not out:
            for name, v in scalar_scores(record).items():
                g = self.canonical(name)
                if g and f"{g} mean" not in out:
                    out.update({f"{g} mean": v, f"{g} ci_low": math.nan, f"{g} ci_high": math.nan})
        return out, []

    def order(self, seen: list[str], main: str | None) -> list[str]:
        groups = list(self.groups) + sorted({c.rsplit(" ", 1)[0] for c in seen} - set(self.groups))
        parts = ("mean", "ci_low", "ci_high") + (PAIRED if any(c.endswith(" delta") for c in seen) else ())
        return [f"{g} {p}" for g in groups for p in parts]

    def column_of(self, score: str, columns: list[str]) -> str | None:
        g = self.canonical(score)
        return f"{g} mean" if g else None

    def fixed(self) -> list[str]:
        return [f"{g} mean" for g in self.groups]

    def kind(self, column: str) -> str:
        return column_kind(column)


@dataclass(frozen=True)
class Texts:
    """One text column per entry of ``scores`` (e.g. generated captions), sorted by name."""

    def values(self, record: dict) -> tuple[dict, list[str]]:
        return {str(k): v if isinstance(v, str) else math.nan for k, v in (record.get("scores") or {}).items()}, []

    def order(self, seen: list[str], main: str | None) -> list[str]:
        return sorted(seen)

    def column_of(self, score: str, columns: list[str]) -> str | None:
        return None

    def fixed(self) -> list[str]:
        return []

    def kind(self, column: str) -> str:
        return "text"


class Columns(Protocol):
    """What a column family provides (the four above, or a task's own)."""

    def values(self, record: dict) -> tuple[dict, list[str]]: ...  # ({column: value}, flags)

    def order(self, seen: list[str], main: str | None) -> list[str]: ...  # all value columns, in order

    def column_of(self, score: str, columns: list[str]) -> str | None: ...  # the column showing a score

    def fixed(self) -> list[str]: ...  # columns shown even where every cell is missing

    def kind(self, column: str) -> str: ...  # pct, acc, int or text


# -- tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One leaderboard row made from a record by :attr:`Table.split`: the record it shows (may be
    a copy holding one row's worth of ``scores`` / ``tables`` and its own ``main_score``), extra
    identity cells (``labels``, e.g. ``{"system": "stage 2"}``), and for a reference row (a
    ceiling, a floor, chance) the reason it is listed but never ranked."""

    record: dict
    labels: dict = field(default_factory=dict)
    reference: str | None = None


@dataclass(frozen=True)
class Side:
    """A second per-row table shown as its own section (rank and identity, then ``columns``);
    in the CSV its columns follow the value columns as ``<column><suffix>``. Columns outside
    the family's fixed ones follow sorted; a column nobody has is not shown in the section."""

    title: str
    columns: Columns
    suffix: str


@dataclass(frozen=True)
class Plot:
    """A plot the leaderboard draws for a table: ``bars`` (the main score per row, with CI error
    bars when the main column is an interval), ``heatmap`` (value columns × rows; params
    ``title``, ``colorbar``, ``digits``), ``row_heatmaps`` (one grid per row from
    :attr:`Table.row_data`; params ``prefix``, ``title``, ``colorbar``, ``digits``, ``labels``)."""

    kind: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """One leaderboard table of a task.

    ``suffix``: the table is named ``<task>-<suffix>`` (None: ``<task>``). ``name``: a short
    name of the table's shape (``df.attrs["layout"]``). ``split(record) -> [Row]`` (None: one
    row per record; ``[]``: the record is not in this table). ``labels``: the identity columns
    the split rows add. ``ranked`` False: nothing in the table is ranked (shown as one section
    ``unranked_title``, with ``unranked_note`` as its ranking sentence). ``notes(records)``: extra
    notes from the table's row records. ``cells(record)``: identity cells to override (e.g. a
    layer range). ``row_data(record)``: per-row data for ``row_heatmaps`` plots.
    ``levels(records, main)``: reference levels of the main score that no row competes with
    (e.g. chance), ``[(label, value)]`` from the row records of one dataset variant × subject;
    drawn as lines on its bar plot (reference rows — controls — are declared by the backbone or
    by :attr:`Row.reference`, not here)."""

    suffix: str | None = None
    name: str = "generic"
    title: str = "scores"
    description: str = "one column per scalar score"
    columns: Columns = Scores()
    split: Callable[[dict], list[Row]] | None = None
    labels: tuple[str, ...] = ()
    ranked: bool = True
    higher_is_better: bool = True
    unranked_title: str = "Rows"
    unranked_note: str = "Not ranked."
    notes: Callable[[list[dict]], list[str]] | None = None
    cells: Callable[[dict], dict] | None = None
    row_data: Callable[[dict], Any] | None = None
    levels: Callable[[list[dict], str | None], list[tuple[str, float]]] | None = None
    side: Side | None = None
    plots: tuple[Plot, ...] = (Plot("bars"),)

    def table_name(self, task: str) -> str:
        return task if self.suffix is None else f"{task}-{self.suffix}"

    def rows(self, record: dict) -> list[Row]:
        return [Row(record)] if self.split is None else list(self.split(record))


@dataclass(frozen=True)
class Layout:
    """A task's leaderboard layout: one or more tables. A record that no table takes (every
    ``split`` returns ``[]``) is shown in a default table named after the task."""

    tables: tuple[Table, ...]

    def __init__(self, *tables: Table):
        if not tables or not all(isinstance(t, Table) for t in tables):
            raise TypeError("Layout(*tables) needs at least one Table")
        names = [t.suffix for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"Layout: table suffixes must differ, got {names}")
        object.__setattr__(self, "tables", tuple(tables))


DEFAULT_TABLE = Table()
DEFAULT_LAYOUT = Layout(DEFAULT_TABLE)
"""For a task that declares no layout (or whose plugin is not installed)."""
