"""What a leaderboard row is compared with: its dataset variant (rankings never pool two
variants) and whether its backbone is a control (a reference row, never ranked).

A **dataset variant** is the dataset's name plus the parameters that change its data (synthetic
data generated with seed 0 and with seed 1 are two variants). A record written by the current
runner names it: ``key["data_id"]`` (a hash of the variant) and ``dataset["variant"]`` (a
readable label, ``synthetic(seed=1, n_train=400)``: the parameters that differ from their
defaults). For a record without them both are derived from what it stores: the loader's
information ``dataset["info"]`` (version, parameters, data fingerprints) for the identity, the
loader's declared parameters for the label, in the runner's format — so records written before
those fields existed still group correctly (in a store mixing both, the two kinds of id differ,
so old and new records of one variant show as two groups: never pooled, at worst split).

A **control** is declared by its backbone (:meth:`brainharness.backbone.Backbone.control`, stored
in ``record["backbone"]["control"]``); for an older record without the field the backbone plugin
is asked, from the parameters the record stores. Nothing here matches a backbone by name.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from brainharness import registry
from brainharness.errors import HarnessError
from brainharness.identity import canonical
from brainharness.params import Param

LOCATIONS = frozenset({"cache_dir", "cache", "path", "load_seconds"})
"""Entries of a loader's info (and parameters) that say where data were cached or how long loading
took, not what the data are: left out of the identity and the label."""

UNKNOWN_LABEL = "parameters not recorded"
"""The label of a variant whose record stores none of its loader's data parameters."""


@dataclass(frozen=True)
class Variant:
    """``id``: equal ids = the same data; ``name``: the dataset's name; ``label``: readable."""

    id: str
    name: str
    label: str


def _section(record: dict, name: str) -> dict:
    value = record.get(name)
    return value if isinstance(value, dict) else {}


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _data_part(info: dict, subject) -> dict:
    """The info entries that determine the data of ``subject``: locations and timings left out,
    and per-subject mappings reduced to this subject (other subjects' metadata do not change it)."""
    out = {}
    for k, v in info.items():
        if k in LOCATIONS:
            continue
        if isinstance(v, dict) and subject is not None and str(subject) in v:
            v = {str(subject): v[str(subject)]}
        out[k] = v
    return out


def _declared(loader: str) -> list | None:
    """``[(name, Param)]`` of a dataset plugin's data parameters (runtime settings such as the
    cache and paths left out); None when the plugin is not installed."""
    try:
        plugin = registry.datasets.get(loader)
    except (HarnessError, ImportError):
        return None
    skip = set(getattr(plugin, "runtime_params", ())) | LOCATIONS
    return [(name, p) for name, p in (getattr(plugin, "params", None) or {}).items()
            if isinstance(p, Param) and name not in skip and os.PathLike not in p.types]


def _converted(param: Param, value):
    try:
        return param.convert(value) if param.convert is not None and value is not None else value
    except (ValueError, TypeError, HarnessError):
        return value


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_short(v) for v in value)
    return format(value, "g") if isinstance(value, float) else str(value)


def _label(name: str, loader: str, info: dict, spec: dict) -> str | None:
    """``name(k=v, …)`` with the data parameters that differ from their defaults, as the runner
    labels a variant (just ``name`` when none differs; :data:`UNKNOWN_LABEL` added when the record
    stores none of them); None when the loader's declarations are unknown."""
    declared = _declared(loader)
    if declared is None:
        return None
    parts, known = [], 0
    for k, param in declared:
        if k not in info and k not in spec:
            continue
        known += 1
        value = _converted(param, info[k] if k in info else spec[k])
        if canonical(value) != canonical(_converted(param, param.default)):
            parts.append(f"{k}={_short(value)}")
    if declared and not known:
        return f"{name} ({UNKNOWN_LABEL})"
    return f"{name}({', '.join(parts)})" if parts else name


def dataset_variant(record: dict) -> Variant:
    """The record's dataset variant: ``key["data_id"]`` / ``dataset["variant"]`` where present,
    else derived from ``dataset["info"]`` (see the module docstring)."""
    key, section = _section(record, "key"), _section(record, "dataset")
    info = section.get("info") if isinstance(section.get("info"), dict) else {}
    config = _section(_section(record, "provenance"), "config")
    spec = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    name = str(key.get("dataset") or section.get("name") or info.get("name") or "unknown")
    data_id = key.get("data_id")
    ident = str(data_id) if data_id else "info-" + _short_hash(
        [name, _data_part(info, section.get("subject") or key.get("subject"))])
    label = section.get("variant")
    if not label:
        loader = str(spec.get("name") or info.get("name") or name)
        label = _label(name, loader, info, spec) or f"{name} [data {ident.removeprefix('info-')[:8]}]"
    return Variant(ident, name, str(label))


def control_of(record: dict) -> str | None:
    """The kind of control the record's backbone declares (``"ceiling"``, ``"shuffled floor"`` …),
    or None for a competitor."""
    backbone = _section(record, "backbone")
    if "control" in backbone:
        return str(backbone["control"]) if backbone["control"] else None
    name = backbone.get("name")
    if not name:
        return None
    # a record written before backbones declared controls: ask the plugin, from the stored parameters
    spec = backbone.get("spec") if isinstance(backbone.get("spec"), dict) else {}
    params = {**spec, **{k: v for k, v in backbone.items() if k != "spec"}}
    try:
        kind = registry.backbones.get(str(name)).control(params)
    except (HarnessError, ImportError, AttributeError, TypeError, ValueError, KeyError):
        return None  # plugin not installed (or not a Backbone): nothing declares it a control
    return str(kind) if kind else None
