"""Training under faults: a server killed at any moment of a step changes nothing in the step's
gradients; malformed training requests get typed errors and the server keeps serving."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
import torch
from hivemind.proto import runtime_pb2

from corolla.client.training import SwarmAdapter
from corolla.errors import (
    BadRequestError,
    CorollaError,
    TrainingUnsupportedError,
    UnknownAdapterError,
    error_from_wire,
)
from corolla.protocol.messages import AdapterSpec, BackwardMeta, ForwardMeta, ResponseMeta, decode_meta, encode_meta
from corolla.protocol.rpc import stub_for
from corolla.protocol.tensors import encode, to_wire
from corolla.swarm.local import LocalSwarm
from tests.swarm.test_training import assert_grads_close, grads_of, make_adapter
from tests.tiny_models import save_tiny_model

SPANS = [(0, 3), (3, 6), (0, 3), (3, 6)]  # every span held twice: a replacement is always there
ARGS = ["--torch-threads", "1", "--max-backward-tokens", "64", "--max-lora-rank", "8"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-train"))
    s = LocalSwarm(str(folder), 6, "tiny-train", log_dir=tmp_path_factory.mktemp("logs-train"), server_args=ARGS)
    try:
        s.start(SPANS)
        yield s
    finally:
        s.stop()


def client(swarm, **options):
    from corolla.client.model import DistributedModelForCausalLM

    options = {"route_timeout_s": 60.0, "request_timeout_s": 30.0, **options}
    return DistributedModelForCausalLM.from_pretrained(swarm.model, initial_peers=swarm.initial_peers,
                                                       model_id=swarm.model_id, **options)


def training_step(model, adapter: SwarmAdapter, ids: torch.Tensor) -> tuple[float, dict]:
    adapter.zero_grad()
    model.adapter = adapter
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.item(), grads_of(adapter)


def replace_dead(swarm, victim):
    swarm.servers.remove(victim)
    swarm.wait_ready([swarm.add_server(victim.span)])


@pytest.mark.parametrize("streams, rounds", [(True, 6), (False, 3)], ids=["streaming-calls", "stateless-calls"])
def test_kill_at_random_moments_of_a_training_step_changes_no_gradient(swarm, streams, rounds):
    """Each round kills the server of a random call of the step (a forward or a backward half of
    any micro-batch) a random 0-3 ms after the call starts: mid-request, or between its calls.
    With streaming calls the servers hold the graphs between forward and backward; without, every
    backward recomputes."""
    ids = torch.randint(0, 320, (4, 24), generator=torch.Generator().manual_seed(2))
    with client(swarm, ban_s=600.0, train_streams=streams) as model:
        adapter = make_adapter(model.config, "lora")
        want_loss, want = training_step(model, adapter, ids)
        calls: list[str] = []
        plan: dict = {}
        for name in ("call_forward", "call_backward", "train_forward", "train_backward"):
            original = getattr(model.client, name)

            async def watched(hop, *args, original=original, **kwargs):
                calls.append(hop.peer_id)
                if plan and len(calls) == plan["call"]:
                    victim = next(s for s in swarm.servers if s.peer_id == hop.peer_id)
                    plan["victim"] = victim
                    threading.Timer(plan["delay"], swarm.kill, (victim, signal.SIGKILL)).start()
                return await original(hop, *args, **kwargs)

            setattr(model.client, name, watched)
        training_step(model, adapter, ids)
        per_step = len(calls)
        recovered = 0
        for seed in range(rounds):
            rng = random.Random(seed)
            calls.clear()
            plan.update(call=rng.randrange(1, per_step + 1), delay=rng.uniform(0, 0.003))
            before = model.blocks.recoveries
            loss, got = training_step(model, adapter, ids)
            what = f"seed {seed}: killed call {plan['call']}'s server of {per_step}, {plan['delay'] * 1000:.1f} ms in"
            assert loss == pytest.approx(want_loss, rel=1e-6), what
            assert_grads_close(got, want, rel=1e-5)
            recovered += model.blocks.recoveries > before
            time.sleep(0.05)  # the kill has landed
            replace_dead(swarm, plan.pop("victim"))
            plan.clear()
        assert recovered >= rounds // 2, f"only {recovered} of {rounds} kills landed inside a step"


def test_a_server_dying_between_forward_and_backward_is_recomputed(swarm):
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(3))
    with client(swarm, ban_s=600.0) as model:
        adapter = make_adapter(model.config, "deep-prompt")
        _, want = training_step(model, adapter, ids)
        adapter.zero_grad()
        model.adapter = adapter
        loss = model(ids, labels=ids).loss
        used = {r.hop.peer_id for chunk in model.blocks.last_forward for r in chunk}
        # the hop that held the last blocks in this forward dies before backward
        last = [s for s in swarm.servers if s.span == (3, 6) and s.process.poll() is None]
        victim = next((s for s in last if s.peer_id in used), last[0])
        swarm.kill(victim, signal.SIGKILL)
        before = model.blocks.recoveries
        loss.backward()
        assert_grads_close(grads_of(adapter), want, rel=1e-5)
        assert model.blocks.recoveries > before or victim.peer_id not in used
    replace_dead(swarm, victim)


def call(swarm, peer_id: str, method: str, meta, tensors) -> CorollaError | None:
    """Send one raw request; the error it answers with (None if it succeeded)."""
    with client(swarm) as model:
        request = runtime_pb2.ExpertRequest(uid=swarm.model_id, tensors=tensors, metadata=encode_meta(meta))
        stub = stub_for(model.client.p2p, peer_id)
        response = model.client.loop.run(getattr(stub, method)(request, timeout=30))
    answer = decode_meta(response.metadata, ResponseMeta)
    if answer.error is not None:
        return error_from_wire(answer.error.code, answer.error.message)
    assert len(response.tensors) >= 1
    return None


def test_malformed_training_requests_get_typed_errors_and_the_server_keeps_serving(swarm):
    server = next(s for s in swarm.servers if s.span == (0, 3) and s.process.poll() is None)
    h = torch.randn(1, 4, 64)
    spec = AdapterSpec(lora_rank=2, lora_scale=1.0, lora_targets=("q",))
    pair = lambda r=2: [to_wire(torch.randn(r, 64)), to_wire(torch.randn(64, r))]  # noqa: E731
    meta = dict(model_id=swarm.model_id, start_block=0, end_block=1)
    nan = torch.randn(2, 64)
    nan[0, 0] = float("nan")
    cases = {
        "grad of another shape": ("rpc_backward", BackwardMeta(**meta), encode(h) + encode(torch.randn(1, 3, 64))),
        "no output grad": ("rpc_backward", BackwardMeta(**meta), encode(h)),
        "missing LoRA tensors": ("rpc_backward", BackwardMeta(**meta, adapter=spec), encode(h) + encode(h)),
        "LoRA of the wrong shape": ("rpc_forward", ForwardMeta(**meta, adapter=spec),
                                    encode(h) + [to_wire(torch.randn(2, 63)), to_wire(torch.randn(64, 2))]),
        "NaN in LoRA": ("rpc_backward", BackwardMeta(**meta, adapter=spec),
                        encode(h) + encode(h) + [to_wire(nan), to_wire(torch.randn(64, 2))]),
        "fp16 LoRA": ("rpc_forward", ForwardMeta(**meta, adapter=spec),
                      encode(h) + [to_wire(torch.randn(2, 64).half()), to_wire(torch.randn(64, 2).half())]),
        "rank over the limit": ("rpc_backward", BackwardMeta(**meta, adapter=spec.model_copy(update={"lora_rank": 9})),
                                encode(h) + encode(h) + pair(9)),
        "too many tokens": ("rpc_backward", BackwardMeta(**meta), encode(torch.randn(2, 40, 64)) * 2),
        "tensors without a spec": ("rpc_forward", ForwardMeta(**meta), encode(h) + pair()),
        "hosted adapter in backward": ("rpc_backward", BackwardMeta(**meta, hosted_adapter="x"), encode(h) * 2),
        "unknown hosted adapter": ("rpc_forward", ForwardMeta(**meta, hosted_adapter="x"), encode(h)),
        "blocks outside the span": ("rpc_backward", BackwardMeta(**{**meta, "end_block": 4}), encode(h) * 2),
        "deep prompt of a wrong batch": ("rpc_forward", ForwardMeta(**meta, adapter=AdapterSpec(prompt_len=2)),
                                         encode(torch.randn(3, 4, 64)) + [to_wire(torch.randn(2, 2, 64))]),
    }
    for name, (method, m, tensors) in cases.items():
        error = call(swarm, server.peer_id, method, m, tensors)
        expected = UnknownAdapterError if name == "unknown hosted adapter" else BadRequestError
        assert isinstance(error, expected), f"{name}: {error!r}"
    # a good request still works afterwards, on the same server
    assert call(swarm, server.peer_id, "rpc_backward", BackwardMeta(**meta, adapter=spec),
                encode(h) + encode(h) + pair()) is None
    with client(swarm, allowed_servers=[server.peer_id] + [s.peer_id for s in swarm.servers if s.span == (3, 6)]) \
            as model:
        model.adapter = make_adapter(model.config, "lora")
        model(torch.randint(0, 320, (1, 8)), labels=torch.randint(0, 320, (1, 8))).loss.backward()


def test_a_quantized_server_refuses_backward_with_a_typed_error(swarm):
    server = swarm.add_server((0, 6), extra_args=["--quant", "int8"])
    try:
        swarm.wait_ready([server])
        meta = BackwardMeta(model_id=swarm.model_id, start_block=0, end_block=1)
        h = torch.randn(1, 4, 64)
        assert isinstance(call(swarm, server.peer_id, "rpc_backward", meta, encode(h) * 2), TrainingUnsupportedError)
        # and training clients never route through it: only the float servers appear in their chains
        with client(swarm) as model:
            assert all(hop.peer_id != server.peer_id for hop in model.client.plan(trainable=True))
    finally:
        swarm.stop_server(server)
        swarm.servers.remove(server)


def test_a_server_without_room_to_keep_graphs_is_used_through_recomputing_calls(swarm):
    """A server whose budget for held graphs is too small refuses the streaming call before any
    compute; the client uses its stateless forward and backward instead: the same gradients."""
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(6))
    with client(swarm) as model:
        _, want = training_step(model, make_adapter(model.config, "lora"), ids)
    server = swarm.add_server((0, 6), extra_args=["--max-held-train-tokens", "8"])
    try:
        swarm.wait_ready([server])
        with client(swarm, allowed_servers=[server.peer_id]) as model:
            calls = []
            original = model.client.call_backward

            async def counted(*args, **kwargs):
                calls.append(1)
                return await original(*args, **kwargs)

            model.client.call_backward = counted
            _, got = training_step(model, make_adapter(model.config, "lora"), ids)
        assert calls, "the client never fell back to the stateless backward"
        assert_grads_close(got, want, rel=1e-5)
    finally:
        swarm.stop_server(server)
        swarm.servers.remove(server)
