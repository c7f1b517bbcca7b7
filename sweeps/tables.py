"""Seed 004 Table 3 from a λ sweep's result records: stage 1 vs stage 2 for each λ.

Rows: stage 1 (frozen backbone), stage 2 with λ = 0 (fine-tuning with the MSE term only —
the paper's "stage-2" row, which separates the effect of the alignment term from the effect of
fine-tuning), then stage 2 for each λ > 0 in ascending order (seed 004: 1e-3, 1e-2, 0.1, 1).
Columns as the paper's: raw R² (mean over voxels), its change in % against the λ = 0 row, the
score ``100·mean R²/NC`` over every voxel; then the harness's median and mean normalised R² over
voxels above the NC threshold. A λ without a complete record stays a visibly missing row ("—"),
never filled in.

The λ rows come from the sweep's trial records, scored on the validation part carved from the
training split (that is where λ is chosen; the test split is not read per λ). The test split
appears once, in a second block: stage 1 and stage 2 with the selected λ, from the sweep's
single best-on-test record.

As a sweep report hook (``sweep.report: brainharness.sweeps.tables:stage_table_report``) it writes
``<results_dir>/tables/<study>.stages.md`` and ``.csv`` and prints the Markdown.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from brainharness.results import atomic_write_bytes

SEED004_LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
VALUES = ("mean_r2", "mean_nc_r2_all", "median_nc_r2", "mean_nc_r2")
"""Per row: raw mean R² (the paper's "R² Value"), 100·mean R²/NC over every voxel (its "Score",
``m = 1/n Σ R²/NC``), and the harness's NC-thresholded median / mean normalised R²."""
COLUMNS = ("split", "model", "lam", "mean_r2", "change_r2_pct", "mean_nc_r2_all", "median_nc_r2", "mean_nc_r2",
           "best_epoch", "trial")


def _lam(record: dict, key: str):
    value = (record.get("task", {}).get("params") or {}).get(key)
    if value is None:
        value = (record.get("sweep", {}).get("params") or {}).get(key)
    return None if value is None else float(value)


def _change(new, old):
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / abs(old)


def _values(scores: dict, prefix: str) -> dict:
    return {k: scores.get(f"{prefix}{k}") for k in VALUES}


def _stage1(records: list[dict]) -> tuple[dict | None, str | None]:
    """Stage-1 scores of the records (identical when they share the split; else the median, noted)."""
    values = [_values(r["scores"], "stage1_") for r in records if r["scores"].get("stage1_mean_r2") is not None]
    if not values:
        return None, None
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else None  # noqa: E731
    out = {k: median([v[k] for v in values if v[k] is not None]) for k in VALUES}
    spread = [v["mean_r2"] for v in values]
    note = None
    if max(spread) - min(spread) > 1e-9:
        note = f"stage-1 scores differ across the {len(values)} trial records; the median is shown"
    return out, note


def stage_rows(records: list[dict], lam_key: str = "lam", lambdas=SEED004_LAMBDAS) -> tuple[list[dict], list[str]]:
    """Table 3 rows from result records → ``(rows, notes)``.

    ``records``: complete ``aligned_encoding`` records; those ``evaluated_on: validation``
    (the sweep's trials) give the λ rows, one ``evaluated_on: test`` record (the best λ) the
    test block. Per λ the record of the latest trial counts (a λ re-run after an interruption).
    As in seed 004 Table 3, the change column is on raw mean R², against the stage-2 λ = 0 row
    (0.208112 → 0.194580 = 6.5 % ↓ for λ = 1); the test block, which has no λ = 0 model, gives
    the selected λ's change against stage 1.
    """
    records = [r for r in records if r.get("status", "complete") == "complete" and r.get("scores")]
    val = [r for r in records if r.get("evaluated_on") == "validation"]
    test = [r for r in records if r.get("evaluated_on") == "test"]
    notes: list[str] = []
    by_lam: dict[float, dict] = {}
    for r in sorted(val, key=lambda r: (r.get("sweep", {}).get("trial") or 0)):
        lam = _lam(r, lam_key)
        if lam is not None:
            by_lam[lam] = r
    base, note = _stage1(list(by_lam.values()))
    if note:
        notes.append(note)
    rows = [{"split": "validation", "model": "stage 1 (frozen backbone)", "lam": None, **(base or _values({}, "")),
             "change_r2_pct": None, "best_epoch": None, "trial": None}]
    ref = by_lam[0.0]["scores"].get("stage2_mean_r2") if 0.0 in by_lam else None
    for lam in sorted(set(lambdas) | set(by_lam)):
        r = by_lam.get(lam)
        s = r["scores"] if r else {}
        rows.append({"split": "validation", "model": _model(lam), "lam": lam, **_values(s, "stage2_"),
                     "change_r2_pct": None if lam == 0 else _change(s.get("stage2_mean_r2"), ref),
                     "best_epoch": s.get("best_epoch"), "trial": (r.get("sweep") or {}).get("trial") if r else None})
        if r is None:
            notes.append(f"λ = {_fmt_lam(lam)}: no complete trial record (missing, not filled in)")
    if test:
        r = max(test, key=lambda r: r.get("provenance", {}).get("created") or "")
        s, lam = r["scores"], _lam(r, lam_key)
        rows.append({"split": "test", "model": "stage 1 (frozen backbone)", "lam": None, **_values(s, "stage1_"),
                     "change_r2_pct": None, "best_epoch": None, "trial": None})
        rows.append({"split": "test", "model": _model(lam) + " — selected λ", "lam": lam, **_values(s, "stage2_"),
                     "change_r2_pct": _change(s.get("stage2_mean_r2"), s.get("stage1_mean_r2")),
                     "best_epoch": s.get("best_epoch"), "trial": None})
    return rows, notes


def _fmt_lam(lam: float) -> str:
    return "0" if lam == 0 else (f"{lam:g}" if lam >= 0.01 else f"{lam:.0e}".replace("e-0", "e-"))


def _model(lam) -> str:
    if lam is None:
        return "stage 2"
    return "stage 2, λ = 0 (MSE only)" if lam == 0 else f"stage 2, λ = {_fmt_lam(lam)}"


def _cell(v, signed: bool = False, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return str(v)


def to_markdown(rows: list[dict], notes: list[str] = (), title: str = "") -> str:
    out = [f"### {title}", ""] if title else []
    for split, caption, ref in (
            ("validation", "Validation part carved from the training split (where λ is chosen)", "λ = 0"),
            ("test", "Test split, scored once (the selected λ)", "stage 1")):
        part = [r for r in rows if r["split"] == split]
        if not part:
            continue
        head = ["model", "R² (mean)", f"Δ R² vs {ref} (%)", "score: mean R²/NC, all voxels (%)",
                "median nc-R² (%)", "mean nc-R² (%)", "epoch"]
        out += [f"{caption}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in part:
            out.append("| " + " | ".join([r["model"], _cell(r["mean_r2"], digits=6), _cell(r["change_r2_pct"], True),
                                          _cell(r["mean_nc_r2_all"]), _cell(r["median_nc_r2"]),
                                          _cell(r["mean_nc_r2"]), _cell(r["best_epoch"])]) + " |")
        out.append("")
    out += [f"- {n}" for n in (*notes, TABLE3_NOTE)]
    return "\n".join(out).rstrip() + "\n"


TABLE3_NOTE = ("seed 004 Table 3: R² = mean over voxels of r² (raw), score = 100·mean R²/NC over every voxel, "
               "Δ on raw R² against the stage-2 λ = 0 row (test: against stage 1); median / mean nc-R² are the "
               "harness's, over voxels above the NC threshold; λ is chosen on the validation part, not on test")


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    return buf.getvalue()


def write_stage_table(rows: list[dict], notes: list[str], out_dir: str | Path, name: str, title: str = "") -> dict:
    out_dir = Path(out_dir)
    md, cs = out_dir / f"{name}.stages.md", out_dir / f"{name}.stages.csv"
    markdown = to_markdown(rows, notes, title)
    atomic_write_bytes(md, markdown.encode())
    atomic_write_bytes(cs, to_csv(rows).encode())
    return {"markdown": str(md), "csv": str(cs), "text": markdown}


def stage_table_report(sweep, summary: dict) -> dict:
    """Sweep report hook: the Table 3 of this study's records, written and printed."""
    problems: list = []  # broken records of the store: named in the table's notes, not skipped silently
    records = [r for r in sweep.runner.store.records(errors=problems)
               if (r.get("sweep") or {}).get("study") == sweep.name]
    lam_key = next(iter(sweep.space), "lam") if len(sweep.space) == 1 else "lam"
    rows, notes = stage_rows(records, lam_key)
    notes += [f"not read (its row may be missing): {p}" for p in problems]
    out = write_stage_table(rows, notes, Path(sweep.runner.cfg["results_dir"]) / "tables", sweep.name,
                            title=f"{sweep.name}: stage 1 vs stage 2 per λ (seed 004 Table 3)")
    print(out["text"], flush=True)
    return {"markdown": out["markdown"], "csv": out["csv"]}
