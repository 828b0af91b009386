"""A terminal chat over a DistributedModelForCausalLM, streaming tokens as they come.

One inference session lives across turns: each turn sends only the tokens the servers have
not seen yet (the new user message), not the whole conversation again.
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch

from corolla.client.sampling import SamplingParams, TextDelta
from corolla.client.session import InferenceSession


def render(tokenizer, messages: list[dict]) -> torch.Tensor:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)


def chat(model, *, params: SamplingParams = SamplingParams(), max_new_tokens: int = 256,
         stop_strings: list[str] | None = None, system: str | None = None, max_length: int = 4096,
         stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, draft=None) -> int:
    """Read user messages line by line until EOF; answer each. Returns the number of turns."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    turns = 0
    session = InferenceSession(model.client, max_length)
    try:
        while True:
            if interactive:
                out.write("\nyou> ")
                out.flush()
            line = stdin.readline()
            if not line:
                break
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.strip()})
            ids = render(model.tokenizer, messages)
            known = _held_ids(session)
            if known.shape[1] and not (known.shape[1] < ids.shape[1] and torch.equal(ids[:, : known.shape[1]], known)):
                session.close()  # the template re-rendered history differently: start over
                session = InferenceSession(model.client, max_length)
                known = _held_ids(session)
            if interactive:
                out.write("assistant> ")
            answer = stream_text(model, ids[:, known.shape[1]:], out, params=params, max_new_tokens=max_new_tokens,
                                 stop_strings=stop_strings, session=session, draft=draft)
            messages.append({"role": "assistant", "content": answer})
            turns += 1
    finally:
        session.close()
    return turns


def _held_ids(session: InferenceSession) -> torch.Tensor:
    """Tokens the session already holds (or has sampled and will send first), [1, L]."""
    parts = [t for t in (session.token_ids, session.pending_ids) if t is not None]
    return torch.cat(parts, dim=1) if parts else torch.empty(1, 0, dtype=torch.long)


def stream_text(model, new_ids: torch.Tensor, out: TextIO, *, params: SamplingParams = SamplingParams(),
                max_new_tokens: int = 256, stop_strings: list[str] | None = None,
                session: InferenceSession | None = None, draft=None) -> str:
    """Generate from ``new_ids`` [1, T], writing text to ``out`` as it comes (until EOS); returns it.
    ``draft``: speculative decoding (see ``DistributedModelForCausalLM.generate``)."""
    decoder = TextDelta(model.tokenizer)
    eos = model.eos_token_ids()
    for tokens in model.stream(new_ids, params=params, max_new_tokens=max_new_tokens, stop_strings=stop_strings,
                               session=session, draft=draft):
        token = int(tokens[0])
        if token in eos:
            break
        out.write(decoder.push(token))
        out.flush()
    out.write("\n")
    out.flush()
    return decoder.text
