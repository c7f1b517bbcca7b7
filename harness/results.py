"""The local results store: the source of truth for every number the harness reports.

One JSON record per result identity (:mod:`brainharness.identity`: ``key.id`` hashes every
parameter that determines the numbers; :meth:`ResultStore.path_for` keeps the path readable), with
per-voxel arrays in a ``.npz`` sidecar beside it. Every write goes to a unique temporary file in the
same folder and is renamed into place, so a reader never sees half a record and concurrent
sweep workers never corrupt each other's files.

Records are typed and versioned (:mod:`brainharness.record_schema` has the layout and the rule
for reading version 1) and validated when written and when read: a record that does not
validate is reported by name (``records(errors=...)``, :meth:`ResultStore.scan`), never
skipped silently, and counts as missing for the re-run policies.

Integrity of a record and its sidecar:

* The sidecar is written first, under a name holding its digest (``<record>.<sha256[:16]>.npz``),
  then the record (which holds the full ``sidecar_sha256``) is renamed into place, and only
  then is the sidecar of the record it replaced removed. A crash at any point leaves either the
  old pair or the new pair intact, plus at most an unreferenced ``.npz`` or a ``.*.tmp`` file,
  which :mod:`brainharness.store_check` (``brainharness results check``) finds and removes.
* Reading per-voxel arrays verifies the digest (one line naming the file on mismatch).
* A failure never replaces a complete record: it is written beside it as
  ``<record>.failed.json`` (see :meth:`ResultStore.failure_path`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ConfigError, DataError
from .identity import stable_hash
from .record_schema import KEY_FIELDS, READABLE_SCHEMAS, SCHEMA, validate_record

__all__ = ["KEY_FIELDS", "POLICIES", "READABLE_SCHEMAS", "SCHEMA", "Problem", "ResultStore", "atomic_write_bytes",
           "atomic_write_json", "validate_record"]

log = logging.getLogger(__name__)

POLICIES = ("skip-existing", "overwrite", "only-missing")
"""Re-run policy: ``overwrite`` always re-runs; ``skip-existing`` (the default) and
``only-missing`` keep a complete record and re-run a unit whose record is absent, failed or
broken (does not validate, or its sidecar is missing or corrupt)."""

NOT_RECORDS = ("wandb", ".slurm")
"""Folders directly under the store root that hold other tools' files (W&B's offline runs,
submitit's job files: :mod:`brainharness.slurm`)."""
FAILED_SUFFIX = ".failed.json"


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


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, key: dict) -> Path:
        """``<dataset>-<data_id:8>/<subject>/<backbone>@<weights>/<task>/<experiment>-<id:12>.json``:
        readable, with the identity hashes (brainharness.identity) in it. A hand-made key without
        ``id`` is named by the hash of its fields."""
        missing = [f for f in KEY_FIELDS if not key.get(f)]
        if missing:
            raise ConfigError(f"result key lacks {', '.join(missing)}")
        dataset = f"{key['dataset']}-{str(key['data_id'])[:8]}" if key.get("data_id") else key["dataset"]
        rid = str(key.get("id") or stable_hash({f: key[f] for f in KEY_FIELDS}))[:12]
        parts = [_slug(dataset), _slug(key["subject"]), _slug(f"{key['backbone']}@{key['weights']}"),
                 _slug(key["task"])]
        return self.root.joinpath(*parts, f"{_slug(key['experiment'])}-{_slug(rid)}.json")

    def load(self, key: dict) -> dict | None:
        """The record stored for ``key`` (None if there is none); :class:`DataError` naming the
        file if it does not validate."""
        path = self.path_for(key)
        return self.read(path) if path.exists() else None

    def failure_path(self, path: Path) -> Path:
        """Where a failure is written when a complete record for the same key is at ``path``."""
        path = Path(path)
        return path.with_name(f"{path.stem}{FAILED_SUFFIX}")

    def state(self, key: dict) -> tuple[str, str | None]:
        """``("missing" | "complete" | "failed" | "broken", detail)`` of the record for ``key``;
        the detail of a broken record is the one-line problem naming the file."""
        path = self.path_for(key)
        if not path.exists():
            return "missing", None
        try:
            record = self.read(path)
        except DataError as e:
            return "broken", str(e)
        if record["status"] != "complete":
            return "failed", record.get("error")
        problem = self.sidecar_problem(record, path)
        return ("broken", problem) if problem else ("complete", None)

    def should_run(self, key: dict, policy: str) -> bool:
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if policy == "overwrite":
            return True
        state, detail = self.state(key)
        if state == "broken":
            log.warning("%s; re-running it", detail)
        return state != "complete"

    def save(self, record: dict, per_voxel: dict[str, np.ndarray] | None = None) -> Path:
        """Validate, then write the sidecar (if any) and the record; returns the path written.
        A failed record for a key that has a complete one goes to :meth:`failure_path` instead."""
        record = {k: v for k, v in record.items() if k != "_path"}
        record["schema"] = SCHEMA
        path = self.path_for(record["key"])
        data = None
        if per_voxel:
            buf = io.BytesIO()
            np.savez_compressed(buf, **{k: np.asarray(v) for k, v in per_voxel.items()})
            data = buf.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            record["sidecar"], record["sidecar_sha256"] = f"{path.stem}.{digest[:16]}.npz", digest
        else:
            record["sidecar"] = record["sidecar_sha256"] = None
        text = _record_json(record, path)
        if record["status"] != "complete" and self._complete_at(path):
            target = self.failure_path(path)  # the complete record stays; the failure is kept beside it
            atomic_write_bytes(target, text)
            log.warning("unit failed; the complete record %s is kept, the failure is in %s", path, target.name)
            return target
        replaced = self.sidecar_named_by(path)
        if data is not None:
            atomic_write_bytes(path.parent / record["sidecar"], data)
        atomic_write_bytes(path, text)
        # Only now is the replaced pair's sidecar unreferenced (a crash before this leaves an orphan).
        if replaced and replaced != record["sidecar"]:
            (path.parent / replaced).unlink(missing_ok=True)
        if record["status"] == "complete":
            self.failure_path(path).unlink(missing_ok=True)  # superseded by this complete record
        return path

    def update(self, key: dict, **fields) -> None:
        """Merge top-level fields into an existing record (e.g. tracking info after W&B); the
        result is validated again and keeps the record's version."""
        path = self.path_for(key)
        record = self.read(path)
        record.update(fields)
        atomic_write_bytes(path, _record_json(record, path))

    @staticmethod
    def read(path: Path) -> dict:
        """The validated record in ``path``; :class:`DataError` (one line naming the file) if it is
        unreadable, empty, not JSON or does not validate."""
        return validate_record(_load_json(path), where=f"result record {path}")

    @staticmethod
    def sidecar_problem(record: dict, record_path: Path) -> str | None:
        """One line naming the sidecar if it is missing or its bytes do not match the recorded
        digest; None if it is sound (or there is none; version 1 records are not verified)."""
        try:
            _sidecar_bytes(record, record_path)
        except DataError as e:
            return str(e)
        return None

    def per_voxel(self, record_path: Path) -> dict[str, np.ndarray]:
        """The record's per-voxel arrays, after checking the sidecar's digest."""
        record = self.read(record_path)
        data, file = _sidecar_bytes(record, record_path)
        if data is None:
            return {}
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, KeyError) as e:  # unverified (version 1) and unreadable
            raise DataError(f"sidecar {file} is unreadable: {type(e).__name__}: {e}") from None

    def files(self, pattern: str) -> list[Path]:
        """Files of the store matching ``pattern`` (hidden files and other tools' folders left out)."""
        if not self.root.exists():
            return []
        skip = [self.root / d for d in NOT_RECORDS]
        return sorted(p for p in self.root.rglob(pattern)
                      if not p.name.startswith(".") and not any(s in p.parents for s in skip))

    def paths(self) -> Iterator[Path]:
        """Every record file (failure files beside complete records excluded)."""
        return iter([p for p in self.files("*.json") if not p.name.endswith(FAILED_SUFFIX)])

    def failure_paths(self) -> list[Path]:
        """Failures written beside a complete record (see :meth:`failure_path`)."""
        return self.files(f"*{FAILED_SUFFIX}")

    def records(self, errors: list | None = None, verify: bool = False) -> Iterator[dict]:
        """Every valid record (with ``_path``), in path order. A file that claims to be a record
        (or is empty / not JSON) but does not validate is a :class:`Problem`, appended to
        ``errors`` — or, without a list, logged as a warning; never skipped silently. A JSON file
        that is not ours at all (no ``schema``, ``key`` or ``status``) is ignored. With ``verify``
        each sidecar's digest is checked too; the record is still yielded, its sidecar reported."""
        report = errors.append if errors is not None else (lambda p: log.warning("%s", p))
        for path in self.paths():
            try:
                obj = _load_json(path)
                if not _claims_to_be_record(obj):
                    continue
                record = validate_record(obj, where=f"result record {path}")
            except DataError as e:
                report(Problem(path, "broken", str(e)))
                continue
            if verify:
                problem = self.sidecar_problem(record, path)
                if problem:
                    report(Problem(path.parent / str(record["sidecar"]), "sidecar", problem))
            record["_path"] = str(path)
            yield record

    def scan(self, verify: bool = True) -> tuple[list[dict], list[Problem]]:
        """``(valid records, problems)`` of the whole store (sidecar digests checked by default)."""
        problems: list[Problem] = []
        return list(self.records(errors=problems, verify=verify)), problems

    def _complete_at(self, path: Path) -> bool:
        try:
            return path.exists() and self.read(path)["status"] == "complete"
        except DataError:
            return False

    @staticmethod
    def sidecar_named_by(path: Path) -> str | None:
        """The sidecar file name a JSON file names, valid record or not (None if none)."""
        try:
            obj = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        name = obj.get("sidecar") if isinstance(obj, dict) else None
        return name if isinstance(name, str) and name and "/" not in name else None


@dataclass(frozen=True)
class Problem:
    """Something wrong in the store: the file it concerns, a kind (``broken`` record, ``sidecar``
    missing or corrupt, ``orphan`` sidecar, stale ``temporary``, ``failure`` kept beside a complete
    record) and one line naming the file (its ``str``)."""

    path: Path
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


def _record_json(record: dict, path: Path) -> bytes:
    """The bytes written for ``record``, validated exactly as they will be read back."""
    text = json.dumps(record, indent=2, sort_keys=False, default=_json_default)
    validate_record(json.loads(text), where=f"result record {path} (not written)")
    return text.encode()


def _load_json(path: Path):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"result record {path} is unreadable: {e.strerror or e}") from None
    if not data.strip():
        raise DataError(f"result record {path} is empty (a truncated write?)")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"result record {path} is not valid JSON (truncated or damaged?): {e}") from None


def _claims_to_be_record(obj) -> bool:
    """A JSON object that says it is (or looks like) a result record; other JSON is foreign."""
    if not isinstance(obj, dict):
        return False
    return str(obj.get("schema", "")).startswith("brainharness.") or "key" in obj or "status" in obj


def _sidecar_bytes(record: dict, record_path: Path) -> tuple[bytes | None, Path | None]:
    """The sidecar's bytes, checked against the record's digest (:class:`DataError` naming it)."""
    name = record.get("sidecar")
    if not name:
        return None, None
    file = Path(record_path).parent / name
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise DataError(f"sidecar {file} is missing (named by {Path(record_path).name})") from None
    except OSError as e:
        raise DataError(f"sidecar {file} is unreadable: {e.strerror or e}") from None
    digest = record.get("sidecar_sha256")
    if digest is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DataError(f"sidecar {file} is corrupt: its sha256 {actual[:16]}… differs from "
                            f"{digest[:16]}… recorded in {Path(record_path).name}")
    return data, file
