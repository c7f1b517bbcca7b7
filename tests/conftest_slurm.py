"""A private single-node SLURM cluster for tests, from Debian's ``slurm-wlm``, ``slurmdbd``,
``munge`` and ``mariadb-server``: a MariaDB server on a socket in a temporary folder, slurmdbd
(accounting, which submitit reads job states from through ``sacct``), slurmctld and slurmd on free
loopback ports, all run by root in the foreground and stopped afterwards. Authentication is the
machine's munged (started as the ``munge`` user with ``/run/munge`` made by hand when it is not
running; stopped afterwards if started here). ``SLURM_CONF`` points the commands (sbatch, sacct,
squeue, scancel) and submitit at the cluster while the fixture lives.

``SchedulerParameters=batch_sched_delay=0`` starts jobs within about a second, ``KillWait=2`` keeps
cancellations short. Import the fixture into a test module::

    from conftest_slurm import slurm_cluster  # noqa: F401

Outside pytest: ``python tests/conftest_slurm.py`` starts one, prints ``export SLURM_CONF=…`` and
stops it on Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db")
HOW = "apt-get install -y slurm-wlm slurmdbd munge mariadb-server (scripts/system-deps.sh)"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def installed() -> bool:
    return all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS)


def _wait(check, what: str, log: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"test SLURM cluster: {what} did not come up in {timeout:.0f} s; {log}:\n{tail}")


def _ok(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


class SlurmCluster:
    """``with SlurmCluster() as c:`` — ``c.env`` holds ``SLURM_CONF`` (and the cluster's name)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="brainharness-slurm-"))
        self.procs: list[subprocess.Popen] = []
        self.started_munge = False
        self.seconds_to_start = None
        self.env = {"SLURM_CONF": str(self.root / "slurm.conf")}

    def _spawn(self, name: str, *cmd: str, env: dict | None = None) -> Path:
        log = self.root / f"{name}.log"
        self.procs.append(subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                           env={**os.environ, **self.env, **(env or {})}))
        return log

    def _munge(self) -> None:
        if _ok("sh", "-c", "munge -n | unmunge"):
            return  # the machine's munged runs
        run = Path("/run/munge")
        run.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        self.started_munge = True
        _wait(lambda: _ok("sh", "-c", "munge -n | unmunge"), "munged", Path("/var/log/munge/munged.log"))

    def start(self) -> "SlurmCluster":
        t0 = time.perf_counter()
        r, host = self.root, socket.gethostname()
        ctld, slurmd, dbd = _free_ports(3)
        self._munge()
        sock = r / "mysql.sock"
        subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={r / 'db'}", "--skip-test-db",
                        "--auth-root-authentication-method=socket"], check=True, capture_output=True)
        log = self._spawn("mariadb", "mariadbd", "--user=root", f"--datadir={r / 'db'}", f"--socket={sock}",
                          "--skip-networking", f"--pid-file={r / 'mysql.pid'}", "--innodb-buffer-pool-size=64M")
        _wait(sock.exists, "MariaDB", log)
        (r / "slurmdbd.conf").write_text(
            f"AuthType=auth/munge\nDbdHost=localhost\nDbdPort={dbd}\nSlurmUser=root\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=localhost\nStorageUser=root\n"
            f"StorageLoc=slurm_acct_db\nPidFile={r / 'slurmdbd.pid'}\n")
        (r / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a config others can read
        cpus = os.cpu_count() or 1
        (r / "slurm.conf").write_text("\n".join([
            "ClusterName=bhtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ctld}", f"SlurmdPort={slurmd}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}", f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost", f"AccountingStoragePort={dbd}", "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill", "SchedulerParameters=batch_sched_delay=0", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "KillWait=2", "ReturnToService=2", "MpiDefault=none",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        # slurmdbd reads slurmdbd.conf beside $SLURM_CONF and finds MariaDB's socket through MYSQL_UNIX_PORT
        log = self._spawn("slurmdbd", "slurmdbd", "-D", env={"MYSQL_UNIX_PORT": str(sock)})
        _wait(lambda: _ok("env", f"SLURM_CONF={self.env['SLURM_CONF']}", "sacctmgr", "-n", "show", "cluster"),
              "slurmdbd", log)
        log = self._spawn("slurmctld", "slurmctld", "-D", "-c", "-i")
        self._spawn("slurmd", "slurmd", "-D")
        _wait(lambda: b"idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                                 env={**os.environ, **self.env}).stdout, "slurmctld/slurmd", log)
        self.seconds_to_start = time.perf_counter() - t0
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd, slurmctld, slurmdbd, then MariaDB
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.started_munge:
            pid = Path("/run/munge/munged.pid")
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


try:
    import pytest
except ImportError:  # run as a script outside the test environment
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def slurm_cluster():
        """A running test cluster; ``SLURM_CONF`` set in this process (and its children) meanwhile."""
        from conftest import require_installable

        require_installable("SLURM test cluster (slurm-wlm, slurmdbd, munge, mariadb-server)",
                            installed() and os.geteuid() == 0, HOW + "; the daemons run as root")
        with SlurmCluster() as cluster:
            old = os.environ.get("SLURM_CONF")
            os.environ.update(cluster.env)
            try:
                yield cluster
            finally:
                if old is None:
                    os.environ.pop("SLURM_CONF", None)
                else:
                    os.environ["SLURM_CONF"] = old


def _stop_on(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Ctrl-C, or SIGINT/SIGTERM from another process (a background job ignores SIGINT unless told)
    signal.signal(signal.SIGINT, _stop_on)
    signal.signal(signal.SIGTERM, _stop_on)
    with SlurmCluster() as c:
        print(f"cluster up in {c.seconds_to_start:.1f} s\nexport SLURM_CONF={c.env['SLURM_CONF']}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    sys.exit(0)
