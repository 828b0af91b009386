"""Flags shared by several subcommands."""

from __future__ import annotations

import argparse


def add_peers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--initial-peers", nargs="+", default=[], metavar="MADDR",
                        help="multiaddrs of any peer of the swarm (printed by `corolla dht` or `corolla swarm up`)")
    parser.add_argument("--model-id", default=None,
                        help="name of the model in the DHT (default: the model's own name); all peers must agree")


def add_compression(parser: argparse.ArgumentParser) -> None:
    from corolla.protocol.codecs import CODECS

    parser.add_argument("--compression", default="none", choices=CODECS,
                        help="how hidden states travel between this client and the servers (default none: float32)")


def add_sampling(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256, help="stop after this many new tokens (default 256)")
    g.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default: greedy)")
    g.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set with mass p")
    g.add_argument("--repetition-penalty", type=float, default=None, help="penalise tokens already present (>1)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    add_draft(g)


def add_draft(parser) -> None:
    parser.add_argument("--draft", default=None, metavar="MODEL|lookup",
                        help="speculative decoding: draft tokens with `lookup` (copies from the prompt and the "
                             "output so far: edits of a file) or a small local MODEL with the same tokenizer "
                             "(e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b); the swarm checks several per step. "
                             "Same output as without (greedy), same distribution (sampling)")


def load_draft(spec: str | None):
    """``--draft``'s value as what ``generate(draft=...)`` takes (a model is loaded once, here)."""
    if spec is None or spec == "lookup":
        return spec
    from corolla.client.speculative import DraftModel

    return DraftModel.load(spec).model


def sampling_params(args: argparse.Namespace):
    """The sampling flags as SamplingParams (greedy unless a sampling flag is given)."""
    from corolla.client.sampling import SamplingParams

    sample = args.temperature is not None or args.top_k is not None or args.top_p is not None
    return SamplingParams(do_sample=sample, temperature=args.temperature or 1.0, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
