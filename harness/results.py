"""The local results store: the source of truth for every number the harness reports.

One JSON record per (dataset, subject, backbone + weights, task, experiment), with per-voxel
arrays in a ``.npz`` sidecar beside it. Every write goes to a unique temporary file in the
same folder and is renamed into place, so a reader never sees half a record and concurrent
sweep workers never corrupt each other's files.

Record layout (``schema: brainharness.result/1``)::

    key          {dataset, subject, backbone, weights, task, experiment}
    status       "complete" | "failed"
    evaluated_on "test" | "validation"  (validation records come from sweeps/model selection)
    main_score   name of the headline entry in ``scores``
    scores       {name: float}            flat scalar metrics
    tables       {name: [row dicts]}      e.g. per_roi, retrieval
    backbone     {name, family, weights: {source, id, revision}, layer, readout, ...}
    task         {name, params}
    dataset      {name, info}
    sidecar      file name of the per-voxel .npz (or null)
    provenance   {seed, config, packages, code, created, host, device}
    timings      {stage: seconds}
    tracking     {wandb: {...}}
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ConfigError, DataError

SCHEMA = "brainharness.result/1"
POLICIES = ("skip-existing", "overwrite", "only-missing")
"""Re-run policy: ``skip-existing`` reuses any existing record; ``overwrite`` always re-runs;
``only-missing`` re-runs records that are absent or not ``complete`` (e.g. failed)."""

KEY_FIELDS = ("dataset", "subject", "backbone", "weights", "task", "experiment")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(text)).strip("_") or "_"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


_FIELD_TYPES = {"key": dict, "status": str, "evaluated_on": str, "scores": dict, "tables": dict,
                "backbone": dict, "task": dict, "dataset": dict, "provenance": dict}


def validate_record(record: dict, where: str = "result record") -> dict:
    """Check a record's shape (on write and on read); raises DataError naming the first problem."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object")
    if not str(record.get("schema", "")).startswith("brainharness.result/"):
        raise DataError(f"{where}: not a brainharness result record (schema {record.get('schema')!r})")
    required = ("key", "status", "evaluated_on", "task", "dataset", "provenance")
    for name in required + (("scores", "tables", "backbone") if record.get("status") == "complete" else ()):
        if not isinstance(record.get(name), _FIELD_TYPES[name]):
            raise DataError(f"{where}: field {name!r} must be a {_FIELD_TYPES[name].__name__}, "
                            f"got {type(record.get(name)).__name__}")
    missing = [f for f in KEY_FIELDS if not record["key"].get(f)]
    if missing:
        raise DataError(f"{where}: key lacks {', '.join(missing)}")
    if record["status"] not in ("complete", "failed"):
        raise DataError(f"{where}: status must be complete or failed, got {record['status']!r}")
    if record["evaluated_on"] not in ("test", "validation"):
        raise DataError(f"{where}: evaluated_on must be test or validation, got {record['evaluated_on']!r}")
    if record["status"] == "complete":
        main = record.get("main_score")
        if main not in record["scores"]:
            raise DataError(f"{where}: main score {main!r} is not among its scores")
        for name, rows in record["tables"].items():
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{where}: table {name!r} must be a list of rows (objects)")
    return record


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, key: dict) -> Path:
        missing = [f for f in KEY_FIELDS if not key.get(f)]
        if missing:
            raise ConfigError(f"result key lacks {', '.join(missing)}")
        parts = [_slug(key["dataset"]), _slug(key["subject"]), _slug(f"{key['backbone']}@{key['weights']}"),
                 _slug(key["task"])]
        return self.root.joinpath(*parts, f"{_slug(key['experiment'])}.json")

    def load(self, key: dict) -> dict | None:
        path = self.path_for(key)
        return self.read(path) if path.exists() else None

    def should_run(self, key: dict, policy: str) -> bool:
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if policy == "overwrite":
            return True
        existing = self.load(key)
        if existing is None:
            return True
        return policy == "only-missing" and existing.get("status") != "complete"

    def save(self, record: dict, per_voxel: dict[str, np.ndarray] | None = None) -> Path:
        """Write the sidecar (if any) then the record; returns the record's path."""
        record = dict(record, schema=SCHEMA)
        path = self.path_for(record["key"])
        if per_voxel:
            import io

            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.asarray(v) for k, v in per_voxel.items()})
            sidecar = path.with_suffix(".npz")
            atomic_write_bytes(sidecar, buf.getvalue())
            record["sidecar"] = sidecar.name
        else:
            record.setdefault("sidecar", None)
        atomic_write_json(path, record)
        return path

    def update(self, key: dict, **fields) -> None:
        """Merge top-level fields into an existing record (e.g. tracking info after W&B)."""
        path = self.path_for(key)
        record = self.read(path)
        record.update(fields)
        atomic_write_json(path, record)

    @staticmethod
    def read(path: Path) -> dict:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"result record {path} is unreadable: {e}") from None
        if not str(record.get("schema", "")).startswith("brainharness.result/"):
            raise DataError(f"{path} is not a brainharness result record")
        return record

    def per_voxel(self, record_path: Path) -> dict[str, np.ndarray]:
        record = self.read(record_path)
        if not record.get("sidecar"):
            return {}
        with np.load(Path(record_path).parent / record["sidecar"], allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def paths(self) -> Iterator[Path]:
        if not self.root.exists():
            return iter(())
        return iter(sorted(p for p in self.root.rglob("*.json") if not p.name.startswith(".")))

    def records(self) -> Iterator[dict]:
        for path in self.paths():
            try:
                record = self.read(path)
            except DataError:
                continue  # not ours (or a foreign JSON file in the folder)
            record["_path"] = str(path)
            yield record
