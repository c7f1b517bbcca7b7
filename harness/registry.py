"""One typed plugin registry for backbones, tasks, datasets and metrics.

Plugins arrive two ways, and both are lazy: a decorator (``@register_backbone("name")``)
registers an already-imported object, and an entry point in the groups
``brainharness.backbones``, ``brainharness.tasks``, ``brainharness.datasets`` and
``brainharness.metrics`` registers a ``"module:attr"`` placeholder that is imported on first
use. The built-ins are declared through the same entry points (see pyproject.toml), so
listing names imports nothing heavy.
"""
from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from .errors import HarnessError, PluginNotFound

T = TypeVar("T")

KINDS = ("backbones", "tasks", "datasets", "metrics")


def _import_target(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name → plugin, with lazy ``"module:attr"`` placeholders and helpful misses."""

    def __init__(self, kind: str):
        self.kind = kind
        self._objects: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._discovered = False

    # -- registration ------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None):
        """``registry.register("name", obj)`` or as a decorator ``@registry.register("name")``."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(o: T) -> T:
            self._add(name, o)
            return o

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attr"`` to be imported when ``name`` is first used."""
        self._check_new(name, target)
        self._lazy[name] = target

    def _add(self, name: str, obj: T) -> None:
        if not isinstance(name, str) or not name:
            raise HarnessError(f"{self.kind} plugin name must be a non-empty string, got {name!r}")
        lazy = self._lazy.get(name)
        if lazy is not None and lazy == f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}":
            # The lazy placeholder's own module is being imported and registers itself.
            del self._lazy[name]
        self._check_new(name, obj)
        self._objects[name] = obj
        try:
            obj.registry_name = name  # lets a plugin class know the name it answers to
        except (AttributeError, TypeError):
            pass

    def _check_new(self, name: str, what) -> None:
        if name in self._objects or name in self._lazy:
            existing = self._objects.get(name, self._lazy.get(name))
            raise HarnessError(f"duplicate {self.kind} plugin name {name!r}: {existing!r} and {what!r}")

    # -- discovery ---------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=f"brainharness.{self.kind}"):
            if ep.name in self._objects or self._lazy.get(ep.name) == ep.value:
                continue
            self.register_lazy(ep.name, ep.value)

    # -- lookup ------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._discover()
        return sorted({*self._objects, *self._lazy})

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str) -> T:
        self._discover()
        if name in self._objects:
            return self._objects[name]
        if name in self._lazy:
            target = self._lazy[name]
            obj = _import_target(target)
            # Importing may have registered it through a decorator already.
            if name not in self._objects:
                del self._lazy[name]
                self._add(name, obj)
            return self._objects[name]
        close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PluginNotFound(
            f"unknown {self.kind[:-1]} {name!r}{hint} (available: {', '.join(self.names()) or 'none'})"
        )


backbones: Registry = Registry("backbones")
tasks: Registry = Registry("tasks")
datasets: Registry = Registry("datasets")
metrics: Registry = Registry("metrics")

REGISTRIES = {"backbones": backbones, "tasks": tasks, "datasets": datasets, "metrics": metrics}


def register_backbone(name: str) -> Callable[[T], T]:
    return backbones.register(name)


def register_task(name: str) -> Callable[[T], T]:
    return tasks.register(name)


def register_dataset(name: str) -> Callable[[T], T]:
    return datasets.register(name)


def register_metric(name: str) -> Callable[[T], T]:
    return metrics.register(name)
