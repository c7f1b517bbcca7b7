"""The typed, versioned layout of a result record, checked when a record is written and read.

Layout of ``schema: brainharness.result/2`` (every field, its JSON type; ``?`` = may be absent)::

    schema          string  "brainharness.result/2"
    key             object  {dataset, subject, backbone, weights, task, experiment: non-empty strings,
                             other identity entries (e.g. id): any JSON}
    status          string  "complete" | "failed"
    evaluated_on    string  "test" | "validation" (validation: sweeps / model selection)
    task            object  {name: string, label?, params?: object, direction?}
    dataset         object  {name: string, info?: object, ...}
    backbone        object  {name?, family?, weights?, layer?, readout?, ...}
    provenance      object  {seed?: int, config?: object, packages?, code?, created?, host?, device?}
    main_score      string  complete only: the headline entry of ``scores``
    scores          object  complete only: {name: number or null}  (NaN allowed; null = not computed)
    tables          object  complete only: {name: [row objects]}
    error           string  failed only: "<ExceptionType>: <message>"
    sidecar         string | null   file name of the per-voxel ``.npz`` beside the record
    sidecar_sha256  string | null   sha256 (hex) of the sidecar's bytes; set iff ``sidecar`` is
    timings?        object  {stage: seconds (number or null)}
    details?, features?, tracking?, sweep?   objects (free-form)

Other top-level fields are allowed (a task or sweep may add its own), but the ones above must
have the types shown.

Version 1 (``brainharness.result/1``, written before sidecar digests existed) is still read:
it is checked with exactly the same rules except that ``sidecar_sha256`` is absent, so its
per-voxel arrays are read unverified. Nothing writes version 1 any more; a record is never
silently upgraded (``ResultStore.update`` keeps the version it finds). Any other schema string
is refused with a message naming the file.
"""
from __future__ import annotations

import re

from .errors import DataError

SCHEMA = "brainharness.result/2"
READABLE_SCHEMAS = ("brainharness.result/1", SCHEMA)
KEY_FIELDS = ("dataset", "subject", "backbone", "weights", "task", "experiment")
STATUSES = ("complete", "failed")
EVALUATED_ON = ("test", "validation")

_ALWAYS = {"key": dict, "status": str, "evaluated_on": str, "task": dict, "dataset": dict, "provenance": dict}
_COMPLETE = {"main_score": str, "scores": dict, "tables": dict, "backbone": dict}
_FAILED = {"error": str}
_OPTIONAL = {"backbone": dict, "timings": dict, "details": dict, "features": dict, "tracking": dict, "sweep": dict,
             "sidecar": (str, type(None)), "sidecar_sha256": (str, type(None))}
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _kind(value) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _expect(record: dict, name: str, types, where: str, required: bool) -> None:
    if name not in record:
        if required:
            raise DataError(f"{where}: field {name!r} is missing")
        return
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(record[name], types) or (bool not in types and isinstance(record[name], bool)):
        wanted = " or ".join(_JSON_NAMES[t] for t in types)
        raise DataError(f"{where}: field {name!r} must be {wanted}, got {_kind(record[name])}")


def is_number(value) -> bool:
    """A JSON number (not a boolean); NaN and infinities count (a metric may be undefined)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_record(record: dict, where: str = "result record") -> dict:
    """Check a record against its schema version; raises :class:`DataError` with one line naming
    ``where`` (the file) and the first problem. Returns the record unchanged."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object (got {_kind(record)})")
    schema = record.get("schema")
    if schema not in READABLE_SCHEMAS:
        if isinstance(schema, str) and schema.startswith("brainharness.result/"):
            raise DataError(f"{where}: unknown record version {schema!r} (this brainharness reads "
                            f"{', '.join(READABLE_SCHEMAS)})")
        raise DataError(f"{where}: not a brainharness result record (schema {schema!r})")
    for name, types in _ALWAYS.items():
        _expect(record, name, types, where, required=True)
    if record["status"] not in STATUSES:
        raise DataError(f"{where}: status must be complete or failed, got {record['status']!r}")
    if record["evaluated_on"] not in EVALUATED_ON:
        raise DataError(f"{where}: evaluated_on must be test or validation, got {record['evaluated_on']!r}")
    for name, types in (_COMPLETE if record["status"] == "complete" else _FAILED).items():
        _expect(record, name, types, where, required=True)
    for name, types in _OPTIONAL.items():
        _expect(record, name, types, where, required=False)
    _check_key(record["key"], where)
    for part in ("task", "dataset"):
        if not isinstance(record[part].get("name"), str) or not record[part]["name"]:
            raise DataError(f"{where}: {part}.name must be a non-empty string")
    seed = record["provenance"].get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise DataError(f"{where}: provenance.seed must be an integer, got {_kind(seed)}")
    if record["status"] == "complete":
        _check_scores(record, where)
    _check_numbers(record.get("timings") or {}, "timings", where)
    _check_sidecar(record, schema, where)
    return record


def _check_key(key: dict, where: str) -> None:
    missing = [f for f in KEY_FIELDS if not key.get(f)]
    if missing:
        raise DataError(f"{where}: key lacks {', '.join(missing)}")
    wrong = [f for f in KEY_FIELDS if not isinstance(key[f], str)]
    if wrong:
        raise DataError(f"{where}: key.{wrong[0]} must be a string, got {_kind(key[wrong[0]])}")


def _check_numbers(values: dict, field: str, where: str) -> None:
    for name, value in values.items():
        if value is not None and not is_number(value):
            raise DataError(f"{where}: {field}.{name} must be a number or null, got {_kind(value)}")


def _check_scores(record: dict, where: str) -> None:
    _check_numbers(record["scores"], "scores", where)
    if record["main_score"] not in record["scores"]:
        raise DataError(f"{where}: main score {record['main_score']!r} is not among its scores")
    for name, rows in record["tables"].items():
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{where}: table {name!r} must be a list of rows (objects)")


def _check_sidecar(record: dict, schema: str, where: str) -> None:
    sidecar, digest = record.get("sidecar"), record.get("sidecar_sha256")
    if sidecar is not None and (not sidecar or "/" in sidecar or "\\" in sidecar or sidecar.startswith(".")):
        raise DataError(f"{where}: sidecar must be a plain file name beside the record, got {sidecar!r}")
    if schema == READABLE_SCHEMAS[0]:
        if "sidecar_sha256" in record:
            raise DataError(f"{where}: version 1 records carry no sidecar_sha256")
        return
    _expect(record, "sidecar", (str, type(None)), where, required=True)
    if (sidecar is None) != (digest is None):
        raise DataError(f"{where}: sidecar and sidecar_sha256 must be set together "
                        f"(sidecar {sidecar!r}, sidecar_sha256 {digest!r})")
    if digest is not None and not _SHA256.fullmatch(digest):
        raise DataError(f"{where}: sidecar_sha256 must be 64 lowercase hex digits, got {digest!r}")
