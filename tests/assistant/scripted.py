"""A scripted model behind corolla's real OpenAI-compatible API, for the assistant's tests.

:class:`ScriptedModel` is an engine for :func:`corolla.api.app.create_app`: the HTTP layer, chat
templates (transformers' renderer over a ChatML template that knows tools, as Qwen2.5-Coder's does, so
native tool calls work), streaming, stop sequences and tool-call parsing are the real ones; only the text
of each reply comes from a script. Its tokenizer is built at test time (:mod:`tests.offline_tokenizer`,
with fill-in-the-middle tokens): nothing is fetched.

* a FIFO queue (:meth:`ScriptedModel.queue`), consumed first;
* then rules ``(match, reply)`` in order, the first that matches wins. ``match`` is a substring
  (``str``) or a regex (``re.Pattern``) searched in the LAST user (or tool-result) message of the
  rendered prompt, or a callable ``(prompt_text) -> bool``; ``reply`` is a string or a callable
  ``(prompt_text) -> str``;
* nothing matches: the reply is ``SCRIPTED: no rule for '...'`` so the test fails visibly.

A reply is streamed in small whitespace-preserving pieces (one "token" each, so ``max_tokens``
cuts it like a model's). For a tool call, reply with ``<tool_call>\\n{"name": ..., "arguments":
{...}}\\n</tool_call>`` (with ``tool_choice`` forcing a function, the prompt already ends with the
call's opening: reply with the rest). Every request is kept in ``.requests``.

In a test::

    with scripted_server([("refactor", "Sure.")]) as (model, base_url):
        openai.OpenAI(base_url=base_url, api_key="none") ...

As a process (for editor end-to-end tests)::

    python -m tests.assistant.scripted --port 0 --script script.json   # prints READY http://127.0.0.1:PORT/v1

where script.json is ``[{"match": "regex", "reply": "..."}, ...]`` (or ``{"rules": [...], "queue":
["...", ...]}``); a rule's optional ``"delay_s"`` holds its reply back that long, like a model's prefill
(for cancellation tests). It stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.offline_tokenizer import chatml_tokenizer

MODEL_ID = "scripted"
CONTEXT = 32768

Match = str | re.Pattern[str] | Callable[[str], bool]
Reply = str | Callable[[str], str]

_LAST_TURN = re.compile(r"<\|im_start\|>(user|tool)\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)
_PIECES = re.compile(r"\s*\S+|\s+")


def last_message(prompt: str) -> str:
    """The last user or tool message of a rendered chat prompt (a tool result comes back in a
    user turn, as in Qwen's template); the whole prompt when it is not a chat (``/v1/completions``)."""
    turns = _LAST_TURN.findall(prompt)
    return turns[-1][1] if turns else prompt


def pieces(text: str) -> list[str]:
    """``text`` in small pieces that join back to it exactly (each word with its leading space)."""
    return _PIECES.findall(text)


@dataclasses.dataclass(frozen=True)
class Rule:
    match: Match
    reply: Reply

    def matches(self, prompt: str) -> bool:
        if isinstance(self.match, str):
            return self.match in last_message(prompt)
        if isinstance(self.match, re.Pattern):
            return self.match.search(last_message(prompt)) is not None
        return bool(self.match(prompt))


@dataclasses.dataclass(frozen=True)
class ScriptedRequest:
    prompt: str  # the whole rendered prompt text
    last_message: str  # what the rules matched against
    options: Any  # corolla.api.generation.GenerationOptions
    reply: str  # what was answered (before max_tokens and stop sequences)


class ScriptedModel:
    """An engine for ``create_app`` that answers from a script (see the module's docstring)."""

    def __init__(self, rules: list | tuple = (), *, model_id: str = MODEL_ID, context: int = CONTEXT,
                 tokenizer=None, on_request: Callable[[ScriptedRequest], None] | None = None):
        self.model_id = model_id
        self.tokenizer = tokenizer if tokenizer is not None else chatml_tokenizer(tools=True, fim=True)
        self.context = context
        self.rules: list[Rule] = []
        self.requests: list[ScriptedRequest] = []
        self.on_request = on_request  # called with each request as it is answered (e.g. to log it)
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()  # requests run in their own threads; HF tokenizers are not thread-safe
        for rule in rules:
            match, reply = (rule.match, rule.reply) if isinstance(rule, Rule) else rule
            self.add(match, reply)

    # --- scripting ----------------------------------------------------------------------------
    def add(self, match: Match, reply: Reply) -> ScriptedModel:
        """Append a rule (checked after the earlier ones)."""
        with self._lock:
            self.rules.append(Rule(match, reply))
        return self

    def queue(self, *replies: Reply) -> ScriptedModel:
        """Replies for the next requests, in order, whatever they ask."""
        with self._lock:
            self._queue.extend(replies)
        return self

    def reset(self) -> None:
        """Forget rules, queued replies and recorded requests (to reuse one server across tests)."""
        with self._lock:
            self.rules.clear()
            self._queue.clear()
            self.requests.clear()

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.requests]

    def reply_for(self, prompt: str) -> str:
        """The scripted reply to ``prompt`` (consumes a queued reply if there is one)."""
        with self._lock:
            reply: Reply | None = self._queue.popleft() if self._queue else None
            rules = list(self.rules)
        if reply is None:
            reply = next((r.reply for r in rules if r.matches(prompt)), None)
        if reply is None:
            excerpt = last_message(prompt).strip()
            return f"SCRIPTED: no rule for {excerpt[:200]!r}"
        return reply(prompt) if callable(reply) else reply

    # --- the engine interface (corolla.api.generation.Engine) ---------------------------------
    def max_context(self) -> int | None:
        return self.context

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def stream(self, prompt_ids: list[int], options) -> Iterator[str]:
        with self._lock:
            prompt = self.tokenizer.decode(prompt_ids)
        reply = self.reply_for(prompt)
        request = ScriptedRequest(prompt, last_message(prompt), options, reply)
        with self._lock:
            self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        yield from pieces(reply)[: options.max_tokens]

    def swarm_status(self) -> dict:
        return {"model_id": self.model_id, "num_blocks": 0, "coverage": [], "servers": []}


@contextlib.contextmanager
def scripted_server(script: list | tuple | ScriptedModel = (), *, host: str = "127.0.0.1", port: int = 0,
                    api_key: str | None = None) -> Iterator[tuple[ScriptedModel, str]]:
    """Serve a :class:`ScriptedModel` (or the rules to build one) on a free port; yields
    ``(model, base_url)`` with ``base_url`` ending in ``/v1``."""
    from corolla.api.app import create_app
    from corolla.api.server import serving

    model = script if isinstance(script, ScriptedModel) else ScriptedModel(script)
    with serving(create_app(model, api_key=api_key, web_dir=None), host, port) as base:
        yield model, f"{base}/v1"


def scripted_fixture(script: list | tuple = (), **kw) -> Iterator[tuple[ScriptedModel, str]]:
    """For a pytest fixture: ``@pytest.fixture def llm(): yield from scripted_fixture([...])``."""
    with scripted_server(script, **kw) as served:
        yield served


def load_script(path: Path) -> ScriptedModel:
    """A model from a JSON script: rules' ``match`` are regexes (``"reply"`` plain text)."""
    data = json.loads(Path(path).read_text())
    rules, queued = (data, []) if isinstance(data, list) else (data.get("rules", []), data.get("queue", []))
    model = ScriptedModel([(re.compile(r["match"]),
                            _delayed(r["reply"], r["delay_s"]) if r.get("delay_s") else r["reply"]) for r in rules])
    return model.queue(*queued)


def _delayed(reply: str, delay_s: float) -> Callable[[str], str]:
    def slow(prompt: str) -> str:
        time.sleep(delay_s)  # in the generation's thread, before its first token: a prefill
        return reply

    return slow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.assistant.scripted",
                                     description="Serve a scripted model over the OpenAI-compatible API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", type=Path, help="JSON list of {match: regex, reply: text}")
    parser.add_argument("--requests-log", type=Path, help="append each request here as a JSON line")
    args = parser.parse_args(argv)
    from corolla.api.app import create_app
    from corolla.api.server import serve_in_thread, stop_server, url

    model = load_script(args.script) if args.script else ScriptedModel()
    if args.requests_log:
        log = args.requests_log

        def write(r: ScriptedRequest) -> None:
            with log.open("a") as f:
                f.write(json.dumps({"prompt": r.prompt, "last_message": r.last_message, "reply": r.reply,
                                    "max_tokens": r.options.max_tokens}) + "\n")

        model.on_request = write
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server, thread = serve_in_thread(create_app(model, web_dir=None), args.host, args.port)
    try:
        print(f"READY {url(server)}/v1", flush=True)
        while not stop.wait(0.5) and thread.is_alive():
            pass
    finally:
        stop_server(server, thread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
