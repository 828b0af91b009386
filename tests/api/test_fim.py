"""Fill-in-the-middle and native tool templates with the packaged Qwen2.5-Coder-0.5B (one server, 24 blocks)."""

from __future__ import annotations

import json

import pytest

from corolla.api import prompts
from tests.api.conftest import openai_client

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def coder(coder_api):
    return coder_api.model, openai_client(coder_api.base)


def test_fim_fills_the_middle(coder):
    model, client = coder
    prefix, suffix = "def add(a, b):\n    return ", "\n\n\nprint(add(1, 2))\n"
    reply = client.completions.create(model="qwen2.5-coder-0.5b", prompt=prefix, suffix=suffix, max_tokens=6,
                                      temperature=0)
    text = reply.choices[0].text
    assert "a + b" in text and "<|" not in text
    assert reply.choices[0].finish_reason in ("stop", "length")
    fim_text, _ = prompts.fim_prompt(model.tokenizer, prefix, suffix)
    assert reply.usage.prompt_tokens == len(model.tokenizer(fim_text, add_special_tokens=False)["input_ids"])


def test_native_tool_template_and_call(coder):
    model, client = coder
    assert prompts.template_knows_tools(model.tokenizer)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    text = prompts.render_chat(model.tokenizer, messages, [WEATHER])
    assert '"name": "get_weather"' in text and "<tool_call>" in text  # the template's own tool section
    reply = client.chat.completions.create(model="qwen2.5-coder-0.5b", messages=messages, tools=[WEATHER],
                                           temperature=0, max_tokens=32)
    choice = reply.choices[0]  # greedy: the model answers with the call (in a ```json block)
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
