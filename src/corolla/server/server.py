"""Server lifecycle: join the DHT, pick and load a span, announce, serve, rebalance, leave cleanly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hivemind.proto import runtime_pb2

from corolla import __version__
from corolla.cache import cache_root
from corolla.errors import CorollaError
from corolla.models.adapters import BlockAdapters
from corolla.models.loading import block_sizes, load_config, load_span, module_bytes, parse_dtype
from corolla.models.manifest import block_hashes, manifest_of, swarm_key
from corolla.models.peft import load_lora
from corolla.models.quant import check_dtype, check_quant, quantize_span
from corolla.models.registry import family_for
from corolla.models.resolve import resolve_model
from corolla.protocol.messages import ServerInfo, ServerState, encode_meta
from corolla.protocol.rpc import NAMESPACE, BlockRPC, stub_for
from corolla.server import placement
from corolla.server.config import ServerConfig
from corolla.server.handlers import BlockHandlers
from corolla.server.push import PushLinks
from corolla.server.throughput import Throughput, measure_cached
from corolla.shutdown import STOP, on_stop_signals
from corolla.swarm.announce import announce
from corolla.swarm.dht import start_dht
from corolla.swarm.discovery import fetch_swarm_state

log = logging.getLogger(__name__)

LEAVE_ANNOUNCE_S = 2.0  # on a stop, the longest wait for the OFFLINE announcement
LEAVE_MARGIN_S = 4.0  # on a stop, time kept after draining for closing sessions and the DHT


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.dht = None
        self.p2p = None
        self.handlers: BlockHandlers | None = None
        self.throughput = Throughput(0.0, 0.0)
        self.state = ServerState.JOINING
        self.next_pings: dict[str, float] = {}
        self.block_bytes: list[int] = []  # per block of the model, from the checkpoint's headers
        self.weight_bytes = 0  # of the loaded span, measured
        self.addrs: tuple[str, ...] = ()  # where others reach us, as our p2p daemon says (see _read_addrs)

    # ---- info --------------------------------------------------------------------------------
    def info(self, state: ServerState | None = None, span: tuple[int, int] | None = None) -> ServerInfo:
        handlers = self.handlers
        start, end = span or (self.start, self.end)
        return ServerInfo(
            state=state or self.state,
            start_block=start,
            end_block=end,
            version=__version__,
            dtype=self.config.dtype,
            quant=self.config.quant,
            inference_rps=round(self.throughput.inference_rps, 3),
            forward_tps=round(self.throughput.forward_tps, 3),
            cache_tokens_left=handlers.cache_tokens_left if handlers else 0,
            active_sessions=len(handlers.sessions) if handlers else 0,
            queued_requests=handlers.inflight + handlers.batcher.pending + handlers.training.active if handlers else 0,
            steps_served=handlers.batcher.steps if handlers else 0,
            batches_run=handlers.batcher.batches if handlers else 0,
            public_name=self.config.public_name,
            # before the blocks are loaded (JOINING) the names to come: clients wait for such a host
            adapters=tuple(sorted(handlers.hosted) if handlers else sorted(name for name, _ in self.config.adapters)),
            trainable=self.config.quant == "none",
            max_backward_tokens=self.config.max_backward_tokens,
            max_session_length=self.config.max_session_length,
            weight_bytes=self.weight_bytes or sum(self.block_bytes[start:end]),
            next_pings={peer: round(rtt, 6) for peer, rtt in sorted(self.next_pings.items())[:64]},
            addrs=self.addrs,
            block_hashes=block_hashes(self.manifest, start, end),
        )

    def _announce(self, info: ServerInfo | None = None, wait: bool = True):
        return announce(self.dht, self.model_id, info or self.info(), self.config.announce_expiration_s, wait=wait)

    # ---- start-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        if not cfg.new_swarm and not cfg.initial_peers:
            raise CorollaError("give --initial-peers to join a swarm, or --new-swarm to start one")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.dtype = parse_dtype(cfg.dtype)
        check_dtype(self.dtype)
        check_quant(cfg.quant, self.dtype)
        ref = resolve_model(cfg.model)
        self.path = ref.path
        self.model_config = load_config(ref.path)
        family_for(self.model_config).check_precision(self.model_config, self.dtype, cfg.quant)
        self.total = self.model_config.num_hidden_layers
        self.manifest = manifest_of(ref.path)  # read once per version of the files, then cached
        self.model_id = swarm_key(cfg.model_id or ref.model_id, self.manifest)
        self.block_bytes = block_sizes(ref.path, self.model_config, self.dtype, cfg.quant)
        host_maddrs = [f"/ip4/{cfg.host}/tcp/{cfg.port}"]
        announce_maddrs = ([f"/ip4/{cfg.announce_host or cfg.host}/tcp/{cfg.announce_port or cfg.port}"]
                           if cfg.announce_host or cfg.announce_port else None)
        self.dht = start_dht(
            cfg.initial_peers, host_maddrs=host_maddrs, announce_maddrs=announce_maddrs,
            identity_path=cfg.identity_path, models={self.model_id: self.total},
            use_relay=cfg.use_relay, relays=cfg.relays,
        )
        self.peer_id = self.dht.peer_id.to_base58()
        self.start, self.end = self._choose_blocks()
        self._announce()  # JOINING: others see these blocks are being loaded
        # adapters first: a folder that does not fit the model fails before minutes of loading blocks
        hosted = load_hosted(cfg.adapters, self.model_config, self.start, self.end, self.dtype)
        span = self._load(self.start, self.end)
        self.handlers = BlockHandlers(
            model_id=self.model_id, span=span, start=self.start, end=self.end,
            hidden_size=self.model_config.hidden_size, dtype=self.dtype, config=cfg,
            info=lambda: encode_meta(self.info()),
        )
        self.handlers.trainable = cfg.quant == "none"
        self.handlers.hosted = hosted
        if hosted:
            log.info("hosting adapters %s", ", ".join(sorted(hosted)))

    @property
    def auto_placed(self) -> bool:
        return self.config.start_block is None

    def _choose_blocks(self) -> tuple[int, int]:
        cfg, total = self.config, self.total
        if not self.auto_placed:
            start, end = cfg.start_block, cfg.end_block
            if not 0 <= start < end <= total:
                raise CorollaError(f"blocks {start}:{end} are outside the model's 0:{total}")
            return start, end
        n = cfg.num_blocks or placement.blocks_that_fit(
            self.block_bytes,
            cfg.memory_budget_bytes or placement.available_memory_bytes() // 2,
        )
        n = max(1, min(n, total))
        state = fetch_swarm_state(self.dht, self.model_id, total)
        start = placement.choose_blocks(placement.block_throughput(state), n)
        log.info("chose blocks %d:%d (the swarm's least served window of %d)", start, start + n, n)
        return start, start + n

    def _load(self, start: int, end: int) -> torch.nn.Module:
        log.info("loading blocks %d:%d of %s (%s)", start, end, self.model_id, self.config.dtype)
        span = quantize_span(load_span(self.path, self.model_config, start, end, self.dtype), self.config.quant,
                             self.dtype)
        self.weight_bytes = module_bytes(span.layers)  # the blocks (rotary tables aside)
        if self.config.throughput is not None:
            self.throughput = Throughput(self.config.throughput, self.config.throughput * 16)
        else:
            self.throughput = measure_cached(
                cache_root() / "throughput.json",
                {"model": self.model_id, "span": [start, end], "dtype": self.config.dtype, "quant": self.config.quant},
                span, self.model_config.hidden_size, self.dtype,
            )
        return span

    # ---- serving -----------------------------------------------------------------------------
    async def serve(self) -> None:
        self.p2p = await self.dht.replicate_p2p()
        self.handlers.pushes = PushLinks(self.p2p)
        await BlockRPC().add_p2p_handlers(self.p2p, wrapper=self.handlers, namespace=NAMESPACE)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(_UnwaitedExecutor(thread_name_prefix="corolla-server-io"))
        on_stop_signals(lambda: loop.call_soon_threadsafe(stop.set))  # SIGTERM / Ctrl-C: leave (see _leave)
        self.state = ServerState.ONLINE
        log.info("serving blocks %d:%d of %s as %s", self.start, self.end, self.model_id, self.peer_id)
        print(f"corolla-server ready peer_id={self.peer_id} blocks={self.start}:{self.end} model={self.model_id}",
              flush=True)
        rng = random.Random(self.peer_id)  # servers seeing the same gap should not all move at once
        next_rebalance = time.monotonic() + self.config.rebalance_period_s * (1 + rng.random())
        while not stop.is_set():
            await self._until(stop, self._guarded(self._read_addrs(), "reading our addresses"))
            await self._until(stop, self._guarded(self._announce(wait=False), "announcing to the DHT"))
            await self._until(stop, self._guarded(self._measure_pings(), "measuring pings"))
            if (self.auto_placed and self.config.rebalance_period_s > 0 and time.monotonic() >= next_rebalance
                    and not stop.is_set()):
                await self._until(stop, self._guarded(self._maybe_move(), "rebalancing"))
                next_rebalance = time.monotonic() + self.config.rebalance_period_s * (1 + rng.random())
            try:
                await asyncio.wait_for(stop.wait(), self.config.announce_period_s)
            except TimeoutError:
                pass
        await self._leave()

    @staticmethod
    async def _until(stop: asyncio.Event, coro) -> None:
        """Run ``coro`` unless ``stop`` is set first: a stop does not wait for a DHT round or a move."""
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _guarded(self, coro, what: str, timeout_s: float | None = None) -> None:
        try:
            await asyncio.wait_for(coro, timeout_s or max(self.config.announce_period_s, 5.0))
        except Exception as e:  # a flaky DHT must not take the server down
            log.warning("%s failed: %s: %s", what, type(e).__name__, e)

    async def _leave(self) -> None:
        """Announce OFFLINE first (clients stop choosing us), let running steps finish, then close the
        sessions (their clients re-route at once). Bounded: the process exits within the stop deadline."""
        self.state = ServerState.OFFLINE
        await self._guarded(self._announce(wait=False), "announcing OFFLINE", LEAVE_ANNOUNCE_S)
        await self.handlers.drain(max(0.0, min(self.config.drain_timeout_s, STOP.remaining(margin_s=LEAVE_MARGIN_S))))
        self.handlers.batcher.close()
        if self.handlers.pushes is not None:
            self.handlers.pushes.close()
        log.info("left the swarm")

    async def _read_addrs(self) -> None:
        """Our visible multiaddrs, as the daemon has them now (a relayed address comes once a relay
        reserved us a slot): shown by `swarm status`."""
        self.addrs = tuple(str(a) for a in await self.p2p.get_visible_maddrs(latest=True))[:16]

    async def _measure_pings(self) -> None:
        """Round trips to the servers holding the block right after ours (used by client routing)."""
        if self.end >= self.total:
            self.next_pings = {}
            return
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, fetch_swarm_state, self.dht, self.model_id, self.total)
        pings = {}
        for s in state.servers:
            if s.peer_id == self.peer_id or not s.start <= self.end < s.end or s.info.state is not ServerState.ONLINE:
                continue
            t0 = time.perf_counter()
            try:
                await stub_for(self.p2p, s.peer_id).rpc_info(runtime_pb2.ExpertRequest(uid=self.model_id), timeout=5)
                pings[s.peer_id] = time.perf_counter() - t0
            except Exception:
                continue
        self.next_pings = pings

    async def _maybe_move(self) -> None:
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, fetch_swarm_state, self.dht, self.model_id, self.total)
        start = placement.plan_move(state, self.peer_id, self.throughput.inference_rps, self.config.rebalance_min_gain)
        if start is None:
            return
        old, n = (self.start, self.end), self.end - self.start
        log.info("moving from blocks %d:%d to %d:%d to strengthen the swarm's weakest blocks", *old, start, start + n)
        await self._announce(self.info(ServerState.JOINING, (start, start + n)), wait=False)
        # hosted adapters are kept for the span's blocks only (keyed by local block): load the new ones
        hosted = await loop.run_in_executor(None, load_hosted, self.config.adapters, self.model_config, start,
                                            start + n, self.dtype)
        span = await loop.run_in_executor(None, self._load, start, start + n)
        await loop.run_in_executor(self.handlers.compute, self._swap, span, hosted, start, start + n)
        self.start, self.end = start, start + n
        await self._announce(self.info(ServerState.OFFLINE, old), wait=False)  # the old blocks: gone
        await self._announce(wait=False)
        print(f"corolla-server moved peer_id={self.peer_id} blocks={self.start}:{self.end}", flush=True)

    def _swap(self, span: torch.nn.Module, hosted: dict[str, BlockAdapters], start: int, end: int) -> None:
        """Serve blocks ``start:end`` with their adapters (on the compute thread, between steps): no step
        ever sees the new span with the old span's adapters. Sessions opened before are lost anyway
        (the handlers' generation), adapters included."""
        self.handlers.swap_span(span, start, end)
        self.handlers.hosted = hosted

    def shutdown(self) -> None:
        if self.handlers is not None:
            self.handlers.compute.shutdown(wait=False, cancel_futures=True)
            self.handlers = None
        if self.dht is not None:
            self.dht.shutdown()
            self.dht = None

    def run(self) -> None:
        """Start, serve until SIGTERM or Ctrl-C, leave. A signal during start-up (loading blocks can
        take minutes) interrupts it; once serving, it leaves in order (see :meth:`_leave`)."""
        on_stop_signals(interrupt=True)  # the DHT child forked in setup() gets the default handlers back
        try:
            self.setup()
            asyncio.run(self.serve())
        finally:
            self.shutdown()


def load_hosted(adapters: Sequence[tuple[str, str]], model_config: Any, start: int, end: int,
                dtype: torch.dtype) -> dict[str, BlockAdapters]:
    """The server-hosted LoRA adapters ``(name, PEFT folder)`` for blocks ``start:end``, keyed by local
    block and in the compute dtype, as :class:`~corolla.server.handlers.BlockHandlers` applies them.
    Only these blocks' tensors are read: a server holds no more of an adapter than of the model."""
    hosted = {}
    for name, folder in adapters:
        lora = load_lora(Path(folder), model_config, blocks=range(start, end))
        pairs = {(block - start, target): (a.to(dtype), b.to(dtype)) for (block, target), (a, b) in lora.pairs.items()}
        hosted[name] = BlockAdapters(lora=pairs, scale=lora.scale)
    return hosted


class _UnwaitedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (DHT reads, loading blocks to move): when ``asyncio.run`` ends it
    is not waited for, so a stop does not wait for a move's load; leftovers are the exit's business
    (see :func:`corolla.shutdown.start_exit_fuse`)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)
