"""Experiment configs: YAML (``safe_load``) → validated, fully resolved dict.

Schema (every key but ``dataset``, ``backbones`` and ``tasks`` has a default)::

    experiment: demo                  # name; part of every result key
    seed: 0
    device: auto                      # auto | cpu | cuda | cuda:N
    results_dir: results              # relative paths resolve against the config file
    cache_dir: null                   # null/empty: $BRAINHARNESS_CACHE, else ~/.cache/brainharness (brainharness.cache)
    policy: skip-existing             # skip-existing | overwrite | only-missing
    dataset: {name: synthetic, ...}   # plugin name + its parameters
    subjects: null                    # null = all subjects of the dataset
    backbones: [{name: oracle, ...}]  # plugin name + parameters (weights, layer, readout, ...)
    tasks: [{name: encoding, ...}]    # plugin name + parameters
    tracking: {wandb: {mode: offline, project: brainharness, entity: null}}
    sweep: {...}                      # only for `brainharness sweep` (see brainharness.sweeps.study)
    slurm: {partition: gpu, gpus: 1, time_min: 60, ...}  # only with --launcher slurm (brainharness.slurm)
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from .errors import ConfigError, DataError
from .params import resolve_params
from .results import POLICIES
from .slurm import OPTIONS as SLURM_OPTIONS

TOP_LEVEL = {"experiment", "seed", "device", "results_dir", "cache_dir", "policy", "dataset", "subjects",
             "backbones", "tasks", "tracking", "sweep", "description", "slurm"}
WANDB_MODES = ("offline", "online", "disabled")


def spec_label(spec: dict) -> str:
    """The row name of a backbone or task entry: its ``label``, else its plugin ``name``."""
    return spec.get("label") or spec["name"]


def load_config(source: str | Path | dict) -> dict:
    """Load and resolve a config from a YAML path or a dict."""
    base = Path.cwd()
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        base = path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping at the top level")
    return resolve(raw, base)


def _plugin_list(raw, field: str) -> list[dict]:
    items = raw.get(field)
    if items is None:
        raise ConfigError(f"config needs '{field}' (a list of {{name: ..., ...}})")
    if isinstance(items, (dict, str)):
        items = [items]
    if not isinstance(items, list):
        raise ConfigError(f"'{field}' must be a list of {{name: ..., ...}}, got {items!r}")
    if not items:
        raise ConfigError(f"'{field}' is empty: list at least one (nothing would run)")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{field}[{i}] must be a mapping with a 'name', got {item!r}")
        out.append(dict(item))
    return out


def resolve(raw: dict, base: Path | None = None) -> dict:
    base = base or Path.cwd()
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, sorted(TOP_LEVEL), n=1)
        raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    cfg = {
        "experiment": raw.get("experiment", "default"),
        "description": raw.get("description", ""),
        "seed": raw.get("seed", 0),
        "device": raw.get("device", "auto"),
        "results_dir": raw.get("results_dir", "results"),
        "cache_dir": raw.get("cache_dir"),
        "policy": raw.get("policy", "skip-existing"),
        "subjects": raw.get("subjects"),
        "tracking": raw.get("tracking") or {},
    }
    if not isinstance(cfg["experiment"], str) or not cfg["experiment"]:
        raise ConfigError(f"experiment must be a non-empty string, got {cfg['experiment']!r}")
    if not isinstance(cfg["seed"], int) or isinstance(cfg["seed"], bool):
        raise ConfigError(f"seed must be an integer, got {cfg['seed']!r}")
    if cfg["policy"] not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {cfg['policy']!r}")
    if not isinstance(cfg["device"], str) or not (cfg["device"] in ("auto", "cpu") or cfg["device"].startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg['device']!r}")
    if cfg["subjects"] is not None and not isinstance(cfg["subjects"], list):
        cfg["subjects"] = [cfg["subjects"]]
    dataset = raw.get("dataset")
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str):
        raise ConfigError("config needs 'dataset: {name: ..., ...}'")
    cfg["dataset"] = dict(dataset)
    cfg["backbones"] = _plugin_list(raw, "backbones")
    cfg["tasks"] = _plugin_list(raw, "tasks")
    if isinstance(cfg["cache_dir"], str) and not cfg["cache_dir"].strip():
        cfg["cache_dir"] = None  # empty = unset (the resolver's default), never the config's own folder
    for field in ("results_dir", "cache_dir"):
        if cfg[field] is not None and not isinstance(cfg[field], (str, Path)):
            raise ConfigError(f"{field} must be a path, got {cfg[field]!r}")
        if cfg[field] is not None:
            cfg[field] = str((base / Path(cfg[field]).expanduser()).resolve())
    wandb = dict(cfg["tracking"].get("wandb") or {})
    wandb.setdefault("mode", "offline")
    wandb.setdefault("project", "brainharness")
    wandb.setdefault("entity", None)
    if wandb["mode"] not in WANDB_MODES:
        raise ConfigError(f"tracking.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {wandb['mode']!r}")
    cfg["tracking"] = {"wandb": wandb}
    if "sweep" in raw:
        cfg["sweep"] = dict(raw["sweep"] or {})
    if raw.get("slurm") is not None:
        if not isinstance(raw["slurm"], dict):
            raise ConfigError(f"'slurm' must be a mapping of options, got {raw['slurm']!r}")
        cfg["slurm"] = dict(raw["slurm"])
        resolve_params("slurm", SLURM_OPTIONS, cfg["slurm"])  # checked now, applied with --launcher slurm
    return cfg
