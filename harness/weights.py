"""Weights specs shared by the model-library backbones.

A backbone's ``weights`` option is one of:

* ``"pretrained"`` — the plugin's default tag / hub id;
* ``"pretrained:<tag-or-hub-id>"`` (optionally ``@<revision>``) — a specific one;
* ``"local:<path>"`` or a plain existing path — a checkpoint saved on disk;
* ``"random-init"`` — the architecture with random weights (tests, demo); recorded in every
  result and never ranked on the leaderboard.

Pretrained weights are loaded by the library's own code (from its cache when offline); when
that fails, :func:`unavailable` produces the one-line error that says how to provide them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, WeightsUnavailable


@dataclass(frozen=True)
class WeightsSpec:
    source: str  # "pretrained" | "local" | "random-init"
    id: str | None = None  # tag / hub id, or the local path
    revision: str | None = None

    def info(self) -> dict:
        out = {"source": self.source, "id": self.id, "revision": self.revision}
        if self.source == "local":
            out["digest"] = file_digest(Path(self.id))
        return out


def parse_weights(spec: str | None, default_id: str | None) -> WeightsSpec:
    spec = spec or "pretrained"
    if not isinstance(spec, str):
        raise ConfigError(f"weights must be a string, got {spec!r}")
    if spec == "random-init":
        return WeightsSpec("random-init")
    if spec == "pretrained" or spec.startswith("pretrained:"):
        ident = spec.partition(":")[2] or default_id
        if not ident:
            raise ConfigError("weights: this backbone has no default pretrained weights; say pretrained:<id>")
        ident, _, rev = ident.partition("@")
        return WeightsSpec("pretrained", ident, rev or None)
    path = spec[len("local:"):] if spec.startswith("local:") else spec
    if not Path(path).expanduser().exists():
        raise ConfigError(f"weights {spec!r}: no such local checkpoint (use 'pretrained', "
                          "'pretrained:<id>', 'local:<path>' or 'random-init')")
    return WeightsSpec("local", str(Path(path).expanduser().resolve()))


def file_digest(path: Path) -> str:
    """Content digest of a checkpoint file or folder (size + first/last MiB of every file)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def unavailable(backbone: str, spec: WeightsSpec, error: Exception, how: str) -> WeightsUnavailable:
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return WeightsUnavailable(
        f"{backbone}: cannot load pretrained weights {spec.id!r} ({first}). Offline? {how}, "
        f"or set weights: local:<path> to a saved checkpoint, or weights: random-init for an untrained model")


_TRUTHY = {"1", "on", "yes", "true"}


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (for one-line errors)."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def jsonable(x):
    """Tuples → lists etc., so configs compare and hash the same however they were given."""
    import json

    return json.loads(json.dumps(x, sort_keys=True, default=str))


def offline_reason(host: str | None = None) -> str | None:
    """Why a model hub cannot be reached (``None`` = let the library try): the offline flags,
    then at most a 3 s connection probe — so an offline run fails in milliseconds, not after
    the libraries' own retries."""
    import re
    import socket

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return f"{var} is set"
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        host = host or re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0].split(":")[0]
    except ImportError:
        pass
    host = host or "huggingface.co"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy may work where a direct connection does not
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return None
    except OSError as e:
        return f"cannot reach {host}: {first_line(e)}"
