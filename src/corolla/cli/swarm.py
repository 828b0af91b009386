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

    up = s.add_parser("up", help="a bootstrap peer and N servers per model splitting its blocks, on this machine",
                      description="Start a bootstrap DHT peer and, for each MODEL, N server processes that split "
                                  "its blocks (several models share the one swarm); print the multiaddr others "
                                  "join with. Ctrl-C stops everything.")
    up.add_argument("models", nargs="+", metavar="MODEL",
                    help="packaged name, local HF folder, GGUF file or Hub repo id (several: a swarm serving each)")
    up.add_argument("--servers", type=int, default=3, help="number of server processes per model (default 3)")
    up.add_argument("--dtype", default="float32", choices=DTYPES)
    up.add_argument("--quant", default="none", choices=("none", "fp16-decode", "int8"),
                    help="the servers' --quant; fp16-decode also gives this process's client (chat, API) a float16 "
                         "copy of the LM head for decode steps: about 2x faster one-session decoding on CPU, "
                         "1.5x the weight memory, outputs rounded to float16 (default none)")
    up.add_argument("--chat", action="store_true",
                    help="once ready, chat with the first MODEL in this terminal (stdin); stop at EOF")
    up.add_argument("--system", default=None, help="system prompt for --chat")
    up.add_argument("--api-port", type=int, default=None,
                    help="also serve the OpenAI-compatible API (every MODEL) and the web pages on 127.0.0.1:PORT "
                         "(0: any free port)")
    up.add_argument("--log-dir", default=None, help="where server logs go (default: a temporary folder)")
    add_sampling(up)
    up.set_defaults(func=run_up)

    st = s.add_parser("status", help="which models a swarm serves, or which servers hold which blocks of one",
                      description="Without MODEL: every model the swarm serves, with its block coverage. With "
                                  "MODEL: each server's blocks, state, speed and load, and blocks nobody serves. "
                                  "Exit status 3 when some block has no server (or the swarm serves no model).")
    st.add_argument("model", nargs="?", default=None,
                    help="packaged name, local HF folder, GGUF file or Hub repo id (as the swarm lists it: no need "
                         "to have its files)")
    add_peers(st)
    st.add_argument("--json", action="store_true", help="print JSON for scripts")
    st.set_defaults(func=run_status)


def run_up(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from corolla.errors import CorollaError
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.shutdown import STOP, on_stop_signals
    from corolla.swarm.local import LocalSwarm, even_spans, stop_all

    refs = [resolve_model(spec) for spec in args.models]
    if len({ref.model_id for ref in refs}) < len(refs):
        raise CorollaError("a model is given twice: give each model once")
    blocks = {ref.model_id: load_config(ref.path).num_hidden_layers for ref in refs}
    spans = {model_id: even_spans(n, args.servers) for model_id, n in blocks.items()}
    total = args.servers * len(refs)
    if len(refs) == 1:
        (model_id, n), = blocks.items()
        print(f"starting a swarm of {args.servers} servers for {model_id} ({n} blocks)...", file=sys.stderr)
    else:
        print(f"starting a swarm of {args.servers} servers for each of "
              f"{', '.join(f'{m} ({n} blocks)' for m, n in blocks.items())}...", file=sys.stderr)
    # the servers share this machine's cores: each gets its share, so none of them waits for a thread
    # that another server's work has pushed off its core
    server_args = ["--dtype", args.dtype, "--quant", args.quant,
                   "--torch-threads", str(max(1, (os.cpu_count() or 1) // total))]
    swarms: list[LocalSwarm] = []
    # SIGTERM behaves like Ctrl-C: a KeyboardInterrupt wherever we are, then everything we started stops
    on_stop_signals(interrupt=True)  # (the bootstrap's DHT child, forked below, gets the default handlers back)
    try:
        for ref in refs:  # one bootstrap peer (the first model's), every model's servers join through it
            log_dir = args.log_dir if args.log_dir is None or len(refs) == 1 else Path(args.log_dir) / ref.model_id
            swarms.append(LocalSwarm(str(ref.path), blocks[ref.model_id], ref.model_id, log_dir=log_dir,
                                     server_args=server_args, dht=swarms[0].dht if swarms else None))
            swarms[-1].start_bootstrap()
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"loading {sum(blocks.values())} blocks on {total} servers", total=total)
            started = [[swarm.add_server(span) for span in spans[swarm.model_id]] for swarm in swarms]
            for i, (swarm, servers) in enumerate(zip(swarms, started)):  # they all load at once
                swarm.wait_ready(servers, on_progress=lambda ready, done=i * args.servers:
                                 progress.update(task, completed=done + ready))
        for model_id, n in blocks.items():
            print(f"swarm ready: all {n} blocks of {model_id} are served "
                  f"({', '.join(f'{a}:{b}' for a, b in spans[model_id])})", file=sys.stderr)
        print("join it with: --initial-peers " + " ".join(swarms[0].initial_peers), file=sys.stderr, flush=True)
        if args.chat or args.api_port is not None:
            from corolla.client.model import DistributedModelForCausalLM

            first = refs[0]
            with DistributedModelForCausalLM.from_pretrained(first.path, dht=swarms[0].dht, model_id=first.model_id,
                                                             head_fp16_decode=args.quant == "fp16-decode") as model:
                with _api(model, {ref.model_id: ref.path for ref in refs}, swarms[0].dht, args.api_port):
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
        stop_all(swarms, STOP.remaining(margin_s=SWARM_STOP_MARGIN_S) if STOP.requested else SWARM_STOP_S)
    return 0


SWARM_STOP_S = 15.0  # without a deadline (the chat ended), how long the servers may take to leave
SWARM_STOP_MARGIN_S = 2.0  # on a stop, time kept to kill servers that overrun and stop the bootstrap peer
API_ENGINE_CLOSE_S = 1.5  # on a stop, how long cancelled generations may take to close their sessions


@contextlib.contextmanager
def _api(model, models: dict, dht, port: int | None):
    """The API and web pages on 127.0.0.1:``port`` in a thread of this process, while inside:
    ``models`` (model id -> folder; ``model`` is the first one's client, already open) and any
    other packaged model the swarm that ``dht`` belongs to covers. Leaving ends its open requests
    (streams with an error event) and waits briefly for their generations to close their sessions."""
    if port is None:
        yield
        return
    from corolla.api.app import create_app
    from corolla.api.catalogue import SwarmCatalogue
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.errors import CorollaError

    catalogue = SwarmCatalogue(dht, models, engines={model.model_id: SwarmEngine(model)},
                               client_options={"head_fp16_decode": model.client.config.head_fp16_decode})
    with contextlib.ExitStack() as stack:
        stack.callback(catalogue.close, API_ENGINE_CLOSE_S)  # after the server stopped (the stack unwinds LIFO)
        try:
            base = stack.enter_context(serving(create_app(catalogue=catalogue), "127.0.0.1", port))
        except CorollaError as e:  # a busy port must not cost the user their chat
            print(f"not serving the API: {e}", file=sys.stderr, flush=True)
        else:
            print(f"web chat and swarm dashboard: {base}/  OpenAI-compatible API: {base}/v1", file=sys.stderr,
                  flush=True)
        yield


def run_status(args: argparse.Namespace) -> int:
    from corolla.swarm.dht import start_dht
    from corolla.swarm.discovery import fetch_swarm_overview

    dht = start_dht(args.initial_peers, client_mode=True)
    try:
        if args.model is None and args.model_id is None:
            return _print_overview(fetch_swarm_overview(dht), args.json)
        state = _model_state(dht, args.model, args.model_id)
    finally:
        dht.shutdown()
    return _print_model(state, args.json)


def _model_state(dht, spec: str | None, model_id: str | None):
    """One model's state: its number of blocks from the swarm's list of models, else from its
    config (resolving ``spec``: a local folder, a packaged model fetched if need be, ...)."""
    from corolla.errors import CorollaError
    from corolla.models.loading import load_config
    from corolla.models.manifest import manifest_of, split_key, swarm_key
    from corolla.models.resolve import resolve_model
    from corolla.swarm.discovery import fetch_models, fetch_swarm_state

    listed = fetch_models(dht)
    name = model_id or spec
    if name in listed:
        return fetch_swarm_state(dht, name, listed[name])
    digests = [key for key in listed if split_key(key)[0] == name]
    if len(digests) == 1:  # one model of that name: no need to have its files
        return fetch_swarm_state(dht, digests[0], listed[digests[0]])
    if spec is None:
        if digests:
            raise CorollaError(f"the swarm serves several models named {name!r} (other weights under one name): "
                               f"{', '.join(digests)}; give one of these as --model-id, or the model's folder")
        raise CorollaError(f"the swarm lists no model {name!r} (it lists: {', '.join(listed) or 'none'}); "
                           f"give MODEL to read its blocks")
    ref = resolve_model(spec, progress=False)
    key = swarm_key(model_id or ref.model_id, manifest_of(ref.path))
    return fetch_swarm_state(dht, key, listed.get(key) or load_config(ref.path).num_hidden_layers)


def _state_json(state) -> dict:
    from corolla.models.manifest import split_key

    name, digest = split_key(state.model_id)
    return {"model_id": name, "digest": digest, "swarm_key": state.model_id, "num_blocks": state.num_blocks,
            "coverage": state.coverage(),
            "servers": [{"peer_id": s.peer_id, **s.info.model_dump(mode="json"), "relayed": s.info.relayed}
                        for s in state.servers]}


def _strip(coverage: list[int]) -> str:
    return "".join("[red]·[/]" if c == 0 else "[yellow]1[/]" if c == 1 else f"[green]{min(c, 9)}[/]" for c in coverage)


def _print_overview(states, as_json: bool) -> int:
    """Every model the swarm lists, one line each; exit status 3 when one lacks a block or there is none."""
    from corolla.models.manifest import split_key
    from corolla.protocol.messages import ServerState

    incomplete = not states or any(not state.complete for state in states)
    if as_json:
        print(json.dumps({"models": [_state_json(state) for state in states]}, indent=2))
        return 3 if incomplete else 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not states:
        console.print("the swarm serves no model yet (no server announces one)")
        return 3
    table = Table(title=f"{len(states)} model{'s' if len(states) != 1 else ''} in this swarm")
    for col in ("model", "digest", "blocks", "MiB per block", "servers online", "servers per block",
                "blocks with no server"):
        table.add_column(col)
    for state in states:
        coverage = state.coverage()
        online = sum(s.info.state is ServerState.ONLINE for s in state.servers)
        name, digest = split_key(state.model_id)
        table.add_row(name, digest or "", str(state.num_blocks), _per_block_mib(state),
                      f"{online} of {len(state.servers)}", _strip(coverage),
                      _ranges([b for b, c in enumerate(coverage) if c == 0]) or "none")
    console.print(table)
    return 3 if incomplete else 0


def _print_model(state, as_json: bool) -> int:
    coverage = state.coverage()
    missing = [b for b, c in enumerate(coverage) if c == 0]
    if as_json:
        print(json.dumps(_state_json(state), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{state.model_id}: {state.num_blocks} blocks, {len(state.servers)} servers")
    for col in ("peer", "name", "address", "blocks", "state", "steps/s", "prefill tok/s", "sessions", "queued", "dtype",
                "weights MiB", "adapters", "version"):
        table.add_column(col)
    for s in state.servers:
        i = s.info
        table.add_row(s.peer_id[-12:], i.public_name or "", _address(s.peer_id, i), f"{i.start_block}:{i.end_block}",
                      i.state.value,
                      f"{i.inference_rps:.1f}", f"{i.forward_tps:.0f}", str(i.active_sessions), str(i.queued_requests),
                      i.dtype + ("" if i.quant == "none" else f" {i.quant}"), _mib(i.weight_bytes),
                      ", ".join(i.adapters), i.version)
    console = Console()
    console.print(table)
    console.print(f"servers per block: {_strip(coverage)}")
    single = [b for b, c in enumerate(coverage) if c == 1]
    console.print(f"blocks with no server: {_ranges(missing) or 'none'}")
    console.print(f"blocks with a single server: {_ranges(single) or 'none'}")
    return 0 if not missing else 3


def _address(peer_id: str, info) -> str:
    """Where the server says it is reached (its multiaddrs, less the trailing /p2p/PEER); a relayed
    one as ``relayed via`` its relay's address."""
    addrs = [a.removesuffix(f"/p2p/{peer_id}") for a in info.addrs]
    if info.relayed:  # its direct addresses (behind NAT) reach nobody
        relays = dict.fromkeys(a.split("/p2p-circuit")[0] for a in addrs if "/p2p-circuit" in a)
        return "relayed via " + "\n".join(relays)
    return "\n".join(addrs) or "?"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}" if n else "?"


def _per_block_mib(state) -> str:
    """What one block weighs as its servers announce it (their weights over their blocks; a range
    where servers differ: other dtypes or quantisation)."""
    per_block = sorted(s.info.weight_bytes / (s.info.end_block - s.info.start_block)
                       for s in state.servers if s.info.weight_bytes)
    if not per_block:
        return "?"
    low, high = _mib(int(per_block[0])), _mib(int(per_block[-1]))
    return low if low == high else f"{low}–{high}"


def _ranges(blocks: list[int]) -> str:
    out, start = [], None
    for i, b in enumerate(blocks):
        if start is None:
            start = b
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            out.append(f"{start}" if start == b else f"{start}-{b}")
            start = None
    return ", ".join(out)
