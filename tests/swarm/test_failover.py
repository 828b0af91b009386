"""Churn: servers die, leave and join; generation goes on with identical output."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from corolla.errors import NoRouteError
from corolla.protocol.messages import ServerState
from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import local_greedy
from tests.tiny_models import save_tiny_model

ARGS = ["--torch-threads", "1", "--announce-period-s", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture
def swarm(tiny, tmp_path, request):
    folder, _ = tiny
    model_id = "tiny-" + request.node.name.replace("_", "-")[:40]
    s = LocalSwarm(str(folder), 6, model_id, log_dir=tmp_path, server_args=ARGS)
    yield s
    s.stop()


def client(swarm, folder, **options):
    from corolla.client.model import DistributedModelForCausalLM

    return DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                       model_id=swarm.model_id, **options)


def process_of(swarm, peer_id):
    return next(s for s in swarm.servers if s.peer_id == peer_id)


def generate_killing(model, swarm, ids, new_tokens, at_step, hop_index, after_kill=None):
    """Greedy generation that SIGKILLs the server of hop ``hop_index`` after ``at_step`` tokens.

    Returns (tokens, seconds from the kill to the next token, recoveries).
    """
    times, killed = [], {}

    with model.inference_session(max_length=64) as session:
        def on_token(_):
            times.append(time.monotonic())
            if len(times) == at_step:
                victim = process_of(swarm, session.chain[hop_index].peer_id)
                swarm.kill(victim, signal.SIGKILL)
                killed["at"] = time.monotonic()
                if after_kill:
                    after_kill()

        out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], callback=on_token)
        recovered_after = times[at_step] - killed["at"]
        return out, recovered_after, session.recoveries


def test_kill_9_with_a_replacement_online(swarm, tiny):
    folder, ref = tiny
    swarm.start([(0, 3), (3, 6), (3, 6)])
    ids = torch.randint(0, 320, (1, 10), generator=torch.Generator().manual_seed(21))
    with client(swarm, folder) as model:
        out, recovery_s, recoveries = generate_killing(model, swarm, ids, 40, at_step=12, hop_index=1)
    assert recoveries == 1
    assert torch.equal(out, local_greedy(ref, ids, 40))
    print(f"\nnext token {recovery_s:.2f} s after kill -9 (warm replacement)")


def test_only_server_killed_and_a_new_one_starts_3s_later(swarm, tiny):
    folder, ref = tiny
    swarm.start([(0, 3), (3, 6)])
    ids = torch.randint(0, 320, (1, 10), generator=torch.Generator().manual_seed(22))

    def start_later():
        threading.Timer(3.0, lambda: swarm.add_server((3, 6))).start()

    with client(swarm, folder, route_timeout_s=120) as model:
        out, recovery_s, recoveries = generate_killing(model, swarm, ids, 30, at_step=8, hop_index=1,
                                                       after_kill=start_later)
    assert recoveries == 1
    assert torch.equal(out, local_greedy(ref, ids, 30))
    print(f"\nnext token {recovery_s:.2f} s after kill -9 (replacement started 3 s later)")


def test_no_server_ever_appears(swarm, tiny):
    folder, _ = tiny
    swarm.start([(0, 3)])
    ids = torch.randint(0, 320, (1, 4), generator=torch.Generator().manual_seed(23))
    with client(swarm, folder, route_timeout_s=3.0) as model:
        t0 = time.monotonic()
        with pytest.raises(NoRouteError) as info:
            model.generate(ids, max_new_tokens=2)
        elapsed = time.monotonic() - t0
    assert str(info.value) == f"blocks 3–5 of {swarm.model_id} have no server online"
    assert elapsed < 3.0 + 5.0  # the deadline plus one DHT read and backoff step


def test_slow_server_is_avoided(swarm, tiny):
    folder, ref = tiny
    fast = swarm.add_server((0, 6), ["--throughput", "500"])
    slow = swarm.add_server((0, 6), ["--throughput", "5"])
    swarm.wait_ready([fast, slow])
    ids = torch.randint(0, 320, (1, 6), generator=torch.Generator().manual_seed(24))
    with client(swarm, folder) as model, model.inference_session(max_length=32) as session:
        out = model.generate(ids, max_new_tokens=4, eos_token_id=[])
        assert [h.peer_id for h in session.chain] == [fast.peer_id]
    assert torch.equal(out, local_greedy(ref, ids, 4))


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_servers_place_themselves_and_rebalance_when_one_leaves(swarm):
    auto = ["--num-blocks", "3", "--rebalance-period-s", "2"]
    for _ in range(3):  # one after another, none told which blocks to serve
        swarm.wait_ready([swarm.add_server(None, auto)])
    spans = sorted(s.span for s in swarm.servers)
    assert set(spans) == {(0, 3), (3, 6)}, spans  # the first two split the model, the third doubles up
    assert min(swarm.state().coverage()) >= 1
    # the server that alone covers its span leaves: a remaining one must move to close the gap
    alone = next(s for s in swarm.servers if spans.count(s.span) == 1)
    swarm.stop_server(alone)

    def covered_by_the_rest():
        online = [r for r in swarm.state().servers if r.info.state is ServerState.ONLINE and r.peer_id != alone.peer_id]
        blocks = [0] * 6
        for r in online:
            for b in range(r.start, r.end):
                blocks[b] += 1
        return min(blocks) >= 1

    wait_until(covered_by_the_rest, 90, "the remaining servers to cover every block")
