"""Where a server should sit in the swarm — pure functions over the swarm's state.

A server that is not told which blocks to serve takes the window of blocks where the swarm's
announced throughput is lowest; a running server moves when that raises the throughput of the
swarm's weakest block by a configurable factor (and so never leaves a block uncovered that
was covered).
"""

from __future__ import annotations

from collections.abc import Sequence

from corolla.protocol.messages import ServerState
from corolla.swarm.discovery import SwarmState

SERVING = (ServerState.ONLINE, ServerState.JOINING)


def block_throughput(state: SwarmState, exclude: str | None = None) -> list[float]:
    """Per block: decode steps/s the swarm can push through it (sum over its servers).

    A server still joining has not measured its speed yet: it counts as a typical server.
    """
    serving = [s for s in state.servers if s.peer_id != exclude and s.info.state in SERVING]
    known = sorted(s.info.inference_rps * (s.end - s.start) for s in serving if s.info.inference_rps > 0)
    typical = known[len(known) // 2] if known else 1.0
    total = [0.0] * state.num_blocks
    for s in serving:
        # a step through one block of s takes 1 / (rps * span length) seconds
        per_block = s.info.inference_rps * (s.end - s.start) if s.info.inference_rps > 0 else typical
        for b in range(s.start, min(s.end, state.num_blocks)):
            total[b] += per_block
    return total


def choose_blocks(throughput: list[float], num_blocks: int) -> int:
    """Start of the ``num_blocks`` window with the least throughput; ties: lowest start.

    Gaps first: the window holding the most blocks without any server wins, whatever the sums.
    """
    n = min(num_blocks, len(throughput))
    windows = [
        (-sum(t <= 0.0 for t in throughput[i : i + n]), sum(throughput[i : i + n]), i)
        for i in range(len(throughput) - n + 1)
    ]
    return min(windows)[-1]


def weakest(throughput: list[float]) -> float:
    return min(throughput) if throughput else 0.0


def plan_move(state: SwarmState, peer_id: str, my_rps: float, min_gain: float = 1.2) -> int | None:
    """New start block for ``peer_id`` if moving raises the weakest block's throughput enough."""
    me = next((s for s in state.servers if s.peer_id == peer_id), None)
    if me is None:
        return None
    n = me.end - me.start
    others = block_throughput(state, exclude=peer_id)
    best = choose_blocks(others, n)
    if best == me.start:
        return None
    mine = my_rps * n

    def with_me_at(start: int) -> float:
        return weakest([t + (mine if start <= b < start + n else 0.0) for b, t in enumerate(others)])

    before, after = with_me_at(me.start), with_me_at(best)
    if after <= 0.0:
        return None
    return best if before <= 0.0 or after >= before * min_gain else None


def blocks_that_fit(block_bytes: Sequence[int], budget_bytes: int) -> int:
    """How many consecutive blocks fit a memory budget wherever they start (at least one, at most
    the model). ``block_bytes`` is each block's size (they differ where a model mixes dense and
    mixture-of-experts blocks); sizes of 0 (unknown) take the whole model."""
    total = len(block_bytes)
    if total == 0 or min(block_bytes) <= 0:
        return max(total, 1)
    n = 0
    while n < total and _heaviest_window(block_bytes, n + 1) <= budget_bytes:
        n += 1
    return max(1, n)


def _heaviest_window(block_bytes: Sequence[int], n: int) -> int:
    window = sum(block_bytes[:n])
    heaviest = window
    for i in range(n, len(block_bytes)):
        window += block_bytes[i] - block_bytes[i - n]
        heaviest = max(heaviest, window)
    return heaviest


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30
