"""The assistant's only way to a model: an OpenAI-compatible endpoint through the official ``openai`` client.

By default that is the local swarm's API (``make run`` serves it on port 8000); any other endpoint
(``corolla api`` on another machine, a vLLM or llama.cpp server) works the same. Tests hand it a
scripted model behind the same HTTP API.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator

from corolla.assistant.errors import EndpointError

DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"


@dataclasses.dataclass
class LLMConfig:
    endpoint: str = dataclasses.field(default_factory=lambda: os.environ.get("COROLLA_ENDPOINT", DEFAULT_ENDPOINT))
    model: str | None = dataclasses.field(default_factory=lambda: os.environ.get("COROLLA_MODEL") or None)
    api_key: str = dataclasses.field(default_factory=lambda: os.environ.get("COROLLA_API_KEY", "none"))
    temperature: float = 0.0  # greedy: edits and reviews should be reproducible
    max_tokens: int = 1024
    timeout_s: float = 600.0  # a CPU swarm writing 1,000 tokens takes minutes


@dataclasses.dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclasses.dataclass(frozen=True)
class Reply:
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


class LLM:
    """A chat model behind an OpenAI-compatible endpoint; thread-safe (the openai client is)."""

    def __init__(self, config: LLMConfig | None = None, client=None):
        import openai

        self.config = config or LLMConfig()
        self._openai = openai
        self.client = client or openai.OpenAI(base_url=self.config.endpoint, api_key=self.config.api_key,
                                              timeout=self.config.timeout_s, max_retries=1)
        self._model = self.config.model
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        """The configured model, or the endpoint's first model when none was named."""
        with self._lock:
            if self._model is None:
                models = self._call(lambda: list(self.client.models.list()))
                if not models:
                    raise EndpointError(f"the endpoint {self.config.endpoint} serves no model")
                self._model = models[0].id
            return self._model

    def _call(self, fn):
        openai = self._openai
        try:
            return fn()
        except openai.APIConnectionError as e:
            raise EndpointError(f"cannot reach the model endpoint {self.config.endpoint} ({e}); start one with "
                                f"`make run` or `corolla api`, or pass --endpoint URL") from None
        except openai.APIStatusError as e:
            raise EndpointError(f"the model endpoint {self.config.endpoint} answered {e.status_code}: "
                                f"{_error_message(e)}") from None

    def _params(self, messages: list[dict], **overrides) -> dict:
        params = dict(model=self.model, messages=messages, temperature=self.config.temperature,
                      max_tokens=self.config.max_tokens)
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def complete(self, messages: list[dict], **overrides) -> Reply:
        """One whole reply (tools=[...] may be passed; native tool calls come back in ``tool_calls``)."""
        reply = self._call(lambda: self.client.chat.completions.create(**self._params(messages, **overrides)))
        choice = reply.choices[0]
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments or "{}")
                      for c in (choice.message.tool_calls or ()))
        return Reply(choice.message.content or "", calls, choice.finish_reason)

    def stream(self, messages: list[dict], **overrides) -> Iterator[str]:
        """The reply's text as it is generated; closing the iterator stops the generation."""
        stream = self._call(lambda: self.client.chat.completions.create(**self._params(messages, **overrides),
                                                                        stream=True))
        try:
            while True:
                chunk = self._call(lambda: next(stream, None))
                if chunk is None:
                    return
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            stream.close()


def _error_message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error)
