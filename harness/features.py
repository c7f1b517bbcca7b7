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

Integrity (file format 2). Every batch written is a *block*: its rows' end and the sha256 of
its float32 bytes go into the datasets ``block_end`` and ``block_sha256``; ``n_done`` (the
completed-rows counter) must equal the last block's end. Every read — a cache hit and the
blocks a resumed ``.partial`` keeps — re-hashes each block and checks the metadata against the
key (``key_parts`` attribute, ``ids``, float32 ``(n, *row_shape)``, counter, block list). Any
mismatch, or any file h5py cannot open or read (truncated, emptied), logs one line
``corrupt cache entry <path> (<what>), re-extracting``, sets the file aside as
``<name>.corrupt`` and extracts again. Why our own digests rather than HDF5's ``fletcher32``
filter: fletcher32 sums 16-bit words modulo 65535, so a word flipped from 0x0000 to 0xFFFF is
invisible to it — flipping the bytes of a run of zeros (ReLU outputs, padding: common in
features) turns them into NaNs that it reads silently (tests/test_feature_cache_integrity.py
shows it); it covers no metadata, and a mismatch surfaces as an anonymous h5py OSError. A
sha256 per block misses nothing short of a deliberate collision and costs one pass over the
bytes, hashed on a few threads (0.05–0.08 s per 164 MB on 2 cores: bench/feature_cache.py).
The data stay uncompressed: float features barely compress, and a checksum over the decoded
bytes catches faults whether or not a filter sits between. ``format`` is part of the key, so
files of an older layout are never read (``cache ls`` shows them as stale).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import h5py
import numpy as np

from .backbone import Backbone, StimulusBatch
from .cache import cache_path
from .data import Stimuli
from .errors import DataError, HarnessError

log = logging.getLogger(__name__)
#: The file layout; part of every key, so entries of another layout are never read.
FORMAT = 2
#: What h5py raises on files it cannot parse (truncated, emptied, overwritten).
_UNREADABLE = (OSError, KeyError, ValueError, RuntimeError, TypeError)


def cache_key(parts: dict | str) -> str:
    """The file name stem for ``parts`` (or for their JSON text, as stored in a file's ``key_parts``)."""
    return hashlib.sha256((parts if isinstance(parts, str) else _key_json(parts)).encode()).hexdigest()[:24]


def _key_json(parts: dict) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _busy(lock: Path) -> bool:
    """Whether a worker holds ``lock`` now (then its ``.partial`` is being written)."""
    if not lock.exists():
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CorruptEntry(HarnessError):
    """A cache file that fails verification; ``what`` says how."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        super().__init__(f"corrupt cache entry {path} ({what})")


def _digest(rows: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.float32)).digest()


def _check(f: h5py.File, path: Path, key_json: str, ids: np.ndarray, complete: bool,
           verify: bool = True) -> tuple[int, np.ndarray | None]:
    """Check an open cache file against its key → ``(rows done, their features or None)``.

    Raises :class:`CorruptEntry`. ``verify`` re-hashes every block (else metadata only).
    """
    def bad(what):
        return CorruptEntry(path, what)

    if f.attrs.get("key_parts") != key_json:
        raise bad("key_parts attribute does not match the key")
    for name in ("ids", "block_end", "block_sha256"):
        if name not in f:
            raise bad(f"missing dataset {name}")
    n, ends, sums = len(ids), f["block_end"][:], f["block_sha256"][:]
    if not np.array_equal(f["ids"][:], ids):
        raise bad("stimulus ids differ from the key")
    done, starts = int(f.attrs.get("n_done", -1)), np.r_[0, ends[:-1]]
    if (len(ends) != len(sums) or sums.shape[1:] != (32,) or np.any(ends <= starts)
            or done != (ends[-1] if len(ends) else 0) or done > n):
        raise bad(f"row counter n_done={done} disagrees with the {len(ends)} recorded blocks")
    if complete and done != n:
        raise bad(f"{done} of {n} rows complete")
    if done == 0:
        return 0, None
    if "features" not in f:
        raise bad("missing dataset features")
    ds, row_shape = f["features"], tuple(int(d) for d in f.attrs.get("row_shape", (-1,)))
    if ds.dtype != np.float32 or ds.shape != (n, *row_shape):
        raise bad(f"features are {ds.dtype} {ds.shape}, expected float32 {(n, *row_shape)}")
    if not verify:
        return done, None
    data = ds[:done]
    with ThreadPoolExecutor(min(len(ends), os.cpu_count() or 1, 8)) as pool:  # hashlib releases the GIL
        actual = list(pool.map(lambda lo_hi: _digest(data[lo_hi[0]:lo_hi[1]]), zip(starts, ends)))
    for lo, hi, digest, got in zip(starts, ends, sums, actual):
        if got != digest.tobytes():
            raise bad(f"checksum mismatch in rows {lo}-{hi - 1}")
    return done, data


def _read(path: Path, key_json: str, ids: np.ndarray, complete: bool = True,
          verify: bool = True) -> tuple[int, np.ndarray | None]:
    """:func:`_check` on the file at ``path``; an unreadable file is a :class:`CorruptEntry` too."""
    try:  # a file set aside meanwhile (unlocked reads) is unreadable too; the caller retries under the lock
        if path.stat().st_size == 0:
            raise CorruptEntry(path, "empty file")
        with h5py.File(path, "r") as f:
            return _check(f, path, key_json, ids, complete, verify)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: Exception) -> CorruptEntry:
    return CorruptEntry(path, f"unreadable: {(str(e).splitlines() or [type(e).__name__])[0][:160]}")


def _set_aside(e: CorruptEntry) -> None:
    """The one warning line; the file moves to ``<name>.corrupt`` (replacing an older one)."""
    log.warning("corrupt cache entry %s (%s), re-extracting", e.path, e.what)
    try:
        os.replace(e.path, e.path.with_name(e.path.name + ".corrupt"))
    except OSError:
        e.path.unlink(missing_ok=True)


class FeatureCache:
    def __init__(self, root: str | Path | None = None):
        """``root``: the cache root (:func:`brainharness.cache.cache_root`); files go in its ``features`` folder."""
        self.root = cache_path("features", root)

    def key_parts(self, backbone: Backbone, stimuli: Stimuli, ids: np.ndarray, layer: str) -> dict | None:
        identity = backbone.identity()
        if identity is None or not stimuli.fingerprint:
            return None
        return {"backbone": identity, "layer": layer, "readout": backbone.readout,
                "stimuli": stimuli.fingerprint, "ids": ids_digest(ids), "format": FORMAT}

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
        key_jsons = {layer: _key_json(p) for layer, p in parts.items()}
        finals = {layer: self.root / f"{key}.h5" for layer, key in keys.items()}
        feats, status = {}, {}

        def load(layer: str) -> bool:
            if finals[layer].exists():
                feats[layer] = _read(finals[layer], key_jsons[layer], ids)[1]
                status[layer] = "hit"
            return layer in feats

        for layer in layers:
            try:
                load(layer)
            except CorruptEntry:
                pass  # reported and rebuilt below, under the lock
        missing = [layer for layer in layers if layer not in feats]
        if missing:
            with ExitStack() as locks:
                for layer in sorted(missing, key=keys.get):  # a fixed order: no deadlock between workers
                    locks.enter_context(_locked(self.root / f"{keys[layer]}.lock"))
                todo = {}
                for layer in missing:  # another worker may have finished or rebuilt some meanwhile
                    try:
                        if not load(layer):
                            todo[layer] = finals[layer]
                    except CorruptEntry as e:
                        _set_aside(e)
                        todo[layer] = finals[layer]
                if todo:
                    status.update(_extract(backbone, stimuli, ids, todo, progress, key_jsons))
                    for layer in todo:  # read back through the same verification as a hit
                        feats[layer] = _read(finals[layer], key_jsons[layer], ids)[1]
        seconds = time.perf_counter() - start
        return feats, {layer: {"cache": status[layer], "key": keys[layer], "seconds": seconds} for layer in layers}

    def entries(self, verify: bool = False) -> list[dict]:
        """One dict per file: ``file``, ``bytes``, ``complete``, ``state`` (``ok``, ``partial``,
        ``stale`` for another file format, ``corrupt``, ``set aside`` for a ``.corrupt`` file
        already replaced; ``what`` says why), ``key``, ``shape``.

        Without ``verify`` only the metadata are checked (cheap); with it every block is re-hashed.
        """
        return [_entry(path, verify) for path in sorted(self.root.glob("*.h5*"))]

    def clear(self) -> int:
        n = len(list(self.root.glob("*"))) if self.root.exists() else 0
        shutil.rmtree(self.root, ignore_errors=True)
        return n


def _entry(path: Path, verify: bool) -> dict:
    """What :meth:`FeatureCache.entries` lists for ``path`` (a file's own key is checked against its name)."""
    info = {"file": path.name, "bytes": path.stat().st_size, "complete": path.suffix == ".h5", "key": {},
            "shape": None, "state": "ok"}
    if path.suffix == ".corrupt":
        return {**info, "state": "set aside", "what": "found corrupt and replaced; `cache clear` removes it"}
    if path.suffix == ".partial" and _busy(path.parent / f"{path.name.split('.')[0]}.lock"):
        return {**info, "state": "partial", "what": "being written"}
    try:
        with h5py.File(path, "r") as f:
            key_json = f.attrs.get("key_parts", "")
            info["key"] = key = json.loads(key_json) if isinstance(key_json, str) and key_json else {}
            info["shape"] = tuple(f["features"].shape) if "features" in f else None
            ids = f["ids"][:] if "ids" in f else np.zeros(0, np.int64)
        if not key:
            raise CorruptEntry(path, "no key_parts attribute")
        if key.get("format") != FORMAT:
            return {**info, "state": "stale", "what": f"file format {key.get('format')}; never read"}
        if cache_key(key_json) != path.name.split(".")[0] or ids_digest(ids) != key.get("ids"):
            raise CorruptEntry(path, "name, key and ids disagree")
        info["rows_done"] = _read(path, key_json, ids, complete=info["complete"], verify=verify)[0]
        info["state"] = "ok" if info["complete"] else "partial"
    except CorruptEntry as e:
        info.update(state="corrupt", what=e.what)
    except _UNREADABLE as e:
        info.update(state="corrupt", what=_unreadable(path, e).what)
    return info


def _encode(backbone: Backbone, batch: StimulusBatch, layers: list[str]) -> dict[str, np.ndarray]:
    out = backbone.encode_layers(batch, layers)
    missing = [layer for layer in layers if layer not in out]
    if missing:
        raise HarnessError(f"backbone {backbone.registry_name}: encode_layers returned no {', '.join(missing)}")
    return out


def _resumable_rows(partial: Path, key_json: str, ids: np.ndarray) -> int:
    """Rows of ``partial`` that verify (every kept block re-hashed); 0 when there is none.

    A partial that fails verification is reported and set aside, and extraction restarts.
    """
    if not partial.exists():
        return 0
    try:
        return _read(partial, key_json, ids, complete=False)[0]
    except CorruptEntry as e:
        _set_aside(e)
        return 0


def _extract(backbone, stimuli, ids, finals: dict, progress: bool, key_jsons: dict | None = None) -> dict:
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
            done[layer] = _resumable_rows(partial, key_jsons[layer], ids)
            f = files[layer] = stack.enter_context(h5py.File(partial, "a" if done[layer] else "w"))
            status[layer] = f"resumed at row {done[layer]}" if done[layer] else "miss"
            if not done[layer]:
                f.attrs["key_parts"], f.attrs["n_done"] = key_jsons[layer], 0
                f.create_dataset("ids", data=ids)
                f.create_dataset("block_end", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
                f.create_dataset("block_sha256", shape=(0, 32), maxshape=(None, 32), dtype=np.uint8,
                                 chunks=(1024, 32))
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
                    f.attrs["row_shape"] = np.asarray(block.shape[1:], dtype=np.int64)
                lo = max(i, done[layer])
                f["features"][lo:end] = block[lo - i:]
                for name, value in (("block_end", end), ("block_sha256", np.frombuffer(_digest(block[lo - i:]),
                                                                                        np.uint8))):
                    f[name].resize(len(f[name]) + 1, axis=0)
                    f[name][-1] = value
                f.attrs["n_done"] = done[layer] = end  # last: the counter never runs ahead of the blocks
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
