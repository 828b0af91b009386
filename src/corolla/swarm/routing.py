"""Choosing a chain of servers that covers blocks ``start:end`` — pure functions.

Inference takes the lowest-latency chain: a shortest path over block boundaries where taking
server S from block ``b`` to ``S.end`` costs one network round trip (the client's own
measurement of S, else the one the previous server measured to S and announced) plus the
compute time of those blocks from S's announced speed and load. Ties break on fewer hops,
then on peer id.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Collection, Mapping

from corolla.errors import NoRouteError, UnknownAdapterError
from corolla.protocol.messages import ServerState
from corolla.swarm.discovery import ServerRecord, SwarmState

DEFAULT_HOP_S = 0.005  # assumed round trip to a server we have not measured yet
MIN_RPS = 1e-3


@dataclasses.dataclass(frozen=True)
class Hop:
    peer_id: str
    start: int
    end: int


def step_cost_s(server: ServerRecord, start: int, end: int, rtt_s: float, tokens: int | None = None) -> float:
    """Estimated seconds for blocks ``start:end`` of ``server``: one decode step, or, with
    ``tokens``, a stateless forward of that many tokens (from the announced prefill speed)."""
    span = server.end - server.start
    if tokens is None:
        per_block = 1.0 / (max(server.info.inference_rps, MIN_RPS) * span)
    else:
        per_block = tokens / (max(server.info.forward_tps, MIN_RPS) * span)
    load_penalty = 1.0 + 0.1 * server.info.active_sessions + 0.5 * server.info.queued_requests
    return rtt_s + per_block * (end - start) * load_penalty


def usable(state: SwarmState, banned: Collection[str] = (), allowed: Collection[str] | None = None,
           adapter: str | None = None, trainable: bool = False):
    """Online servers the caller may use, sorted by peer id (so ties break the same way everywhere).
    ``adapter``: only servers hosting that adapter; ``trainable``: only servers that run backward."""
    servers = [
        s
        for s in state.servers
        if s.info.state is ServerState.ONLINE
        and s.peer_id not in banned
        and (allowed is None or s.peer_id in allowed)
        and (adapter is None or adapter in s.info.adapters)
        and (not trainable or s.info.trainable)
    ]
    return sorted(servers, key=lambda s: s.peer_id)


def check_adapter(state: SwarmState, adapter: str, allowed: Collection[str] | None = None) -> None:
    """Raise UnknownAdapterError if some server is online and no server the caller may use hosts
    ``adapter`` (bans aside: a banned host is back soon). An empty swarm raises nothing: its
    servers may still be starting, and the caller waits for them as for any missing block."""
    may_use = [s for s in state.servers if allowed is None or s.peer_id in allowed]
    if any(adapter in s.info.adapters for s in may_use if s.info.state is not ServerState.OFFLINE):
        return
    if not any(s.info.state is ServerState.ONLINE for s in may_use):
        return
    hosted = sorted({name for s in may_use if s.info.state is ServerState.ONLINE for name in s.info.adapters})
    raise UnknownAdapterError(f"no server of {state.model_id} hosts adapter {adapter!r} "
                              f"(adapters hosted now: {', '.join(hosted) or 'none'})")


def missing_spans(servers: list[ServerRecord], start: int, end: int) -> list[tuple[int, int]]:
    covered = [False] * (end - start)
    for s in servers:
        for b in range(max(s.start, start), min(s.end, end)):
            covered[b - start] = True
    spans, run_start = [], None
    for i, ok in enumerate(covered + [True]):
        if not ok and run_start is None:
            run_start = i
        elif ok and run_start is not None:
            spans.append((start + run_start, start + i))
            run_start = None
    return spans


def plan_chain(
    state: SwarmState,
    start: int = 0,
    end: int | None = None,
    *,
    banned: Collection[str] = (),
    allowed: Collection[str] | None = None,
    rtt_s: Mapping[str, float] | None = None,
    forward_tokens: int | None = None,
    adapter: str | None = None,
    trainable: bool = False,
) -> list[Hop]:
    """The fastest chain covering ``start:end``; raises NoRouteError naming uncovered blocks.

    By default the cost is that of one decode step (inference sessions); ``forward_tokens``
    plans a stateless forward of that many tokens instead, weighing servers by prefill speed.
    ``adapter``: only servers hosting it; UnknownAdapterError when servers are online but none
    (joining ones included) announces it, since waiting for missing blocks would not help.
    """
    end = state.num_blocks if end is None else end
    if adapter is not None:
        check_adapter(state, adapter, allowed)
    servers = usable(state, banned, allowed, adapter, trainable)
    by_peer = {s.peer_id: s for s in servers}
    rtt_s = rtt_s or {}

    def hop_rtt(prev: str | None, nxt: ServerRecord) -> float:
        if nxt.peer_id in rtt_s:  # the client talks to every hop: its own measurement comes first
            return rtt_s[nxt.peer_id]
        if prev is not None:  # else the network distance the previous server measured and announced
            return by_peer[prev].info.next_pings.get(nxt.peer_id, DEFAULT_HOP_S)
        return DEFAULT_HOP_S

    # Dijkstra over (position, previous server); cost is (seconds, hops), then the path of peer ids
    best: dict[tuple[int, str | None], tuple[float, int]] = {(start, None): (0.0, 0)}
    heap: list = [(0.0, 0, (), start, None, ())]
    while heap:
        cost, hops, ids, pos, prev, path = heapq.heappop(heap)
        if pos == end:
            return list(path)
        if best.get((pos, prev), (float("inf"), 0)) < (cost, hops):
            continue
        for s in servers:
            if not s.start <= pos < s.end:
                continue
            nxt = min(s.end, end)
            c = cost + step_cost_s(s, pos, nxt, hop_rtt(prev, s), forward_tokens)
            if (c, hops + 1) < best.get((nxt, s.peer_id), (float("inf"), 0)):
                best[(nxt, s.peer_id)] = (c, hops + 1)
                hop = Hop(s.peer_id, pos, nxt)
                heapq.heappush(heap, (c, hops + 1, ids + (s.peer_id,), nxt, s.peer_id, path + (hop,)))
    raise NoRouteError(state.model_id, missing_spans(servers, start, end) or [(start, end)])
