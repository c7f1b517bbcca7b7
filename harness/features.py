"""Feature extraction with an HDF5 cache, and the read-outs applied after it.

Features are extracted once per (backbone identity, layer, read-out, stimulus set) and stored
as ``<key>.h5`` (h5py, chunked by batch). Extraction writes ``<key>.h5.partial`` and records
how many rows are complete after every batch, so an interrupted extraction resumes from the
last complete batch; the finished file is renamed into place. A file lock serialises
concurrent workers on the same key. When the backbone cannot state its identity completely
(``identity() is None``) nothing is cached.

:meth:`FeatureCache.features_multi` extracts several layers in one pass over the stimuli
(``Backbone.encode_layers``: one forward pass per batch where the backbone supports it) and
still writes one file per layer, each resumable on its own.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import h5py
import numpy as np

from .backbone import Backbone, StimulusBatch
from .cache import cache_path
from .data import Stimuli
from .errors import DataError, HarnessError


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
        """``root``: the cache root (:func:`brainharness.cache.cache_root`); files go in its ``features`` folder."""
        self.root = cache_path("features", root)

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
        feats, info = self.features_multi(backbone, stimuli, ids, [layer], progress)
        return feats[layer], info[layer]

    def features_multi(self, backbone: Backbone, stimuli: Stimuli, ids: np.ndarray, layers,
                       progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Features of ``ids`` at each of ``layers`` → ``({layer: array}, {layer: info})``.

        The layers not yet cached are extracted in **one** pass over the stimuli through
        :meth:`Backbone.encode_layers` (one forward pass per batch for backbones that override
        it); each layer is its own cache file, written and resumed exactly like a single layer.
        """
        layers = list(dict.fromkeys(layers or [backbone.layer]))
        ids = np.asarray(ids, dtype=np.int64)
        start = time.perf_counter()
        parts = {layer: self.key_parts(backbone, stimuli, ids, layer) for layer in layers}
        if any(p is None for p in parts.values()):
            feats = _extract(backbone, stimuli, ids, dict.fromkeys(layers), progress)
            info = {"cache": "disabled (incomplete identity)", "seconds": time.perf_counter() - start}
            return feats, {layer: dict(info) for layer in layers}
        keys = {layer: cache_key(p) for layer, p in parts.items()}
        finals = {layer: self.root / f"{key}.h5" for layer, key in keys.items()}
        status = dict.fromkeys(layers, "hit")
        missing = [layer for layer in layers if not finals[layer].exists()]
        if missing:
            with ExitStack() as locks:
                for layer in sorted(missing, key=keys.get):  # a fixed order: no deadlock between workers
                    locks.enter_context(_locked(self.root / f"{keys[layer]}.lock"))
                todo = {layer: finals[layer] for layer in missing if not finals[layer].exists()}
                if todo:  # another worker may have finished some meanwhile
                    status.update(_extract(backbone, stimuli, ids, todo, progress, parts))
        feats = {}
        for layer in layers:
            with h5py.File(finals[layer], "r") as f:
                feats[layer] = f["features"][:]
        seconds = time.perf_counter() - start
        return feats, {layer: {"cache": status[layer], "key": keys[layer], "seconds": seconds} for layer in layers}

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


def _encode(backbone: Backbone, batch: StimulusBatch, layers: list[str]) -> dict[str, np.ndarray]:
    out = backbone.encode_layers(batch, layers)
    missing = [layer for layer in layers if layer not in out]
    if missing:
        raise HarnessError(f"backbone {backbone.registry_name}: encode_layers returned no {', '.join(missing)}")
    return out


def _extract(backbone, stimuli, ids, finals: dict, progress: bool, parts: dict | None = None) -> dict:
    """Run the backbone batch by batch over ``ids`` for every layer of ``finals`` at once.

    ``finals`` maps layer → cache file, or layer → ``None`` for no cache: then the features
    are returned (``{layer: array}``). Otherwise each layer's ``<file>.partial`` is written or
    resumed from its own last complete row and renamed into place; returns ``{layer: status}``.
    """
    from tqdm.auto import tqdm

    backbone.ensure_ready()
    n, bs = len(ids), backbone.batch_size
    layers = list(finals)
    desc = f"{backbone.registry_name}:{layers[0] if len(layers) == 1 else f'{len(layers)} layers'}"
    if all(f is None for f in finals.values()):
        chunks = {layer: [] for layer in layers}
        for i in tqdm(range(0, n, bs), desc=desc, disable=not progress):
            out = _encode(backbone, StimulusBatch(stimuli, ids[i:i + bs]), layers)
            for layer in layers:
                chunks[layer].append(np.asarray(out[layer], dtype=np.float32))
        return {layer: np.concatenate(c) for layer, c in chunks.items()}

    partials = {layer: final.with_name(final.name + ".partial") for layer, final in finals.items()}
    files, done, status = {}, {}, {}
    with ExitStack() as stack:
        for layer, partial in partials.items():
            f = files[layer] = stack.enter_context(h5py.File(partial, "a"))
            done[layer] = int(f.attrs.get("n_done", 0))
            if done[layer] and not np.array_equal(f["ids"][:], ids):
                raise DataError(f"partial feature file {partial} belongs to another stimulus set; delete it")
            status[layer] = f"resumed at row {done[layer]}" if done[layer] else "miss"
            if not done[layer]:
                f.attrs["key_parts"] = json.dumps(parts[layer], sort_keys=True, default=str)
                if "ids" not in f:
                    f.create_dataset("ids", data=ids)
        first = min(done.values())
        for i in tqdm(range(first, n, bs), desc=desc, disable=not progress, initial=first // bs,
                      total=-(-n // bs)):
            batch_ids = ids[i:i + bs]
            end = i + len(batch_ids)
            need = [layer for layer in layers if done[layer] < end]  # rows a layer file lacks
            out = _encode(backbone, StimulusBatch(stimuli, batch_ids), need)
            for layer in need:
                block, f = np.asarray(out[layer], dtype=np.float32), files[layer]
                if len(block) != len(batch_ids):
                    raise HarnessError(f"backbone {backbone.registry_name}: {len(block)} rows of {layer} for "
                                       f"{len(batch_ids)} stimuli")
                if "features" not in f:
                    f.create_dataset("features", shape=(n, *block.shape[1:]), dtype=np.float32,
                                     chunks=(min(bs, n), *block.shape[1:]))
                lo = max(i, done[layer])
                f["features"][lo:end] = block[lo - i:]
                f.attrs["n_done"] = done[layer] = end
                f.flush()
    for layer, partial in partials.items():
        os.replace(partial, finals[layer])
    return status


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
