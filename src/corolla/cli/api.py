"""``corolla api``: serve a swarm's model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import logging

from corolla.cli.common import add_compression, add_peers

log = logging.getLogger(__name__)

ENGINE_CLOSE_S = 2.0  # on a stop, how long cancelled generations may take to close their sessions


def register(sub) -> None:
    p = sub.add_parser("api", help="serve the model over an OpenAI-compatible HTTP API",
                       description="Serve MODEL (run by the swarm) at /v1/chat/completions, /v1/completions and "
                                   "/v1/models, the swarm state at /api/swarm and the web pages at /. SIGTERM or "
                                   "Ctrl-C stops it within 10 s: open streams end with an error event.")
    p.add_argument("model", help="packaged name, local HF folder, GGUF file or Hub repo id")
    add_peers(p)
    add_compression(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 requests")
    p.add_argument("--max-concurrent", type=int, default=16,
                   help="generations run at once; later requests wait in line (default 16)")
    p.set_defaults(func=run_api)


def run_api(args: argparse.Namespace) -> int:
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serve_forever
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.shutdown import STOP, on_stop_signals

    on_stop_signals(interrupt=True)  # while starting: Ctrl-C / SIGTERM interrupt the start-up
    with DistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers,
                                                     model_id=args.model_id, compression=args.compression) as model:
        engine = SwarmEngine(model)
        app = create_app(engine, api_key=args.api_key, max_concurrent=args.max_concurrent)
        # a stop ends the open requests (streams with an error event) and cancels their generations
        serve_forever(app, args.host, args.port,
                      on_started=lambda base: log.info("serving %s at %s/v1", model.model_id, base))
        engine.close(min(ENGINE_CLOSE_S, STOP.remaining(margin_s=5.0)))  # their sessions close; then the client
    return 0
