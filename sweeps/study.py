"""Optuna studies over ridge α ranges and any task hyper-parameter.

The objective is the task's main score on a validation part carved from the training split
(the test split is never handed to a trial); when the study has its trials, the best
parameters are scored once on the test split. Storage is an SQLite file beside the results
by default — resumable: re-running the same sweep continues the study — or any Optuna RDB
URL (PostgreSQL) so that many workers on many machines share one study. Every trial is a
W&B run in the study's group and writes a normal (``evaluated_on: validation``) result record.

Config section::

    sweep:
      study: my-study              # Optuna study name (default: <experiment>-sweep)
      storage: null                # default sqlite:///<results_dir>/optuna.db
      backbone: pixels             # a backbone label of the config (default: the first)
      task: encoding               # a task label of the config (default: the first)
      subject: null                # default: the dataset's first subject
      n_trials: 20                 # total completed trials wanted (resume counts old ones)
      validation_fraction: 0.2
      seed: 0                      # sampler seed
      sampler: tpe                 # tpe (default) | grid: every combination of the `choices` once
      report: null                 # optional "module:function" called at the end (see Sweep.run)
      objective: null              # the validation score maximised (default: the task's main score),
                                   # e.g. "stage2 brain→text" for decoding
      heartbeat_interval: 60       # s between a running trial's heartbeats (many workers: see .workers)
      grace_period: 180            # s without a heartbeat after which a trial's worker counts as dead
      space:                       # default: the task's own search_space
        alpha_min: {low: 1.0e-3, high: 1.0e+2, log: true}
        pca: {choices: [null, 64, 256]}
        n_components: {low: 8, high: 64, step: 8}   # integers when low/high/step are ints

``sampler: grid`` runs each point of the grid spanned by the ``choices`` specs exactly once
(e.g. ``lam: {choices: [0.0, 1.0e-3, 1.0e-2, 0.1, 1.0]}``); ``n_trials`` defaults to the grid
size. It is resumable: a grid point counts as done only when a trial of it is *complete*, so
after an interruption the next run evaluates exactly the points without a complete trial —
those never started, those whose trial failed or was interrupted, and (last) those whose
trial was left ``RUNNING`` by a killed worker.

Any number of workers may run one study at once (``brainharness sweep CONFIG --workers N``, or
the same command on several machines with a PostgreSQL storage): ``n_trials`` counts for the
study, a dead worker's trial is retried, and the best is scored on test once (:mod:`.workers`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from brainharness.config import spec_label
from brainharness.errors import ConfigError, HarnessError
from brainharness.preflight import check_fraction, check_objective, check_pca, check_space, check_storage, \
    fit_rows, space_values
from brainharness.runner import Runner, UnitOutcome

from .workers import WORKER, StudyLock, run_trials, with_retry

log = logging.getLogger(__name__)

SWEEP_KEYS = {"study", "storage", "backbone", "task", "subject", "n_trials", "validation_fraction", "seed", "space",
              "sampler", "report", "objective", "heartbeat_interval", "grace_period"}
SAMPLERS = ("tpe", "grid")


def _pick(specs: list[dict], label: str | None, kind: str) -> dict:
    if label is None:
        return specs[0]
    for s in specs:
        if spec_label(s) == label:
            return s
    raise ConfigError(f"sweep.{kind} {label!r} is not a {kind} label of this config")


def suggest(trial, space: dict) -> dict:
    """Draw one value per parameter from an Optuna-style spec."""
    params = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep.space.{name} must be a mapping like {{low, high, log}} or {{choices}}")
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif {"low", "high"} <= set(spec):
            lo, hi = spec["low"], spec["high"]
            if lo > hi:
                raise ConfigError(f"sweep.space.{name}: low must be ≤ high, got {lo}, {hi}")
            if all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, spec.get("step", 1))):
                params[name] = trial.suggest_int(name, lo, hi, step=spec.get("step", 1), log=spec.get("log", False))
            else:
                params[name] = trial.suggest_float(name, float(lo), float(hi), log=spec.get("log", False))
        else:
            raise ConfigError(f"sweep.space.{name} needs 'choices' or 'low' and 'high'")
    return params


def grid_points(space: dict) -> list[dict]:
    """Every combination of the ``choices`` of ``space`` (each spec must be ``{choices: [...]}``)."""
    import itertools

    values = {}
    for name, spec in space.items():
        if not isinstance(spec, dict) or "choices" not in spec or set(spec) != {"choices"}:
            raise ConfigError(f"sweep.space.{name}: sampler grid needs {{choices: [...]}} for every parameter")
        choices = list(spec["choices"])
        if not choices or not all(v is None or isinstance(v, (str, int, float, bool)) for v in choices):
            raise ConfigError(f"sweep.space.{name}: grid choices must be a non-empty list of numbers, strings, "
                              f"booleans or null, got {choices!r}")
        values[name] = choices
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def _resumable_grid_sampler(space: dict, seed):
    """Optuna's GridSampler, except that only *complete* trials mark a grid point as done.

    (Optuna's own counts every finished trial — failed ones too — and assigns grid points by
    trial number, so an interrupted study would skip the interrupted point when resumed.)
    """
    import optuna
    from optuna.trial import TrialState

    class ResumableGridSampler(optuna.samplers.GridSampler):
        def _open(self, study, skip_running: bool) -> list[int]:
            done, running = set(), set()
            for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
                if "grid_id" in t.system_attrs and self._same_search_space(t.system_attrs["search_space"]):
                    if t.state == TrialState.COMPLETE:
                        done.add(t.system_attrs["grid_id"])
                    elif t.state == TrialState.RUNNING:
                        running.add(t.system_attrs["grid_id"])
            todo = [g for g in range(len(self._all_grids)) if g not in done]
            fresh = [g for g in todo if g not in running] if skip_running else todo
            return fresh or todo

        def before_trial(self, study, trial) -> None:
            if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
                return  # re-queued by a retry callback or enqueued: keeps its point
            todo = self._open(study, skip_running=True) or list(range(len(self._all_grids)))
            grid_id = int(self._rng.rng.choice(todo))
            study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
            study._storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)

        def after_trial(self, study, trial, state, values) -> None:
            todo = self._open(study, skip_running=False)  # this trial is still RUNNING here
            grid_id = study._storage.get_trial_system_attrs(trial._trial_id).get("grid_id")
            if not todo or todo == [grid_id]:
                study.stop()

        def is_exhausted(self, study) -> bool:
            return not self._open(study, skip_running=False)

    grid_points(space)  # validates the specs
    return ResumableGridSampler({k: list(spec["choices"]) for k, spec in space.items()}, seed=seed)


class Sweep:
    def __init__(self, runner: Runner, resume_anyway: bool = False):
        """Every option and point of the space is checked here, before any trial (the storage
        is reached, the data sizes asked); ``resume_anyway``: see :meth:`study`."""
        self.runner = runner
        self.resume_anyway = resume_anyway
        cfg = runner.cfg
        sw = dict(cfg.get("sweep") or {})
        unknown = set(sw) - SWEEP_KEYS
        if unknown:
            raise ConfigError(f"unknown sweep key {sorted(unknown)[0]!r} (known: {', '.join(sorted(SWEEP_KEYS))})")
        self.name = sw.get("study") or f"{cfg['experiment']}-sweep"
        self.storage = sw.get("storage") or f"sqlite:///{Path(cfg['results_dir']) / 'optuna.db'}"
        self.bspec = _pick(cfg["backbones"], sw.get("backbone"), "backbone")
        self.tspec = _pick(cfg["tasks"], sw.get("task"), "task")
        self.subject = sw.get("subject")
        self.fraction = check_fraction(sw.get("validation_fraction", 0.2))
        self.objective_name = sw.get("objective")
        self.seed = sw.get("seed", cfg["seed"])
        self.sampler = sw.get("sampler") or "tpe"
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sweep.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        task_cls = type(runner.task(self.tspec))
        check_objective(self.objective_name, task_cls)
        self.space = sw.get("space") or task_cls.search_space
        check_space(self.space, task_cls)  # the values a trial can draw must pass the task's Params
        self.grid = grid_points(self.space) if self.sampler == "grid" else None
        self.n_trials = sw.get("n_trials", len(self.grid) if self.grid else 20)
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"sweep.n_trials must be a positive integer, got {self.n_trials!r}")
        self.report = _report_hook(sw.get("report"))
        self.heartbeat_interval, self.grace_period = (_seconds(sw, k, d) for k, d in
                                                      (("heartbeat_interval", 60), ("grace_period", 180)))
        check_storage(self.storage)
        self.lock = StudyLock(self.storage, self.name)
        self.check_data(load=False)
        self.memo: dict = {}  # shared decompositions: k α-trials cost about one fit
        self.on_unit = None  # hears each trial's and the best-on-test unit's outcome (run's on_unit)

    def study(self):
        if self.storage.startswith("sqlite:///"):
            Path(self.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        with self.lock:  # workers started together on a fresh database: one creates the schema and study
            return with_retry(self._open_study, f"sweep study {self.name}: creating")

    def _open_study(self):
        import warnings

        import optuna
        from optuna.storages import RDBStorage

        # Heartbeats mark trials of a killed worker as failed, and the callback re-queues them.
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kw = ({"heartbeat_stale_trial_callback": retry(max_retry=1)} if retry else
                  {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)})
            storage = RDBStorage(self.storage, heartbeat_interval=self.heartbeat_interval,
                                 grace_period=self.grace_period, **kw)
        sampler = (_resumable_grid_sampler(self.space, self.seed) if self.grid is not None
                   else optuna.samplers.TPESampler(seed=self.seed))
        study = optuna.create_study(study_name=self.name, storage=storage, load_if_exists=True,
                                    direction="maximize", sampler=sampler)
        self._check_space_unchanged(study)
        return study

    def _check_space_unchanged(self, study) -> None:
        """The study's trials were drawn from this search space (kept in its user attrs), or
        ``resume_anyway``: the old trials are kept and new ones drawn from the new space, which
        Optuna allows only while each parameter keeps its kind, log scale and choices."""
        space = json.loads(json.dumps(self.space, default=str))  # as stored: lists, no tuples
        old = study.user_attrs.get("search_space")
        if old is not None and old != space and study.trials:
            changed = sorted(k for k in {*old, *space} if old.get(k) != space.get(k))
            how = (f"sweep study {self.name!r} in {self.storage} holds {len(study.trials)} trial(s) of a different "
                   f"search space (changed: {', '.join(changed)})")
            if not self.resume_anyway:
                raise ConfigError(f"{how}: use a new sweep.study name, or --resume-anyway to keep its trials "
                                  f"and sample the new space")
            clash = [k for k in changed if k in old and k in space and not _compatible(old[k], space[k])]
            if clash:
                raise ConfigError(f"{how}: {clash[0]!r} changed kind, log scale or choices, which Optuna cannot "
                                  f"mix in one study even with --resume-anyway: use a new sweep.study name")
        if old != space:
            study.set_user_attr("search_space", space)

    def check_data(self, load: bool = True) -> None:
        """The sweep's subject exists and every PCA size a trial can draw fits its fit rows;
        with ``load`` the data is read when its loader cannot tell its sizes (before any feature)."""
        if load and self.subject is not None:
            self.runner.dataset.subject(self.subject)  # raises naming the subjects it has
        elif load and self.runner.n_train() is None:
            self.runner.dataset  # noqa: B018 -- only the loaded data can tell its sizes
        n = self.runner.n_train()
        if n is not None:
            pcas = space_values(self.space, "pca") if "pca" in self.space else [self.runner.task(self.tspec).p.get("pca")]
            check_pca(pcas, fit_rows(n, self.fraction), f"sweep (validation_fraction {self.fraction})")

    def objective(self, trial) -> float:
        params = suggest(trial, self.space)
        subject = self.subject or self.runner.subjects()[0]
        record = self.runner.run_unit(
            subject, self.bspec, self.tspec, evaluated_on="validation", overrides=params,
            validation_fraction=self.fraction, experiment=f"{self.name}-trial{trial.number:04d}", memo=self.memo,
            group=self.name, extra={"sweep": {"study": self.name, "trial": trial.number, "params": params}})
        if self.on_unit is not None:
            self.on_unit(UnitOutcome(record["key"], "ran", record, Path(record["_path"])))
        name = self.objective_name or record["main_score"]
        value = record["scores"].get(name)
        if value is None:
            raise ConfigError(f"task produced no {name!r} score on the validation part (has: "
                              f"{', '.join(k for k, v in record['scores'].items() if isinstance(v, (int, float)))})")
        return float(value)

    def run(self, progress: bool = True, on_unit=None) -> dict:
        """Run the remaining trials, then score the best parameters once on the test split;
        ``on_unit`` hears each of those units' :class:`UnitOutcome` as it ends."""
        import optuna

        self.on_unit = on_unit
        if not progress:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.check_data()
        study = self.study()
        run_trials(self, study)  # until the study (all workers together) has n_trials
        with self.lock:  # the first worker to get here scores the best on test; the others find its record
            return self._best_on_test(study, on_unit)

    def _best_on_test(self, study, on_unit) -> dict:
        import optuna

        best = study.best_trial
        subject = self.subject or self.runner.subjects()[0]
        info = {"study": self.name, "storage": self.storage, "objective": self.objective_name or "main score",
                "best_trial": best.number,
                "best_validation_score": best.value, "best_params": best.params,
                "n_complete_trials": sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)}
        store = self.runner.store
        test_key = self.runner.key(subject, self.bspec, self.tspec, f"{self.name}-best", overrides=best.params)
        # its identity holds the best parameters: found only if they are unchanged; a failed or broken
        # record (a warning names the file) counts as missing
        existing = None if store.should_run(test_key, "only-missing") else store.load(test_key)
        if existing and existing.get("status") == "complete" and existing.get("sweep", {}).get("best_params") == best.params:
            record = dict(existing, _path=str(store.path_for(test_key)))  # the test split is scored once
            status = "up to date"
        else:
            record = self.runner.run_unit(subject, self.bspec, self.tspec, evaluated_on="test", overrides=best.params,
                                          experiment=f"{self.name}-best", memo=None, group=self.name,
                                          extra={"sweep": info})
            status = "ran"
            self._drop_superseded(Path(record["_path"]), test_key)
            study.set_user_attr("best_on_test", {"trial": best.number, "worker": WORKER})
        if on_unit is not None:
            on_unit(UnitOutcome(test_key, status, record, Path(record["_path"])))
        name = self.objective_name or record["main_score"]
        summary = {**info, "objective": name, "test_score": record["scores"].get(name),
                   "main_score": record["main_score"], "record": record.get("_path")}
        if self.report is not None:
            summary["report"] = self.report(self, summary)
        return summary


    def _drop_superseded(self, keep: Path, key: dict) -> None:
        """Remove this study's earlier best-on-test record (scored with parameters that are no
        longer the best) beside ``keep``: a study has one test score, its current best's."""
        kept_sidecar = self.runner.store.sidecar_named_by(keep)
        for path in keep.parent.glob("*.json"):
            if path == keep or path.name.startswith(keep.stem + "."):  # the new record and what it keeps beside it
                continue
            try:
                old = self.runner.store.read(path)
            except HarnessError:
                continue  # not a readable record: `brainharness results check` reports it
            if old.get("key", {}).get("experiment") == key["experiment"] and old.get("evaluated_on") == "test" \
                    and (old.get("sweep") or {}).get("study") == self.name:
                if old.get("sidecar") and old["sidecar"] != kept_sidecar:
                    (path.parent / old["sidecar"]).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                log.info("removed %s: superseded by the study's new best %s", path, keep.name)


def _report_hook(target):
    """``sweep.report: "module:function"`` → the function, called as ``fn(sweep, summary)`` after
    the best trial's test record exists; what it returns is the summary's ``report``."""
    if target is None:
        return None
    from brainharness.registry import _import_target

    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(f"sweep.report must be 'module:function', got {target!r}")
    try:
        fn = _import_target(target)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"sweep.report {target!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ConfigError(f"sweep.report {target!r} is not callable")
    return fn


def run_sweep(config, progress: bool = True, on_unit=None, resume_anyway: bool = False) -> dict:
    """Run the ``sweep`` section of a config (YAML path or dict)."""
    runner = Runner(config, progress=progress)
    if "sweep" not in runner.cfg:
        raise ConfigError("config has no 'sweep' section")
    return Sweep(runner, resume_anyway=resume_anyway).run(progress=progress, on_unit=on_unit)


def _seconds(sw: dict, key: str, default: int) -> int:
    value = sw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"sweep.{key} must be a whole number of seconds ≥ 1, got {value!r}")
    return value


def _compatible(old: dict, new: dict) -> bool:
    """Whether Optuna accepts ``new`` for a parameter drawn from ``old`` in the same study."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    if "choices" in old or "choices" in new:
        return old.get("choices") == new.get("choices")
    ints = [all(isinstance(v, int) and not isinstance(v, bool) for v in (s["low"], s["high"], s.get("step", 1)))
            for s in (old, new)]
    return ints[0] == ints[1] and bool(old.get("log")) == bool(new.get("log"))
