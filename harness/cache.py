"""The one cache resolver: every cache of the harness lives in a named sub-folder of one root.

The root is the config's ``cache_dir``; else ``$BRAINHARNESS_CACHE`` when set and not empty;
else the user cache folder (``$XDG_CACHE_HOME/brainharness`` when ``XDG_CACHE_HOME`` is an
absolute path, ``%LOCALAPPDATA%\\brainharness`` on Windows, otherwise ``~/.cache/brainharness``).
An empty setting never means the current folder. The runner resolves the root once and hands
it to the dataset, the backbones and the tasks (``TaskContext.cache_dir``), so a config's
``cache_dir`` reaches every cache below.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ConfigError

ENV = "BRAINHARNESS_CACHE"
#: The sub-folders of the root and what each holds.
SUBDIRS = {
    "features": "backbone features (HDF5, one file per backbone, layer and stimulus set)",
    "datasets": "generated (synthetic) and preprocessed (NSD, Algonauts, brain-diffuser) subjects",
    "captioners": "BLIP-2 captioners trained here on synthetic scenes (blip2-synthetic)",
    "text-embeddings": "text embeddings per text and encoder (aligned_encoding)",
    "metric-data": "data the caption metrics build once (NLTK data folder for METEOR)",
}


def user_cache_dir() -> Path:
    """The platform's per-user cache folder (not yet with ``brainharness`` appended)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are to be ignored
        return Path(xdg)
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"])
    return Path.home() / ".cache"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir`` (e.g. the config's), else a non-empty ``$BRAINHARNESS_CACHE``,
    else :func:`user_cache_dir` ``/ brainharness``."""
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ConfigError(f"cache_dir must be a path, got {cache_dir!r}")
    if cache_dir is not None and str(cache_dir).strip():
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return user_cache_dir() / "brainharness"


def cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The named sub-folder ``name`` (one of :data:`SUBDIRS`) of :func:`cache_root`; not created here."""
    if name not in SUBDIRS:
        raise ValueError(f"unknown cache folder {name!r} (known: {', '.join(SUBDIRS)})")
    return cache_root(cache_dir) / name
