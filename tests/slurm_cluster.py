"""A real SLURM cluster of several nodes on one machine, with accounting, as a pytest fixture.

`slurm_cluster` installs Debian's slurm-wlm, munge, slurmdbd and mariadb-server when they are
missing (apt-get; the test is skipped with the reason if that cannot work), then starts munged,
mariadbd, slurmdbd and slurmctld on the host and one slurmd per node (NODES: n9, n10, n11),
each node in its own network namespace with its own address, hostname and /etc/hosts
(tests/netns.py), all on a bridge that exists only for the session. Node names sort otherwise
than SLURM orders them ("n10" < "n9" as strings), as on real clusters. Each node is declared
with CPUS_PER_NODE CPUs, more than the machine has (`SlurmdParameters=config_overrides`), so
SLURM runs jobs side by side as on real nodes, and with GPUS_PER_NODE fake GPUs (GRES on
character devices made with mknod, `AutoDetect=off`), so SLURM sets CUDA_VISIBLE_DEVICES,
SLURM_GPUS_ON_NODE and friends exactly as on GPU nodes (no CUDA here: the trainers see no GPU
and run CPU workers). The temporary folder is the one file system every node sees, as a shared
file system is.

Every config, state, spool, socket, pid and log file is in a fresh pytest temporary folder and
on free ports, so nothing under /etc or /run is used (but /run/denoisebench-netns, tests/netns.py)
and a second session on the same machine does not collide. The fixture waits for every node to
be idle, points `SLURM_CONF` in `os.environ` at its slurm.conf for the session (submitit and any
subprocess then reach it through sbatch/squeue/sacct/scontrol), and at the end stops exactly the
daemons it started and removes its namespaces and bridge. Daemons and namespaces left by an
earlier session that died (its pytest process is gone) are found through markers and removed.

To try a change by hand (as root): `python tests/slurm_cluster.py` starts the cluster, prints the
SLURM_CONF to export and the commands to reach a node, and stops it on Ctrl-C.

Register it from tests/conftest.py with `pytest_plugins = ["slurm_cluster"]`. Set
`DENOISEBENCH_REQUIRE_SLURM=1` to turn "cannot install/run SLURM here" skips into failures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns
import pytest
from helpers import apt_install, skip_or_fail

APT_PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
# Every program the fixture or the tests call; any one missing triggers the apt-get install.
REQUIRED_PROGRAMS = (
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "sacct",
    "sacctmgr",
    "scontrol",
    "scancel",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "munged",
    "mungekey",
    "mariadbd",
    "mariadb-install-db",
)
# Daemons live in /usr/sbin, which a non-login shell's PATH may lack.
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
)
CLUSTER_NAME = "denoisebench"
PARTITION = "debug"
NODES = ("n9", "n10", "n11")
"""The nodes, in SLURM's order (n[9-11]); c10d's rendezvous would sort them n10, n11, n9."""
CPUS_PER_NODE = 8
"""Declared per node, more than the machine has: SLURM then runs jobs side by side."""
GPUS_PER_NODE = 4
"""Fake GPUs (GRES) per node: SLURM hands them out and sets the variables, nothing computes."""
# Markers put into each daemon's environment: they let a later session find daemons whose
# owning pytest process died (kill -9, a cut-off CI run) without touching anyone else's.
OWNER_VAR = "DENOISEBENCH_SLURM_FIXTURE_OWNER"
ROOT_VAR = "DENOISEBENCH_SLURM_FIXTURE_ROOT"
REQUIRE_VAR = "DENOISEBENCH_REQUIRE_SLURM"
# A Unix socket path longer than this cannot be bound (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
# Variables that would silently change what sbatch/srun do (sbatch reads SBATCH_* as options;
# SLURM_* from an enclosing allocation would point srun at a foreign job).
_FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")


# The running pytest's config, set by the fixture: progress lines then bypass output capture.
_pytest_config: pytest.Config | None = None


def _progress(message: str) -> None:
    """Print a progress line that shows at once, even while pytest captures output."""
    plugins = _pytest_config.pluginmanager if _pytest_config else None
    capture = plugins.getplugin("capturemanager") if plugins else None
    reporter = plugins.getplugin("terminalreporter") if plugins else None
    line = f"[slurm_cluster] {message}"
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(line)  # starts a fresh line after the progress dots
        else:
            print(line, file=sys.stderr, flush=True)


def _skip_or_fail(reason: str) -> None:
    """Skip with the reason, or fail when the environment says SLURM must be there."""
    skip_or_fail(reason, REQUIRE_VAR)


def _which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text[-lines:])


def ensure_installed() -> None:
    """Install the SLURM, munge and MariaDB packages with apt-get if any program is missing."""
    missing = [p for p in REQUIRED_PROGRAMS if _which(p) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        _skip_or_fail(f"SLURM programs missing ({', '.join(missing)}) and not root to install")
    apt = _which("apt-get")
    if apt is None:
        _skip_or_fail(f"SLURM programs missing ({', '.join(missing)}) and no apt-get")
    _progress(f"missing {', '.join(missing)}: apt-get install {' '.join(APT_PACKAGES)}")
    started = time.monotonic()
    apt_install(apt, APT_PACKAGES, REQUIRE_VAR, install_timeout=900, progress=_progress)
    still_missing = [p for p in REQUIRED_PROGRAMS if _which(p) is None]
    if still_missing:
        _skip_or_fail(f"after apt-get install still missing: {', '.join(still_missing)}")
    _progress(f"installed in {time.monotonic() - started:.1f} s")


def _proc_start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid it names a process uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from the closing paren.
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_token(pid: int) -> str:
    return f"{pid}:{_proc_start_ticks(pid)}"


def _owner_alive(token: str) -> bool:
    pid, _, ticks = token.partition(":")
    # A killed pytest can linger as a zombie until its parent reaps it: that counts as gone.
    return pid.isdigit() and _proc_start_ticks(int(pid)) == ticks and not _is_zombie(int(pid))


def _marked_processes() -> dict[int, dict[str, str]]:
    """Pids of processes whose environment carries this fixture's markers, with the markers."""
    found: dict[int, dict[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if OWNER_VAR.encode() not in raw:
            continue
        env = dict(
            item.decode(errors="replace").partition("=")[::2]
            for item in raw.split(b"\0")
            if item.startswith((OWNER_VAR.encode(), ROOT_VAR.encode()))
        )
        found[int(entry.name)] = env
    return found


def _terminate(pids: Sequence[int], timeout: float) -> list[int]:
    """SIGTERM, wait, then SIGKILL what is left; returns the pids that needed SIGKILL."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# Stop order for leftovers: job processes first, then the step daemons, and the services the
# others talk to last, so nothing hangs retrying a peer that is already gone. slurmctld stops its
# own slurmscriptd helper (killed first, it made slurmctld ignore SIGTERM here).
_STOP_ORDER = (
    "slurmstepd",
    "slurmd",
    "slurmctld",
    "slurmscriptd",
    "slurmdbd",
    "mariadbd",
    "munged",
)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _with_descendants(pids: Sequence[int]) -> set[int]:
    """The pids and all their descendants: a job's processes carry no marker, but slurmstepd does."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop_in_order(pids: Sequence[int], timeout: float = 10) -> None:
    """Stop marked daemons in _STOP_ORDER, the jobs below any slurmstepd before them."""
    groups: dict[int, set[int]] = {}
    for pid in pids:
        comm = _comm(pid)
        if comm == "slurmstepd":
            groups.setdefault(-1, set()).update(_with_descendants([pid]) - {pid})
        rank = _STOP_ORDER.index(comm) if comm in _STOP_ORDER else -1
        groups.setdefault(rank, set()).add(pid)
    for rank in sorted(groups):
        _terminate(sorted(groups[rank]), timeout)


def stop_stale_daemons() -> None:
    """Stop daemons, and the jobs below them, left by a session whose pytest process is gone.

    Daemons of a session that is still running are left alone: free ports and separate folders
    keep the two clusters apart.
    """
    stale = {
        pid: env for pid, env in _marked_processes().items() if not _owner_alive(env[OWNER_VAR])
    }
    if not stale:
        return
    roots = sorted({env.get(ROOT_VAR, "?") for env in stale.values()})
    _progress(f"stopping {len(stale)} stale daemon(s) of an earlier session ({', '.join(roots)})")
    started = time.monotonic()
    _stop_in_order(sorted(stale))
    _progress(f"stale daemons stopped in {time.monotonic() - started:.1f} s")


def _free_ports(count: int) -> list[int]:
    """Distinct TCP ports free right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_lines(nodes: netns.Nodes, gpu_files: str) -> tuple[str, str]:
    """slurm.conf's NodeName lines and gres.conf: every node declared alike, each at its own
    address, with GPUS_PER_NODE fake GPUs."""
    lines = [
        f"NodeName={n} NodeAddr={nodes.addr(n)} NodeHostname={n} CPUs={CPUS_PER_NODE} "
        f"Boards=1 SocketsPerBoard=1 CoresPerSocket={CPUS_PER_NODE} ThreadsPerCore=1 "
        f"RealMemory=4000 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
        for n in nodes.names
    ]
    gres = f"AutoDetect=off\nNodeName={','.join(nodes.names)} Name=gpu File={gpu_files}\n"
    return "\n".join(lines), gres


@dataclass
class Daemon:
    """One started daemon: its process and the files to show when something goes wrong."""

    name: str
    process: subprocess.Popen[bytes]
    logs: list[Path]


@dataclass
class SlurmCluster:
    """Handle on the running cluster that the `slurm_cluster` fixture yields.

    `env` holds only the variables that point a client at this cluster: merge it into a full
    environment (`{**os.environ, **cluster.env}`) or use `full_env()`.
    """

    root: Path
    conf_path: Path
    log_dir: Path
    nodes: netns.Nodes | None
    """The nodes' namespaces: names, addresses, and set_link to cut one off."""
    cpus: int
    """CPUs declared per node."""
    partition: str = PARTITION
    cluster_name: str = CLUSTER_NAME
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[Daemon] = field(default_factory=list)

    def full_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """os.environ without foreign SLURM variables, plus this cluster's and `extra`."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        return {**base, **self.env, **(extra or {})}

    def run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command against this cluster; on failure the error shows its output."""
        proc = subprocess.run(
            list(cmd),
            env=self.full_env(kwargs.pop("env", None)),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}"
            )
        return proc

    def sbatch(self, *args: str, **kwargs: Any) -> int:
        """Submit with `sbatch --parsable ARGS` and return the job id."""
        out = self.run(["sbatch", "--parsable", *args], **kwargs).stdout.strip()
        return int(out.split(";")[0])

    def job_state(self, job_id: int | str) -> str:
        """The job's state: from slurmctld while it knows the job, else from accounting."""
        proc = self.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False)
        state = proc.stdout.strip()
        if proc.returncode == 0 and state:
            return state
        proc = self.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], check=False)
        lines = proc.stdout.splitlines()
        # "CANCELLED by 0" -> "CANCELLED"
        return lines[0].split()[0] if lines and lines[0].strip() else "UNKNOWN"

    def wait_for_state(self, job_id: int | str, states: Sequence[str], timeout: float = 60) -> str:
        """Poll until the job reaches one of `states`; on the deadline raise with the logs."""
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.2)
        raise TimeoutError(
            f"job {job_id} still {state} after {timeout} s (wanted {'/'.join(states)})\n"
            + self.log_tails()
        )

    def log_tails(self, lines: int = 20) -> str:
        """The end of every daemon log, for error messages."""
        parts = []
        for daemon in self.daemons:
            for log in daemon.logs:
                if log.exists():
                    parts.append(f"--- {daemon.name}: {log} ---\n{_tail(log, lines)}")
        return "\n".join(parts)

    # --- start and stop -------------------------------------------------------------------

    def _start(self, name: str, cmd: Sequence[str], env: dict[str, str], logs: list[Path]) -> None:
        out = self.log_dir / f"{name}.out"
        with out.open("wb") as handle:
            process = subprocess.Popen(
                list(cmd),
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches pytest, whose teardown then
                # stops the daemons in order, instead of killing them mid-write.
                start_new_session=True,
            )
        self.daemons.append(Daemon(name, process, [out, *logs]))

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
        """Poll `ready()` until true; fail early if a daemon died, late with the log tails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.process.poll() is not None:
                    raise RuntimeError(
                        f"{daemon.name} exited with {daemon.process.returncode} while waiting "
                        f"for {what}\n{self.log_tails()}"
                    )
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{self.log_tails()}")

    def stop(self) -> None:
        """Cancel jobs, then stop the daemons newest first (slurmd ... munged) and reap them."""
        ctld = next((d for d in self.daemons if d.name == "slurmctld"), None)
        if ctld is not None and ctld.process.poll() is None:
            self.run(["scancel", "--full", "--partition", self.partition], check=False, timeout=20)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                queue = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=10)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.2)
        for daemon in reversed(self.daemons):
            if daemon.process.poll() is None:
                daemon.process.terminate()
                try:
                    daemon.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    _progress(f"{daemon.name} ignored SIGTERM for 20 s: SIGKILL")
                    daemon.process.kill()
                    daemon.process.wait(timeout=10)
        # slurmstepd processes inherit slurmd's environment; stop any that outlived slurmd,
        # with whatever job processes still run below them.
        leftovers = [
            pid for pid, env in _marked_processes().items() if env.get(ROOT_VAR) == str(self.root)
        ]
        if leftovers:
            _stop_in_order(leftovers)
        if self.nodes is not None:
            self.nodes.remove()
        # The accounting database is ~120 MB and of no use once stopped; pytest keeps the last
        # three sessions' temporary folders, logs and configs stay for reading.
        shutil.rmtree(self.root / "mysql" / "data", ignore_errors=True)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def start_cluster(root: Path) -> SlurmCluster:
    """Write the configs under `root` and start munged, mariadbd, slurmdbd, slurmctld, slurmd."""
    started = time.monotonic()
    etc, log_dir, run_dir = root / "etc", root / "log", root / "run"
    state, spool = root / "state", root / "spool"
    munge_dir, mysql_dir = root / "munge", root / "mysql"
    for folder in (etc, log_dir, run_dir, state, spool, munge_dir, mysql_dir):
        folder.mkdir(parents=True)
    # munged refuses a socket folder that others can write to; 0755 as FACTS.md says.
    munge_dir.chmod(0o755)
    munge_socket = munge_dir / "munge.socket"
    mysql_socket = mysql_dir / "mysqld.sock"
    for sock in (munge_socket, mysql_socket):
        if len(str(sock)) > MAX_SOCKET_PATH:
            raise RuntimeError(f"socket path too long for a Unix socket ({len(str(sock))}): {sock}")

    ctld_port, slurmd_port, dbd_port = _free_ports(3)
    conf_path = etc / "slurm.conf"
    owner = _owner_token(os.getpid())
    nodes = netns.make_nodes(NODES, etc / "hosts", owner, _progress)
    cluster = SlurmCluster(
        root=root,
        conf_path=conf_path,
        log_dir=log_dir,
        nodes=nodes,
        cpus=CPUS_PER_NODE,
        env={"SLURM_CONF": str(conf_path)},
    )
    # Fake GPUs: any character device will do for SLURM's GRES (here /dev/null's numbers).
    (root / "dev").mkdir()
    for i in range(GPUS_PER_NODE):
        os.mknod(root / "dev" / f"fakegpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    node_lines, gres_conf = _node_lines(nodes, f"{root}/dev/fakegpu[0-{GPUS_PER_NODE - 1}]")
    _write(etc / "gres.conf", gres_conf)

    # All daemons run as root (SlurmUser=root), which the fixture is; a per-run munge key
    # keeps this cluster's credentials apart from a system munged's.
    _write(
        etc / "slurm.conf",
        f"""\
# Written by tests/slurm_cluster.py for one test session; see shared/FACTS.md.
ClusterName={CLUSTER_NAME}
SlurmctldHost={netns.HOST_NAME}({nodes.host_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={state}
SlurmdSpoolDir={spool}/%n
SlurmctldPidFile={run_dir}/slurmctld.pid
SlurmdPidFile={run_dir}/slurmd-%n.pid
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd and no cgroups here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the declared nodes (more CPUs than the machine has, fake GPUs) instead of draining them.
SlurmdParameters=config_overrides
GresTypes=gpu
# A node that stops answering is declared down after this long (its jobs requeued); the suite's
# own collective timeout must end a job whose peer is lost well before.
SlurmdTimeout=120
ReturnToService=2
# Start jobs at once; rerun the scheduler often so a requeued job starts again within seconds.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
# Jobs are requeueable by default (scontrol requeue, preemption).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or times out.
KillWait=5
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
# With a munge socket at a non-default path slurmctld needs it here to reach slurmdbd.
AccountingStoragePass={munge_socket}
JobCompType=jobcomp/none
{node_lines}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
""",
    )
    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF and refuses it unless it is
    # 0600 and owned by SlurmUser (root, who writes it).
    _write(
        etc / "slurmdbd.conf",
        f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={run_dir}/slurmdbd.pid
LogFile={log_dir}/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
# localhost: the client library takes the Unix socket named by MYSQL_UNIX_PORT.
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
""",
        mode=0o600,
    )

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
    daemon_env = {
        **base_env,
        "SLURM_CONF": str(conf_path),
        # mariadbd over its own socket; root logs in through unix_socket authentication.
        "MYSQL_UNIX_PORT": str(mysql_socket),
        OWNER_VAR: owner,
        ROOT_VAR: str(root),
    }

    def exe(name: str) -> str:
        path = _which(name)
        if path is None:
            raise RuntimeError(f"{name} not found on {SEARCH_PATH}")
        return path

    try:
        munge_key = munge_dir / "munge.key"
        subprocess.run(
            [exe("mungekey"), "--create", f"--keyfile={munge_key}"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        cluster._start(
            "munged",
            [
                exe("munged"),
                "--foreground",
                # pytest's temporary folders are 0700; munged wants every folder above its
                # socket open to all users. Only root talks to this munged, so --force turns
                # that error into a warning.
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={munge_key}",
                f"--pid-file={run_dir}/munged.pid",
                f"--seed-file={munge_dir}/munged.seed",
                # In the foreground munged logs to stderr, that is log/munged.out.
            ],
            daemon_env,
            [],
        )
        cluster._wait("munged's socket", munge_socket.exists, timeout=30)

        data, mysql_tmp = mysql_dir / "data", mysql_dir / "tmp"
        # A private tmpdir: MariaDB keeps temporary tables (the bootstrap's tmp_user_sys among
        # them) as '#sql*' files in its tmpdir, /tmp by default, and every mariadbd that starts
        # (a bootstrap too) deletes all '#sql*' files in its tmpdir. With a shared /tmp, any
        # other MariaDB starting meanwhile wipes ours: a CI run failed mid-bootstrap with
        # "Unknown table 'mysql.tmp_user_sys'".
        mysql_tmp.mkdir()
        install = subprocess.run(
            [
                exe("mariadb-install-db"),
                "--no-defaults",  # ignore /etc/mysql: its socket and datadir are the system's
                "--user=root",
                f"--datadir={data}",
                f"--tmpdir={mysql_tmp}",  # mariadb-install-db hands it on to mariadbd
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=daemon_env,
            check=False,
        )
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}{install.stderr}")
        cluster._start(
            "mariadbd",
            [
                exe("mariadbd"),
                "--no-defaults",
                "--user=root",
                f"--datadir={data}",
                f"--tmpdir={mysql_tmp}",
                f"--socket={mysql_socket}",
                f"--pid-file={run_dir}/mariadbd.pid",
                f"--log-error={log_dir}/mariadbd.log",
                "--skip-networking",
                # A small buffer pool: the accounting database holds a handful of rows.
                "--innodb-buffer-pool-size=32M",
            ],
            daemon_env,
            [log_dir / "mariadbd.log"],
        )
        cluster._wait("mariadbd's socket", lambda: _unix_connects(mysql_socket), timeout=60)

        cluster._start("slurmdbd", [exe("slurmdbd"), "-D"], daemon_env, [log_dir / "slurmdbd.log"])
        cluster._wait("slurmdbd's port", lambda: _tcp_connects(dbd_port), timeout=60)
        # Register the cluster before slurmctld first talks to slurmdbd, so that sacct has an
        # association to file jobs under from the first job on.
        clusters = cluster.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"])
        if CLUSTER_NAME not in clusters.stdout.split():
            cluster.run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME])

        # slurmctld on the host's network, under the name SlurmctldHost gives it (its own UTS
        # namespace): it must find itself by that name; the nodes reach it at the bridge address
        ctld = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', netns.HOST_NAME]
        cluster._start(
            "slurmctld", [*ctld, exe("slurmctld"), "-D"], daemon_env, [log_dir / "slurmctld.log"]
        )
        cluster._wait("slurmctld's port", lambda: _tcp_connects(ctld_port), timeout=60)
        for node in NODES:
            cluster._start(
                f"slurmd {node}",
                nodes.node_command(node, [exe("slurmd"), "-D", "-N", node]),
                daemon_env,
                [log_dir / f"slurmd-{node}.log"],
            )

        def nodes_idle() -> bool:
            proc = cluster.run(["sinfo", "-h", "-N", "-o", "%t"], check=False, timeout=10)
            return proc.returncode == 0 and proc.stdout.split() == ["idle"] * len(NODES)

        cluster._wait(f"nodes {', '.join(NODES)} to be idle in sinfo", nodes_idle, timeout=60)
    except BaseException:
        cluster.stop()
        raise
    _progress(
        f"cluster {CLUSTER_NAME} up in {time.monotonic() - started:.1f} s: nodes "
        f"{', '.join(NODES)} ({CPUS_PER_NODE} CPUs, {GPUS_PER_NODE} fake GPUs each), partition {PARTITION}, ports ctld {ctld_port} slurmd {slurmd_port} "
        f"dbd {dbd_port}, files in {root}"
    )
    return cluster


def _unix_connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _tcp_connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def slurm_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster with accounting; os.environ points at it meanwhile."""
    global _pytest_config
    _pytest_config = request.config
    if sys.platform != "linux":
        _skip_or_fail("the SLURM fixture needs Linux")
    if os.geteuid() != 0:
        # The daemons run as root (SlurmUser=root) and start jobs as the submitting user.
        _skip_or_fail("the SLURM fixture runs its daemons as root; not root here")
    ensure_installed()
    if missing := netns.missing_tools():
        _skip_or_fail(f"the cluster's nodes need {', '.join(missing)} (iproute2, util-linux)")
    stop_stale_daemons()
    netns.remove_stale(_owner_alive, _progress)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    # Put back exactly the variables touched here; other changes made meanwhile stay.
    touched = [k for k in os.environ if k.startswith(_FOREIGN_PREFIXES)] + list(cluster.env)
    saved = {key: os.environ.get(key) for key in touched}
    try:
        for key in touched:
            os.environ.pop(key, None)
        os.environ.update(cluster.env)
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        started = time.monotonic()
        cluster.stop()
        _progress(f"cluster stopped in {time.monotonic() - started:.1f} s")
        _pytest_config = None


def main() -> None:
    """Start the cluster by hand, to try a change against it; Ctrl-C (or SIGTERM) stops it."""
    import tempfile

    # a shell's background job starts with SIGINT ignored: both signals end the pause below
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    ensure_installed()
    stop_stale_daemons()
    netns.remove_stale(_owner_alive, _progress)
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp")))
    nodes = cluster.nodes
    assert nodes is not None
    print(f"export SLURM_CONF={cluster.conf_path}", flush=True)
    print(f"a shell on node {NODES[0]}: {' '.join(nodes.node_command(NODES[0], ['bash']))}")
    print(f"cut node {NODES[1]}'s link: ip link set {nodes.veth(NODES[1])} down")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
