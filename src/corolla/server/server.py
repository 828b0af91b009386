"""Server lifecycle: join the DHT, load the span, announce, serve, leave cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import torch

import corolla
from corolla.errors import CorollaError
from corolla.models.loading import load_config, load_span, parse_dtype
from corolla.models.resolve import cache_root, resolve_model
from corolla.protocol.messages import ServerInfo, ServerState, encode_meta
from corolla.protocol.rpc import NAMESPACE, BlockRPC
from corolla.server.config import ServerConfig
from corolla.server.handlers import BlockHandlers
from corolla.server.throughput import Throughput, measure_cached
from corolla.swarm.announce import announce
from corolla.swarm.dht import start_dht

log = logging.getLogger(__name__)


class Server:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.dht = None
        self.handlers: BlockHandlers | None = None
        self.throughput = Throughput(0.0, 0.0)
        self.state = ServerState.JOINING

    # ---- info --------------------------------------------------------------------------------
    def info(self) -> ServerInfo:
        sessions = self.handlers.sessions if self.handlers else None
        used = sessions.tokens_in_use() if sessions else 0
        capacity = self.config.max_sessions * self.config.max_session_length
        return ServerInfo(
            state=self.state,
            start_block=self.start,
            end_block=self.end,
            version=corolla.__version__,
            dtype=self.config.dtype,
            inference_rps=round(self.throughput.inference_rps, 3),
            forward_tps=round(self.throughput.forward_tps, 3),
            cache_tokens_left=max(capacity - used, 0),
            active_sessions=len(sessions) if sessions else 0,
            public_name=self.config.public_name,
        )

    def _announce(self, wait: bool = True):
        return announce(self.dht, self.model_id, self.info(), self.config.announce_expiration_s, wait=wait)

    # ---- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        if not cfg.new_swarm and not cfg.initial_peers:
            raise CorollaError("give --initial-peers to join a swarm, or --new-swarm to start one")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        dtype = parse_dtype(cfg.dtype)
        ref = resolve_model(cfg.model)
        model_config = load_config(ref.path)
        self.model_id = cfg.model_id or ref.model_id
        self.start, self.end = self._choose_blocks(model_config.num_hidden_layers)
        host_maddrs = [f"/ip4/{cfg.host}/tcp/{cfg.port}"]
        announce_maddrs = [f"/ip4/{cfg.announce_host}/tcp/{cfg.port}"] if cfg.announce_host else None
        self.dht = start_dht(
            cfg.initial_peers, host_maddrs=host_maddrs, announce_maddrs=announce_maddrs,
            identity_path=cfg.identity_path, models={self.model_id: model_config.num_hidden_layers},
        )
        self._announce()  # JOINING: others see the blocks are being loaded
        log.info("loading blocks %d:%d of %s (%s)", self.start, self.end, self.model_id, cfg.dtype)
        span = load_span(ref.path, model_config, self.start, self.end, dtype)
        self.throughput = measure_cached(
            cache_root() / "throughput.json",
            {"model": self.model_id, "span": [self.start, self.end], "dtype": cfg.dtype},
            span,
            model_config.hidden_size,
            dtype,
        )
        self.handlers = BlockHandlers(
            model_id=self.model_id,
            span=span,
            start=self.start,
            end=self.end,
            hidden_size=model_config.hidden_size,
            dtype=dtype,
            config=cfg,
            info=lambda: encode_meta(self.info()),
        )

    def _choose_blocks(self, total: int) -> tuple[int, int]:
        cfg = self.config
        if cfg.start_block is not None and cfg.end_block is not None:
            start, end = cfg.start_block, cfg.end_block
        else:
            start, end = 0, min(cfg.num_blocks or total, total)
        if not 0 <= start < end <= total:
            raise CorollaError(f"blocks {start}:{end} are outside the model's 0:{total}")
        return start, end

    async def serve(self) -> None:
        p2p = await self.dht.replicate_p2p()
        await BlockRPC().add_p2p_handlers(p2p, wrapper=self.handlers, namespace=NAMESPACE)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.state = ServerState.ONLINE
        log.info("serving blocks %d:%d of %s as %s", self.start, self.end, self.model_id, self.dht.peer_id)
        print(f"corolla-server ready peer_id={self.dht.peer_id} blocks={self.start}:{self.end}", flush=True)
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._announce(wait=False), self.config.announce_period_s)
            except Exception as e:
                log.warning("announcing to the DHT failed: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), self.config.announce_period_s)
            except asyncio.TimeoutError:
                pass
        self.state = ServerState.OFFLINE
        try:
            await asyncio.wait_for(self._announce(wait=False), 5.0)
            log.info("announced OFFLINE; shutting down")
        except Exception as e:  # the DHT child may already be gone (e.g. Ctrl-C hit the whole group)
            log.warning("could not announce OFFLINE (%s); the record will expire", type(e).__name__)

    def shutdown(self) -> None:
        if self.handlers is not None:
            self.handlers.compute.shutdown(wait=False, cancel_futures=True)
            self.handlers = None
        if self.dht is not None:
            self.dht.shutdown()
            self.dht = None

    def run(self) -> None:
        try:
            self.setup()
            asyncio.run(self.serve())
        finally:
            self.shutdown()
