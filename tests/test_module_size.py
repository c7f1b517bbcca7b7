"""No module of the product is longer than MAX_LINES (issue 12: "no module over ~500 lines").

A long module is split by what its parts do (see e.g. harness/datasets/synthetic_*.py); the
plugin class an entry point names stays in the module the entry point names.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("harness", "backbones", "tasks", "sweeps", "leaderboard", "bench")
MAX_LINES = 500


def module_lengths() -> dict[str, int]:
    """Relative path → number of lines of every .py file under FOLDERS."""
    return {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
            for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def test_the_walk_sees_the_product_modules():
    lengths = module_lengths()
    for path in ("harness/runner.py", "harness/datasets/synthetic.py", "backbones/blip2.py", "bench/ridge.py"):
        assert lengths[path] > 50, path
    assert len(lengths) > 40


def test_no_module_exceeds_the_limit():
    too_long = {path: n for path, n in module_lengths().items() if n > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{path} ({n})" for path, n in sorted(too_long.items(), key=lambda kv: -kv[1]))
