"""State shared by the caption-metric modules: the process-wide cache of heavy objects
(``evaluate`` modules, the METEOR JVM, embedding models, NLTK data info), its lock, and small helpers."""
from __future__ import annotations

import os
import threading
from importlib import metadata

_lock = threading.RLock()
_cache: dict = {}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pip_only() -> bool:
    """``BRAINHARNESS_PIP_ONLY=1``: ignore a system ``java`` and system WordNet and use only what pip
    installed (the ``captions`` extra) — how CI checks the wheel on a machine that has both."""
    return os.environ.get("BRAINHARNESS_PIP_ONLY", "").strip().lower() in ("1", "true", "yes")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__

