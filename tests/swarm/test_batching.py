"""Many sessions on one server: batched steps, a KV-cache budget with its policies, per-peer limits.

One swarm for the module, three servers of the same tiny Llama (all 6 blocks each), each set up
for one behaviour; a test picks its server with ``allowed_servers``:

- ``evict``: a cache of 100 tokens, ``--cache-policy evict-lru``, at most 64 tokens' worth per client;
- ``wait``: a cache of 100 tokens, ``--cache-policy wait`` for at most 1 s;
- ``roomy``: the default cache.

Tiny Llama: 6 blocks x 2 kv heads x 16 dims x (key + value) x 4 bytes = 1536 bytes per token;
caches grow 64 tokens at a time, so a 40-token session holds 64 tokens (98,304 bytes).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from corolla.client.remote import parse_response
from corolla.errors import ServerBusyError
from corolla.protocol.messages import InferenceMeta, ServerInfo, SessionOpen, decode_meta, encode_meta
from corolla.protocol.rpc import stub_for
from corolla.protocol.tensors import to_wire
from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import local_greedy
from tests.tiny_models import save_tiny_model

TOKEN_BYTES = 1536
COMMON = ["--torch-threads", "1", "--max-session-length", "256"]
SERVERS = {
    "evict": ["--cache-tokens", "100", "--cache-policy", "evict-lru",
              "--max-cache-bytes-per-peer", str(64 * TOKEN_BYTES)],
    "wait": ["--cache-tokens", "100", "--cache-policy", "wait", "--cache-wait-s", "1"],
    "roomy": [],
}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-batching"))
    local = LocalSwarm(str(folder), 6, "tiny-batching", log_dir=tmp_path_factory.mktemp("logs-batching"),
                       server_args=COMMON)
    try:
        procs = {name: local.add_server((0, 6), args) for name, args in SERVERS.items()}
        local.wait_ready(list(procs.values()), timeout_s=300)
        yield local, folder, {name: p.peer_id for name, p in procs.items()}
    finally:
        local.stop()


@pytest.fixture(scope="module")
def ref(swarm):
    return AutoModelForCausalLM.from_pretrained(swarm[1]).eval()


def client(swarm, *servers: str, **options):
    from corolla.client.model import DistributedModelForCausalLM

    local, folder, peers = swarm
    return DistributedModelForCausalLM.from_pretrained(
        folder, initial_peers=local.initial_peers, model_id="tiny-batching",
        allowed_servers=[peers[s] for s in servers], **options,
    )


def prompt(seed: int, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 320, (1, length), generator=torch.Generator().manual_seed(seed))


def server_info(model, peer_id: str) -> ServerInfo:
    response = model.client.loop.run(
        stub_for(model.client.p2p, peer_id).rpc_info(runtime_pb2.ExpertRequest(uid="tiny-batching"), timeout=10))
    return decode_meta(response.metadata, ServerInfo)


def test_concurrent_sessions_are_batched_and_each_gets_its_solo_output(swarm, ref):
    prompts = [prompt(200 + i, 6 + 3 * i) for i in range(6)]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    with client(swarm, "roomy", max_retries=0) as model:
        before = server_info(model, swarm[2]["roomy"])
        barrier = threading.Barrier(len(prompts))

        def run(i: int) -> None:
            try:
                barrier.wait()
                results[i] = model.generate(prompts[i], max_new_tokens=16, eos_token_id=[])
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        after = server_info(model, swarm[2]["roomy"])
    assert not errors, errors
    for i, ids in enumerate(prompts):
        assert torch.equal(results[i], local_greedy(ref, ids, 16)), f"session {i} differs from its solo run"
    steps = after.steps_served - before.steps_served
    batches = after.batches_run - before.batches_run
    assert steps == 6 * 16  # prompt + 15 decode steps each (the 16th token is sampled, not sent)
    assert batches < steps  # steps of different sessions shared forwards


def test_evicted_session_is_replayed_with_identical_output(swarm, ref):
    first, second = prompt(1, 30), prompt(2, 30)
    with client(swarm, "evict") as a, client(swarm, "evict") as b:
        with a.inference_session(max_length=100) as session:
            out1 = a.generate(first, max_new_tokens=4, eos_token_id=[])
            # another client fills the cache: the idle session above is the least recently used
            other = b.generate(second, max_new_tokens=30, eos_token_id=[])
            out2 = a.generate(None, max_new_tokens=4, eos_token_id=[])
            assert session.evictions >= 1
            assert session.recoveries >= 1
    assert torch.equal(other, local_greedy(ref, second, 30))
    whole = torch.cat([out1, out2[:, -4:]], dim=1)
    assert torch.equal(whole, local_greedy(ref, first, 8))


def test_wait_policy_answers_busy_and_the_client_goes_elsewhere(swarm, ref):
    holder_ids, late_ids = prompt(3, 30), prompt(4, 40)  # 64 + 44 tokens of cache do not fit in 100
    with client(swarm, "wait") as holder:
        with holder.inference_session(max_length=120) as session:
            holder.generate(holder_ids, max_new_tokens=2, eos_token_id=[])  # holds 64 of 100 tokens, idle
            with client(swarm, "wait", max_retries=0) as alone:
                with pytest.raises(ServerBusyError, match="KV cache is full"):
                    alone.generate(late_ids, max_new_tokens=4, eos_token_id=[])
            # with another server allowed, the busy one is left for it
            with client(swarm, "wait", "roomy") as late:
                out = late.generate(late_ids, max_new_tokens=8, eos_token_id=[])
            assert torch.equal(out, local_greedy(ref, late_ids, 8))
            # the holder's session was never disturbed
            more = holder.generate(None, max_new_tokens=2, eos_token_id=[])
            assert session.recoveries == 0
        assert more.shape[1] == 2


def test_per_peer_cache_limit_is_a_clear_error(swarm):
    """One client may not take more than its share of a server's cache."""
    with client(swarm, "evict") as model:
        peer = swarm[2]["evict"]

        async def two_sessions():
            async def one(session_id: str, queue: asyncio.Queue):
                async def requests():
                    while (item := await queue.get()) is not None:
                        yield item

                opening = SessionOpen(model_id=model.model_id, session_id=session_id, start_block=0, end_block=6,
                                      max_length=100)
                queue.put_nowait(runtime_pb2.ExpertRequest(
                    uid=model.model_id, tensors=[to_wire(torch.randn(1, 40, 64))],
                    metadata=encode_meta(InferenceMeta(position=0, open=opening))))
                stream = await stub_for(model.client.p2p, peer).rpc_inference(requests())
                return stream, await anext(stream)

            q1, q2 = asyncio.Queue(), asyncio.Queue()
            s1, first = await one("per-peer-one", q1)
            s2, second = await one("per-peer-two", q2)
            for q, s in ((q1, s1), (q2, s2)):
                q.put_nowait(None)
                await s.aclose()
            return first, second

        first, second = model.client.loop.run(two_sessions(), timeout=60)
    parse_response(first)  # the first 64 tokens' worth fit
    with pytest.raises(ServerBusyError, match="per-peer limit"):
        parse_response(second)
