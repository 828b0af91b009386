"""Several "hosts" on one machine: Linux network namespaces on a bridge, each with its own address.

Each host is a namespace with ``lo`` up and one end of a veth pair (``eth0``, its own 10.77.0.x/24);
the other ends hang on a bridge in the root namespace, which itself has no address: the hosts reach
each other and nothing else. Commands run in a host through ``ip netns exec``. :meth:`Net.close`
kills every process started through :meth:`Host.popen` (process groups and a tag in the
environment, :mod:`tests.processes`) and deletes the namespaces, veths and bridge, also after a
failed test. Needs root and iproute2: :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from tests.processes import kill_tagged, tagged_env

SUBNET = "10.77.0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a reason to skip), or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to create network namespaces"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"crp{uuid.uuid4().hex[:8]}"
    try:
        result = _ip("netns", "add", probe, check=False)
        if result.returncode != 0:
            return f"`ip netns add` failed: {result.stderr.strip()}"
        result = _ip("link", "add", f"{probe}b", "type", "bridge", check=False)
        if result.returncode != 0:
            return f"`ip link add ... type bridge` failed: {result.stderr.strip()}"
        _ip("link", "del", f"{probe}b", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Host:
    """One namespace: ``ip`` is its address on the bridge."""

    def __init__(self, net: Net, name: str, ip: str):
        self.net, self.name, self.ip = net, name, ip
        self.processes: list[subprocess.Popen] = []

    def command(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def popen(self, cmd: list[str], log: Path | None = None, **kwargs) -> subprocess.Popen:
        """Start ``cmd`` in this host in a process group of its own (stdout+stderr to ``log`` if given)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("env", self.net.env)
        if log is not None:
            with open(log, "wb") as out:
                proc = subprocess.Popen(self.command(cmd), stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, **kwargs)
        else:
            proc = subprocess.Popen(self.command(cmd), start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, cmd: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.net.env)
        return subprocess.run(self.command(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)


class Net:
    """A bridge and the hosts on it; names carry a random id, so that runs side by side never clash."""

    def __init__(self, subnet: str = SUBNET):
        self.subnet = subnet
        self.id = uuid.uuid4().hex[:6]
        self.bridge = f"crb{self.id}"
        self.hosts: list[Host] = []
        self.env, self.tag = tagged_env()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")

    def add_host(self) -> Host:
        n = len(self.hosts) + 1
        name, veth = f"cr{self.id}h{n}", f"crv{self.id}{n}"
        host = Host(self, name, f"{self.subnet}.{n}")
        self.hosts.append(host)  # before creating it: close() deletes whatever exists
        _ip("netns", "add", name)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        for args in (["addr", "add", f"{host.ip}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                     ["link", "set", "lo", "up"]):
            _ip("-n", name, *args)
        return host

    def close(self) -> None:
        """Kill what the hosts run, then delete namespaces (their veth ends go with them) and the bridge."""
        for host in self.hosts:
            for proc in host.processes:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        kill_tagged(self.tag)
        for n, host in enumerate(self.hosts, 1):
            _ip("link", "del", f"crv{self.id}{n}", check=False)
            _ip("netns", "del", host.name, check=False)
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
