"""A delaying TCP proxy that emulates a wide-area link on loopback (this kernel has no netem).

``WanProxy`` listens on ``127.0.0.1:port`` and forwards every connection to ``target``. Each
direction of each connection is a pipe with its own scheduled queue: a chunk read at time ``t`` is
written at ``t + delay_s`` (one-way delay), chunks keep their order, and reading never waits for
the delay, so a long stream still flows at full rate (throughput is not divided by the delay). An
optional ``bandwidth_bps`` (bytes/s) serialises each direction like a link of that rate: a chunk
leaves the link ``len / bandwidth_bps`` after the previous one did, then takes ``delay_s`` more.
When one side closes (EOF or error), the other side is closed once the data already read from the
closing side has been delivered. ``delay_s`` and ``bandwidth_bps`` may be changed while it runs (new
chunks use the new values).

``ProxyThread`` runs proxies on an event loop in a background thread, for synchronous callers:
``with ProxyThread() as pt: p = pt.add(("127.0.0.1", 9000), delay_s=0.025)``; ``ProxyProcess`` runs them
in a child process (this file run as a script) for callers that fork (see there; the benchmark uses it).

benchmarks/ is not a package: ``benchmarks/wan.py`` imports this as ``import wanproxy`` and the unit
tests (``tests/unit/test_wan_proxy.py``) load it by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

CHUNK = 64 * 1024
QUEUE_CHUNKS = 1024  # backpressure: at most this many chunks in flight per direction


class WanProxy:
    def __init__(self, target: tuple[str, int], delay_s: float = 0.0, bandwidth_bps: float | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.target, self.delay_s, self.bandwidth_bps = target, delay_s, bandwidth_bps
        self.host, self.port = host, port
        self.bytes_forwarded = 0  # both directions, all connections
        self.connections = 0  # accepted so far
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> WanProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, close every connection and wait until all its tasks have ended."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> WanProxy:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._spawn(self._connection(reader, writer))

    async def _connection(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        except asyncio.CancelledError:  # closed while dialling the target: the client must see it too
            c_writer.close()
            raise
        # the first pipe to finish (EOF or error on its side, its data delivered) ends the connection
        pipes = [self._spawn(self._pipe(c_reader, s_writer)), self._spawn(self._pipe(s_reader, c_writer))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (c_writer, s_writer):
                w.close()
            for w in (c_writer, s_writer):
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks as they come, write each ``delay_s`` later (in order); None in the queue = EOF."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        link_free = 0.0  # when the emulated link has finished sending the previous chunk

        async def receive() -> None:
            nonlocal link_free
            try:
                while data := await reader.read(CHUNK):
                    now = loop.time()
                    if self.bandwidth_bps:
                        link_free = max(now, link_free) + len(data) / self.bandwidth_bps
                        due = link_free + self.delay_s
                    else:
                        due = now + self.delay_s
                    await queue.put((due, data))
            except (OSError, asyncio.IncompleteReadError):
                pass
            await queue.put(None)

        receiver = self._spawn(receive())
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                self.bytes_forwarded += len(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


class ProxyThread:
    """An event loop in a daemon thread that runs ``WanProxy``s for synchronous code."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.proxies: list[WanProxy] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="wan-proxies", daemon=True)

    def _run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def add(self, target: tuple[str, int], delay_s: float = 0.0, bandwidth_bps: float | None = None,
            port: int = 0) -> WanProxy:
        proxy = WanProxy(target, delay_s, bandwidth_bps, port=port)
        self._run(proxy.start())
        self.proxies.append(proxy)
        return proxy

    def set_delay(self, delay_s: float) -> None:
        """Every proxy's one-way delay (applies to chunks read from now on)."""
        for p in self.proxies:
            p.delay_s = delay_s

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(p.close() for p in self.proxies))

        self._run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class ProxyProcess:
    """Proxies in a child process of their own, driven over its stdin/stdout (``add``, ``set_delay``,
    ``bytes_forwarded``). Use this, not ``ProxyThread``, when the caller forks later (hivemind's DHT
    does): a forked child keeps copies of the proxy's sockets, so a connection the proxy closes never
    reaches the other side as closed."""

    def __init__(self):
        import subprocess
        import sys

        self._proc = subprocess.Popen([sys.executable, "-u", __file__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)

    def _ask(self, line: str) -> str:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"proxy process: {line!r} -> {answer!r}")
        return answer[2:].strip()

    def add(self, target: tuple[str, int], delay_s: float = 0.0, bandwidth_bps: float | None = None,
            port: int = 0) -> int:
        """A proxy to ``target``; returns the port it listens on."""
        return int(self._ask(f"add {target[0]} {target[1]} {delay_s} {bandwidth_bps or 0} {port}"))

    def set_delay(self, delay_s: float) -> None:
        self._ask(f"delay {delay_s}")

    def bytes_forwarded(self) -> int:
        return int(self._ask("bytes"))

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self._ask("quit")
        try:
            self._proc.wait(10)
        except Exception:
            self._proc.kill()
            self._proc.wait()


async def _serve_commands() -> None:
    """The child of ``ProxyProcess``: one command a line on stdin, one answer ("ok ..." / "error ...") a line."""
    import sys

    loop = asyncio.get_running_loop()
    proxies: list[WanProxy] = []
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd, *args = line.split()
            try:
                if cmd == "add":
                    host, port, delay, bps, listen = args
                    proxy = WanProxy((host, int(port)), float(delay), float(bps) or None, port=int(listen))
                    await proxy.start()
                    proxies.append(proxy)
                    answer = str(proxy.port)
                elif cmd == "delay":
                    for p in proxies:
                        p.delay_s = float(args[0])
                    answer = ""
                elif cmd == "bytes":
                    answer = str(sum(p.bytes_forwarded for p in proxies))
                elif cmd == "quit":
                    break
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                print("ok", answer, flush=True)
            except Exception as e:  # noqa: BLE001 - reported to the parent
                print("error", repr(e), flush=True)
    finally:
        await asyncio.gather(*(p.close() for p in proxies))
        print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(_serve_commands())
