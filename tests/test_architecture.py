"""The package's shape: one namespace, a core that imports no plugin, no import circle.

Read from the source with ``ast`` (imports inside functions count too: a lazy import is still a
dependency a maintainer has to know about).
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"brainharness": ROOT / "harness", "brainharness.backbones": ROOT / "backbones",
           "brainharness.tasks": ROOT / "tasks", "brainharness.sweeps": ROOT / "sweeps",
           "brainharness.leaderboard": ROOT / "leaderboard"}
NOT_CORE = ("brainharness.backbones", "brainharness.tasks", "brainharness.sweeps", "brainharness.leaderboard",
            "brainharness.datasets", "brainharness.cli")


def _modules() -> dict[str, Path]:
    """Dotted name → source file, for every module of the installed namespace."""
    out = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if any(p in ("metric_modules",) for p in rel):  # evaluate loads these by path, not by import
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            name = ".".join((prefix, *parts))
            if name.startswith("brainharness.") and any(name.startswith(p + ".") or name == p
                                                         for p in FOLDERS if p != "brainharness" and p != prefix):
                continue  # e.g. harness/… never holds brainharness.tasks.*
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The brainharness modules ``name`` imports (resolved to the longest known module)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_core_imports_no_plugin_sweep_leaderboard_or_application(graph):
    core = [m for m in graph if not m.startswith(NOT_CORE) and not m.startswith("brainharness.metrics")]
    assert "brainharness.runner" in core and "brainharness.registry" in core  # the test sees the core
    bad = {m: sorted(t for t in graph[m] if t.startswith(NOT_CORE)) for m in core}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_task_imports_a_backbone(graph):
    tasks = [m for m in graph if m.startswith("brainharness.tasks")]
    assert len(tasks) >= 5
    assert {m: sorted(t for t in graph[m] if t.startswith("brainharness.backbones")) for m in tasks
            if any(t.startswith("brainharness.backbones") for t in graph[m])} == {}


def test_no_import_circle(graph):
    # Tarjan-free check: a circle exists iff some module reaches itself.
    def reaches(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return False

    # A package's __init__ importing its own submodules is not a circle of design; skip parent → child edges.
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    circles = sorted(m for m in graph if reaches(m))
    assert circles == []


def test_only_the_brainharness_namespace_is_importable():
    assert importlib.util.find_spec("brainharness.tasks.encoding") is not None
    for generic in ("harness", "tasks", "backbones", "sweeps", "leaderboard"):
        # from a neutral folder: the repository root itself is not on the path of an installed user
        proc = subprocess.run([sys.executable, "-c", f"import {generic}"], cwd="/", capture_output=True, text=True)
        assert proc.returncode != 0 and "No module named" in proc.stderr, generic


def test_every_top_level_api_name_resolves():
    import brainharness

    resolved = {name: getattr(brainharness, name) for name in brainharness.__all__}
    assert resolved["noise_ceiling"].__module__ == "brainharness.metrics.noise_ceiling"
    assert all(getattr(obj, "__name__", name) == name for name, obj in resolved.items())


def test_the_wheel_installs_only_the_brainharness_namespace(tmp_path):
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("brainharness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"brainharness", wheel.name.split("-")[0] + "-" +
                                                wheel.name.split("-")[1] + ".dist-info"}
    for needed in ("brainharness/tasks/encoding.py", "brainharness/datasets/nsd.py", "brainharness/cli/__init__.py",
                   "brainharness/configs/demo.yaml", "brainharness/metrics/metric_modules/meteor/meteor.py"):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    targets = [line.split("=", 1)[1].strip() for line in text.splitlines() if "=" in line]
    assert targets and all(t.startswith("brainharness.") for t in targets)
