"""Swarm output equals the local Hugging Face model, whatever the split over servers."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.swarm.conftest import local_greedy


@pytest.fixture(scope="module")
def tiny_ref(tiny_swarm):
    return AutoModelForCausalLM.from_pretrained(tiny_swarm.folder).eval()


@pytest.mark.parametrize("split", [0, 1, 2], ids=["1-server", "2-servers", "3-servers"])
def test_tiny_logits_and_greedy_tokens(tiny_swarm, tiny_ref, split):
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(split))
    with tiny_swarm.client(split) as model:
        with torch.no_grad():
            diff = (model(ids).logits - tiny_ref(ids).logits).abs().max().item()
        assert diff <= 1e-3
        out = model.generate(ids, max_new_tokens=32, eos_token_id=[])
        # the chain really went through this split's servers
        with model.inference_session(max_length=64) as session:
            model.generate(ids, max_new_tokens=1, eos_token_id=[])
            assert len(session.chain) == split + 1
    assert torch.equal(out, local_greedy(tiny_ref, ids, 32))


def test_session_spanning_calls_sends_only_new_tokens(tiny_swarm, tiny_ref):
    ids = torch.randint(0, 320, (1, 8), generator=torch.Generator().manual_seed(7))
    more = torch.randint(0, 320, (1, 5), generator=torch.Generator().manual_seed(8))
    with tiny_swarm.client(2) as model, model.inference_session(max_length=64) as session:
        first = model.generate(ids, max_new_tokens=6, eos_token_id=[])
        held = session.position
        second = model.generate(more, max_new_tokens=6, eos_token_id=[])
        # the servers got the pending token + the 5 new ones, then 5 decode steps
        assert session.position == held + 1 + 5 + 5
    whole = torch.cat([first, second], dim=1)
    expected = local_greedy(tiny_ref, torch.cat([first, more], dim=1), 6)
    assert torch.equal(whole, expected)


def test_batch_of_two_prompts(tiny_swarm, tiny_ref):
    ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(3))
    with tiny_swarm.client(1) as model:
        out = model.generate(ids, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(out, local_greedy(tiny_ref, ids, 10))


def test_two_concurrent_clients_get_their_own_output(tiny_swarm, tiny_ref):
    prompts = [torch.randint(0, 320, (1, 10), generator=torch.Generator().manual_seed(100 + i)) for i in range(2)]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            with tiny_swarm.client(2) as model:
                barrier.wait(timeout=60)
                results[i] = model.generate(prompts[i], max_new_tokens=24, eos_token_id=[])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for i in range(2):
        assert torch.equal(results[i], local_greedy(tiny_ref, prompts[i], 24))


def test_sampling_is_reproducible_with_a_seed(tiny_swarm):
    ids = torch.randint(0, 320, (1, 6), generator=torch.Generator().manual_seed(5))
    with tiny_swarm.client(0) as model:
        kw = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=50, top_p=0.9,
                  repetition_penalty=1.2, eos_token_id=[])
        a = model.generate(ids, seed=1, **kw)
        b = model.generate(ids, seed=1, **kw)
        c = model.generate(ids, seed=2, **kw)
    assert torch.equal(a, b)
    assert a.shape == c.shape == (1, 18)


@pytest.mark.slow
@pytest.mark.parametrize("split", [0, 1, 2], ids=["1-server", "2-servers", "3-servers"])
def test_smollm2_parity(smollm2_swarm, smollm2_ref, split):
    tok = smollm2_ref.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with smollm2_swarm.client(split) as model:
        with torch.no_grad():
            diff = (model(ids).logits - smollm2_ref.model(ids).logits).abs().max().item()
        assert diff <= 1e-3
        out = model.generate(ids, max_new_tokens=32, eos_token_id=[])
    assert torch.equal(out, smollm2_ref.greedy(ids))


class _Ref:
    def __init__(self, folder):
        from transformers import AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self._cache = {}

    def greedy(self, ids):
        key = tuple(ids[0].tolist())
        if key not in self._cache:
            self._cache[key] = local_greedy(self.model, ids, 32)
        return self._cache[key]


@pytest.fixture(scope="module")
def smollm2_ref(smollm2_dir):
    return _Ref(smollm2_dir)


@pytest.mark.parametrize("push", [True, False], ids=["push", "relay"])
def test_servers_push_to_the_next_hop_with_the_same_output(tiny_swarm, tiny_ref, push):
    """Servers hand each output straight to the next hop; the tokens are the same as without."""
    ids = torch.randint(0, 320, (1, 10), generator=torch.Generator().manual_seed(11))
    with tiny_swarm.client(2, push=push, pipeline_min_tokens=4) as model, \
            model.inference_session(max_length=64) as session:
        out = model.generate(ids, max_new_tokens=12, eos_token_id=[])
        # hops 2 and 3 get every step pushed (the first too: the client opens their sessions ahead;
        # the prompt goes as pieces of 4, 4 and 2 tokens sent at once, a step each)
        assert session.steps == 3 + 11 if push else session.steps == 12
        # every hop input after the first was pushed, but for a push that failed under load (its
        # client then sent the step itself): at most one of them
        assert session.pushed_inputs + session.push_failures == (2 * session.steps if push else 0)
        assert session.push_failures <= (1 if push else 0)
    assert torch.equal(out, local_greedy(tiny_ref, ids, 12))


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
def test_wire_compression_stays_close_to_the_model(tiny_swarm, tiny_ref, codec):
    """Hidden states sent as fp16, bf16 or int8 (both ways, and in pushes between servers)."""
    ids = torch.randint(0, 320, (1, 14), generator=torch.Generator().manual_seed(21))
    with tiny_swarm.client(2, compression=codec) as model:
        with torch.no_grad():
            logits, expected = model(ids).logits, tiny_ref(ids).logits
        with model.inference_session(max_length=40) as session:
            out = model.generate(ids, max_new_tokens=10, eos_token_id=[])
            assert session.pushed_inputs > 0  # the servers pushed compressed outputs to each other
    assert (logits - expected).abs().max() < 0.05 * expected.abs().max()
    assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.75
    assert out.shape == (1, 24)
