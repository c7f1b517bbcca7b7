"""Many workers on one Optuna study: a lock in the storage, a global trial count, dead workers' trials.

Every worker of a study (local processes from ``brainharness sweep --workers N``, or any number of
``brainharness sweep`` commands on other machines sharing an RDB storage) runs :func:`run_trials`:

* **One lock per study, held by the storage.** PostgreSQL: a session advisory lock
  (``pg_advisory_lock``) keyed by the study name; SQLite: ``flock`` on the database file (independent
  of SQLite's own ``fcntl`` locks; the descriptor is never closed, which would drop those). The kernel
  or the server drops it when its holder dies, so a killed worker never leaves it held. Under it a worker creates the schema and the study (so workers started together on a fresh
  database do not race in ``CREATE TABLE``), claims its next trial, and scores the best on test.
* **``n_trials`` is global.** A trial is claimed only while ``complete + running + waiting <
  n_trials`` (grid: complete *points*), counted under the lock, so N workers asked for 20 run 20.
* **Dead workers' trials are failed and re-queued** (Optuna's ``RetryFailedTrialCallback``) before
  every claim and while waiting: by Optuna's heartbeat (``heartbeat_interval`` / ``grace_period``),
  at once when the trial's worker ran on this host and its process is gone, and when a trial never
  named its worker within ``grace_period`` (left by a run without heartbeats).
* **The test split is scored once**: by the first worker that finds the study complete, under
  the lock; the others find its record (same best parameters) and report it ``up to date``.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time

log = logging.getLogger(__name__)

WORKER = f"{socket.gethostname()}:{os.getpid()}"  # a trial's user attr ``worker``: who runs it


class StudyLock:
    """A mutual exclusion between the workers of one study, kept by its storage; re-entrant-safe
    release (the claim releases it from inside the objective, the ``with`` again at its end)."""

    def __init__(self, storage: str, study: str):
        self.url, self.study, self._held, self._fd = storage, study, None, None
        self.key = int.from_bytes(hashlib.sha256(f"brainharness-sweep:{study}".encode()).digest()[:8], "big",
                                  signed=True)

    def acquire(self) -> None:
        if self.url.startswith("sqlite:///") and self.url != "sqlite:///:memory:":
            import fcntl

            if self._fd is None:  # an empty file is an empty SQLite database
                self._fd = os.open(self.url[len("sqlite:///"):], os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._held = ("file", self._fd)
        elif self.url.split("://", 1)[0].partition("+")[0] == "postgresql":
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            conn = engine.connect()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            conn.commit()
            self._held = ("pg", (engine, conn))
        else:  # an in-memory study has one worker; other databases: no lock (said once)
            if not self.url.startswith("sqlite"):
                log.warning("sweep storage %s: no cross-worker lock for this database (PostgreSQL and SQLite "
                            "have one): run a single worker", self.url.split("://", 1)[0])
            self._held = ("none", None)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        kind, obj = held
        if kind == "file":
            import fcntl

            fcntl.flock(obj, fcntl.LOCK_UN)
        elif kind == "pg":
            import sqlalchemy

            engine, conn = obj
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                conn.commit()
            finally:
                conn.close()  # the session's end drops the lock in any case
                engine.dispose()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def with_retry(fn, what: str, tries: int = 8):
    """``fn()``, again after a short pause when the database reports a creation race (another
    worker creating the same table, type or study at the same moment)."""
    import sqlalchemy.exc

    for attempt in range(tries):
        try:
            return fn()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            if attempt == tries - 1:
                raise
            log.info("%s: %s; retrying", what, str(e).splitlines()[0])
            time.sleep(0.05 * (attempt + 1) + (os.getpid() % 7) * 0.01)


def _alive(worker: str | None) -> bool | None:
    """Whether a trial's worker still runs: known only for this host's processes (None elsewhere)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def reap(study, grace_period: float) -> list[int]:
    """Fail (and re-queue through the storage's retry callback) the RUNNING trials whose worker is
    dead: heartbeat stale, process gone on this host, or no worker named after ``grace_period``."""
    import copy
    import warnings

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats (re-queues through the callback itself)
    storage, failed = study._storage, []
    now = datetime.datetime.now()
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        dead = _alive(worker) is False if worker else \
            t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace_period
        if not dead or worker == WORKER:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile
        log.warning("trial %d of study %s: its worker %s is gone; failed and re-queued", t.number,
                    study.study_name, worker or "(unnamed)")
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return failed


def counts(study, grid: list | None) -> dict:
    """Trials by state; ``done``: complete trials (grid: grid points with a complete trial)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    by["done"] = sum(any(t.params == p for t in complete) for p in grid) if grid is not None else len(complete)
    return by


def run_trials(sweep, study) -> None:
    """Claim and run trials until the study has its ``n_trials`` (see the module's doc)."""
    target = min(sweep.n_trials, len(sweep.grid)) if sweep.grid is not None else sweep.n_trials

    mine: dict = {}

    def objective(trial):
        trial.set_user_attr("worker", WORKER)  # before the lock goes: reapers see a live owner
        sweep.lock.release()
        mine["trial"] = trial
        value = mine["value"] = sweep.objective(trial)
        return value

    said = False
    while True:
        with sweep.lock:
            reap(study, sweep.grace_period)
            n = counts(study, sweep.grid)
            if n["done"] >= target:
                return
            if n["done"] + n["RUNNING"] + n["WAITING"] < target or n["WAITING"]:
                # a WAITING (re-queued) trial is taken first by ask(): the count does not grow
                mine.clear()
                try:
                    study.optimize(objective, n_trials=1, show_progress_bar=False, catch=())
                except Exception:
                    if not _failed_by_another(study, mine, sweep.grace_period):
                        raise
                continue
        if not said:
            log.warning("study %s: %d trial(s) running in other workers; waiting for them (a dead worker's "
                        "trial is retried after grace_period %s s)", study.study_name, n["RUNNING"],
                        sweep.grace_period)
            said = True
        time.sleep(min(2.0, max(0.2, sweep.heartbeat_interval / 2)))


def _failed_by_another(study, mine: dict, grace_period: int) -> bool:
    """Whether the trial just run ended (its objective returned) but another worker had failed it
    meanwhile, its heartbeat having stalled past grace_period (an overloaded machine): its result
    is dropped and its re-queued copy runs instead."""
    from optuna.trial import TrialState

    trial = mine.get("trial")
    if "value" not in mine or trial is None:
        return False
    if study._storage.get_trial(trial._trial_id).state != TrialState.FAIL:
        return False
    log.warning("trial %d of study %s was failed by another worker (no heartbeat for grace_period %s s); "
                "its re-queued copy runs instead", trial.number, study.study_name, grace_period)
    return True


def status(name: str, storage: str) -> str:
    """Lines for ``brainharness sweep CONFIG --status``: the study's trials by state, its best trial
    and whether it was scored on test (nothing is created or run)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage.startswith("sqlite:///") and not os.path.exists(storage[len("sqlite:///"):]):
        return f"study {name}: not started in {storage}"  # (opening it would create the file)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return f"study {name}: not started in {storage}"
    n = counts(study, None)
    lines = [f"study {name} ({storage}): " + ", ".join(
        f"{s.lower()} {n[s]}" for s in ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED"))]
    running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    lines += [f"  trial {t.number} running in {t.user_attrs.get('worker', '?')}" for t in running]
    if n["COMPLETE"]:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, validation {best.value:.4g}, {best.params}")
    scored = study.user_attrs.get("best_on_test")
    lines.append(f"test: scored once, trial {scored['trial']} by {scored['worker']}" if scored else "test: not scored yet")
    return "\n".join(lines)


def spawn(argv: list[str], n: int) -> int:
    """Run ``n`` local worker processes of ``brainharness <argv>``; the worst exit status."""
    procs = [subprocess.Popen([sys.executable, "-m", "brainharness.cli", *argv]) for _ in range(n)]
    codes = []
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(10)
        raise
    return 0 if not any(codes) else 2 if 2 in codes else 1


