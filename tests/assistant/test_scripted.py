"""The scripted model: the official openai client against corolla's real API, replies from a script."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assistant.scripted import ScriptedModel, last_message, pieces, scripted_fixture, scripted_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served():
    yield from scripted_fixture()


@pytest.fixture
def llm(served):
    model, base_url = served
    model.reset()
    yield model, base_url
    model.reset()


def client(base_url: str):
    import openai

    return openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)


def ask(base_url: str, *messages: str | dict, stream: bool = False, **kw) -> str:
    msgs = [m if isinstance(m, dict) else {"role": "user", "content": m} for m in messages]
    c = client(base_url)
    if stream:
        chunks = c.chat.completions.create(model="scripted", messages=msgs, stream=True, **kw)
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return c.chat.completions.create(model="scripted", messages=msgs, **kw).choices[0].message.content


def test_pieces_join_back():
    text = "  def f(x):\n    return x  \n\n"
    assert "".join(pieces(text)) == text and len(pieces(text)) > 3
    assert pieces("") == []


def test_reply_non_stream_and_stream(llm):
    model, base = llm
    model.add("hello", "Hi there,\n  friend!")
    assert ask(base, "hello model") == "Hi there,\n  friend!"
    assert ask(base, "hello again", stream=True) == "Hi there,\n  friend!"
    assert base.endswith("/v1")


def test_rules_match_last_user_message(llm):
    model, base = llm
    model.add("alpha", "A").add(re.compile(r"^be+ta$"), "B").add(lambda p: "<tools>" in p, "T")
    model.add("system-only", "S")
    history = [{"role": "system", "content": "system-only"}, {"role": "user", "content": "alpha"},
               {"role": "assistant", "content": "A"}]
    assert ask(base, *history, "beeeta") == "B"  # alpha is in the prompt, but not in the last message
    assert ask(base, *history, "alpha?") == "A"
    assert ask(base, "nothing").startswith("SCRIPTED: no rule for 'nothing'")
    assert model.requests[0].last_message == "beeeta"


def test_callable_reply_and_tool_call(llm):
    model, base = llm
    model.add("weather", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    model.add("<tool_response>", lambda prompt: "It is " + last_message(prompt).split("\n")[1])
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}}}}]
    c = client(base)
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    first = c.chat.completions.create(model="scripted", messages=msgs, tools=tools).choices[0]
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    msgs += [first.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = c.chat.completions.create(model="scripted", messages=msgs, tools=tools).choices[0]
    assert second.message.content == "It is sunny"
    assert "<tools>" in model.requests[0].prompt
    chunks = list(c.chat.completions.create(model="scripted", messages=msgs[:1], tools=tools, stream=True))
    streamed = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert [d.function.name for d in streamed] == ["get_weather"]


def test_queue_first(llm):
    model, base = llm
    model.add("q", "rule")
    model.queue("first", lambda p: "second")
    assert [ask(base, "q"), ask(base, "q", stream=True), ask(base, "q")] == ["first", "second", "rule"]


def test_requests_recorded_with_options(llm):
    model, base = llm
    model.add("count", "one two three four five")
    assert ask(base, "count", max_tokens=3) == "one two three"  # one piece per token
    assert ask(base, "count", stop=[" four"]) == "one two three"
    assert len(model.requests) == 2
    first = model.requests[0]
    assert first.options.max_tokens == 3 and first.reply == "one two three four five"
    assert "<|im_start|>user\ncount<|im_end|>" in first.prompt and first.last_message == "count"
    assert model.prompts == [r.prompt for r in model.requests]


def test_completions_match_whole_prompt(llm):
    model, base = llm
    model.add("def add", "(a, b):\n    return a + b")
    out = client(base).completions.create(model="scripted", prompt="def add", max_tokens=50)
    assert out.choices[0].text == "(a, b):\n    return a + b"


def test_own_server_with_rules():
    with scripted_server([("ping", "pong")]) as (model, base):
        assert isinstance(model, ScriptedModel)
        assert ask(base, "ping") == "pong"
        assert [m.id for m in client(base).models.list()] == ["scripted"]


def test_process_mode(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"match": "^hel+o", "reply": "from the process"}]))
    log = tmp_path / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tests.assistant.scripted", "--port", "0", "--script", str(script),
                             "--requests-log", str(log)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().strip()
        assert re.fullmatch(r"READY http://127\.0\.0\.1:\d+/v1", line), line
        base = line.split()[1]
        assert ask(base, "hellllo") == "from the process"
        assert ask(base, "other").startswith("SCRIPTED: no rule")
        logged = [json.loads(x) for x in log.read_text().splitlines()]
        assert [x["last_message"] for x in logged] == ["hellllo", "other"]
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
