"""The delaying TCP proxy of the WAN benchmark (benchmarks/wanproxy.py): delay, order, bandwidth, closing."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "wanproxy.py"
_spec = importlib.util.spec_from_file_location("wanproxy", _PATH)
wanproxy = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("wanproxy", wanproxy)
_spec.loader.exec_module(wanproxy)
WanProxy = wanproxy.WanProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _run(coro_fn):
    """Run ``coro_fn()`` with an echo server; afterwards no task but the main one may be left."""
    async def main():
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        try:
            await coro_fn(echo.sockets[0].getsockname()[1])
        finally:
            echo.close()
            await echo.wait_closed()
        for _ in range(50):  # the echo handlers end on their EOF, a loop turn or two later
            if asyncio.all_tasks() == {asyncio.current_task()}:
                break
            await asyncio.sleep(0.01)
        assert asyncio.all_tasks() == {asyncio.current_task()}, asyncio.all_tasks()
    asyncio.run(main())


async def _read_exactly(reader: asyncio.StreamReader, n: int, timeout_s: float = 10.0) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), timeout_s)


def test_round_trip_is_twice_the_delay():
    delay = 0.1

    async def body(port):
        async with WanProxy(("127.0.0.1", port), delay_s=delay) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            rtts = []
            for i in range(5):
                t0 = time.perf_counter()
                writer.write(bytes([i]))
                assert await _read_exactly(reader, 1) == bytes([i])
                rtts.append(time.perf_counter() - t0)
            writer.close()
            await writer.wait_closed()
        assert min(rtts) >= 2 * delay - 0.005, rtts  # the timer may round a hair early
        assert statistics.median(rtts) < 2 * delay + 0.1, rtts
    _run(body)


def test_delay_does_not_serialise_the_stream_and_order_is_kept():
    delay, n = 0.1, 200

    async def body(port):
        async with WanProxy(("127.0.0.1", port), delay_s=delay) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            sent = b"".join(i.to_bytes(4, "big") * 256 for i in range(n))  # 200 distinct 1 KiB messages
            t0 = time.perf_counter()
            for i in range(n):
                writer.write(sent[i * 1024 : (i + 1) * 1024])
                await writer.drain()
                await asyncio.sleep(0.001)  # separate chunks, each delayed on its own
            got = await _read_exactly(reader, len(sent))
            elapsed = time.perf_counter() - t0
            writer.close()
            await writer.wait_closed()
        assert got == sent
        # at least the round trip; serialised chunks would take n * delay = 20 s (a loaded machine stretches
        # the writer's 200 short sleeps, so the upper bound leaves room for that and nothing more)
        assert 2 * delay <= elapsed < n * delay / 4, elapsed
    _run(body)


def test_bandwidth_cap_limits_throughput():
    size, bps = 400_000, 2_000_000  # 0.2 s at the cap

    async def transfer(port, cap):
        async with WanProxy(("127.0.0.1", port), bandwidth_bps=cap) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            data = bytes(range(256)) * (size // 256)
            t0 = time.perf_counter()
            writer.write(data)
            got = await _read_exactly(reader, len(data))
            elapsed = time.perf_counter() - t0
            writer.close()
            await writer.wait_closed()
        assert got == data
        return elapsed

    async def body(port):
        capped = await transfer(port, bps)
        free = await transfer(port, None)
        # both directions capped but pipelined: at least size / bps, well under twice that plus slack
        assert size / bps * 0.95 <= capped < 2 * size / bps + 0.5, capped
        assert free < capped / 2, (free, capped)
    _run(body)


def test_closing_one_side_closes_the_other():
    async def body(port):
        async with WanProxy(("127.0.0.1", port), delay_s=0.02) as proxy:
            # the client closes: the echo server sees EOF and closes, the proxy closes its side
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"x")
            assert await _read_exactly(reader, 1) == b"x"
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if not proxy._tasks:
                    break
                await asyncio.sleep(0.01)
            assert not proxy._tasks  # both pipes of the connection ended

        # the server closes: a server that closes as soon as it has accepted
        async def closer(reader, writer):
            writer.close()

        server = await asyncio.start_server(closer, "127.0.0.1", 0)
        async with WanProxy(("127.0.0.1", server.sockets[0].getsockname()[1]), delay_s=0.02) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 5.0) == b""  # EOF reaches the client
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    _run(body)


def test_close_with_open_connections_leaves_no_task():
    async def body(port):
        proxy = await WanProxy(("127.0.0.1", port), delay_s=0.05).start()
        conns = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
        for _, w in conns:
            w.write(b"pending")  # still in the delay queue when the proxy closes
        deadline = asyncio.get_running_loop().time() + 5.0  # accepted and dialled: a condition, not a sleep
        while proxy.connections < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        assert proxy.connections == 3
        await proxy.close()
        assert not proxy._tasks
        for r, w in conns:
            try:  # closed by the proxy: EOF, or a reset where the proxy's side still held unread bytes
                rest = await asyncio.wait_for(r.read(), 5.0)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
            w.close()
            with contextlib.suppress(ConnectionResetError):
                await w.wait_closed()
    _run(body)


def test_proxy_thread_for_synchronous_callers():
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with wanproxy.ProxyThread() as pt:
        proxy = pt.add(("127.0.0.1", port), delay_s=0.0)
        pt.set_delay(0.05)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            t0 = time.perf_counter()
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
            assert time.perf_counter() - t0 >= 0.095
    t.join(5)
    srv.close()
    assert not t.is_alive()


def test_proxy_process_for_callers_that_fork():
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with wanproxy.ProxyProcess() as pp:
        port = pp.add(srv.getsockname(), delay_s=0.0)
        pp.set_delay(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            t0 = time.perf_counter()
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
            assert time.perf_counter() - t0 >= 0.095
        assert pp.bytes_forwarded() == 8
    assert pp._proc.returncode == 0
    t.join(5)
    srv.close()
    assert not t.is_alive()
