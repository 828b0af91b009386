"""The API with speculative decoding (``corolla api --draft``): the same answers, fewer steps."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from corolla.api.app import create_app
from corolla.api.engine import SwarmEngine
from tests.api.conftest import openai_client, served

pytestmark = pytest.mark.slow  # a real pretrained model on real server processes

PROMPT = "Repeat this code exactly:\ndef add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"


def answer(base, model_id):
    out = openai_client(base).chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=40)
    return out.choices[0].message.content


@pytest.mark.parametrize("draft", ["lookup", "model"])
def test_greedy_answers_are_the_same_with_a_draft(api_swarm, draft):
    plain = answer(api_swarm.base, api_swarm.model_id)
    if draft == "model":  # the target's own weights, locally: every draft is accepted
        draft = AutoModelForCausalLM.from_pretrained(api_swarm.folder)
    engine = SwarmEngine(api_swarm.model, draft=draft)
    try:
        with served(create_app(engine, web_dir=None)) as base:
            assert answer(base, api_swarm.model_id) == plain
    finally:
        engine.close(10)  # and the sessions its prompt cache keeps
    stats = api_swarm.model.last_speculation
    assert stats is not None and stats.emitted > 0 and stats.steps < stats.emitted


def test_a_draft_with_another_vocabulary_is_left_out(api_swarm):
    class Other:
        class config:
            vocab_size = 7

    assert SwarmEngine(api_swarm.model, draft=Other()).draft is None
    assert SwarmEngine(api_swarm.model, draft="lookup").draft == "lookup"
