"""``corolla swarm up`` (a whole swarm on this machine) and ``corolla swarm status``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from corolla.cli.common import add_peers, add_sampling
from corolla.models.precision import DTYPES


def register(sub) -> None:
    p = sub.add_parser("swarm", help="run a local swarm, or show a swarm's state",
                       description="Run a whole swarm on this machine, or inspect one.")
    s = p.add_subparsers(dest="swarm_command", metavar="SUBCOMMAND", required=True)

    up = s.add_parser("up", help="a bootstrap peer and N servers splitting the blocks, on this machine",
                      description="Start a bootstrap DHT peer and N server processes that split the model's "
                                  "blocks; print the multiaddr others join with. Ctrl-C stops everything.")
    up.add_argument("model", help="packaged name, local HF folder, GGUF file or Hub repo id")
    up.add_argument("--servers", type=int, default=3, help="number of server processes (default 3)")
    up.add_argument("--dtype", default="float32", choices=DTYPES)
    up.add_argument("--chat", action="store_true", help="once ready, chat in this terminal (stdin); stop at EOF")
    up.add_argument("--system", default=None, help="system prompt for --chat")
    up.add_argument("--api-port", type=int, default=None,
                    help="also serve the OpenAI-compatible API and the web pages on 127.0.0.1:PORT (0: any free port)")
    up.add_argument("--log-dir", default=None, help="where server logs go (default: a temporary folder)")
    add_sampling(up)
    up.set_defaults(func=run_up)

    st = s.add_parser("status", help="which servers hold which blocks",
                      description="Show each server's blocks, state, speed and load, and blocks nobody serves.")
    st.add_argument("model", help="packaged name, local HF folder, GGUF file or Hub repo id")
    add_peers(st)
    st.add_argument("--json", action="store_true", help="print JSON for scripts")
    st.set_defaults(func=run_status)


def run_up(args: argparse.Namespace) -> int:
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.shutdown import STOP, on_stop_signals
    from corolla.swarm.local import LocalSwarm, even_spans

    ref = resolve_model(args.model)
    config = load_config(ref.path)
    n = config.num_hidden_layers
    spans = even_spans(n, args.servers)
    print(f"starting a swarm of {args.servers} servers for {ref.model_id} ({n} blocks)...", file=sys.stderr)
    swarm = LocalSwarm(str(ref.path), n, ref.model_id, log_dir=args.log_dir,
                       server_args=["--dtype", args.dtype])
    # SIGTERM behaves like Ctrl-C: a KeyboardInterrupt wherever we are, then everything we started stops
    on_stop_signals(interrupt=True)  # (the bootstrap's DHT child, forked below, gets the default handlers back)
    try:
        swarm.start_bootstrap()
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"loading {n} blocks on {args.servers} servers", total=args.servers)
            swarm.start(spans, on_progress=lambda ready: progress.update(task, completed=ready))
        print(f"swarm ready: all {n} blocks of {ref.model_id} are served "
              f"({', '.join(f'{a}:{b}' for a, b in spans)})", file=sys.stderr)
        print("join it with: --initial-peers " + " ".join(swarm.initial_peers), file=sys.stderr, flush=True)
        if args.chat or args.api_port is not None:
            from corolla.client.model import DistributedModelForCausalLM

            with DistributedModelForCausalLM.from_pretrained(ref.path, dht=swarm.dht, model_id=ref.model_id) as model:
                with _api(model, args.api_port):
                    if args.chat:
                        from corolla.cli.generate import chat_with

                        return chat_with(model, args)
                    STOP.wait()
        STOP.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the swarm...", file=sys.stderr, flush=True)
        # the servers get what is left of the deadline, less a margin to kill the ones that overrun it
        swarm.stop(STOP.remaining(margin_s=SWARM_STOP_MARGIN_S) if STOP.requested else SWARM_STOP_S)
    return 0


SWARM_STOP_S = 15.0  # without a deadline (the chat ended), how long the servers may take to leave
SWARM_STOP_MARGIN_S = 2.0  # on a stop, time kept to kill servers that overrun and stop the bootstrap peer
API_ENGINE_CLOSE_S = 1.5  # on a stop, how long cancelled generations may take to close their sessions


@contextlib.contextmanager
def _api(model, port: int | None):
    """The API and web pages on 127.0.0.1:``port`` in a thread of this process, while inside.
    Leaving ends its open requests (streams with an error event) and waits briefly for their
    generations to close their sessions."""
    if port is None:
        yield
        return
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.errors import CorollaError

    engine = SwarmEngine(model)
    with contextlib.ExitStack() as stack:
        stack.callback(engine.close, API_ENGINE_CLOSE_S)  # after the server stopped (the stack unwinds LIFO)
        try:
            base = stack.enter_context(serving(create_app(engine), "127.0.0.1", port))
        except CorollaError as e:  # a busy port must not cost the user their chat
            print(f"not serving the API: {e}", file=sys.stderr, flush=True)
        else:
            print(f"web chat and swarm dashboard: {base}/  OpenAI-compatible API: {base}/v1", file=sys.stderr,
                  flush=True)
        yield


def run_status(args: argparse.Namespace) -> int:
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.dht import start_dht
    from corolla.swarm.discovery import fetch_swarm_state

    ref = resolve_model(args.model, progress=False)
    n = load_config(ref.path).num_hidden_layers
    model_id = args.model_id or ref.model_id
    dht = start_dht(args.initial_peers, client_mode=True)
    try:
        state = fetch_swarm_state(dht, model_id, n)
    finally:
        dht.shutdown()
    coverage = state.coverage()
    if args.json:
        print(json.dumps({
            "model_id": model_id,
            "num_blocks": n,
            "coverage": coverage,
            "servers": [{"peer_id": s.peer_id, **s.info.model_dump(mode="json")} for s in state.servers],
        }, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model_id}: {n} blocks, {len(state.servers)} servers")
    for col in ("peer", "name", "blocks", "state", "steps/s", "prefill tok/s", "sessions", "queued", "dtype",
                "adapters", "version"):
        table.add_column(col)
    for s in state.servers:
        i = s.info
        table.add_row(s.peer_id[-12:], i.public_name or "", f"{i.start_block}:{i.end_block}", i.state.value,
                      f"{i.inference_rps:.1f}", f"{i.forward_tps:.0f}", str(i.active_sessions), str(i.queued_requests),
                      i.dtype, ", ".join(i.adapters), i.version)
    console = Console()
    console.print(table)
    strip = "".join("[red]·[/]" if c == 0 else "[yellow]1[/]" if c == 1 else f"[green]{min(c, 9)}[/]" for c in coverage)
    console.print(f"servers per block: {strip}")
    missing = [b for b, c in enumerate(coverage) if c == 0]
    single = [b for b, c in enumerate(coverage) if c == 1]
    console.print(f"blocks with no server: {_ranges(missing) or 'none'}")
    console.print(f"blocks with a single server: {_ranges(single) or 'none'}")
    return 0 if not missing else 3


def _ranges(blocks: list[int]) -> str:
    out, start = [], None
    for i, b in enumerate(blocks):
        if start is None:
            start = b
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            out.append(f"{start}" if start == b else f"{start}-{b}")
            start = None
    return ", ".join(out)
