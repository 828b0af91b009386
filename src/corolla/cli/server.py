"""``corolla server``: serve a span of a model's blocks to the swarm."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from corolla.cli.common import add_peers
from corolla.errors import CorollaError
from corolla.models.precision import DTYPES, QUANTS
from corolla.server.config import CACHE_POLICIES
from corolla.server.limits import Limits

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")  # as ServerInfo.adapters accepts (protocol.messages)
MAX_ADAPTERS, MAX_ADAPTER_NAME = 64, 64  # ditto


def _blocks(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("use START:END, e.g. 0:12 (END excluded)") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError("START must be >= 0 and END > START")
    return a, b


def register(sub) -> None:
    p = sub.add_parser("server", help="serve some of a model's blocks",
                       description="Load a span of a model's transformer blocks and serve them to the swarm.")
    p.add_argument("model", help="packaged name (see `corolla models list`), local HF folder, GGUF file or Hub repo id")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--blocks", type=_blocks, default=None, metavar="A:B", help="serve blocks A..B-1")
    span.add_argument("--num-blocks", type=int, default=None, metavar="N",
                      help="serve N blocks where the swarm needs them most (default: as many as fit in memory)")
    add_peers(p)
    p.add_argument("--new-swarm", action="store_true", help="start a new swarm instead of joining one")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="compute dtype")
    p.add_argument("--quant", default="none", choices=QUANTS,
                   help="weight quantization: fp16-decode = float16 copies of the linear weights for decode "
                        "steps (about 2x faster one-session decoding on CPU, 1.5x the weight memory); int8 = "
                        "PyTorch dynamic int8 on CPU (both with --dtype float32); bnb-int8 / nf4 need CUDA and "
                        "bitsandbytes (default none)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.add_argument("--announce-host", default=None, help="public address to announce, if behind NAT or 0.0.0.0")
    p.add_argument("--announce-port", type=int, default=None,
                   help="TCP port to announce instead of --port (behind a port forward or a proxy)")
    p.add_argument("--identity", default=None, metavar="FILE",
                   help="private key file (created if missing): a stable peer id, and the key that signs "
                        "this server's DHT records (default: a new key each start)")
    p.add_argument("--use-relay", action="store_true",
                   help="behind NAT or a firewall (no inbound connections): be reachable through a relay peer")
    p.add_argument("--relay", nargs="+", default=[], metavar="MADDR",
                   help="with --use-relay: the peers to relay through (default: the --initial-peers)")
    p.add_argument("--public-name", default=None, help="a name shown in `swarm status`")
    p.add_argument("--max-session-length", type=int, default=8192, help="tokens per session (default 8192)")
    p.add_argument("--max-backward-tokens", type=int, default=2048,
                   help="batch x tokens of one training (backward) call; clients chunk within it (default 2048)")
    p.add_argument("--max-lora-rank", type=int, default=64, help="largest rank of a client's LoRA adapter (default 64)")
    p.add_argument("--max-held-train-tokens", type=int, default=65536,
                   help="batch x tokens x blocks of training graphs kept between a training call's forward and "
                        "backward (no recompute); beyond it clients fall back to recomputing calls (default 65536)")
    p.add_argument("--train-hold-s", type=float, default=60.0,
                   help="how long a training call's graph waits for its gradient (default 60)")
    p.add_argument("--max-sessions", type=int, default=64, help="open sessions at once (default 64)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--max-sessions-per-peer", type=int, default=16, help="open sessions of one client (default 16)")
    p.add_argument("--peer-requests-per-s", type=float, default=Limits.requests_per_s,
                   help=f"steady requests/s one peer may send (bursts of twice that; 0 = no limit; default "
                        f"{Limits.requests_per_s:g})")
    p.add_argument("--peer-mib-per-s", type=float, default=Limits.bytes_per_s / 1024**2,
                   help=f"steady MiB/s one peer may send (0 = no limit; default {Limits.bytes_per_s / 1024**2:g})")
    p.add_argument("--streams-per-peer", type=int, default=Limits.streams_per_peer,
                   help=f"open streams of one peer (default {Limits.streams_per_peer})")
    p.add_argument("--new-peer-sessions", type=int, default=Limits.new_peer_sessions,
                   help="sessions all peers this server has not served before may hold together: a flood of "
                        f"fresh identities cannot take everyone's sessions (default {Limits.new_peer_sessions})")
    p.add_argument("--new-peer-batch-tokens", type=int, default=Limits.new_peer_batch_tokens,
                   help="tokens of peers not yet known in one batched forward: a known peer's step never waits "
                        f"behind more of strangers' work than this (default {Limits.new_peer_batch_tokens})")
    p.add_argument("--session-idle-timeout-s", type=float, default=600.0,
                   help="drop a session idle this long; its client replays it when it comes back (default 600)")
    c = p.add_argument_group("KV cache and batching")
    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--cache-bytes", type=int, default=2 * 1024**3,
                        help="KV cache budget of all sessions together, allocated as they grow (default 2 GiB)")
    budget.add_argument("--cache-tokens", type=int, default=None,
                        help="the budget in tokens of this server's span instead of bytes")
    c.add_argument("--cache-policy", default="wait", choices=CACHE_POLICIES,
                   help="when the cache is full: wait for room (then answer 'busy' so the client re-routes), or "
                        "evict the least recently used idle session (its client replays it) (default wait)")
    c.add_argument("--cache-wait-s", type=float, default=5.0, help="longest wait for room with --cache-policy wait")
    c.add_argument("--max-cache-bytes-per-peer", type=int, default=None,
                   help="KV cache one client may hold here (default: the whole budget)")
    c.add_argument("--max-batch-tokens", type=int, default=2048,
                   help="tokens of all sessions in one batched forward (default 2048)")
    c.add_argument("--batch-window-ms", type=float, default=0.0,
                   help="wait this long for other active sessions' steps before running a batch (default 0)")
    c.add_argument("--cohort-wait-ms", type=float, default=10.0,
                   help="wait up to this long for the rest of a cohort: steps that an upstream batch sent on "
                        "together, so concurrent sessions keep being batched together (default 10; 0: never)")
    g = p.add_argument_group("placement (without --blocks)")
    g.add_argument("--memory-budget-bytes", type=int, default=None,
                   help="how much memory the blocks may take (default: half of what is available)")
    g.add_argument("--rebalance-period-s", type=float, default=60.0,
                   help="how often to check whether moving would help the swarm (0: never move; default 60)")
    g.add_argument("--rebalance-min-gain", type=float, default=1.2,
                   help="move only if the weakest block's throughput grows by this factor (default 1.2)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="host the PEFT LoRA adapter in folder PATH as NAME (repeatable); clients pick it with "
                        "adapter=NAME, the API serves it as MODEL:NAME")
    p.add_argument("--throughput", type=float, default=None, metavar="STEPS_PER_S",
                   help="announce this decode speed instead of measuring it")
    p.add_argument("--announce-period-s", type=float, default=10.0, help="re-announce every N s (default 10)")
    p.set_defaults(func=run)


def parse_adapters(values: list[str]) -> tuple[tuple[str, str], ...]:
    """``--adapter NAME=PATH`` values as (name, folder) pairs; a CorollaError says what is wrong."""
    pairs: dict[str, str] = {}
    for value in values:
        name, eq, path = value.partition("=")
        if not eq or not name or not path:
            raise CorollaError(f"--adapter {value!r}: use NAME=PATH, e.g. --adapter sql=./sql-lora")
        if not ADAPTER_NAME.match(name) or len(name) > MAX_ADAPTER_NAME:
            raise CorollaError(f"--adapter {value!r}: the name must be letters, digits, '.', '_' or '-' (not first), "
                               f"at most {MAX_ADAPTER_NAME} characters")
        if name in pairs:
            raise CorollaError(f"--adapter {value!r}: the name {name!r} is given twice")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise CorollaError(f"--adapter {value!r}: {path} is not a folder (a PEFT LoRA adapter folder is)")
        if not (folder / "adapter_config.json").is_file():
            raise CorollaError(f"--adapter {value!r}: {path} has no adapter_config.json (not a PEFT adapter folder)")
        pairs[name] = str(folder.resolve())
    if len(pairs) > MAX_ADAPTERS:
        raise CorollaError(f"a server hosts at most {MAX_ADAPTERS} adapters, not {len(pairs)}")
    return tuple(pairs.items())


def run(args: argparse.Namespace) -> int:
    from corolla.server.config import ServerConfig
    from corolla.server.server import Server

    adapters = parse_adapters(args.adapter)  # before any loading: a typo fails in a second, not minutes
    start, end = args.blocks if args.blocks else (None, None)
    config = ServerConfig(
        model=args.model, start_block=start, end_block=end, num_blocks=args.num_blocks, model_id=args.model_id,
        dtype=args.dtype, quant=args.quant, initial_peers=tuple(args.initial_peers), new_swarm=args.new_swarm,
        host=args.host, port=args.port, announce_host=args.announce_host,
        announce_port=args.announce_port, identity_path=args.identity,
        public_name=args.public_name, use_relay=args.use_relay, relays=tuple(args.relay),
        max_session_length=args.max_session_length, max_backward_tokens=args.max_backward_tokens,
        max_lora_rank=args.max_lora_rank, max_held_train_tokens=args.max_held_train_tokens,
        train_hold_s=args.train_hold_s, max_sessions=args.max_sessions, torch_threads=args.torch_threads,
        max_sessions_per_peer=args.max_sessions_per_peer, session_idle_timeout_s=args.session_idle_timeout_s,
        cache_bytes=args.cache_bytes, cache_tokens=args.cache_tokens, cache_policy=args.cache_policy,
        cache_wait_s=args.cache_wait_s, max_cache_bytes_per_peer=args.max_cache_bytes_per_peer,
        max_batch_tokens=args.max_batch_tokens, batch_window_ms=args.batch_window_ms,
        cohort_wait_ms=args.cohort_wait_ms,
        memory_budget_bytes=args.memory_budget_bytes, rebalance_period_s=args.rebalance_period_s,
        rebalance_min_gain=args.rebalance_min_gain, throughput=args.throughput,
        announce_period_s=args.announce_period_s, announce_expiration_s=max(30.0, 3 * args.announce_period_s),
        adapters=adapters,
        peer_limits=Limits(requests_per_s=args.peer_requests_per_s, request_burst=2 * args.peer_requests_per_s,
                           bytes_per_s=args.peer_mib_per_s * 1024**2, byte_burst=4 * args.peer_mib_per_s * 1024**2,
                           streams_per_peer=args.streams_per_peer, new_peer_sessions=args.new_peer_sessions,
                           new_peer_batch_tokens=args.new_peer_batch_tokens),
    )
    Server(config).run()
    return 0
