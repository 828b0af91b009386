"""A real pretrained checkpoint of a new family: Gemma 3 270M (the packaged ``gemma3-270m``,
de-quantised once from its GGUF) through two servers equals transformers on the same folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import SERVER_ARGS, SwarmUnderTest, local_greedy

pytestmark = pytest.mark.slow
SPANS = [(0, 7), (7, 18)]


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    from corolla.models.resolve import resolve_model

    folder = resolve_model("gemma3-270m", progress=False).path
    swarm = LocalSwarm(str(folder), 18, "gemma3-270m", log_dir=tmp_path_factory.mktemp("logs-gemma3"),
                       server_args=SERVER_ARGS)
    try:
        procs = [swarm.add_server(span) for span in SPANS]
        swarm.wait_ready(procs, timeout_s=600)
        sut = SwarmUnderTest(swarm, folder, "gemma3-270m", [SPANS], [[p.peer_id for p in procs]])
        yield sut, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    finally:
        swarm.stop()


def test_real_gemma3_through_two_servers_equals_transformers(gemma3):
    sut, ref, tokenizer = gemma3
    ids = tokenizer("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                    return_tensors="pt").input_ids
    with sut.client(0) as model:
        with torch.no_grad():
            diff = (model(ids).logits - ref(ids).logits).abs().max().item()
        out = model.generate(ids, max_new_tokens=32, eos_token_id=[])
    assert diff <= 1e-3
    assert torch.equal(out, local_greedy(ref, ids, 32))
