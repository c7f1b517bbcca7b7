"""A record's leaderboard layout, from its task plugin (``registry.tasks.get(name).layout``).

The leaderboard knows no task by name: every table shape comes from the layout the task
declares (:mod:`brainharness.layout`). A record whose task plugin is not installed (or fails to
import) is shown with :data:`brainharness.layout.DEFAULT_LAYOUT`, and its table says so.
"""
from __future__ import annotations

from brainharness import registry
from brainharness.errors import HarnessError
from brainharness.layout import DEFAULT_LAYOUT, Layout


def task_name(record: dict) -> str:
    """The task plugin's registry name (the key's ``task`` is a label and may differ)."""
    task = record.get("task") if isinstance(record.get("task"), dict) else {}
    return str(task.get("name") or record["key"]["task"])


class Layouts:
    """Layout per task plugin name, looked up once per leaderboard build."""

    def __init__(self):
        self._cache: dict[str, tuple[Layout, str | None]] = {}

    def of(self, record: dict) -> tuple[Layout, str | None]:
        """``(layout, note)``; the note says why the default layout is used, else None."""
        name = task_name(record)
        if name not in self._cache:
            self._cache[name] = _lookup(name)
        return self._cache[name]


def _lookup(name: str) -> tuple[Layout, str | None]:
    default = "shown with the default layout (one column per scalar score)"
    try:
        plugin = registry.tasks.get(name)
    except (HarnessError, ImportError) as e:
        why = "is not installed" if isinstance(e, HarnessError) else f"failed to import ({type(e).__name__}: {e})"
        return DEFAULT_LAYOUT, f"task plugin {name!r} {why}: {default}"
    layout = getattr(plugin, "layout", None)  # a plugin that is not a brainharness.task.Task subclass
    if layout is None:
        return DEFAULT_LAYOUT, None
    if not isinstance(layout, Layout):
        return DEFAULT_LAYOUT, f"task plugin {name!r} declares a layout that is not a Layout: {default}"
    return layout, None
