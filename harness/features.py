"""Feature extraction with an HDF5 cache, and the read-outs applied after it.

Features are extracted once per (backbone identity, layer, read-out, stimulus set) and stored
as ``<key>.h5`` (h5py, chunked by batch). Extraction writes ``<key>.h5.partial`` and records
how many rows are complete after every batch, so an interrupted extraction resumes from the
last complete batch; the finished file is renamed into place. A file lock serialises
concurrent workers on the same key. When the backbone cannot state its identity completely
(``identity() is None``) nothing is cached.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .backbone import Backbone, StimulusBatch
from .data import Stimuli
from .errors import DataError


def default_cache_dir() -> Path:
    return Path(os.environ.get("BRAINHARNESS_CACHE", Path.home() / ".cache" / "brainharness"))


def cache_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or default_cache_dir()) / "features"

    def key_parts(self, backbone: Backbone, stimuli: Stimuli, ids: np.ndarray, layer: str) -> dict | None:
        identity = backbone.identity()
        if identity is None or not stimuli.fingerprint:
            return None
        return {"backbone": identity, "layer": layer, "readout": backbone.readout,
                "stimuli": stimuli.fingerprint, "ids": ids_digest(ids), "format": 1}

    def features(self, backbone: Backbone, stimuli: Stimuli, ids: np.ndarray, layer: str | None = None,
                 progress: bool = False) -> tuple[np.ndarray, dict]:
        """Features of ``ids`` (rows in the order given) and info on how they were obtained."""
        layer = layer or backbone.layer
        ids = np.asarray(ids, dtype=np.int64)
        parts = self.key_parts(backbone, stimuli, ids, layer)
        start = time.perf_counter()
        if parts is None:
            feats = _extract(backbone, stimuli, ids, layer, None, progress)
            return feats, {"cache": "disabled (incomplete identity)", "seconds": time.perf_counter() - start}
        key = cache_key(parts)
        final = self.root / f"{key}.h5"
        status = "hit"
        if not final.exists():
            with _locked(self.root / f"{key}.lock"):
                if not final.exists():  # another worker may have finished it meanwhile
                    status = _extract(backbone, stimuli, ids, layer, final, progress, parts)
        with h5py.File(final, "r") as f:
            feats = f["features"][:]
        return feats, {"cache": status, "key": key, "seconds": time.perf_counter() - start}

    def entries(self) -> list[dict]:
        out = []
        for path in sorted(self.root.glob("*.h5*")):
            info = {"file": path.name, "bytes": path.stat().st_size, "complete": path.suffix == ".h5"}
            try:
                with h5py.File(path, "r") as f:
                    info.update(shape=tuple(f["features"].shape) if "features" in f else None,
                                rows_done=int(f.attrs.get("n_done", 0)),
                                key=json.loads(f.attrs.get("key_parts", "{}")))
            except OSError:
                info["error"] = "unreadable"
            out.append(info)
        return out

    def clear(self) -> int:
        n = len(list(self.root.glob("*"))) if self.root.exists() else 0
        shutil.rmtree(self.root, ignore_errors=True)
        return n


def _extract(backbone, stimuli, ids, layer, final: Path | None, progress: bool, parts: dict | None = None):
    """Run the backbone batch by batch; with ``final`` write/resume the HDF5 cache file."""
    from tqdm.auto import tqdm

    backbone.ensure_ready()
    n, bs = len(ids), backbone.batch_size
    if final is None:
        chunks = [backbone.encode(StimulusBatch(stimuli, ids[i:i + bs]), layer)
                  for i in tqdm(range(0, n, bs), desc=f"{backbone.registry_name}:{layer}", disable=not progress)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    partial = final.with_name(final.name + ".partial")
    resumed = "miss"
    with h5py.File(partial, "a") as f:
        done = int(f.attrs.get("n_done", 0))
        if done and not np.array_equal(f["ids"][:], ids):
            raise DataError(f"partial feature file {partial} belongs to another stimulus set; delete it")
        if done:
            resumed = f"resumed at row {done}"
        else:
            f.attrs["key_parts"] = json.dumps(parts, sort_keys=True, default=str)
            if "ids" not in f:
                f.create_dataset("ids", data=ids)
        for i in tqdm(range(done, n, bs), desc=f"{backbone.registry_name}:{layer}", disable=not progress,
                      initial=done // bs, total=-(-n // bs)):
            block = np.asarray(backbone.encode(StimulusBatch(stimuli, ids[i:i + bs]), layer), dtype=np.float32)
            if "features" not in f:
                f.create_dataset("features", shape=(n, *block.shape[1:]), dtype=np.float32,
                                 chunks=(min(bs, n), *block.shape[1:]))
            f["features"][i:i + len(block)] = block
            f.attrs["n_done"] = i + len(block)
            f.flush()
    os.replace(partial, final)
    return resumed


def pca_readout(train: np.ndarray, others: list[np.ndarray], n_components: int):
    """PCA fitted on the training rows only, applied to ``train`` and each of ``others``."""
    import torch

    if not 1 <= n_components <= min(train.shape):
        raise DataError(f"PCA needs 1 ≤ n_components ≤ {min(train.shape)}, got {n_components}")
    X = torch.as_tensor(train, dtype=torch.float64)
    mean = X.mean(0)
    Xc = X - mean
    # Exact PCA through the smaller Gram matrix (n×n when features outnumber samples).
    if Xc.shape[0] < Xc.shape[1]:
        s, U = torch.linalg.eigh(Xc @ Xc.T)
        s, U = s.flip(0)[:n_components], U.flip(1)[:, :n_components]
        V = (Xc.T @ U) / s.clamp_min(1e-12).sqrt()
    else:
        V = torch.linalg.eigh(Xc.T @ Xc)[1].flip(1)[:, :n_components]
    V, mean = V.float(), mean.float()
    project = lambda a: ((torch.as_tensor(a, dtype=torch.float32) - mean) @ V).numpy()  # noqa: E731
    return project(train), [project(o) for o in others]


def flatten_rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def apply_readout(tokens, readout: str, grid: int = 2, has_cls: bool = True):
    """Token read-out (torch tensors, (B, T, D)) → (B, ...).

    ``cls``/``pooled`` take the class token (or the given pooled output upstream), ``mean``
    averages tokens (excluding the class token), ``flatten`` keeps all tokens, ``grid``
    average-pools the patch tokens to a ``grid × grid`` map.
    """
    import torch.nn.functional as F

    if tokens.ndim == 2:
        return tokens
    patches = tokens[:, 1:] if has_cls else tokens
    if readout in ("cls", "pooled"):
        return tokens[:, 0]
    if readout == "mean":
        return patches.mean(1)
    if readout == "flatten":
        return tokens.flatten(1)
    if readout == "grid":
        side = int(round(patches.shape[1] ** 0.5))
        if side * side != patches.shape[1]:
            raise DataError(f"grid read-out needs a square patch grid, got {patches.shape[1]} tokens")
        fmap = patches.transpose(1, 2).reshape(len(tokens), -1, side, side)
        return F.adaptive_avg_pool2d(fmap, grid).flatten(1)
    raise DataError(f"unknown read-out {readout!r}")
