"""The HTTP app over a scripted engine, through the official ``openai`` client (no swarm)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from corolla.api.app import create_app
from corolla.errors import NoRouteError
from tests.api.conftest import FakeEngine, http_get, openai_client, served

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def fake(tokenizer):
    engine = FakeEngine(tokenizer)
    with served(create_app(engine, web_dir=None)) as base:
        yield engine, openai_client(base), base


def test_models(fake):
    _, client, _ = fake
    assert [m.id for m in client.models.list()] == ["fake-model"]
    assert client.models.retrieve("fake-model").id == "fake-model"


def test_chat_usage_and_stream(fake):
    engine, client, _ = fake
    reply = client.chat.completions.create(model="fake-model", messages=USER, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == "Hello, world!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4 > 4
    assert engine.options[-1].temperature == 0
    chunks = list(client.chat.completions.create(model="fake-model", messages=USER, max_tokens=3, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_stop_sequences(fake):
    _, client, _ = fake
    reply = client.chat.completions.create(model="fake-model", messages=USER, stop=[" wor"], temperature=0)
    assert reply.choices[0].message.content == "Hello," and reply.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model="fake-model", prompt="x", stop="d!", stream=True)
    assert "".join(c.choices[0].text for c in chunks) == "Hello, worl"


def test_completions_echo_and_sampling_options(fake):
    engine, client, _ = fake
    reply = client.completions.create(model="fake-model", prompt="Say:", echo=True, temperature=0.7, top_p=0.9, seed=3)
    assert reply.choices[0].text == "Say:Hello, world!"
    assert (engine.options[-1].temperature, engine.options[-1].top_p, engine.options[-1].seed) == (0.7, 0.9, 3)
    assert engine.prompts[-1].startswith("Say:")


def test_suffix_is_400_without_fim_tokens(fake):
    _, client, _ = fake
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake-model", prompt="def f(", suffix="\n")
    assert info.value.body["param"] == "suffix"


def test_tool_call_is_parsed_into_tool_calls(tokenizer):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    engine = FakeEngine(tokenizer, reply=lambda prompt: [call[:9], call[9:]])
    with served(create_app(engine, web_dir=None)) as base:
        client = openai_client(base)
        reply = client.chat.completions.create(model="fake-model", messages=USER, tools=[WEATHER])
        assert '"get_weather"' in engine.prompts[-1]  # described to the model
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (tc,) = choice.message.tool_calls
        assert tc.type == "function" and tc.function.name == "get_weather" and tc.id
        assert json.loads(tc.function.arguments) == {"city": "Paris"}
        chunks = list(client.chat.completions.create(model="fake-model", messages=USER, tools=[WEATHER], stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert deltas[0].tool_calls[0].function.name == "get_weather"
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        # the call and its result go back to the model
        client.chat.completions.create(model="fake-model", tools=[WEATHER], messages=[
            *USER, choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": tc.id, "content": "sunny, 21 C"}])
        assert "<tool_response>\nsunny, 21 C\n</tool_response>" in engine.prompts[-1]
        # a named tool_choice prefills the call's start; the model writes the arguments
        engine.reply = lambda prompt: ['{"city": "Rome"}}', "\n</tool_call>"]
        reply = client.chat.completions.create(model="fake-model", messages=USER, tools=[WEATHER],
                                               tool_choice={"type": "function", "function": {"name": "get_weather"}})
        assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Rome"}


def test_error_statuses(fake, tokenizer):
    _, client, base = fake
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-model", messages=USER, max_tokens=0)
    assert info.value.status_code == 400 and info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake-model", messages=USER, temperature=2.5)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake-model", messages=USER, max_tokens=5000)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.body["code"] == "model_not_found"
    status, body = http_get(f"{base}/v1/nothing-here")
    assert status == 404 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_api_key(tokenizer):
    with served(create_app(FakeEngine(tokenizer), api_key="s3cret", web_dir=None)) as base:
        with pytest.raises(openai.AuthenticationError) as info:
            openai_client(base, api_key="wrong").models.list()
        assert info.value.body["type"] == "authentication_error"
        status, body = http_get(f"{base}/v1/models")  # no key at all (the openai client always sends one)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        assert openai_client(base, api_key="s3cret").models.list().data[0].id == "fake-model"
        assert http_get(f"{base}/api/swarm")[0] == 200  # the dashboard's data is public


def test_no_route_is_503_with_retry_after(tokenizer):
    def no_route(prompt):
        raise NoRouteError("fake-model", [(0, 2)])

    with served(create_app(FakeEngine(tokenizer, reply=no_route), web_dir=None)) as base:
        client = openai_client(base)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="fake-model", messages=USER, stream=stream)
            assert info.value.status_code == 503
            assert info.value.response.headers["retry-after"]
            assert "no server online" in info.value.body["message"]


def test_client_disconnect_cancels_the_generation(tokenizer):
    engine = FakeEngine(tokenizer, reply=lambda prompt: ["tok"] * 1000, token_delay_s=0.02)  # 20 s in all
    with served(create_app(engine, web_dir=None)) as base:
        client = openai_client(base)
        stream = client.chat.completions.create(model="fake-model", messages=USER, max_tokens=1000, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        deadline = time.monotonic() + 10
        while engine.open and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.open == 0 and engine.yielded < 500


def test_static_pages_are_served(tokenizer, tmp_path):
    (tmp_path / "index.html").write_text("<html>corolla</html>")
    with served(create_app(FakeEngine(tokenizer), web_dir=tmp_path)) as base:
        assert "corolla" in http_get(f"{base}/")[1]
        assert json.loads(http_get(f"{base}/api/swarm")[1])["models"][0]["coverage"] == [1, 1]
        assert http_get(f"{base}/v1/models")[0] == 200
