"""Nodes of a test cluster on one machine: a bridge, and per node a network namespace on a veth.

Each node gets its own network stack and address on a private /24 that only exists on a bridge
made here (nothing routes off the machine), plus a hosts file naming every node; the SLURM
fixture (tests/slurm_cluster.py) starts one slurmd per node inside its namespace with
`node_command`, which also gives the daemon its own hostname (a UTS namespace) and that hosts
file over /etc/hosts (a private mount namespace; the rest of the file system is shared, as a
cluster's shared file system is). A link is cut with `set_link(node, up=False)`: the host side
of the node's veth goes down, as a pulled cable would (no netem here).

Needs root and iproute2 (`ip`), `nsenter` and `unshare` (util-linux). Names carry a free index
(bridge `dbbr<k>`, namespaces `dbn<k>-<node>`, subnet 10.213.<k>.0/24), so two sessions on one
machine do not collide; a session that died leaves an owner file in /run/denoisebench-netns/,
and the next one removes what it made (`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

OWNERS = Path("/run/denoisebench-netns")
"""One file per live set of namespaces (its index), holding the owning process' token."""
SUBNET = "10.213.{k}"
"""The private /24 of set k: the host's bridge is .1, node `nN`'s address is .N (2..254)."""
HOST_NAME = "dbctl"
"""The host's (the controller's) name on the bridge, in every node's hosts file."""


class NetnsError(RuntimeError):
    """A step of building the namespaces failed; the message names the step and its output."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def missing_tools() -> list[str]:
    """The programs this module needs that are not on PATH."""
    return [t for t in ("ip", "nsenter", "unshare") if shutil.which(t) is None]


@dataclass
class Nodes:
    """A bridge with one namespace per node; `hosts_file` maps every name to its address."""

    index: int
    names: tuple[str, ...]
    hosts_file: Path
    made: list[tuple[str, str]] = field(default_factory=list)
    """What was made, in order ("link", name) or ("netns", name): removed newest first."""

    @property
    def bridge(self) -> str:
        return f"dbbr{self.index}"

    @property
    def host_addr(self) -> str:
        return f"{SUBNET.format(k=self.index)}.1"

    def addr(self, node: str) -> str:
        return f"{SUBNET.format(k=self.index)}.{node_number(node)}"

    def netns(self, node: str) -> str:
        return f"dbn{self.index}-{node}"

    def veth(self, node: str) -> str:
        return f"dbv{self.index}h{node_number(node)}"  # at most 15 characters

    def node_command(self, node: str, argv: Sequence[str]) -> list[str]:
        """`argv` run as node `node`: in its network namespace, with its own hostname and its
        own /etc/hosts. Not `ip netns exec`: it mounts a fresh /sys, where slurmd finds no
        cgroup file system and stops."""
        script = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        return [
            "nsenter",
            f"--net=/var/run/netns/{self.netns(node)}",
            "unshare",
            "--mount",
            "--uts",
            "sh",
            "-c",
            script,
            "node",
            str(self.hosts_file),
            node,
            *argv,
        ]

    def set_link(self, node: str, up: bool) -> None:
        """Take the node's link down (a pulled cable: packets to and from it are lost) or up."""
        _ip("link", "set", self.veth(node), "up" if up else "down")

    def remove(self) -> None:
        """Remove what was made, newest first; the owner file last."""
        for kind, name in reversed(self.made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self.made.clear()
        with contextlib.suppress(OSError):
            (OWNERS / str(self.index)).unlink()


def node_number(node: str) -> int:
    """The number in a node's name, its address's last byte: 'n10' -> 10."""
    digits = "".join(c for c in node if c.isdigit())
    if not digits or not 2 <= int(digits) <= 254:
        raise ValueError(f"node name {node!r} needs a number 2..254 (its address's last byte)")
    return int(digits)


def make_nodes(
    names: Sequence[str], hosts_file: Path, owner: str, progress: Callable[[str], None]
) -> Nodes:
    """A bridge on a free index, and per node a namespace on a veth with its address; a hosts
    file naming the host and every node. Undone on any failure (NetnsError, naming the step)."""
    OWNERS.mkdir(parents=True, exist_ok=True)
    for index in range(1, 250):
        try:  # O_EXCL: two sessions starting at once take different indices
            fd = os.open(OWNERS / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(owner)
        break
    else:
        raise NetnsError(f"no free index for a bridge: {OWNERS} holds 249 owner files")
    nodes = Nodes(index, tuple(names), hosts_file)
    lines = ["127.0.0.1 localhost", f"{nodes.host_addr} {HOST_NAME}"]
    lines += [f"{nodes.addr(n)} {n}" for n in names]
    hosts_file.write_text("\n".join(lines) + "\n")
    try:
        _ip("link", "add", nodes.bridge, "type", "bridge")
        nodes.made.append(("link", nodes.bridge))
        _ip("addr", "add", f"{nodes.host_addr}/24", "dev", nodes.bridge)
        _ip("link", "set", nodes.bridge, "up")
        for node in names:
            ns, veth = nodes.netns(node), nodes.veth(node)
            _ip("netns", "add", ns)
            nodes.made.append(("netns", ns))
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            nodes.made.append(("link", veth))
            _ip("link", "set", veth, "master", nodes.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{nodes.addr(node)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except BaseException:
        nodes.remove()
        raise
    progress(f"bridge {nodes.bridge} {nodes.host_addr}/24, nodes {', '.join(names)}")
    return nodes


def remove_stale(alive: Callable[[str], bool], progress: Callable[[str], None]) -> None:
    """Remove the bridges and namespaces of sessions whose owner (the token in the owner file)
    is gone: a pytest killed with -9 leaves them behind."""
    if not OWNERS.is_dir():
        return
    namespaces = _ip("netns", "list", check=False).stdout.split()
    for owner_file in OWNERS.iterdir():
        if not owner_file.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if alive(owner_file.read_text().strip()):
                continue
        index = int(owner_file.name)
        stale = [ns for ns in namespaces if ns.startswith(f"dbn{index}-")]
        progress(f"removing bridge dbbr{index} and {len(stale)} namespace(s) of an ended session")
        for ns in stale:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", f"dbbr{index}", check=False)
        with contextlib.suppress(OSError):
            owner_file.unlink()
