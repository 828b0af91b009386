"""Configuration of one server; the CLI only maps flags onto this."""

from __future__ import annotations

import dataclasses

from corolla.server.limits import Limits

CACHE_POLICIES = ("wait", "evict-lru")  # see corolla.server.batching


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    model: str  # packaged name, local folder, GGUF file or Hub repo id
    start_block: int | None = None
    end_block: int | None = None
    num_blocks: int | None = None
    model_id: str | None = None  # DHT prefix; default: the model's name
    dtype: str = "float32"
    quant: str = "none"  # none | int8 (CPU dynamic quantization) | bnb-int8 | nf4 (CUDA + bitsandbytes)
    initial_peers: tuple[str, ...] = ()
    new_swarm: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    announce_host: str | None = None
    announce_port: int | None = None  # announce this port instead of ``port`` (a proxy or a port forward)
    identity_path: str | None = None
    # behind NAT: be reachable through a libp2p circuit relay (``relays``; default: the initial peers)
    use_relay: bool = False
    relays: tuple[str, ...] = ()
    public_name: str | None = None
    # limits every request is checked against
    max_session_length: int = 8192  # tokens per session (prompt + generated)
    max_sessions: int = 64
    max_sessions_per_peer: int = 16
    max_batch_size: int = 16
    max_step_tokens: int = 4096  # batch * new tokens in one step or forward call
    max_backward_tokens: int = 2048  # batch * tokens of one backward call (clients chunk by rows within it)
    max_lora_rank: int = 64  # of a client-owned LoRA adapter
    # a streaming training call keeps its forward's autograd graph until the same call brings the
    # gradient (no recompute): at most this many batch x tokens x blocks held at once, and this long
    max_held_train_tokens: int = 65536
    train_hold_s: float = 60.0
    session_idle_timeout_s: float = 600.0  # a session idle this long is dropped (its client replays it)
    # KV cache and batching
    cache_bytes: int = 2 * 1024**3  # KV cache budget for all sessions together
    cache_tokens: int | None = None  # the budget in tokens of this span instead (overrides cache_bytes)
    cache_policy: str = "wait"  # one of CACHE_POLICIES; when it is full: "wait" (then ServerBusy) or "evict-lru"
    cache_wait_s: float = 5.0  # "wait": how long a step may wait for room before ServerBusy
    max_cache_bytes_per_peer: int | None = None  # default: the whole budget
    max_batch_tokens: int = 2048  # tokens of all sessions in one batched forward
    batch_window_ms: float = 0.0  # wait this long for other active sessions' steps before a batch
    cohort_wait_ms: float = 10.0  # longest wait for the rest of a cohort (steps batched together upstream)
    # DHT announcements
    announce_period_s: float = 10.0
    announce_expiration_s: float = 30.0
    torch_threads: int | None = None
    # placement (when no --blocks are given)
    memory_budget_bytes: int | None = None  # default: half of the memory available at start
    rebalance_period_s: float = 60.0  # 0 disables moving
    rebalance_min_gain: float = 1.2  # move when the weakest block's throughput grows by this factor
    throughput: float | None = None  # announce this many steps/s instead of measuring
    # a push to the next hop that takes longer is given up and the client relays the step; an
    # acknowledgement normally takes milliseconds, and a dead next hop fails the push at once
    push_timeout_s: float = 2.0
    # a push may come before the message that opens its session (the client opens every hop at
    # once, on other connections): it waits this long for the session to open
    push_open_wait_s: float = 1.0
    # server-hosted LoRA adapters: (name, PEFT folder) pairs, served to sessions that ask for them
    adapters: tuple[tuple[str, str], ...] = ()
    # fair limits per peer (request and byte rates, open streams, a silent stream's deadline) and
    # for peers never served before, together (see corolla.server.limits)
    peer_limits: Limits = dataclasses.field(default_factory=Limits)
    drain_timeout_s: float = 5.0  # on SIGTERM, how long running steps may take to finish
