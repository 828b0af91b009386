"""A swarm on this machine: a bootstrap DHT peer plus server processes (``swarm up``, tests, benchmarks).

Every server runs in its own process group so that stopping the swarm stops everything it
started, including each server's DHT child and p2pd daemon. Several models share one swarm when
each model's :class:`LocalSwarm` but the first is given the first one's bootstrap peer (``dht=``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from corolla.errors import CorollaError
from corolla.protocol.messages import ServerState
from corolla.swarm.dht import start_dht, visible_maddrs
from corolla.swarm.discovery import SwarmState, fetch_swarm_state

READY = re.compile(r"corolla-server ready peer_id=(?P<peer>\S+) blocks=(?P<start>\d+):(?P<end>\d+) model=(?P<key>\S+)")


def even_spans(num_blocks: int, servers: int) -> list[tuple[int, int]]:
    """Split ``num_blocks`` into ``servers`` contiguous spans of near-equal size."""
    if not 1 <= servers <= num_blocks:
        raise CorollaError(f"cannot split {num_blocks} blocks over {servers} servers")
    bounds = [round(i * num_blocks / servers) for i in range(servers + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclasses.dataclass
class ServerProcess:
    span: tuple[int, int] | None
    process: subprocess.Popen
    log_path: Path
    peer_id: str | None = None
    model_key: str | None = None  # the model's key in the swarm (name@digest) the server announces under

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def poll_ready(self) -> bool:
        if self.peer_id is None:
            try:
                match = READY.search(self.log_path.read_text(errors="replace"))
            except OSError:
                match = None
            if match:
                self.peer_id = match["peer"]
                self.span = (int(match["start"]), int(match["end"]))
                self.model_key = match["key"]
        return self.peer_id is not None


class LocalSwarm:
    def __init__(
        self,
        model: str,
        num_blocks: int,
        model_id: str,
        *,
        log_dir: str | Path | None = None,
        server_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        dht=None,
    ):
        """``dht``: a running DHT node (another LocalSwarm's bootstrap peer) that servers join through
        instead of a bootstrap peer of this swarm's own; :meth:`stop` leaves it running."""
        # ``model_id``: the model's name; once a server is ready, its key in the swarm (name@digest,
        # as the server computed it from the weights' manifest)
        self.model, self.num_blocks, self.model_id = model, num_blocks, model_id
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="corolla-swarm-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.server_args = list(server_args)
        self.env = {**(env if env is not None else os.environ)}
        self.dht = dht
        self._own_dht = dht is None
        self.servers: list[ServerProcess] = []

    @property
    def owns_bootstrap(self) -> bool:
        """Whether :meth:`stop` stops the bootstrap peer (it was not given one)."""
        return self._own_dht

    @property
    def initial_peers(self) -> list[str]:
        return visible_maddrs(self.dht)

    def start_bootstrap(self) -> None:
        if self.dht is None:
            self.dht = start_dht()
            self._own_dht = True

    def add_server(self, span: tuple[int, int] | None = None, extra_args: Sequence[str] = (),
                   program: Sequence[str] = (sys.executable, "-m", "corolla", "server")) -> ServerProcess:
        """Start one server process (``span`` None lets it choose its blocks); ``program``: the
        command that takes ``corolla server``'s arguments."""
        self.start_bootstrap()
        cmd = [*program, self.model, "--model-id", self.model_id,
               "--initial-peers", *self.initial_peers, *self.server_args, *extra_args]
        if span is not None:
            cmd += ["--blocks", f"{span[0]}:{span[1]}"]
        log_path = self.log_dir / f"server-{len(self.servers)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=self.env)
        server = ServerProcess(span, proc, log_path)
        self.servers.append(server)
        return server

    def start(self, spans: Sequence[tuple[int, int]], timeout_s: float = 600.0,
              on_progress: Callable[[int], None] | None = None) -> LocalSwarm:
        self.start_bootstrap()
        extra: list[str] = []
        if "--torch-threads" not in self.server_args:
            # the servers share this machine's cores: each gets its share, so none of them waits
            # for a thread that another server's work has pushed off its core
            extra = ["--torch-threads", str(max(1, (os.cpu_count() or 1) // max(1, len(spans))))]
        started = [self.add_server(span, extra) for span in spans]
        self.wait_ready(started, timeout_s, on_progress)
        return self

    def wait_ready(self, servers: Sequence[ServerProcess], timeout_s: float = 600.0,
                   on_progress: Callable[[int], None] | None = None) -> None:
        """Wait until each server says it is ready and its blocks show ONLINE in the DHT.

        ``on_progress`` gets the number of servers ready so far whenever it changes.
        """
        deadline = time.monotonic() + timeout_s
        reported = -1
        while True:
            ready = sum(s.poll_ready() for s in servers)
            if on_progress is not None and ready != reported:
                on_progress(ready)
                reported = ready
            for s in servers:
                if s.process.poll() is not None:
                    raise CorollaError(f"server {s.log_path.name} exited with {s.process.returncode}:\n{s.log_tail()}")
            if all(s.poll_ready() for s in servers):
                self.model_id = servers[0].model_key or self.model_id
                online = {r.peer_id for r in self.state().servers if r.info.state is ServerState.ONLINE}
                if all(s.peer_id in online for s in servers):
                    return
            if time.monotonic() > deadline:
                tails = "\n".join(s.log_tail(10) for s in servers)
                raise CorollaError("servers did not become ready in time:\n" + tails)
            time.sleep(0.2)

    def state(self) -> SwarmState:
        return fetch_swarm_state(self.dht, self.model_id, self.num_blocks)

    def kill(self, server: ServerProcess, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            server.process.wait()

    def stop_server(self, server: ServerProcess, timeout_s: float = 15.0) -> None:
        """SIGTERM the server alone (it announces OFFLINE through its DHT child), then the group."""
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill(server, signal.SIGKILL)  # the group: DHT child and p2pd too

    def terminate(self) -> None:
        """SIGTERM every server still running: each leaves the swarm (see :meth:`stop`)."""
        for s in self.servers:
            if s.process.poll() is None:
                s.process.send_signal(signal.SIGTERM)  # not the group: its DHT child must outlive it

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every server (they leave the swarm in order, in parallel), SIGKILL the process
        group of any still running ``timeout_s`` later, then stop the bootstrap peer (if its own)."""
        self.terminate()
        deadline = time.monotonic() + timeout_s
        for s in self.servers:
            try:
                s.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.kill(s, signal.SIGKILL)
        self.servers = []
        if self.dht is not None and self._own_dht:
            self.dht.shutdown()
        self.dht = None

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all(swarms: Sequence[LocalSwarm], timeout_s: float = 15.0) -> None:
    """Stop swarms that share a bootstrap peer (several models) at once: every server leaves in
    parallel within the same ``timeout_s``, and the swarm owning the bootstrap peer stops last."""
    for swarm in swarms:
        swarm.terminate()
    deadline = time.monotonic() + timeout_s
    for swarm in sorted(swarms, key=lambda s: s.owns_bootstrap):  # stable: the owner last
        swarm.stop(max(0.0, deadline - time.monotonic()))
