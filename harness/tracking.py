"""Weights & Biases logging, attached after a result is stored.

Offline by default (``WANDB_MODE=offline``; run files under ``<results_dir>/wandb``, upload
later with ``wandb sync``); ``mode: online`` when the user asks. The result record is saved
before W&B is touched, and any W&B failure is caught and written into the record's
``tracking`` field — it never loses a result.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def log_result(record: dict, record_path: Path, settings: dict, wandb_dir: Path, group: str | None = None) -> dict:
    """Log one stored result as one W&B run; returns the ``tracking`` entry for the record."""
    mode = settings.get("mode", "offline")
    if mode == "disabled":
        return {"wandb": {"status": "disabled"}}
    try:
        import wandb

        key = record["key"]
        wandb_dir = Path(os.environ.get("WANDB_DIR") or wandb_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        name = f"{key['task']}/{key['backbone']}@{key['weights']}/{key['subject']}"
        run = wandb.init(project=settings.get("project", "brainharness"), entity=settings.get("entity"),
                         group=group or key["experiment"], job_type=key["task"], name=name, mode=mode,
                         dir=str(wandb_dir), reinit="finish_previous",
                         config={"key": key, "evaluated_on": record.get("evaluated_on"),
                                 "backbone": record.get("backbone"), "task": record.get("task"),
                                 "dataset": record.get("dataset", {}).get("name"),
                                 "seed": record.get("provenance", {}).get("seed")},
                         settings=wandb.Settings(silent=True, console="off"))
        with run:
            scalars = {k: v for k, v in record.get("scores", {}).items() if isinstance(v, (int, float))}
            run.log(scalars)
            run.summary.update(scalars)
            for table_name, rows in record.get("tables", {}).items():
                if rows:
                    columns = list(dict.fromkeys(c for r in rows for c in r))
                    run.log({table_name: wandb.Table(columns=columns,
                                                     data=[[r.get(c) for c in columns] for r in rows])})
            artifact = wandb.Artifact(f"result-{run.id}", type="result")
            artifact.add_file(str(record_path))
            if record.get("sidecar"):
                artifact.add_file(str(Path(record_path).parent / record["sidecar"]))
            run.log_artifact(artifact)
            info = {"status": mode, "run_id": run.id, "project": run.project, "dir": str(run.dir)}
        return {"wandb": info}
    except Exception as e:  # noqa: BLE001 — any tracking failure is recorded, never fatal
        log.warning("W&B logging failed (result kept): %s", e)
        return {"wandb": {"status": "failed", "error": f"{type(e).__name__}: {e}"}}
