"""What produced a number: package versions, code identity, machine, time."""
from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("brainharness", "torch", "numpy", "h5py", "transformers", "open_clip_torch", "timm",
            "wandb", "optuna", "pandas", "evaluate", "sentence-transformers")
CODE_PACKAGES = ("harness", "backbones", "tasks", "sweeps")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def code_identity() -> dict:
    """Git commit (+ dirty flag) where available, and a digest of the installed sources."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    info = {"source_digest": digest.hexdigest()[:16], "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5)
            info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def device_used(requested) -> str:
    """The device a requested one (``auto``, ``cuda`` …) resolves to here: ``cpu``, ``cuda:0`` …"""
    import torch

    from .ridge import resolve_device

    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def precision_used(backbone) -> dict:
    """The numeric precision actually used: the backbone's (fp16 autocast on CUDA when ``half``,
    else fp32) and the ridge read-out's (work and eigensolver dtypes)."""
    from .ridge import DTYPE, EIG_DTYPE

    return {"backbone": backbone.precision(), "ridge": str(DTYPE).removeprefix("torch."),
            "ridge_eigensolver": str(EIG_DTYPE).removeprefix("torch.")}


def environment(device: str) -> dict:
    return {"packages": package_versions(), "code": code_identity(), "host": platform.node(),
            "python": platform.python_version(), "device": device,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
