"""Synthetic swarm states for the pure-function tests (routing, placement)."""

from __future__ import annotations

from corolla.protocol.messages import ServerInfo
from corolla.swarm.discovery import ServerRecord, SwarmState


def server(peer_id: str, start: int, end: int, *, rps: float = 10.0, state: str = "online", sessions: int = 0):
    return ServerRecord(
        peer_id,
        ServerInfo(
            state=state,
            start_block=start,
            end_block=end,
            version="0.1.0",
            dtype="float32",
            inference_rps=rps,
            forward_tps=100.0,
            cache_tokens_left=4096,
            active_sessions=sessions,
        ),
    )


def swarm(num_blocks: int, *servers: ServerRecord, model_id: str = "m") -> SwarmState:
    """A state as discovery builds it: servers sorted by peer id."""
    return SwarmState(model_id, num_blocks, tuple(sorted(servers, key=lambda s: s.peer_id)))
