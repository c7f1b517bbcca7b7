"""What ``run``, ``sweep`` and ``demo`` print on stdout (progress bars go to stderr; ``-q`` hides them).

One line per unit as it ends: ``<unit>: ran | up to date | failed: <one line>``. A complete unit
shows its main score rounded (three significant figures; one decimal for a percentage such as
NC-R²) with its 95 % interval when the record's tables carry one (``ci_low`` / ``ci_high``, e.g.
retrieval: mean ± half-width), else how many voxels it kept (encoding's per-ROI median has no
interval). After the units: the counts, where the records went and the next command to run.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path

from brainharness.layout import column_kind

from .results import unit_label


def decimals(value: float, kind: str) -> int:
    """Decimals that show ``value`` to three significant figures (one for ``pct``, none for ``int``)."""
    if kind in ("pct", "int"):
        return 1 if kind == "pct" else 0
    if not math.isfinite(value) or value == 0:
        return 3
    return max(0, 2 - math.floor(math.log10(abs(value))))


def rounded(value, kind: str, places: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(float(value))
    return f"{value:.{decimals(float(value), kind) if places is None else places}f}"


def interval(record: dict, name: str) -> tuple[float, float] | None:
    """The main score's 95 % interval from the record's tables: the row that names the score
    (retrieval's ``direction``), else the row whose ``mean`` is the score; None without one."""
    value = (record.get("scores") or {}).get(name)
    rows = [r for table in (record.get("tables") or {}).values() if isinstance(table, list) for r in table
            if isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
                                           for k in ("ci_low", "ci_high"))]
    for matches in (lambda r: name in [v for v in r.values() if isinstance(v, str)],
                    lambda r: value is not None and r.get("mean") == value):
        for r in rows:
            if matches(r):
                return float(r["ci_low"]), float(r["ci_high"])
    return None


def score_text(record: dict) -> str:
    """``brain→image = 0.0253 ± 0.0032 (95% CI)`` / ``median_nc_r2 = 8.0 (48 of 60 voxels kept)``."""
    name, scores = record.get("main_score"), record.get("scores") or {}
    if not name or name not in scores:
        return "no main score"
    value, kind = scores[name], column_kind(name)
    text = f"{name} = {rounded(value, kind)}"
    ci = interval(record, name)
    kept, total = scores.get("n_voxels_kept"), scores.get("n_voxels")
    if ci is not None and isinstance(value, (int, float)) and math.isfinite(value):
        half = (ci[1] - ci[0]) / 2
        text += f" ± {rounded(half, kind, decimals(float(value), kind))} (95% CI)"
    elif isinstance(kept, int):
        text += f" ({kept} of {total} voxels kept)" if isinstance(total, int) else f" ({kept} voxels kept)"
    if record.get("evaluated_on", "test") != "test":
        text += f", on the {record['evaluated_on']} part"
    return text


def outcome_line(outcome) -> str:
    """``<unit>: ran | up to date | failed: <line>`` for one :class:`brainharness.runner.UnitOutcome`."""
    head = f"{unit_label(outcome.key)}: "
    if outcome.status == "failed":
        return head + f"failed: {outcome.error}"
    return head + f"{outcome.status}  {score_text(outcome.record)}  id {outcome.key['id'][:12]}"


def print_outcome(outcome) -> None:
    """The ``on_unit`` callback of the commands: the line as the unit ends, above any progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(outcome_line(outcome))


def sweep_line(summary: dict) -> str:
    """The study's outcome: the best validation parameters and their one score on test."""
    name = summary["objective"]
    return (f"sweep {summary['study']}: best of {summary['n_complete_trials']} trials on the validation part "
            f"{summary['best_params']} → {name} = {rounded(summary['test_score'], column_kind(name))} on test")


def counts_line(outcomes) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ran", "up to date", "failed")}
    return f"{len(outcomes)} unit(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())


def leaderboard_command(results_dir) -> str:
    """The next command after a run: the leaderboard of ``results_dir``, written beside it."""
    results = Path(results_dir)
    return (f"brainharness leaderboard --results {shlex.quote(str(results))} "
            f"--out {shlex.quote(str(results.parent / 'leaderboard'))}")


def where_lines(outcomes, results_dir) -> list[str]:
    """Where the records went and what to run next (the first failure's record, then the leaderboard)."""
    lines = [f"records: {results_dir}"]
    failed = [o for o in outcomes if o.status == "failed" and Path(o.path).is_file()]
    if failed:
        lines.append(f"why it failed: brainharness results show {failed[0].key['id'][:12]} "
                     f"--results {shlex.quote(str(results_dir))}")
    if any(o.status != "failed" for o in outcomes):
        lines.append(f"next: {leaderboard_command(results_dir)}")
    return lines
