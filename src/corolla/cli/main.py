"""The ``corolla`` command: one module per subcommand group, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import logging
import sys

from corolla import __version__
from corolla.errors import CorollaError

# what the `swarm` extra installs (pyproject.toml): the assistant's commands need none of it
SWARM_PACKAGES = frozenset({"torch", "hivemind", "transformers", "tokenizers", "safetensors", "gguf", "msgpack",
                            "numpy", "huggingface_hub"})


def build_parser() -> argparse.ArgumentParser:
    from corolla.cli import agent, api, assistant, dht, finetune, generate, mcp, models, server, swarm

    parser = argparse.ArgumentParser(
        prog="corolla",
        description="Run large language models on a peer-to-peer swarm (and chat with them).",
    )
    parser.add_argument("--version", action="version", version=f"corolla {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log on stderr (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (models, dht, server, swarm, generate, finetune, api, assistant, agent, mcp):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("hivemind", "transformers", "httpx", "httpx2", "openai", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    code = 130
    try:
        code = int(args.func(args) or 0)
    except CorollaError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in SWARM_PACKAGES:
            raise
        print(f"error: `corolla {args.command}` needs the swarm's packages ({e.name} is not installed): "
              "pip install 'corolla[swarm]'", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        from corolla.shutdown import STOP, start_exit_fuse

        if STOP.requested:  # stopped by a signal: threads stuck on remote calls must not hold the exit
            start_exit_fuse(code)
    return code
