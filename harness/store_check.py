"""``brainharness results check``: what crashes, disk errors or hand edits left in a results store.

Found (each one line naming the file):

* ``broken``    a record that does not validate (empty, truncated, wrong schema, wrong types);
* ``sidecar``   a record's sidecar that is missing or whose bytes differ from the recorded digest;
* ``orphan``    a ``.npz`` that no record names (a run killed between the sidecar and the record);
* ``temporary`` a ``.*.tmp`` file (a run killed before the rename of an atomic write);
* ``failure``   a failed attempt kept beside a complete record (information, not damage).

``fix=True`` removes orphans and temporary files only — never a record, valid or not (the re-run
policies re-run broken records; removing one is the user's decision). A file younger than
``grace_s`` is left alone: a run may still be writing it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .results import FAILED_SUFFIX, NOT_RECORDS, Problem, ResultStore

DEFAULT_GRACE_S = 120.0
FIXABLE = ("orphan", "temporary")
DAMAGE = ("broken", "sidecar", "orphan", "temporary")  # what makes ``results check`` exit 1


@dataclass
class Finding:
    problem: Problem
    fixed: bool = False
    note: str = ""  # why a fixable file was left

    @property
    def kind(self) -> str:
        return self.problem.kind

    def __str__(self) -> str:
        tag = "fixed" if self.fixed else self.kind
        return f"{tag:<9} {self.problem}" + (f" ({self.note})" if self.note else "")


def check_store(root: str | Path, fix: bool = False, grace_s: float = DEFAULT_GRACE_S) -> list[Finding]:
    """Every problem of the store under ``root`` (see the module docstring), in path order;
    with ``fix`` the orphans and temporary files older than ``grace_s`` seconds are removed."""
    store = ResultStore(root)
    _, problems = store.scan(verify=True)
    findings = [Finding(p) for p in problems]
    failures = store.failure_paths()
    named = {path.parent / name for path in [*store.paths(), *failures]
             if (name := store.sidecar_named_by(path))}
    for path in failures:
        try:
            error = store.read(path).get("error")
        except DataError as e:
            findings.append(Finding(Problem(path, "broken", str(e))))
            continue
        main = path.name[: -len(FAILED_SUFFIX)] + ".json"
        findings.append(Finding(Problem(path, "failure", f"{path}: a failed attempt kept beside the complete record "
                                                         f"{main}: {error}")))
    unreadable = {f.problem.path for f in findings if f.kind == "broken"}
    findings += [Finding(Problem(p, "orphan", _orphan_line(p, unreadable))) for p in store.files("*.npz")
                 if p not in named]
    findings += [Finding(Problem(p, "temporary", f"{p}: stale temporary file of an interrupted write"))
                 for p in _temporaries(store.root)]
    if fix:
        now = time.time()
        for f in findings:
            if f.kind in FIXABLE:
                _fix(f, now, grace_s)
    return sorted(findings, key=lambda f: str(f.problem.path))


def _orphan_line(path: Path, unreadable: set[Path]) -> str:
    # sidecars are named "<record stem>.<digest>.npz" (ResultStore.save): say whose it was
    owner = path.with_name(path.name.rsplit(".", 2)[0] + ".json")
    if owner in unreadable:
        return f"{path}: sidecar of the unreadable record {owner.name}, named by no readable record"
    return f"{path}: orphan sidecar, named by no record (an interrupted write?)"


def damaged(findings: list[Finding]) -> list[Finding]:
    """The findings that are damage still present (the ones ``results check`` exits 1 for)."""
    return [f for f in findings if f.kind in DAMAGE and not f.fixed]


def _temporaries(root: Path) -> list[Path]:
    if not root.exists():
        return []
    skip = [root / d for d in NOT_RECORDS]
    return sorted(p for p in root.rglob(".*.tmp") if p.is_file() and not any(s in p.parents for s in skip))


def _fix(finding: Finding, now: float, grace_s: float) -> None:
    path = finding.problem.path
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:  # gone meanwhile (its run finished or cleaned up)
        finding.fixed = True
        return
    if age < grace_s:
        finding.note = f"modified {age:.0f} s ago, under {grace_s:.0f} s: a run may still be writing it; not removed"
        return
    path.unlink(missing_ok=True)
    finding.fixed = True
