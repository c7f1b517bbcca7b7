"""Units and sweep workers on a SLURM cluster, through submitit (no scheduler of our own).

``brainharness run CONFIG --launcher slurm`` submits, as one job array, every unit of the config
that has no complete record of its identity and no job pending or running; each array task runs
its unit with the same :class:`~brainharness.runner.Runner` as a local run, so its record lands in
the shared results store exactly as locally. Records are written atomically: a cancelled or
killed task leaves no half record, its unit shows ``failed`` (with the job's state) and the next
submission runs it again.

Which job runs which unit is kept in ``<results_dir>/.slurm/jobs.json`` (unit identity hash →
job id), written atomically under a lock; job states come from SLURM's accounting (``sacct``)
through submitit's watcher. submitit's own files (the pickled call, the job's stdout/stderr) are
in ``<results_dir>/.slurm/<job id>/`` unless ``slurm.folder`` says otherwise — it must be on a file
system every node sees, as must the results store and the sweep's SQLite file.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, HarnessError
from .params import PATH, Param, resolve_params
from .results import atomic_write_json

FOLDER = ".slurm"  # under the results store (brainharness.results.NOT_RECORDS)

OPTIONS = {
    "partition": Param(None, str, doc="partition (default: the cluster's default partition)"),
    "gpus": Param(0, int, ge=0, doc="GPUs per task"),
    "cpus": Param(1, int, ge=1, doc="CPUs per task"),
    "mem_gb": Param(None, float, gt=0, doc="memory per task in GB (default: the partition's)"),
    "time_min": Param(120, int, ge=1, doc="time limit per task in minutes"),
    "array_parallelism": Param(None, int, ge=1, doc="most array tasks running at once (default: no limit)"),
    "sbatch": Param({}, dict, doc="further sbatch options, e.g. {account: lab, qos: short, constraint: a100}"),
    "folder": Param(None, PATH, doc="submitit's folder, seen by every node (default: <results_dir>/.slurm)"),
}

ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT")
"""Job states in which a unit is still on its way: it is not submitted again."""


def options(cfg: dict, overrides: dict | None = None) -> dict:
    """The config's ``slurm:`` section with the command line's ``overrides`` (None: not given)."""
    given = dict(cfg.get("slurm") or {})
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    p = resolve_params("slurm", OPTIONS, given)
    p["folder"] = str(Path(p["folder"]).expanduser().resolve()) if p["folder"] else \
        str(Path(cfg["results_dir"]) / FOLDER)
    return p


def parse_sbatch(pairs: list[str] | None) -> dict:
    """``--sbatch KEY=VALUE`` (repeatable) → ``{KEY: VALUE}``; a bare ``KEY`` is a flag."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.lstrip("-").partition("=")
        if not key:
            raise ConfigError(f"--sbatch takes KEY=VALUE (an sbatch option without its dashes), got {pair!r}")
        out[key] = value if sep else True
    return out


def check_available() -> None:
    """One line before any compute when submitit or SLURM's commands are missing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError('--launcher slurm needs submitit: pip install "brainharness[slurm]"') from None
    missing = [c for c in ("sbatch", "sacct", "scancel") if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"--launcher slurm: {', '.join(missing)} not found on PATH (is this a SLURM login node?)")


def executor(p: dict, name: str):
    """A submitit executor for SLURM with the options ``p`` (see :data:`OPTIONS`)."""
    import submitit

    ex = submitit.AutoExecutor(folder=Path(p["folder"]) / "%j", cluster="slurm")
    params = {"name": name, "timeout_min": p["time_min"], "cpus_per_task": p["cpus"],
              "slurm_additional_parameters": dict(p["sbatch"])}
    if p["gpus"]:
        params["gpus_per_node"] = p["gpus"]
    for key, param in (("partition", "slurm_partition"), ("mem_gb", "mem_gb"),
                       ("array_parallelism", "slurm_array_parallelism")):
        if p[key] is not None:
            params[param] = p[key]
    ex.update_parameters(**params)
    return ex


def submit(ex, fn, *arg_lists) -> list[str]:
    """``fn(*args)`` for each row of ``arg_lists`` as one job array: the job ids (``J_i``)."""
    try:
        jobs = ex.map_array(fn, *arg_lists)
    except Exception as e:  # sbatch refused (bad partition, option, limit): its own message, one line
        text = " ".join(str(e).split())
        raise HarnessError(f"sbatch refused the job array: {text[-300:]}") from None
    return [str(j.job_id) for j in jobs]


ACCOUNTING_LAG_S = 60
"""How long a just-submitted job may be unknown to accounting (``sacct``) and still count as pending."""


def job_states(job_ids, just_submitted=()) -> dict[str, str]:
    """SLURM's state of each job id (one ``sacct`` call): ``PENDING``, ``RUNNING``, ``COMPLETED``,
    ``FAILED``, ``CANCELLED``, ``TIMEOUT``, …; ``UNKNOWN`` when accounting has no trace of it —
    except for ``just_submitted`` jobs, which are ``PENDING`` until accounting lists them."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    ids = sorted(set(job_ids))
    if not ids:
        return {}
    watcher = SlurmInfoWatcher()
    for j in ids:
        watcher.register_job(j)
    watcher.update()
    states = {j: watcher.get_state(j, mode="cache").split()[0] for j in ids}  # "CANCELLED by 0" → CANCELLED
    return {j: "PENDING" if s == "UNKNOWN" and j in just_submitted else s for j, s in states.items()}


@dataclass
class JobTable:
    """``<results_dir>/.slurm/jobs.json``: which job runs (or ran) which unit, by unit identity."""

    path: Path

    @classmethod
    def of(cls, results_dir: str | Path) -> "JobTable":
        return cls(Path(results_dir) / FOLDER / "jobs.json")

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as e:
            raise HarnessError(f"{self.path} is unreadable ({e}); remove it to forget the jobs it lists") from None

    @contextlib.contextmanager
    def locked(self):
        """The table, for changes written when the block ends (one submitter at a time)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = self.read()
            yield table
            atomic_write_json(self.path, table)

    @staticmethod
    def age_s(entry: dict) -> float:
        """Seconds since the entry's job was submitted."""
        then = datetime.datetime.fromisoformat(entry["submitted"])
        return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()

    @staticmethod
    def entry(job_id: str, unit: str) -> dict:
        return {"job_id": job_id, "unit": unit,
                "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def in_job() -> dict | None:
    """The SLURM job this process runs in (for a record's provenance), None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else job
    return {"launcher": "slurm", "job_id": job_id, "cluster": os.environ.get("SLURM_CLUSTER_NAME"),
            "node": os.environ.get("SLURMD_NODENAME")}
