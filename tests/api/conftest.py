"""API fixtures: a scripted engine (no swarm), served by uvicorn; the real swarm (``api_swarm``) is in
tests/conftest.py, shared with the browser tests."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from corolla.api.generation import GenerationOptions
from corolla.api.server import serving


def served(app):
    """The app on 127.0.0.1 (a free port) in a thread; yields its base URL (…/v1 not included)."""
    return serving(app, "127.0.0.1", 0)


def openai_client(base: str, api_key: str = "none", **kw):
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=120, **kw)


@dataclasses.dataclass
class FakeEngine:
    """Answers with scripted token texts; ``reply(prompt_text) -> list of token texts`` or an exception."""

    tokenizer: object
    reply: Callable[[str], list[str]] = lambda prompt: ["Hello", ",", " world", "!"]
    model_id: str = "fake-model"
    context: int | None = 2048
    token_delay_s: float = 0.0  # pacing of a long answer (for cancellation tests)
    open: int = 0
    yielded: int = 0
    prompts: list[str] = dataclasses.field(default_factory=list)
    options: list[GenerationOptions] = dataclasses.field(default_factory=list)

    def max_context(self) -> int | None:
        return self.context

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def stream(self, prompt_ids: list[int], options: GenerationOptions):
        text = self.tokenizer.decode(prompt_ids)
        self.prompts.append(text)
        self.options.append(options)
        self.open += 1
        try:
            for token in self.reply(text)[: options.max_tokens]:
                time.sleep(self.token_delay_s)
                self.yielded += 1
                yield token
        finally:
            self.open -= 1

    def swarm_status(self) -> dict:
        return {"model_id": self.model_id, "num_blocks": 2, "coverage": [1, 1], "servers": []}


@pytest.fixture(scope="session")
def tokenizer():
    """A ChatML tokenizer built here (tests/offline_tokenizer.py), like SmolLM2's: a template that does not
    know tools (the API describes them in the system prompt) and no fill-in-the-middle tokens."""
    from tests.offline_tokenizer import chatml_tokenizer

    return chatml_tokenizer(tools=False, fim=False)


def http_get(url_: str) -> tuple[int, str]:
    """(status, body) of a plain GET, for what the openai client cannot ask (pages, /api/swarm)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url_, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
