"""A model stuck in a loop is stopped by the API (every client benefits), streamed or not."""

from __future__ import annotations

from corolla.api.app import create_app
from tests.api.conftest import FakeEngine, openai_client, served

USER = [{"role": "user", "content": "Explain dedent"}]
INTRO = ["It", " removes", " common", " indentation", "."]
LOOP = [" It", " matches", " the", " depth", " the", " project's", " instructions", " ask", " for", "."]


def test_a_loop_is_stopped_with_finish_reason_stop(tokenizer):
    engine = FakeEngine(tokenizer, reply=lambda prompt: INTRO + LOOP * 200)
    with served(create_app(engine, web_dir=None)) as base:
        client = openai_client(base)
        reply = client.chat.completions.create(model="fake-model", messages=USER, max_tokens=1500, temperature=0)
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        assert reply.usage.completion_tokens == engine.yielded <= len(INTRO) + 200  # not the 1500 asked for
        assert choice.message.content.startswith("It removes common indentation. It matches the depth")
        chunks = list(client.chat.completions.create(model="fake-model", messages=USER, max_tokens=1500,
                                                     stream=True))
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
        completion = client.completions.create(model="fake-model", prompt="x", max_tokens=1500)
        assert completion.choices[0].finish_reason == "stop" and completion.usage.completion_tokens < 300


def test_long_answers_that_do_not_loop_run_to_their_limit(tokenizer):
    words = [f" w{i}" for i in range(600)]
    engine = FakeEngine(tokenizer, reply=lambda prompt: words)
    with served(create_app(engine, web_dir=None)) as base:
        reply = openai_client(base).chat.completions.create(model="fake-model", messages=USER, max_tokens=500)
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 500


def test_a_request_can_turn_the_stop_off(tokenizer):
    engine = FakeEngine(tokenizer, reply=lambda prompt: INTRO + LOOP * 200)
    with served(create_app(engine, web_dir=None)) as base:
        reply = openai_client(base).chat.completions.create(model="fake-model", messages=USER, max_tokens=1500,
                                                            extra_body={"repetition_stop": False})
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 1500
