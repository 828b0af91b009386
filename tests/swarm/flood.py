"""A flood of fresh identities against one server, from one process (tests/swarm/test_flood.py and
benchmarks/flood.py): each identity is its own p2p daemon, so its own peer id."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading

import torch
from hivemind.p2p import P2P
from hivemind.proto import runtime_pb2

from corolla.protocol.messages import InferenceMeta, ResponseMeta, SessionOpen, decode_meta, encode_meta
from corolla.protocol.rpc import stub_for
from corolla.protocol.tensors import to_wire


class Flood:
    """``identities`` p2p daemons hammering ``peer`` from one event loop in a thread: each opens
    three sessions and sends steps without waiting for answers, two streams it leaves silent (one
    stream more than the test's limit per peer), and calls ``rpc_info`` in a loop (the first five
    identities with 32 calls at once: the request rate attack). ``codes`` counts the answers by
    error type ("ok" for none)."""

    def __init__(self, peer: str, maddrs: list[str], model_id: str, identities: int, *, num_blocks: int = 6,
                 hidden_size: int = 64):
        self.peer, self.maddrs, self.model_id, self.identities = peer, maddrs, model_id, identities
        self.num_blocks, self.hidden_size = num_blocks, hidden_size
        self.codes: collections.Counter = collections.Counter()
        self.requests = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        assert self.ready.wait(240), "the hostile identities did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the flood did not stop"

    async def _main(self) -> None:
        daemons = []
        try:
            for batch in range(0, self.identities, 10):  # a few at a time: each start launches a daemon
                daemons += await asyncio.gather(*(P2P.create(initial_peers=self.maddrs)
                                                  for _ in range(min(10, self.identities - batch))))
            assert len({d.peer_id for d in daemons}) == self.identities
            self.ready.set()
            await asyncio.gather(*(self._hostile(i, p2p) for i, p2p in enumerate(daemons)))
        finally:
            self.ready.set()
            for p2p in daemons:
                with contextlib.suppress(Exception):
                    await p2p.shutdown()

    def _note(self, response) -> None:
        meta = decode_meta(response.metadata, ResponseMeta)
        self.codes[meta.error.code if meta.error else "ok"] += 1

    async def _hostile(self, index: int, p2p) -> None:
        stub = stub_for(p2p, self.peer)
        silent = asyncio.Event()

        async def nothing():
            await silent.wait()
            yield runtime_pb2.ExpertRequest()  # never sent: the server ends silent streams first

        async def steps(number: int):
            sid = f"{index:04x}{number:04x}".ljust(16, "0")
            position = 0
            while not self._stop.is_set():
                opening = SessionOpen(model_id=self.model_id, session_id=sid, start_block=0,
                                      end_block=self.num_blocks, max_length=256) if position == 0 else None
                hidden = torch.randn(1, 1, self.hidden_size)
                yield runtime_pb2.ExpertRequest(uid=self.model_id, tensors=[to_wire(hidden)],
                                                metadata=encode_meta(InferenceMeta(position=position, open=opening)))
                position += 1
                if position >= 200:
                    return
                await asyncio.sleep(0)

        async def session(number: int):
            with contextlib.suppress(Exception):
                stream = await stub.rpc_inference(steps(number))
                async for response in stream:
                    self.requests += 1
                    self._note(response)
                    if self._stop.is_set():
                        break

        async def silent_stream():
            with contextlib.suppress(Exception):
                stream = await stub.rpc_inference(nothing())
                async for response in stream:
                    self._note(response)

        async def info():
            while not self._stop.is_set():
                with contextlib.suppress(Exception):
                    self._note(await stub.rpc_info(runtime_pb2.ExpertRequest(uid=self.model_id), timeout=10))
                    self.requests += 1

        async def until_stopped():
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            silent.set()

        tasks = [asyncio.create_task(t) for t in (*(session(n) for n in range(3)), silent_stream(),
                                                   silent_stream(),
                                                   *(info() for _ in range(32 if index < 5 else 2)))]
        await until_stopped()
        await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            t.cancel()


def server_maddrs(swarm, peer: str, timeout_s: float = 60.0) -> list[str]:
    """Where ``peer`` (a server of ``swarm``, a LocalSwarm) says it is reachable, with its peer id."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in swarm.state().servers:
            if record.peer_id == peer and record.info.addrs:
                return [f"{a}/p2p/{peer}" if "/p2p/" not in a else a for a in record.info.addrs]
        time.sleep(0.5)
    raise AssertionError("the server announced no address")
