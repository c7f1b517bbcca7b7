"""``brainharness run CONFIG --launcher slurm`` and ``brainharness status CONFIG``: a config's units
on a SLURM cluster (:mod:`brainharness.slurm`), and where each unit stands.

A unit is ``done`` (a complete record of its identity is in the store), ``pending`` or ``running``
(its job is queued or running), ``failed`` (a failed record, or its job ended without a record:
cancelled, timed out, out of memory, node failure) or ``missing`` (never submitted, or SLURM has
forgotten its job). Submitting again sends only ``failed`` and ``missing`` units (and, with
``policy: overwrite``, ``done`` ones too), never one that is pending or running.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from brainharness.config import spec_label
from brainharness.errors import ConfigError, DataError
from brainharness.slurm import ACCOUNTING_LAG_S, ACTIVE, JobTable, check_available, executor, job_states, options, \
    parse_sbatch, submit

from .terminal import leaderboard_command

FLAGS = (("--partition", str, "partition"), ("--gpus", int, "GPUs per task"), ("--cpus", int, "CPUs per task"),
         ("--mem-gb", float, "memory per task (GB)"), ("--time-min", int, "time limit per task (minutes)"),
         ("--array-parallelism", int, "most array tasks running at once"))


def add_options(parser, what: str) -> None:
    """The launcher's command-line options (``run`` and ``sweep``); they override ``slurm:``."""
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local",
                        help=f"where the {what} run: here (default) or as SLURM jobs through submitit")
    group = parser.add_argument_group("SLURM (with --launcher slurm; override the config's slurm: section)")
    for flag, typ, doc in FLAGS:
        group.add_argument(flag, type=typ, help=doc)
    group.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                       help="a further sbatch option, e.g. --sbatch account=lab --sbatch qos=short (repeatable)")
    group.add_argument("--wait", action="store_true", help="wait for the jobs and print their outcome")


def _dest(flag: str) -> str:  # "--mem-gb" → "mem_gb": the argparse name and the slurm: option
    return flag.lstrip("-").replace("-", "_")


def check_flags(args) -> None:
    """A SLURM option without ``--launcher slurm`` is a usage mistake, not something to ignore."""
    given = [flag for flag in [f for f, _, _ in FLAGS] + ["--sbatch", "--wait"]
             if getattr(args, _dest(flag), None) not in (None, False)]
    if given and args.launcher != "slurm":
        raise ConfigError(f"{given[0]} is an option of --launcher slurm (add it, or drop {given[0]})")


def slurm_options(cfg: dict, args) -> dict:
    over = {_dest(flag): getattr(args, _dest(flag), None) for flag, _, _ in FLAGS}
    if getattr(args, "sbatch", None):
        over["sbatch"] = {**(cfg.get("slurm") or {}).get("sbatch", {}), **parse_sbatch(args.sbatch)}
    return options(cfg, over)


@dataclass
class Unit:
    subject: str
    backbone: dict
    task: dict
    key: dict
    path: object
    state: str = "missing"
    job: str = ""
    detail: str = ""

    @property
    def labels(self) -> tuple[str, str, str]:
        return self.subject, spec_label(self.backbone), spec_label(self.task)


def unit_states(runner, ask_slurm: bool = True) -> list[Unit]:
    """Every unit of the runner's config with its state (see the module's doc)."""
    table = JobTable.of(runner.cfg["results_dir"]).read()
    units = []
    recent = set()  # jobs submitted a moment ago: accounting may not list them yet
    for subject, bspec, tspec in runner.units():
        key = runner.key(subject, bspec, tspec)
        entry = table.get(key["id"]) or {}
        units.append(Unit(subject, bspec, tspec, key, runner.store.path_for(key), job=entry.get("job_id", "")))
        if entry and JobTable.age_s(entry) < ACCOUNTING_LAG_S:
            recent.add(entry["job_id"])
    states = job_states([u.job for u in units if u.job], recent) if ask_slurm else {}
    for u in units:
        try:
            record = runner.store.load(u.key)
        except DataError as e:  # a broken record counts as missing (the re-run policies say so too)
            record, u.detail = None, str(e)
        job_state = states.get(u.job, "")
        if record is not None and record.get("status") == "complete":
            u.state = "done"
        elif job_state in ACTIVE:
            u.state = "pending" if job_state == "PENDING" else "running"
        elif record is not None:
            u.state, u.detail = "failed", (record.get("error") or "").strip().splitlines()[0][:200]
        elif job_state and job_state != "UNKNOWN":
            u.state, u.detail = "failed", f"job {job_state.lower()} without a record"
        if u.job and job_state and u.state != "done":
            u.detail = u.detail or job_state.lower()
    return units


def status_lines(units: list[Unit]) -> list[str]:
    rows = [("STATE", "JOB", "SUBJECT", "BACKBONE", "TASK", "RECORD / WHY")]
    rows += [(u.state, u.job or "-", *u.labels, u.detail if u.state != "done" else str(u.path)) for u in units]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    counts = {s: sum(u.state == s for u in units) for s in ("done", "running", "pending", "failed", "missing")}
    return lines + [f"{len(units)} unit(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())]


def run_unit_job(cfg: dict, subject: str, backbone: str, task: str) -> dict:
    """One array task: the unit ``(subject, backbone label, task label)`` of ``cfg``, run as a
    local ``brainharness run`` runs it (the same re-run policy: a unit completed meanwhile is kept).
    A failed unit fails the task, so SLURM's state says so too."""
    from brainharness.runner import Runner

    def pick(specs, label):
        return [s for s in specs if spec_label(s) == label]

    # the unit's own config: the other backbones are not built (their models take seconds each)
    runner = Runner({**cfg, "subjects": [subject], "backbones": pick(cfg["backbones"], backbone),
                     "tasks": pick(cfg["tasks"], task)}, progress=False)
    (unit,) = runner.check_units(runner.units())
    outcome = runner.run_one(*unit)
    if outcome.status == "failed":
        raise RuntimeError(f"unit {subject} / {backbone} / {task} failed: {outcome.error}")
    return {"status": outcome.status, "path": str(outcome.path)}


def submit_grid(runner, p: dict) -> list[Unit]:
    """Submit the units to run (see the module's doc) as one job array; the submitted units."""
    overwrite = runner.cfg["policy"] == "overwrite"
    with JobTable.of(runner.cfg["results_dir"]).locked() as table:
        units = unit_states(runner)
        todo = [u for u in units if u.state in ("failed", "missing") or (overwrite and u.state == "done")]
        runner.check_units([(u.subject, u.backbone, u.task) for u in todo])  # one line before any job
        if todo:
            cfg = dict(runner.cfg, policy="overwrite" if overwrite else "skip-existing")
            ids = submit(executor(p, f"bh-{runner.cfg['experiment']}"), run_unit_job,
                         [cfg] * len(todo), *zip(*(u.labels for u in todo)))
            for u, job in zip(todo, ids):
                u.job, u.state = job, "pending"
                table[u.key["id"]] = JobTable.entry(job, "/".join(u.labels))
    return todo


def run_on_slurm(cfg: dict, args) -> int:
    """``run CONFIG --launcher slurm [--wait]``."""
    from brainharness.runner import Runner

    p = slurm_options(cfg, args)  # options and SLURM's commands checked before anything is read
    check_available()
    runner = Runner(cfg, progress=False)
    todo = submit_grid(runner, p)
    if not todo:
        print("nothing to submit: every unit is done, pending or running (`brainharness status CONFIG`)")
    else:
        array = todo[0].job.split("_")[0]
        print(f"submitted {len(todo)} unit(s) as job array {array} (submitit files: {p['folder']})")
    if not args.wait:
        print(f"next: brainharness status {args.config}")
        return 0
    wanted = {u.key["id"] for u in todo}
    units = wait_for(lambda: unit_states(runner),
                     lambda units: any(u.state in ("pending", "running") for u in units if u.key["id"] in wanted))
    print("\n".join(status_lines(units)))
    print(f"records: {runner.cfg['results_dir']}\nnext: {leaderboard_command(runner.cfg['results_dir'])}")
    return 1 if any(u.state == "failed" for u in units if u.key["id"] in wanted) else 0


def wait_for(poll, busy, every: float = 1.0):
    """``poll()`` every ``every`` seconds until ``busy(result)`` is false; the last result."""
    while busy(result := poll()):
        time.sleep(every)
    return result


def cmd_status(args) -> int:
    """``brainharness status CONFIG``: every unit with its state and job id (exit 0)."""
    from brainharness.config import load_config
    from brainharness.runner import Runner

    runner = Runner(load_config(args.config), progress=False)
    submitted = bool(JobTable.of(runner.cfg["results_dir"]).read())
    if submitted:
        check_available()  # job states come from SLURM's accounting
    units = unit_states(runner, ask_slurm=submitted)
    print("\n".join(status_lines(units)))
    return 0
