"""Pre-flight checks: what a run or a sweep will need, checked before any of it is used.

The runner (and the sweep, before its first trial) calls these after the config is resolved
and its capabilities checked, and before the dataset is read, a feature extracted or a folder
created: folders writable, devices present, storage reachable with its driver, sweep options
and every point of the search space valid for the task and the data sizes. Each problem is
one line (:class:`~brainharness.errors.ConfigError`), so the command exits 2 having written nothing.

Write probes create and remove a temporary file in the nearest *existing* folder, which
catches what ``os.access`` misses: a read-only file system, or root in a folder the kernel
refuses (``/sys``). A disk that fills up later is reported when the write fails
(:func:`write_error`).
"""
from __future__ import annotations

import errno
import math
import numbers
import os
import tempfile
from pathlib import Path

from .errors import ConfigError, DataError
from .params import check_value

# SQLAlchemy driver name (``dialect+driver://``, or the dialect's default) → (module, pip package)
DRIVERS = {"psycopg2": ("psycopg2", "psycopg2-binary"), "psycopg": ("psycopg", "psycopg[binary]"),
           "pg8000": ("pg8000", "pg8000"), "mysqldb": ("MySQLdb", "mysqlclient"), "pymysql": ("pymysql", "PyMySQL"),
           "mysqlconnector": ("mysql.connector", "mysql-connector-python")}


def check_folder(path: str | os.PathLike, what: str) -> None:
    """``path`` is (or can be made) a writable folder; nothing is created or left behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise ConfigError(f"{what} {path}: {existing} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable")
    try:  # a real write: read-only mounts and kernel folders refuse even root
        fd, probe = tempfile.mkstemp(prefix=".brainharness-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot write in {existing} ({os.strerror(e.errno or 0) or e})") from None


def check_device(device: str, what: str = "device") -> None:
    """``cuda`` / ``cuda:N`` name a GPU this machine has (``auto`` and ``cpu`` always pass)."""
    if not isinstance(device, str) or not device.startswith("cuda"):
        return
    index = device[len("cuda:"):] if device.startswith("cuda:") else "0" if device == "cuda" else None
    if index is None or not index.isdigit():
        raise ConfigError(f"{what} must be auto, cpu, cuda or cuda:N, got {device!r}")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index) >= count:
        have = f"{count} GPU(s): cuda:0..cuda:{count - 1}" if count else "no usable GPU"
        raise ConfigError(f"{what} {device!r} is not available: this machine has {have} "
                          f"(use device: auto or cpu)")


def check_storage(url: str, timeout: float = 5.0) -> None:
    """An Optuna storage URL is usable: an SQLite file's folder writable; another database's
    driver importable (naming the pip package) and a connection accepted within ``timeout`` s."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"sweep.storage must be a database URL like sqlite:///path.db, got {url!r}")
    dialect = url.split("://", 1)[0].partition("+")[0]
    if dialect == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            if Path(path).is_dir():
                raise ConfigError(f"sweep.storage {url}: {path} is a folder, not a database file")
            check_folder(Path(path).parent, f"sweep.storage {url}: folder")
        return
    import importlib

    import sqlalchemy

    try:
        driver = sqlalchemy.engine.make_url(url).get_dialect().driver  # the dialect class only: no driver import
    except Exception as e:  # not a URL, or a database kind SQLAlchemy does not know
        raise ConfigError(f"sweep.storage {_safe(url)} is not a usable database URL ({e})") from None
    module, package = DRIVERS.get(driver, (None, None))
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"sweep.storage {_safe(url)} needs the {module} driver: "
                              f"pip install {package}") from None
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": max(1, int(timeout))}
                                          if dialect in ("postgresql", "mysql") else {})
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as e:  # a dialect or driver SQLAlchemy knows but this machine lacks
        raise ConfigError(f"sweep.storage {_safe(url)} needs a driver that is not installed ({e})") from None
    except Exception as e:  # unreachable, refused, bad credentials, unknown dialect: one line
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"sweep.storage {_safe(url)} cannot be reached: {first}") from None


def _safe(url: str) -> str:
    """The URL without its password (messages and logs)."""
    head, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


def write_error(e: OSError, path: str | os.PathLike | None = None) -> DataError | None:
    """One line for a write that failed on the machine's side (disk full, quota, read-only
    file system, permission), naming the path; None for other errors."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return None
    where = path or e.filename or "a file"
    return DataError(f"cannot write {where}: {os.strerror(e.errno)}")


def check_run(cfg: dict, cache_dir: str | os.PathLike) -> None:
    """What every run needs, before anything is read or created: the result and cache folders
    and the devices the config and its backbones ask for."""
    check_folder(cfg["results_dir"], "results_dir")
    check_folder(cache_dir, "cache_dir")
    check_device(cfg["device"])
    for spec in cfg["backbones"]:
        if "device" in spec:
            check_device(spec["device"], f"backbone {spec.get('label') or spec['name']}: device")


# -- sweeps -----------------------------------------------------------------------------------
def check_fraction(value) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < 1:
        raise ConfigError(f"sweep.validation_fraction must be a number in (0, 1), got {value!r}")
    return float(value)


def check_objective(objective, task_cls) -> None:
    """The objective is a score the task produces: its main score, or one its ``scores`` lists
    (a task without a ``scores`` declaration is checked when its first trial ends)."""
    if objective is None:
        return
    if not isinstance(objective, str) or not objective:
        raise ConfigError(f"sweep.objective must be a score name, got {objective!r}")
    declared = getattr(task_cls, "scores", None)
    if declared is None or objective == task_cls.main_score or objective in declared:
        return
    import difflib

    known = [task_cls.main_score, *[s for s in declared if s != task_cls.main_score]]
    close = difflib.get_close_matches(objective, known, n=1)
    raise ConfigError(f"sweep.objective {objective!r} is not a score of task {task_cls.registry_name}"
                      + (f"; did you mean {close[0]!r}?" if close else f" (scores: {', '.join(known)})"))


def check_space(space, task_cls) -> None:
    """Every entry of a sweep space: a task parameter, ``low ≤ high`` (``low > 0`` with ``log``),
    non-empty ``choices``, and every value a trial can draw valid for the task's Param."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"sweep.space must be a non-empty mapping of task parameters, got {space!r}")
    owner = f"sweep.space ({task_cls.owner()})"
    for name, spec in space.items():
        if name not in task_cls.params:
            raise ConfigError(f"sweep.space: {name!r} is not a parameter of task {task_cls.registry_name}")
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep.space.{name} must be a mapping like {{low, high, log}} or {{choices}}")
        if "choices" in spec:
            if not isinstance(spec["choices"], (list, tuple)) or not spec["choices"]:
                raise ConfigError(f"sweep.space.{name}: choices must be a non-empty list, got {spec['choices']!r}")
            values = list(spec["choices"])
        elif {"low", "high"} <= set(spec):
            lo, hi = spec["low"], spec["high"]
            for v in (lo, hi):
                if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
                    raise ConfigError(f"sweep.space.{name}: low and high must be numbers, got {v!r}")
            if lo > hi:
                raise ConfigError(f"sweep.space.{name}: low must be ≤ high, got low={lo}, high={hi}")
            if spec.get("log") and lo <= 0:
                raise ConfigError(f"sweep.space.{name}: log: true needs low > 0, got low={lo}")
            values = [lo, hi]
        else:
            raise ConfigError(f"sweep.space.{name} needs 'choices' or 'low' and 'high'")
        for value in values:
            check_value(owner, name, task_cls.params[name], value)


def space_values(space: dict, name: str) -> list:
    """The values of ``name`` a sweep can draw that bound it: its choices, or its high end."""
    spec = space.get(name)
    if not isinstance(spec, dict):
        return []
    return list(spec["choices"]) if "choices" in spec else [spec.get("high")]


def check_pca(values, n_fit: int, where: str) -> None:
    """A PCA of ``n`` components needs at least ``n`` fit rows (features are checked when read)."""
    for value in values:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > n_fit:
            raise ConfigError(f"{where}: pca = {value} components but only {n_fit} fit images "
                              f"(the data allows pca ≤ {n_fit})")


def fit_rows(n_train: int, fraction: float | None = None) -> int:
    """Rows a read-out is fitted on: the training split, less a validation part when one is carved."""
    return n_train - int(round(n_train * fraction)) if fraction else n_train
