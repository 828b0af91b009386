"""``corolla generate`` and ``corolla chat``: talk to a model served by a swarm."""

from __future__ import annotations

import argparse
import sys

from corolla.cli.common import add_compression, add_peers, add_sampling, load_draft, sampling_params


def register(sub) -> None:
    g = sub.add_parser("generate", help="complete a prompt through the swarm, streaming",
                       description="Generate a continuation of PROMPT through the swarm, printing tokens as they come.")
    g.add_argument("model", help="packaged name, local HF folder, GGUF file or Hub repo id")
    g.add_argument("prompt", help="the text to continue")
    g.add_argument("--chat-template", action="store_true", help="wrap PROMPT as a user message of the chat template")
    add_peers(g)
    add_compression(g)
    add_adapter(g)
    add_sampling(g)
    g.set_defaults(func=run_generate)

    c = sub.add_parser("chat", help="chat with the coding assistant, or with MODEL directly through the swarm",
                       description="Without MODEL: the coding assistant on a workspace (slash commands, edits, "
                                   "sessions) through --endpoint. With MODEL: plain chat through the swarm. "
                                   "With piped input, answers each line and exits at EOF.")
    c.add_argument("model", nargs="?", default=None,
                   help="chat with this model directly (packaged name, HF folder, GGUF file or Hub repo id)")
    c.add_argument("--system", default=None, help="a system prompt")
    add_peers(c)
    add_compression(c)
    add_adapter(c)
    add_sampling(c)
    from corolla.cli.assistant import add_endpoint, add_tool_flags

    add_tool_flags(c)
    add_endpoint(c)
    c.set_defaults(func=run_chat)


def add_adapter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default=None, metavar="NAME|FOLDER",
                        help="a LoRA adapter: the NAME of one that servers host (`swarm status` lists them), or a "
                             "FOLDER (PEFT LoRA) whose tensors this client sends to the servers")


def _open(args):
    from corolla.client.model import DistributedModelForCausalLM

    return DistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers,
                                                       model_id=args.model_id, compression=args.compression,
                                                       adapter=args.adapter)


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from corolla.client.chat import render, stream_text

    draft = load_draft(args.draft)
    with _open(args) as model:
        tok = model.tokenizer
        if args.chat_template:
            ids = render(tok, [{"role": "user", "content": args.prompt}])
        else:
            ids = torch.tensor([tok(args.prompt)["input_ids"]], dtype=torch.long)
        stream_text(model, ids, sys.stdout, params=sampling_params(args), max_new_tokens=args.max_new_tokens,
                    stop_strings=args.stop or None, draft=draft)
    return 0


def chat_with(model, args: argparse.Namespace) -> int:
    from corolla.client.chat import chat

    chat(model, params=sampling_params(args), max_new_tokens=args.max_new_tokens, stop_strings=args.stop or None,
         system=getattr(args, "system", None), draft=load_draft(getattr(args, "draft", None)))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    if args.model is None:
        from corolla.cli.assistant_chat import run_assistant_chat

        return run_assistant_chat(args)
    with _open(args) as model:
        return chat_with(model, args)
