"""A real single-node SLURM cluster for the tests that submit to one (`slurm_cluster` fixture).

Debian's `slurm-wlm` (`apt-get install -y slurm-wlm`, which `.ci/run` does) runs munge,
slurmctld and slurmd as root on this machine. The fixture writes a slurm.conf with free ports
and its own temporary state, spool, pid and log paths (two test sessions may run at once),
starts munged when it is not running, then slurmctld and slurmd, waits until `sinfo` shows the
node idle, yields the environment a client needs (`SLURM_CONF`), and stops its daemons at
teardown. Where it cannot run (not Linux, not root, no slurm binaries) the tests skip with
the reason. `tests/conftest.py` imports it, so every test module can ask for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
CONF = """\
ClusterName={cluster}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
MaxArraySize=1001
NodeName=localhost CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def why_not() -> str | None:
    """Why a SLURM cluster cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"SLURM tests need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "SLURM tests need root (munged, slurmctld and slurmd run as root)"
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"SLURM tests need slurm-wlm (apt-get install -y slurm-wlm): no {', '.join(missing)}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def munge_works() -> bool:
    """True when a munge credential round-trips (munged is running)."""
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return False
    made = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if made.returncode != 0:
        return False
    read = subprocess.run(["unmunge"], input=made.stdout, capture_output=True, timeout=10)
    return read.returncode == 0


def start_munge() -> None:
    if munge_works():
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create"], check=False, capture_output=True)
    subprocess.run(["munged", "--force"], capture_output=True, timeout=30)
    for _ in range(50):
        if munge_works():
            return
        time.sleep(0.2)
    raise RuntimeError("munged did not start (munge -n | unmunge fails)")


def node_state(env: dict[str, str]) -> str:
    result = subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=10
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def queue(env: dict[str, str]) -> list[str]:
    """The cluster's jobs still in its queue (any state)."""
    listed = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env, timeout=10
    )
    return listed.stdout.split()


def kill_step_daemons(conf: Path) -> None:
    """Kill the slurmstepd processes of this cluster's jobs (their environment names
    ``conf``) that outlived its slurmd: they would wait for it forever."""
    mark = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "slurmstepd":
                continue
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), 9)
        except (OSError, ProcessLookupError):
            continue


@contextmanager
def running_cluster(root: Path) -> Iterator[dict[str, str]]:
    """Start a single-node cluster whose files live in ``root`` (2 CPUs at most); yield the
    client environment (``os.environ`` plus ``SLURM_CONF``); stop it on exit. RuntimeError
    with the daemons' log tails when it does not come up in a minute."""
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        CONF.format(
            cluster=f"test{os.getpid()}",
            ctld_port=free_port(),
            d_port=free_port(),
            root=root,
            cpus=min(os.cpu_count() or 1, 2),
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    start_munge()  # left running at the end: another session's cluster may use it
    daemons = [
        subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while node_state(env) != "idle":
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                logs = "".join(
                    (root / f"{name}.log").read_text()[-1500:]
                    for name in ("slurmctld", "slurmd")
                    if (root / f"{name}.log").exists()
                )
                raise RuntimeError(f"SLURM did not come up (node {node_state(env)!r}):\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        cancel = ["scancel", "--full", "--quiet", "-u", "root"]  # this cluster's jobs only
        subprocess.run(cancel, env=env, timeout=30, check=False)
        deadline = time.monotonic() + 30  # jobs finish their steps, or their slurmstepd
        while time.monotonic() < deadline and queue(env):  # waits for slurmd forever
            time.sleep(0.5)
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        kill_step_daemons(conf)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running single-node cluster for the session; yields the client environment
    (``os.environ`` plus ``SLURM_CONF``), which subprocesses and submitit need. Skips with
    the reason where SLURM cannot run."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env
