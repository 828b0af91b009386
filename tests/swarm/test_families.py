"""Every new family through a real swarm: the same output as transformers, whatever the split.

One swarm per family (a module-scoped fixture, so one at a time): the blocks over 1, 2 and 3
float32 servers, plus a bfloat16 server for the back half (a mixed fp32/bf16 chain). Tiny random
models from each config class (tests/tiny_models.py), saved and loaded back as users' folders are.
The Llama family (Llama, Qwen2) has the same checks in test_parity.py.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import SERVER_ARGS, SwarmUnderTest, local_greedy, three_splits
from tests.tiny_models import TINY, save_tiny_model

FAMILIES = ["bloom", "falcon", "falcon-mq", "gemma2", "gemma3_text", "mixtral", "phi3"]
MIXED = 3  # index of the extra "split": fp32 front half + bf16 back half


@pytest.fixture(scope="module", params=FAMILIES)
def family_swarm(request, tmp_path_factory):
    name = request.param
    folder = save_tiny_model(name, tmp_path_factory.mktemp(f"family-{name}"))
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    n = ref.config.num_hidden_layers
    splits = three_splits(n)
    swarm = LocalSwarm(str(folder), n, f"tiny-{name}", log_dir=tmp_path_factory.mktemp(f"logs-{name}"),
                       server_args=SERVER_ARGS)
    try:
        procs = [[swarm.add_server(span) for span in split] for split in splits]
        bf16 = swarm.add_server((n // 2, n), ["--dtype", "bfloat16"])
        swarm.wait_ready([p for split in procs for p in split] + [bf16], timeout_s=600)
    except BaseException:
        swarm.stop()
        raise
    peers = [[p.peer_id for p in split] for split in procs] + [[procs[1][0].peer_id, bf16.peer_id]]
    sut = SwarmUnderTest(swarm, folder, f"tiny-{name}", splits, peers)
    yield sut, ref
    swarm.stop()


TINY_VOCAB = min(spec["vocab_size"] for spec in TINY.values())


def _ids(seed: int, length: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("split", [0, 1, 2], ids=["1-server", "2-servers", "3-servers"])
def test_logits_and_32_greedy_tokens_equal_transformers(family_swarm, split):
    sut, ref = family_swarm
    ids = _ids(split, 12)
    with sut.client(split) as model:
        with torch.no_grad():
            diff = (model(ids).logits - ref(ids).logits).abs().max().item()
        assert diff <= 1e-3
        with model.inference_session(max_length=64) as session:
            out = model.generate(ids, max_new_tokens=32, eos_token_id=[])
            assert len(session.chain) == split + 1  # it really went through this split's servers
    assert torch.equal(out, local_greedy(ref, ids, 32))


def test_cached_steps_equal_full_recomputation(family_swarm):
    """A prompt, then one token at a time through the servers' caches, against one full pass."""
    sut, ref = family_swarm
    ids = _ids(11, 20)
    with sut.client(2) as model, torch.no_grad():
        full = model(ids).logits
        with model.inference_session(max_length=32) as session:
            steps = [model.head.logits(session.step(model.head.embed(ids[:, :8])))]
            for t in range(8, 20):
                steps.append(model.head.logits(session.step(model.head.embed(ids[:, t : t + 1]))))
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4


def test_concurrent_sessions_get_their_solo_output(family_swarm):
    """Three sessions at once on one server (their steps batched when they meet) = each alone."""
    sut, ref = family_swarm
    prompts = [_ids(100 + i, 6 + 3 * i) for i in range(3)]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        try:
            with sut.client(0) as model:
                barrier.wait(timeout=120)
                results[i] = model.generate(prompts[i], max_new_tokens=16, eos_token_id=[])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for i, p in enumerate(prompts):
        assert torch.equal(results[i], local_greedy(ref, p, 16))


def test_mixed_fp32_bf16_chain_stays_close(family_swarm):
    sut, ref = family_swarm
    ids = _ids(21, 16)
    with sut.client(MIXED) as model:
        with torch.no_grad():
            logits, expected = model(ids).logits, ref(ids).logits
        with model.inference_session(max_length=32) as session:
            out = model.generate(ids, max_new_tokens=8, eos_token_id=[])
            assert [h.peer_id for h in session.chain] == sut.peers_by_split[MIXED]
    error = (logits - expected).abs().max()
    assert error < 0.1 * expected.abs().max()  # bf16 rounding, not a broken chain
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * error  # where rounding cannot flip the choice, it must not
    assert torch.equal(logits.argmax(-1)[clear], expected.argmax(-1)[clear])
    assert out.shape == (1, 24)


def test_lora_gradients_through_the_swarm_equal_transformers(family_swarm):
    """Fine-tuning through two servers: LoRA on every projection the family has, against
    transformers' model with the same LoRA hooked onto its modules."""
    from corolla.client.training import SwarmAdapter, causal_lm_loss
    from corolla.models.registry import family_for

    sut, ref = family_swarm
    family = family_for(ref.config)
    ids = _ids(31, 10, batch=2)
    with sut.client(1) as model:
        model.adapter = SwarmAdapter.create(model.config, "lora", rank=4, alpha=8, targets=tuple(family.lora_modules),
                                            seed=0)
        with torch.no_grad():  # LoRA B starts at zero: make every tensor matter
            for name, p in model.adapter.named_parameters():
                if name.startswith("lora_B"):
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
        out = model(ids, labels=ids)
        out.loss.backward()
        adapter = model.adapter
        got = {n: p.grad.clone() for n, p in adapter.named_parameters()}
        adapter.zero_grad()
        handles = []
        for key in adapter.lora_A:
            block, target = key.split("_", 1)
            a, b = adapter.lora_A[key], adapter.lora_B[key]
            module = ref.get_submodule(family.block_prefix(int(block)) + family.lora_modules[target])
            handles.append(module.register_forward_hook(
                lambda _m, args, o, a=a, b=b: o + adapter.lora_scale * ((args[0] @ a.t()) @ b.t())))
        try:
            want_loss = causal_lm_loss(ref(ids).logits, ids)
            want_loss.backward()
        finally:
            for h in handles:
                h.remove()
    assert abs(out.loss.item() - want_loss.item()) <= 1e-5 * abs(want_loss.item())
    for name, p in adapter.named_parameters():
        assert p.grad.abs().max() > 0, name
        assert ((got[name] - p.grad).abs().max() / p.grad.abs().max()).item() < 1e-4, name


def test_servers_announce_what_their_blocks_weigh(family_swarm):
    """Each server's weight_bytes (measured once loaded) = its blocks' bytes from the checkpoint's
    headers in its dtype: what placement and `swarm status` go by."""
    from corolla.models.loading import block_sizes, load_config

    sut, _ = family_swarm
    config = load_config(sut.folder)
    sizes = {dtype: block_sizes(sut.folder, config, dtype) for dtype in (torch.float32, torch.bfloat16)}
    servers = sut.swarm.state().servers
    assert len(servers) == 7
    for s in servers:
        i = s.info
        assert i.weight_bytes == sum(sizes[getattr(torch, i.dtype)][i.start_block : i.end_block]), i
