"""``brainharness sweep CONFIG --workers N`` and ``--status``: local worker processes on one study."""
from __future__ import annotations

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
    sweep.study()
    flags = [f for f, on in (("-q", args.quiet), ("--debug", args.debug), ("--json", args.json),
                             ("--resume-anyway", args.resume_anyway)) if on]
    code = spawn(["sweep", str(args.config), *flags], args.workers)
    print(status(sweep.name, sweep.storage))
    return code
