"""A private PostgreSQL server for tests: Debian's ``postgresql`` package, a throw-away cluster in
a temporary folder on a free loopback port, stopped and removed afterwards.

Root cannot run ``postgres``: as root the cluster belongs to the ``postgres`` user the package
creates (``runuser``); otherwise to the current user. Import the fixture into a test module::

    from conftest_postgres import postgres_url  # noqa: F401
"""
from __future__ import annotations

import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import require_installable


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """``postgresql://USER@127.0.0.1:PORT/sweeps``: a fresh, empty database."""
    bin_dir = _bin()
    require_installable("PostgreSQL server", bin_dir is not None,
                        "apt-get install -y postgresql (scripts/system-deps.sh)")
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="brainharness-pg-"))
    data, port = root / "data", _free_port()
    user, as_user = getpass.getuser(), []
    if os.geteuid() == 0:
        user, as_user = "postgres", ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, user)
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    run(*ctl, "-w", "-t", "30", "-l", str(root / "log"), "-o",
        f"-k {root} -p {port} -h 127.0.0.1 -c fsync=off -c max_connections=50", "start")
    try:
        with psycopg.connect(f"postgresql://{user}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE sweeps")
        yield f"postgresql://{user}@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*as_user, *ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
