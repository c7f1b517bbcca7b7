"""What a result *is*: the stable hash of everything that determines its numbers (DESIGN §9).

A record's identity is built here, in one place, from the fully resolved, defaults-filled
parameters of its unit::

    dataset    loader name, loader version, its parameters (synthetic seed and sizes; NSD subject,
               sessions, beta version …), the signature of its source files (path, size, mtime)
               where the loader reads files, and the stimulus set's fingerprint
                                                                  → hashed alone: the data_id
    subject
    backbone   Backbone.identity() (plugin version, weights by content, preprocessing, library
               versions …), its other options, the layer and the read-out
    task       task name, plugin version and resolved parameters (``task.p``)
    selection  evaluated_on, the run seed, and the validation fraction where one is carved
    labels     experiment, backbone label, task label (so an id names exactly one record file)
    schema     the major version of the result record schema

Left out on purpose — they say *how* or *where*, not *what*: cache folders (the weights of a
backbone trained into the cache count by their content digest, never by path), a plugin's
``runtime_params`` (backbone ``device``, ``batch_size``, ``cache_dir``; dataset ``cache``,
``cache_dir``), the config's ``device`` and the precision it leads to (fp16 autocast on CUDA
when ``half``). The same config run on a CPU box and a GPU box is one result; the device and
precision actually used are in the record's provenance (``provenance.device``,
``provenance.precision``), and numbers may differ between them in the last digits.

Numbers hash by value (``1`` and ``1.0`` are the same parameter), mappings by sorted keys,
tuples as lists. Bump :data:`IDENTITY_VERSION` when the shape of the payload changes (every id
changes with it); a plugin bumps its own ``version`` when its numbers change.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

IDENTITY_VERSION = 1


def canonical(obj):
    """A JSON-able copy of ``obj`` in which equal parameters are equal values."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return canonical(obj.tolist())
    return str(obj)


def stable_hash(obj) -> str:
    """sha256 (hex) of the canonical JSON of ``obj``: the same on every machine and Python."""
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def schema_major() -> int:
    from .record_schema import SCHEMA  # the record schema in force ("brainharness.result/<major>[.minor]")

    return int(SCHEMA.rsplit("/", 1)[-1].split(".")[0])


def _hashed_params(plugin) -> dict:
    skip = set(getattr(plugin, "runtime_params", ()))
    return {k: v for k, v in plugin.p.items() if k not in skip}


# -- the parts --------------------------------------------------------------------------------
def dataset_identity(loader, dataset) -> dict:
    """The data variant: loader, version, hashed parameters, the source files' signature
    (``Dataset.info["source_signature"]``) and the stimulus set's fingerprint."""
    cls = type(loader)
    return {"loader": cls.registry_name or cls.__name__, "version": str(cls.version),
            "params": _hashed_params(loader), "sources": dataset.info.get("source_signature"),
            "stimuli": dataset.stimuli.fingerprint or None}


def dataset_variant(loader, name: str | None = None) -> str:
    """A short readable label of the data variant: the name and the parameters that differ from
    their defaults (paths and runtime parameters left out), e.g. ``synthetic(seed=1, n_train=1500)``."""
    cls = type(loader)
    skip = set(getattr(loader, "runtime_params", ()))
    parts = []
    for k, param in cls.params.items():
        value, default = loader.p.get(k), param.default
        if k in skip or os.PathLike in param.types:
            continue
        if param.convert is not None and default is not None:
            default = param.convert(default)
        if param.required or canonical(value) != canonical(default):
            parts.append(f"{k}={_short(value)}")
    name = name or cls.registry_name or cls.__name__
    return f"{name}({', '.join(parts)})" if parts else name


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_short(v) for v in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def portable_weights(info):
    """A weights description without the absolute path of local weights: they count by content
    (``digest``), so a checkpoint in another folder or cache root is the same weights."""
    if isinstance(info, Mapping) and info.get("source") == "local" and info.get("digest"):
        return {k: v for k, v in info.items() if k != "id"}
    return info


def weights_label(info: dict) -> str:
    """Short, stable label of a weights spec for result keys, paths and listings."""
    source = info.get("source") or "none"
    if source in ("none", "random-init"):
        return source
    ident = str(info.get("id") or "")
    if source == "local":  # a folder name and the content digest, never the absolute path
        name = Path(ident).name or "checkpoint"
        return f"local:{name}-{info['digest'][:8]}" if info.get("digest") else f"local:{name}"
    rev = info.get("revision")
    return f"{source}:{ident}" + (f"@{rev}" if rev else "")


def backbone_identity(backbone) -> dict:
    """``Backbone.identity()`` (falling back to its name, version and weights where the plugin
    declines to give one), without the device-dependent precision, with the weights by content,
    plus its hashed options, layer and read-out."""
    ident = backbone.identity()
    if ident is None:
        ident = {"backbone": backbone.registry_name, "plugin_version": backbone.version,
                 "weights": backbone.weights_info()}
    ident = {k: v for k, v in ident.items() if k != "precision"}
    ident["weights"] = portable_weights(ident.get("weights"))
    options = {k: v for k, v in _hashed_params(backbone).items() if k != "weights"}  # weights: by content above
    return {**ident, "options": options, "layer": backbone.layer, "readout": backbone.readout}


def task_identity(task) -> dict:
    cls = type(task)
    return {"name": cls.registry_name or cls.__name__, "version": str(cls.version), "params": _hashed_params(task)}


def selection_identity(evaluated_on: str, seed: int, validation_fraction: float | None) -> dict:
    out = {"evaluated_on": evaluated_on, "seed": seed}
    if evaluated_on == "validation":
        out["validation_fraction"] = validation_fraction
    return out


def result_identity(*, dataset: dict, subject: str, backbone: dict, task: dict, selection: dict,
                    labels: dict) -> tuple[dict, str, str]:
    """``(payload, id, data_id)``: the payload stored in the record as ``identity``, its hash, and
    the hash of its dataset part."""
    payload = {"identity_version": IDENTITY_VERSION, "schema_major": schema_major(), "dataset": dataset,
               "subject": subject, "backbone": backbone, "task": task, "selection": selection, "labels": labels}
    payload = canonical(payload)
    return payload, stable_hash(payload), stable_hash(payload["dataset"])


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """``{"task.params.alpha_min": 0.01, ...}``: nested mappings as dotted names (for show/diff)."""
    if isinstance(obj, Mapping) and obj:
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}
