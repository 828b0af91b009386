"""Helpers shared by the benchmark scripts (``benchmarks/`` is not a package: scripts import this
as ``import _common``, which works because Python puts a script's own folder on ``sys.path``).

- quiet logs and a chat prompt rendered with the tokenizer's chat template;
- the machine is small (2 cores) and shared: wait until it is mostly idle before a timed run,
  measure how much CPU *other* processes took during it, and repeat a disturbed run;
- a LocalSwarm with corolla's API served over it (``swarm_api``);
- per process tree CPU time and resident memory (VmRSS) read from ``/proc``, for the servers
  of a ``LocalSwarm`` (each with its DHT child and p2pd daemon) and for the benchmark itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import torch

OUT_DIR = Path(__file__).resolve().parent / "out"
MIB = 1024 * 1024
T = TypeVar("T")


def _stop_on_signals() -> None:
    """SIGTERM unwinds a benchmark like Ctrl-C, so the ``with`` blocks stop the swarms it started (their
    servers run in sessions of their own: killed with the default SIGTERM, a benchmark left them running),
    and the process is gone within corolla's stop deadline either way (a second signal ends it at once).
    Only when a benchmark script is the program: a test that imports a benchmark keeps its own handlers."""
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if main is not None and main.parent == OUT_DIR.parent and threading.current_thread() is threading.main_thread():
        from corolla.shutdown import on_stop_signals

        on_stop_signals(interrupt=True)


_stop_on_signals()


def quiet_logs() -> None:
    """Warnings only; hivemind, transformers and asyncio chatter off."""
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("hivemind", "transformers", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def swarm_api(model_name: str, servers: int, console, log_name: str, server_args: Sequence[str] = (),
              client_options: dict | None = None) -> Iterator[SimpleNamespace]:
    """``servers`` servers of ``model_name`` in a LocalSwarm (even spans, ``server_args`` added), a client
    on it (``client_options``: ClientConfig fields) and corolla's API served over that client on a free
    port of 127.0.0.1; yields namespace(model (the client), base_url (with /v1), ref (the resolved model),
    spans)."""
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm, even_spans

    ref = resolve_model(model_name)
    n_layers = load_config(ref.path).num_hidden_layers
    spans = even_spans(n_layers, servers)
    swarm = LocalSwarm(str(ref.path), n_layers, ref.model_id, log_dir=OUT_DIR / "logs" / log_name,
                       server_args=server_args)
    with contextlib.ExitStack() as stack:
        stack.callback(swarm.stop)
        with console.status(f"starting {servers} server(s) of {ref.model_id} {spans}"):
            swarm.start(spans)
            model = stack.enter_context(DistributedModelForCausalLM.from_pretrained(
                ref.path, initial_peers=swarm.initial_peers, model_id=ref.model_id, **(client_options or {})))
            base = stack.enter_context(serving(create_app(SwarmEngine(model)), "127.0.0.1", 0))
        yield SimpleNamespace(model=model, base_url=f"{base}/v1", ref=ref, spans=spans)


def chat_ids(tokenizer, messages: list[dict[str, str]]) -> torch.Tensor:
    """``messages`` rendered with the chat template (assistant turn opened) -> ids [1, T]."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "python": sys.version.split()[0],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv}


# ---- /proc: process trees, CPU time, memory --------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds used so far, all threads)."""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()  # fields after "pid (comm) "
        procs[int(name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK)
    return procs


def tree(table: dict[int, tuple[int, float]], roots: Iterable[int]) -> set[int]:
    """``roots`` and all their descendants that are in ``table``."""
    ours = {pid for pid in roots if pid in table}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in table.items() if ppid in ours and pid not in ours}
        ours |= new
        grew = bool(new)
    return ours


def rss_bytes(pid: int) -> int:
    """VmRSS of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssPeak:
    """Samples, in a background thread, the summed VmRSS of some processes and keeps the peaks.

    ``roots``: the processes themselves (peak of their sum: ``peak``); ``peak_tree`` also counts
    their descendants (for a server: its DHT child and p2pd daemon; their shared pages are
    counted once per process, as VmRSS does). Use as a context manager around what is measured.
    """

    def __init__(self, roots: Iterable[int], interval_s: float = 0.1, tree_refresh_s: float = 2.0):
        self.roots = list(roots)
        self.interval_s, self.tree_refresh_s = interval_s, tree_refresh_s
        self.peak = self.peak_tree = 0
        self._pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def sample(self) -> tuple[int, int]:
        return sum(rss_bytes(p) for p in self.roots), sum(rss_bytes(p) for p in self._pids)

    def _loop(self) -> None:
        refreshed = -1e9
        while True:
            if time.monotonic() - refreshed > self.tree_refresh_s:  # scanning /proc costs; the tree rarely changes
                self._pids = tree(proc_table(), self.roots)
                refreshed = time.monotonic()
            own, whole = self.sample()
            self.peak, self.peak_tree = max(self.peak, own), max(self.peak_tree, whole)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class CpuWatch:
    """CPU time used during a run: by the whole machine, by process trees, and by everyone else.

    ``foreign_cpu_s``: machine busy time (/proc/stat, all but idle and iowait) minus what this
    process and its descendants (servers, their DHT children, p2pd daemons) used.
    """

    def __init__(self):
        self._start = self._snapshot()
        self._end: tuple[float, dict[int, tuple[int, float]]] | None = None

    @staticmethod
    def _snapshot() -> tuple[float, dict[int, tuple[int, float]]]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK, proc_table()

    def stop(self) -> CpuWatch:
        self._end = self._snapshot()
        return self

    def tree_cpu_s(self, roots: Iterable[int]) -> float:
        """CPU seconds that ``roots`` and their descendants used (processes alive at the end)."""
        assert self._end is not None, "call stop() first"
        before, after = self._start[1], self._end[1]
        return sum(after[p][1] - before.get(p, (0, 0.0))[1] for p in tree(after, roots))

    def foreign_cpu_s(self) -> float:
        assert self._end is not None, "call stop() first"
        return max(self._end[0] - self._start[0] - self.tree_cpu_s([os.getpid()]), 0.0)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, total


def cpu_idle(interval_s: float = 0.5) -> float:
    """Fraction of all CPUs' time that was idle over ``interval_s`` (1.0 where /proc is missing)."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(interval_s)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 1.0
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(threshold: float, max_wait_s: float) -> float:
    """Wait until the machine is at least ``threshold`` idle (or ``max_wait_s`` passed)."""
    deadline = time.monotonic() + max_wait_s
    idle = cpu_idle()
    while idle < threshold and time.monotonic() < deadline:
        idle = cpu_idle(1.0)
    return idle


@dataclasses.dataclass
class Measured:
    idle_before: float  # fraction of CPU time idle just before the run (1.0 = quiet machine)
    wall_s: float
    foreign_cpu: float  # CPUs that processes outside this benchmark used, on average, during the run
    watch: CpuWatch


class QuietRunner:
    """Runs ``fn()`` on a quiet machine; repeats it while other jobs took CPU during it.

    Before each try it waits (up to ``wait_s``) until ``idle`` of the CPU time is idle (0: never
    wait); a try during which other processes used more than ``max_foreign_cpu`` CPUs on average
    is repeated up to ``max_retries`` times (the last try is kept). ``discarded`` counts the repeated tries.
    """

    def __init__(self, idle: float = 0.8, wait_s: float = 120.0, max_foreign_cpu: float = 0.1, max_retries: int = 5):
        self.idle, self.wait_s, self.max_foreign_cpu, self.max_retries = idle, wait_s, max_foreign_cpu, max_retries
        self.discarded = 0

    def __call__(self, fn: Callable[[], T]) -> tuple[T, Measured]:
        for attempt in range(self.max_retries + 1):
            idle = wait_quiet(self.idle, self.wait_s) if self.idle > 0 else 1.0
            watch = CpuWatch()
            t0 = time.perf_counter()
            result = fn()
            wall = time.perf_counter() - t0
            foreign = watch.stop().foreign_cpu_s() / wall
            if foreign <= self.max_foreign_cpu or attempt == self.max_retries:
                break
            self.discarded += 1
            time.sleep(5.0 * (attempt + 1))  # let the other job finish
        return result, Measured(idle, wall, foreign, watch)


def add_quiet_args(p) -> None:
    """The shared-machine flags of every benchmark (see ``QuietRunner``)."""
    p.add_argument("--quiet-idle", type=float, default=0.8,
                   help="before each run wait until this fraction of CPU time is idle (default 0.8; 0 = never wait)")
    p.add_argument("--quiet-wait-s", type=float, default=120.0, help="longest wait for a quiet machine per run")
    p.add_argument("--max-foreign-cpu", type=float, default=0.1,
                   help="repeat a run when processes outside the benchmark used more than this many CPUs on "
                        "average during it (default 0.1)")
    p.add_argument("--max-retries", type=int, default=5,
                   help="repeats of a disturbed run before keeping it (default 5)")


def quiet_runner(args) -> QuietRunner:
    return QuietRunner(args.quiet_idle, args.quiet_wait_s, args.max_foreign_cpu, args.max_retries)
