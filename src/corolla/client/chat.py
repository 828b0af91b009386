"""A terminal chat over a DistributedModelForCausalLM, streaming tokens as they come.

One inference session lives across turns: each turn sends only the tokens the servers have
not seen yet (the new user message), not the whole conversation again.
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch

from corolla.client.sampling import SamplingParams, TextDelta


def render(tokenizer, messages: list[dict]) -> torch.Tensor:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)


def chat(model, *, params: SamplingParams = SamplingParams(), max_new_tokens: int = 256,
         stop_strings: list[str] | None = None, system: str | None = None, max_length: int = 4096,
         stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """Read user messages line by line until EOF; answer each. Returns the number of turns."""
    tokenizer = model.tokenizer
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    turns = 0
    session_cm = model.inference_session(max_length=max_length)
    session = session_cm.__enter__()
    try:
        while True:
            if interactive:
                out.write("\nyou> ")
                out.flush()
            line = stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            messages.append({"role": "user", "content": text})
            ids = render(tokenizer, messages)
            if interactive:
                out.write("assistant> ")
            if session.token_ids is not None:
                # the answer so far + new user message; fall back to a fresh session on mismatch
                known = torch.cat([t for t in (session.token_ids, session.pending_ids) if t is not None], dim=1)
                if not (known.shape[1] < ids.shape[1] and torch.equal(ids[:, : known.shape[1]], known)):
                    session_cm.__exit__(None, None, None)
                    session_cm = model.inference_session(max_length=max_length)
                    session = session_cm.__enter__()
            answer = _answer(model, session, ids, params, max_new_tokens, stop_strings, out)
            messages.append({"role": "assistant", "content": answer})
            turns += 1
    finally:
        session_cm.__exit__(None, None, None)
    return turns


def _answer(model, session, ids, params, max_new_tokens, stop_strings, out) -> str:
    if session.token_ids is None:
        new = ids
    else:
        known = session.token_ids.shape[1] + (session.pending_ids.shape[1] if session.pending_ids is not None else 0)
        new = ids[:, known:]
    decoder = TextDelta(model.tokenizer)
    eos = model.eos_token_ids()
    for tokens in model.stream(new, params=params, max_new_tokens=max_new_tokens, stop_strings=stop_strings,
                               session=session):
        token = int(tokens[0])
        if token in eos:
            break
        out.write(decoder.push(token))
        out.flush()
    out.write("\n")
    out.flush()
    return decoder.text
