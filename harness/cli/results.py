"""``brainharness results ls | show | diff``: the results store from the command line.

A record is named by its id (``key.id``, the hash of everything that determines its numbers —
see :mod:`brainharness.identity`) or any unambiguous prefix of it, or by its file path.
``ls`` lists the records, ``show`` prints one record's identity (the hashed parameters, flattened
to dotted names) and scores, ``diff A B`` names the parameters and scores that differ.

Each action is an entry of :data:`ACTIONS` (help, argument setup, function); the ``results``
sub-command is built from that table, so a further action is one more entry.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from brainharness.errors import ConfigError, DataError
from brainharness.identity import flatten
from brainharness.results import ResultStore


@dataclass(frozen=True)
class Action:
    help: str
    arguments: Callable  # (argparse parser) -> None: the action's own arguments
    run: Callable  # (argparse namespace) -> exit status


# -- formatting -------------------------------------------------------------------------------
def fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, ".6g")
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def short_id(record: dict) -> str:
    rid = (record.get("key") or {}).get("id")
    return str(rid)[:12] if rid else "-"


def main_score(record: dict) -> str:
    name = record.get("main_score")
    if record.get("status") != "complete" or not name:
        return "-"
    return f"{name}={fmt((record.get('scores') or {}).get(name))}"


def unit_label(key: dict) -> str:
    """``subj01 pixels@none encoding [t]``: a unit as the run and listings name it."""
    return f"{key['subject']} {key['backbone']}@{key['weights']} {key['task']} [{key['experiment']}]"


def _rel(path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# -- finding records --------------------------------------------------------------------------
def find_record(store: ResultStore, ref: str) -> tuple[Path, dict]:
    """The record named by ``ref``: a path (absolute, or relative to the current folder or the
    store), else an id or id prefix. One line naming the problem when there is none or several."""
    for path in (Path(ref), store.root / ref):
        if path.suffix == ".json" and path.is_file():
            return path, store.read(path)
    wanted = ref.strip().lower()
    if not wanted or any(c not in "0123456789abcdef" for c in wanted):
        raise ConfigError(f"{ref!r} is neither a record file nor a record id (hex digits)")
    found = [r for r in store.records(errors=[]) if str((r.get("key") or {}).get("id", "")).startswith(wanted)]
    if not found:
        raise DataError(f"no record with id {ref!r} in {store.root}")
    if len(found) > 1:
        raise ConfigError(f"id {ref!r} is ambiguous in {store.root}: {len(found)} records "
                          f"({', '.join(short_id(r) for r in found[:5])}{', …' if len(found) > 5 else ''}); "
                          "give more digits")
    return Path(found[0]["_path"]), found[0]


def parameters(record: dict) -> dict[str, object]:
    """The record's identity parameters as ``{dotted name: value}`` (for a record written before
    identities were stored: its task parameters, backbone description and dataset name)."""
    if isinstance(record.get("identity"), dict):
        return flatten(record["identity"])
    legacy = {"dataset": {"name": (record.get("dataset") or {}).get("name")},
              "subject": (record.get("key") or {}).get("subject"), "backbone": record.get("backbone") or {},
              "task": {"name": (record.get("task") or {}).get("name"),
                       "params": (record.get("task") or {}).get("params") or {}},
              "selection": {"evaluated_on": record.get("evaluated_on"),
                            "seed": (record.get("provenance") or {}).get("seed")},
              "labels": {k: (record.get("key") or {}).get(k) for k in ("experiment", "backbone", "task")}}
    return flatten(legacy)


# -- actions ----------------------------------------------------------------------------------
def store_root(path) -> Path:
    """``--results`` as an existing folder, else one line (exit 2): a missing store is a typo or a
    run not made yet, never an empty listing."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"--results {root}: no such folder (run a config first, or name its results_dir)")
    if not root.is_dir():
        raise ConfigError(f"--results {root} is a file, not a results folder")
    return root


def _store_argument(p) -> None:
    p.add_argument("--results", default="results", help="the results store (default: ./results)")


def cmd_ls(args) -> int:
    store = ResultStore(store_root(args.results))
    problems: list = []
    rows = [["status", "dataset", "subject", "backbone", "weights", "task", "experiment", "main score", "id", "path"]]
    for r in store.records(errors=problems):
        key, dataset = r.get("key") or {}, r.get("dataset") or {}
        status = r["status"] + ("" if r.get("evaluated_on") == "test" else f" ({r.get('evaluated_on')})")
        rows.append([status, str(dataset.get("variant") or key.get("dataset")), str(key.get("subject")),
                     str(key.get("backbone")), str(key.get("weights")), str(key.get("task")),
                     str(key.get("experiment")), main_score(r), short_id(r), _rel(r["_path"], store.root)])
    for p in problems:
        rows.append(["broken", "-", "-", "-", "-", "-", "-", "-", "-", _rel(p.path, store.root)])
    if len(rows) > 1:
        print("\n".join(_table(rows)))
    print(f"{len(rows) - 1} record(s) in {store.root}" + (f", {len(problems)} broken:" if problems else ""))
    for p in problems:
        print(f"  {p}")
    return 0


def cmd_show(args) -> int:
    store = ResultStore(store_root(args.results))
    path, r = find_record(store, args.record)
    key, dataset, prov = r.get("key") or {}, r.get("dataset") or {}, r.get("provenance") or {}
    lines = [("record", str(path)), ("status", f"{r['status']} (evaluated on {r.get('evaluated_on')})"),
             ("id", str(key.get("id") or "- (written before result identities)")),
             ("data id", str(key.get("data_id") or "-")),
             ("dataset", str(dataset.get("variant") or key.get("dataset"))), ("unit", unit_label(key)),
             ("created", str(prov.get("created"))),
             ("device", f"{prov.get('device')} (requested {prov.get('device_requested', '?')}), "
                        f"precision {fmt(prov.get('precision', '?'))}")]
    if r["status"] == "failed":
        lines.append(("error", str(r.get("error"))))
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in lines))
    print("identity:")
    for name, value in parameters(r).items():
        print(f"  {name} = {fmt(value)}")
    if r["status"] == "complete":
        print("scores:")
        for name, value in (r.get("scores") or {}).items():
            print(f"  {name} = {fmt(value)}" + ("  (main)" if name == r.get("main_score") else ""))
    return 0


def _changes(a: dict, b: dict) -> list[tuple[str, object, object]]:
    missing = object()
    out = []
    for name in list(a) + [n for n in b if n not in a]:
        va, vb = a.get(name, missing), b.get(name, missing)
        if fmt(va) != fmt(vb):
            out.append((name, "(absent)" if va is missing else va, "(absent)" if vb is missing else vb))
    return out


def cmd_diff(args) -> int:
    store = ResultStore(store_root(args.results))
    (pa, a), (pb, b) = find_record(store, args.a), find_record(store, args.b)
    print(f"A  {_rel(pa, store.root)}  id {short_id(a)}")
    print(f"B  {_rel(pb, store.root)}  id {short_id(b)}")
    changed = _changes(parameters(a), parameters(b))
    print("identity: the same" if not changed else "identity:")
    for name, va, vb in changed:
        print(f"  {name}: {fmt(va)} → {fmt(vb)}")
    sa, sb = a.get("scores") or {}, b.get("scores") or {}
    scores = _changes(sa, sb)
    print("scores: the same" if not scores and a["status"] == b["status"] else "scores:")
    if a["status"] != b["status"]:
        print(f"  status: {a['status']} → {b['status']}")
    for name, va, vb in scores:
        delta = f" ({vb - va:+.4g})" if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            for v in (va, vb)) else ""
        print(f"  {name}: {fmt(va)} → {fmt(vb)}{delta}")
    return 0


def cmd_check(args) -> int:
    """One line per finding (brainharness.store_check), a summary line; exit 1 if damage is left."""
    from brainharness.store_check import check_store, damaged

    root = store_root(args.results)
    findings = check_store(root, fix=args.fix, grace_s=args.grace)
    for f in findings:
        print(f)
    left = damaged(findings)
    fixed = sum(f.fixed for f in findings)
    hint = not args.fix and any(f.kind in ("orphan", "temporary") for f in left)
    print(f"{root}: " + (f"{len(left)} problem(s)" if left else "sound")
          + (f", {fixed} file(s) removed" if fixed else "")
          + (" (--fix removes orphans and temporary files)" if hint else ""))
    return 1 if left else 0


def _check_arguments(p) -> None:
    from brainharness.store_check import DEFAULT_GRACE_S

    p.add_argument("--fix", action="store_true", help="remove orphan sidecars and stale temporary files (never "
                                                      "a record)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                   help="with --fix, leave files modified less than this long ago: a run may still be writing "
                        f"them (default {DEFAULT_GRACE_S:.0f})")


def _show_arguments(p) -> None:
    p.add_argument("record", help="a record id (or unambiguous prefix) or a record file")


def _diff_arguments(p) -> None:
    p.add_argument("a", help="record id / prefix / file")
    p.add_argument("b", help="record id / prefix / file")


ACTIONS: dict[str, Action] = {
    "ls": Action("one line per record: status, dataset variant, unit, main score, id, path", lambda p: None, cmd_ls),
    "show": Action("a record's identity (every hashed parameter), provenance and scores", _show_arguments,
                   cmd_show),
    "diff": Action("what differs between two records: identity parameters, then scores", _diff_arguments, cmd_diff),
    "check": Action("find broken records, bad sidecars, orphans and stale temporary files (--fix removes the "
                    "last two)", _check_arguments, cmd_check),
}
"""The ``results`` actions; a further action (e.g. ``check``) is one more entry."""


def register(sub, parents=()) -> None:
    """Add ``results <action>`` to the top-level sub-command parsers ``sub``; ``parents``: the
    global options every (sub-)command accepts."""
    p = sub.add_parser("results", help=f"inspect the results store ({', '.join(ACTIONS)})", parents=list(parents))
    actions = p.add_subparsers(dest="action", required=True)
    for name, action in ACTIONS.items():
        a = actions.add_parser(name, help=action.help, parents=list(parents))
        _store_argument(a)
        action.arguments(a)
        a.set_defaults(fn=action.run)


add_parser = register  # the name harness/cli/__init__.py imports
