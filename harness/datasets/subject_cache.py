"""The harness's own HDF5 format for a preprocessed subject, so later runs open in seconds.

A real-data loader builds a :class:`~brainharness.data.Subject` once (reading 40 NSD sessions takes
minutes) and saves it, with its metadata, to
``<cache_dir>/datasets/<layout>-<subject>-<key>.h5``. The key hashes the loader's parameters
(including its version) and the path, size and modification time of every source file, so
editing, replacing or adding a source file leads to a rebuild. The file is written under a
temporary name and renamed when complete (``os.replace``): an interrupted write never leaves a
file that looks finished, and concurrent writers of the same key each publish a whole file.

File layout::

    attrs: format = "brainharness-subject", format_version, key (JSON of params + sources), complete
    subject/               attrs name, nc_source
    subject/{train,test}/  stim_ids, averaged (float32), [trials (float32), trial_stim]
    subject/rois/<name>    bool masks over voxels
    subject/noise_ceiling  (when available)
    meta_json              the loader's JSON-able metadata (captions, counts, handling notes)
    arrays/<name>          the loader's numpy metadata (e.g. voxel coordinates)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from brainharness.cache import cache_path
from brainharness.data import Responses, Subject

log = logging.getLogger(__name__)

FORMAT = "brainharness-subject"
FORMAT_VERSION = 1


def file_signature(paths) -> list[list]:
    """``[path, size, mtime_ns]`` of each file (what identifies a source without reading it)."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


def subject_key(params: dict, sources) -> tuple[str, str]:
    blob = json.dumps({"params": params, "sources": file_signature(sources), "format": FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20], blob


@contextmanager
def atomic_h5(path: Path):
    """``with atomic_h5(path) as f:`` writes an HDF5 file under a temporary name, marks it
    ``complete`` and renames it to ``path`` when the block ends without error (else deletes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
            f.attrs["complete"] = True
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_subject(path: Path, subject: Subject, meta: dict, key_blob: str = "") -> Path:
    """Write ``subject`` and ``meta`` atomically to ``path``."""
    with atomic_h5(path) as f:
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, key=key_blob)
        g = f.create_group("subject")
        g.attrs.update(name=subject.name, nc_source=subject.nc_source)
        for split in ("train", "test"):
            r: Responses = getattr(subject, split)
            sg = g.create_group(split)
            sg["stim_ids"], sg["averaged"] = r.stim_ids, r.averaged
            if r.trials is not None:
                sg["trials"], sg["trial_stim"] = r.trials, r.trial_stim
        rg = g.create_group("rois")
        for name, mask in subject.rois.items():
            rg[name] = mask
        if subject.noise_ceiling is not None:
            g["noise_ceiling"] = subject.noise_ceiling
        arrays = {k: v for k, v in meta.items() if isinstance(v, np.ndarray)}
        rest = {k: v for k, v in meta.items() if k not in arrays}
        f.create_dataset("meta_json", data=json.dumps(rest, default=_json_default), dtype=h5py.string_dtype())
        ag = f.create_group("arrays")
        for k, v in arrays.items():
            ag[k] = v
    return path


def load_subject(path: Path) -> tuple[Subject, dict]:
    """Read a file written by :func:`save_subject` (raises OSError/KeyError/ValueError if it is not one)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", -1)) != FORMAT_VERSION \
                or not f.attrs.get("complete", False):
            raise ValueError(f"{path} is not a complete {FORMAT} v{FORMAT_VERSION} file")
        g = f["subject"]
        splits = {}
        for split in ("train", "test"):
            sg = g[split]
            trials = (sg["trials"][()], sg["trial_stim"][()]) if "trials" in sg else (None, None)
            splits[split] = Responses(sg["stim_ids"][()], sg["averaged"][()], *trials)
        subject = Subject(name=str(g.attrs["name"]), train=splits["train"], test=splits["test"],
                          rois={k: v[()] for k, v in g["rois"].items()},
                          noise_ceiling=g["noise_ceiling"][()] if "noise_ceiling" in g else None,
                          nc_source=str(g.attrs["nc_source"]))
        meta = json.loads(f["meta_json"].asstr()[()])
        meta.update({k: v[()] for k, v in f["arrays"].items()})
    return subject, meta


def cached_subject(cache_dir: Path | None, layout: str, name: str, params: dict, sources,
                   build: Callable[[], tuple[Subject, dict]]) -> tuple[Subject, dict, dict]:
    """The subject from the cache when its key matches, else ``build()`` it and save it.

    ``cache_dir=None`` disables the cache. Returns ``(subject, meta, cache_info)``; ``cache_info``
    holds the key as ``signature`` (params + source files) whether or not the cache is used."""
    key, blob = subject_key(params, sources)
    if cache_dir is None:
        subject, meta = build()
        return subject, meta, {"status": "disabled", "signature": key}
    path = cache_path("datasets", cache_dir) / f"{layout}-{name}-{key}.h5"
    if path.exists():
        try:
            subject, meta = load_subject(path)
            return subject, meta, {"status": "hit", "path": str(path), "signature": key}
        except (OSError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable subject cache %s (%s); rebuilding", path, e)
    subject, meta = build()
    save_subject(path, subject, meta, blob)
    return subject, meta, {"status": "written", "path": str(path), "signature": key}


def source_signature(caches: dict) -> dict:
    """``Dataset.info["source_signature"]`` from each subject's ``cache_info`` (part of every result id)."""
    return {name: info["signature"] for name, info in sorted(caches.items())}


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in the subject cache metadata")
