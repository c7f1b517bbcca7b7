"""``brainharness sweep CONFIG --workers N`` and ``--status``: local worker processes on one study."""
from __future__ import annotations

import time

from .study import Sweep
from .workers import spawn, status


def start_workers(cfg: dict, args) -> int:
    """``brainharness sweep CONFIG --status`` or ``--workers N``: the config checked, the storage
    reached and the study created here, once, before the N worker processes start."""
    from brainharness.errors import ConfigError
    from brainharness.runner import Runner

    if "sweep" not in cfg:
        raise ConfigError("config has no 'sweep' section")
    if args.workers < 1:
        raise ConfigError(f"--workers must be ≥ 1, got {args.workers}")
    sweep = Sweep(Runner(cfg, progress=False), resume_anyway=args.resume_anyway)
    if args.status:
        print(status(sweep.name, sweep.storage))
        return 0
    if args.launcher == "slurm":
        return _on_slurm(cfg, args, sweep)
    sweep.study()
    flags = [f for f, on in (("-q", args.quiet), ("--debug", args.debug), ("--json", args.json),
                             ("--resume-anyway", args.resume_anyway)) if on]
    code = spawn(["sweep", str(args.config), *flags], args.workers)
    print(status(sweep.name, sweep.storage))
    return code


def _on_slurm(cfg: dict, args, sweep: Sweep) -> int:
    """``sweep CONFIG --launcher slurm --workers N [--wait]``: N SLURM jobs, each a worker of the
    study (created here first, once) on its RDB storage."""
    from brainharness.cli.launch import slurm_options, wait_for
    from brainharness.errors import ConfigError
    from brainharness.slurm import ACCOUNTING_LAG_S, ACTIVE, check_available, executor, job_states, submit

    p = slurm_options(cfg, args)
    check_available()
    if sweep.storage.startswith("sqlite:///:memory:") or "://" not in sweep.storage:
        raise ConfigError(f"sweep storage {sweep.storage}: SLURM workers need a database every node reaches "
                          "(a SQLite file on a shared file system, or PostgreSQL)")
    sweep.study()
    n = args.workers
    ids = submit(executor(p, f"bh-sweep-{sweep.name}"), sweep_worker, [cfg] * n, [args.resume_anyway] * n)
    print(f"submitted {n} sweep worker(s) as job array {ids[0].split('_')[0]} on {sweep.storage}")
    if not args.wait:
        print(f"next: brainharness sweep {args.config} --status")
        return 0
    since = time.monotonic()
    states = wait_for(lambda: job_states(ids, ids if time.monotonic() - since < ACCOUNTING_LAG_S else ()),
                      lambda s: any(v in ACTIVE for v in s.values()))
    print(status(sweep.name, sweep.storage))
    bad = {j: s for j, s in states.items() if s != "COMPLETED"}
    for j, s in bad.items():
        print(f"worker job {j}: {s.lower()}")
    return 1 if bad else 0


def sweep_worker(cfg: dict, resume_anyway: bool) -> dict:
    """One SLURM job of ``sweep --launcher slurm``: a worker of the study, as ``brainharness sweep`` runs it."""
    from .study import run_sweep

    return run_sweep(cfg, progress=False, resume_anyway=resume_anyway)
