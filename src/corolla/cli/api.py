"""``corolla api``: serve a swarm's models over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import logging

from corolla.cli.common import add_compression, add_draft, add_peers, load_draft

log = logging.getLogger(__name__)

ENGINE_CLOSE_S = 2.0  # on a stop, how long cancelled generations may take to close their sessions


def register(sub) -> None:
    p = sub.add_parser("api", help="serve the swarm's models over an OpenAI-compatible HTTP API",
                       description="Serve the models of the swarm at /v1/chat/completions, /v1/completions and "
                                   "/v1/models (a request goes to the model it names), the swarm state at "
                                   "/api/swarm and the web pages at /. The MODELs given are served from their "
                                   "local folders and listed first; any other model the swarm covers is listed "
                                   "too and served when it is a packaged model (fetched on first use). SIGTERM or "
                                   "Ctrl-C stops it within 10 s: open streams end with an error event.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="packaged name, local HF folder, GGUF file or Hub repo id (several: each one)")
    add_peers(p)
    add_compression(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 requests")
    p.add_argument("--max-concurrent", type=int, default=16,
                   help="generations run at once, all models together; later requests wait in line (default 16)")
    p.add_argument("--prompt-cache", type=int, default=4, metavar="N",
                   help="inference sessions kept after their generation per model, so a prompt that starts like "
                        "an earlier one (the next chat turn or agent step, the next keystroke's completion) "
                        "sends the swarm only what differs (default 4; 0: none)")
    p.add_argument("--head-fp16-decode", action="store_true",
                   help="keep a float16 copy of each model's LM head for decode steps: about 2x faster logits on "
                        "CPU, half the head's memory more, logits rounded to float16 (pairs with servers started "
                        "with --quant fp16-decode)")
    add_draft(p)
    p.set_defaults(func=run_api)


def local_models(specs: list[str], model_id: str | None) -> dict:
    """Model id -> local folder for the MODELs given (``--model-id`` names the first)."""
    from corolla.errors import CorollaError
    from corolla.models.resolve import resolve_model

    if model_id is not None and not specs:
        raise CorollaError("--model-id names the first MODEL: give one")
    models = {}
    for i, spec in enumerate(specs):
        ref = resolve_model(spec)
        name = model_id if i == 0 and model_id else ref.model_id
        if name in models:
            raise CorollaError(f"two of the models given are named {name!r}; give each model once")
        models[name] = ref.path
    return models


def run_api(args: argparse.Namespace) -> int:
    from corolla.api.app import create_app
    from corolla.api.catalogue import SwarmCatalogue
    from corolla.api.prompt_cache import PromptCacheConfig
    from corolla.api.server import serve_forever
    from corolla.errors import CorollaError
    from corolla.models.loading import load_config
    from corolla.shutdown import STOP, on_stop_signals
    from corolla.swarm.dht import start_dht

    if args.prompt_cache < 0:
        raise CorollaError("--prompt-cache: a number of sessions, 0 or more")
    on_stop_signals(interrupt=True)  # while starting: Ctrl-C / SIGTERM interrupt the start-up
    models = local_models(args.models, args.model_id)
    blocks = {model_id: load_config(path).num_hidden_layers for model_id, path in models.items()}
    dht = start_dht(args.initial_peers, client_mode=True, models=blocks)
    try:
        catalogue = SwarmCatalogue(dht, models, client_options={"compression": args.compression,
                                                                  "head_fp16_decode": args.head_fp16_decode},
                                   draft=load_draft(args.draft),
                                   prompt_cache=PromptCacheConfig(args.prompt_cache) if args.prompt_cache else None)
        try:
            catalogue.start()
            app = create_app(catalogue=catalogue, api_key=args.api_key, max_concurrent=args.max_concurrent)
            # a stop ends the open requests (streams with an error event) and cancels their generations
            serve_forever(app, args.host, args.port,
                          on_started=lambda base: log.info("serving %s at %s/v1",
                                                           ", ".join(models) or "the swarm's models", base))
        finally:  # their sessions close; then the clients
            catalogue.close(min(ENGINE_CLOSE_S, STOP.remaining(margin_s=5.0)))
    finally:
        dht.shutdown()
    return 0
