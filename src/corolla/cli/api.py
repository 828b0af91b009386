"""``corolla api``: serve a swarm's model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import logging

from corolla.cli.common import add_compression, add_peers

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("api", help="serve the model over an OpenAI-compatible HTTP API",
                       description="Serve MODEL (run by the swarm) at /v1/chat/completions, /v1/completions and "
                                   "/v1/models, the swarm state at /api/swarm and the web pages at /.")
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
    import uvicorn

    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.client.model import DistributedModelForCausalLM

    with DistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers,
                                                     model_id=args.model_id, compression=args.compression) as model:
        app = create_app(SwarmEngine(model), api_key=args.api_key, max_concurrent=args.max_concurrent)
        log.info("serving %s at http://%s:%d/v1", model.model_id, args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")
    return 0
