"""Servers die at random moments — at session open, during a prefill chunk, mid-step, while the
previous server pushes to them — and generation goes on with identical output, the death noticed
through the transport (a closed stream), never through a timeout.

A killer thread waits for a moment of the client's work (a send to the first server: the session
opening, the prefill's first chunk, a decode step) and kills a server of the chain a uniformly
random time later, while the client is doing whatever it does then. Every span has two servers
(a warm replacement); each dead server is replaced before the next round. Seeded rounds.

The client runs with a 30-s request timeout and liveness probes only after 30 s: a death noticed
by a timeout would show as a PeerUnresponsiveError among the session's failures (and a slow test).
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from corolla.client.hopstream import HopStream
from corolla.client.remote import SwarmClient
from corolla.errors import PeerUnreachableError, PeerUnresponsiveError
from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import local_greedy
from tests.tiny_models import save_tiny_model

pytestmark = pytest.mark.slow

SPANS = [(0, 3), (0, 3), (3, 6), (3, 6)]
ARGS = ["--torch-threads", "1", "--announce-period-s", "1"]
PROMPT_TOKENS, NEW_TOKENS, CHUNK = 48, 24, 8  # the prompt goes in 6 chunks
ROUNDS = {"open": 3, "prefill": 3, "decode": 4, "push": 4}
PATIENT = dict(request_timeout_s=30.0, liveness_period_s=30.0, max_chunk_tokens=CHUNK, route_timeout_s=60.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-moments"))
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def swarm(tiny, tmp_path_factory):
    folder, _ = tiny
    s = LocalSwarm(str(folder), 6, "tiny-moments", log_dir=tmp_path_factory.mktemp("logs-moments"), server_args=ARGS)
    try:
        s.start(SPANS)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 320, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(31))


def client(swarm, folder, **options):
    from corolla.client.model import DistributedModelForCausalLM

    return DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                       model_id=swarm.model_id, **options)


class SendWatch:
    """Calls ``hook(hop_index, position)`` on the client's loop whenever the client sends a step."""

    def __init__(self, monkeypatch):
        self.hook = None
        original = HopStream.send
        watch = self

        async def send(stream, hidden, position, *args, **kwargs):
            if watch.hook is not None:
                watch.hook(stream, position)
            return await original(stream, hidden, position, *args, **kwargs)

        monkeypatch.setattr(HopStream, "send", send)


def replace_dead(swarm, victim):
    swarm.servers.remove(victim)
    swarm.wait_ready([swarm.add_server(victim.span)])


def undisturbed(model, prompt):
    """The reference tokens and how long the prefill and one decode step take."""
    times = []
    t0 = time.monotonic()
    with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[],
                             callback=lambda _: times.append(time.monotonic()))
        assert session.pushed_inputs > 0  # the push phase below really is a push
    return out, times[0] - t0, (times[-1] - times[0]) / (len(times) - 1)


def test_kills_at_random_moments_lose_nothing_and_wait_for_no_timeout(swarm, tiny, prompt, monkeypatch):
    folder, ref = tiny
    watch = SendWatch(monkeypatch)
    with client(swarm, folder, **PATIENT) as model:
        expected, prefill_s, step_s = undisturbed(model, prompt)
        assert torch.equal(expected, local_greedy(ref, prompt, NEW_TOKENS))
        seed = 0
        for phase, rounds in ROUNDS.items():
            done_rounds = 0
            while done_rounds < rounds:
                seed += 1
                assert seed <= 3 * sum(ROUNDS.values()), "the kills keep coming after the generation ended"
                rng = random.Random(seed)
                step = rng.randrange(2, NEW_TOKENS - 4)  # the decode step the killer waits for
                trigger, killed = threading.Event(), {}

                def hook(stream, position, trigger=trigger, phase=phase, step=step):
                    if trigger.is_set() or stream.hop.start != 0:
                        return
                    if phase in ("open", "prefill") or position == PROMPT_TOKENS + step:
                        trigger.set()

                if phase == "open":
                    delay = rng.uniform(0.0, 0.02)  # while the first hops open their sessions
                elif phase == "prefill":
                    delay = rng.uniform(0.0, prefill_s)
                else:
                    delay = rng.uniform(0.0, step_s)
                finished = threading.Event()
                with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
                    def killer(trigger=trigger, delay=delay, phase=phase, rng=rng, killed=killed, finished=finished):
                        trigger.wait(60)
                        if finished.wait(delay):  # the generation was quicker than the delay (a busy machine
                            return  # made the undisturbed timings long): this round tests nothing, another one will
                        chain = session.chain
                        # "push": the server the first one is pushing to; else any server of the chain
                        hop = 1 if phase == "push" else rng.randrange(len(chain))
                        victim = next(s for s in swarm.servers if s.peer_id == chain[hop].peer_id)
                        swarm.kill(victim, signal.SIGKILL)
                        killed.update(victim=victim, hop=hop, at=time.monotonic())

                    watch.hook = hook
                    thread = threading.Thread(target=killer, daemon=True)
                    thread.start()
                    try:
                        out = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
                    finally:
                        ended = time.monotonic()
                        finished.set()
                        watch.hook = None
                        thread.join(60)
                    what = f"{phase} round seed={seed}: killed hop {killed.get('hop')} {delay * 1000:.1f} ms in"
                    assert torch.equal(out, expected), what
                    late = "victim" not in killed or killed["at"] > ended
                    assert late or session.recoveries >= 1, what
                    slow = [e for e in session.failures if isinstance(e, PeerUnresponsiveError)]
                    assert not slow, f"{what}: noticed by a timeout: {slow}"
                if "victim" in killed:
                    replace_dead(swarm, killed["victim"])
                done_rounds += not late


def test_a_frozen_server_is_given_up_by_its_liveness_probe(swarm, tiny, prompt):
    """A process that stops answering without closing its connection (SIGSTOP: as a host that
    vanished from the network) is noticed by the liveness probe, long before the request timeout."""
    folder, _ = tiny
    with client(swarm, folder, request_timeout_s=120.0, liveness_period_s=0.5, liveness_timeout_s=1.0,
                max_chunk_tokens=CHUNK, route_timeout_s=60.0) as model:
        expected = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
        frozen = {}
        with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
            def on_token(_):
                if not frozen and session.position > PROMPT_TOKENS + 4:
                    # the next step's answer will never come: the client is about to wait for it
                    victim = next(s for s in swarm.servers if s.peer_id == session.chain[1].peer_id)
                    swarm.kill(victim, signal.SIGSTOP)
                    frozen["victim"] = victim

            try:
                out = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[], callback=on_token)
            finally:
                if "victim" in frozen:
                    swarm.kill(frozen["victim"], signal.SIGKILL)
        assert torch.equal(out, expected)
        assert any(isinstance(e, PeerUnresponsiveError) and "liveness probe" in str(e) for e in session.failures)
    replace_dead(swarm, frozen["victim"])


def test_records_of_servers_just_dead_cost_neither_retries_nor_failed_steps(swarm, tiny, prompt, monkeypatch):
    """Servers that died a moment ago stay in the DHT until their records expire (30 s here); these
    announced the highest speed for every block (one hop: the cheapest chain). A client's probes of
    them go unanswered, so routing leaves them out; a client that meets them anyway (no probes: as if
    they had answered before dying) goes on to the next server without counting them against its
    retries (1 here, and they are 3)."""
    folder, ref = tiny
    dead = [swarm.add_server((0, 6), extra_args=["--throughput", "1000000"]) for _ in range(3)]
    swarm.wait_ready(dead)
    for server in dead:
        swarm.kill(server, signal.SIGKILL)
        server.process.wait(10)
        swarm.servers.remove(server)
    expected = local_greedy(ref, prompt, NEW_TOKENS)
    with client(swarm, folder, **{**PATIENT, "max_retries": 0}) as model:
        with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
            out = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
        assert torch.equal(out, expected) and session.failures == []
    monkeypatch.setattr(SwarmClient, "measure_rtts", lambda self, state, max_age_s=60.0: {})
    with client(swarm, folder, **{**PATIENT, "max_retries": 1}) as model:
        with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
            out = model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
        assert torch.equal(out, expected)
        met = [e for e in session.failures if isinstance(e, PeerUnreachableError)]
        assert len(met) == len(session.failures) >= 2, session.failures


def active_sessions(model, peer_ids) -> int:
    from hivemind.proto import runtime_pb2

    from corolla.protocol.messages import ServerInfo, decode_meta
    from corolla.protocol.rpc import stub_for

    total = 0
    for peer in peer_ids:
        response = model.client.loop.run(stub_for(model.client.p2p, peer).rpc_info(
            runtime_pb2.ExpertRequest(uid=model.model_id), timeout=10))
        total += decode_meta(response.metadata, ServerInfo).active_sessions
    return total


def test_a_session_closed_from_another_thread_at_any_moment_stops_cleanly(swarm, tiny, prompt):
    """``session.close()`` from another thread, at a random moment of the generation: the
    generation ends with SessionClosedError (or had already finished), no server is blamed or
    banned, and every server frees the session at once."""
    from corolla.errors import SessionClosedError

    folder, _ = tiny
    with client(swarm, folder, **PATIENT) as model:
        model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])  # warm: the streams' first opening
        t0 = time.monotonic()
        model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
        gen_s = time.monotonic() - t0
        peers = [s.peer_id for s in swarm.servers]
        interrupted = 0
        for seed in range(12):
            delay = random.Random(100 + seed).uniform(0.0, 0.8 * gen_s)
            with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
                closer = threading.Timer(delay, session.close)
                closer.start()
                try:
                    model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
                except SessionClosedError:
                    interrupted += 1
                finally:
                    closer.join()
                # (servers killed by the tests before may still be in the DHT: planning may try one and fail)
                blamed = [e for e in session.failures if any(p in str(e) for p in peers)]
                assert blamed == [], f"seed {seed}: a live server was blamed for our close: {blamed}"
            assert model.client.banned() & set(peers) == set()
            deadline = time.monotonic() + 10
            while (left := active_sessions(model, peers)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert left == 0, f"seed {seed}: {left} session(s) still open on the servers"
        assert interrupted >= 4, f"only {interrupted} of 12 closes landed during the generation"


def test_closing_a_session_that_waits_for_servers_ends_the_wait(swarm, tiny, prompt):
    """A session waiting (up to route_timeout_s) for servers of missing blocks stops waiting when
    another thread closes it — how a shutting-down API server ends generations on a gone swarm."""
    from corolla.errors import SessionClosedError

    folder, _ = tiny
    first_only = [s.peer_id for s in swarm.servers if s.span == (0, 3)][:1]  # blocks 3-5: nobody allowed
    with client(swarm, folder, allowed_servers=first_only, route_timeout_s=120.0) as model:
        with model.inference_session(max_length=PROMPT_TOKENS + NEW_TOKENS) as session:
            closer = threading.Timer(0.5, session.close)
            closer.start()
            # without the close this would end in NoRouteError after the 120-s route timeout
            with pytest.raises(SessionClosedError):
                model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=[])
            closer.join()
