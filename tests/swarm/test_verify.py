"""Verified computation on a real swarm: a server returning wrong activations is caught, distrusted,
recorded and reported; honest servers are never accused.

Each liar swarm: two honest servers and one liar (tests/swarm/liar.py, a test-only wrapper) that
each hold every block of a tiny Llama, the liar announcing itself faster so clients route through
it. One liar is off by 1 % on every step, the other flips the sign of one step in 100. Clients
check at the default rate (1 step in 20), with a fixed sample.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch

from corolla.swarm.discovery import fetch_swarm_state_and_reports
from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import SERVER_ARGS
from tests.tiny_models import save_tiny_model

pytestmark = pytest.mark.slow
LIAR = (sys.executable, "-m", "tests.swarm.liar")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-verify"))


def _swarm(folder, log_dir, liar_args=None, dtypes=("float32", "float32")):
    swarm = LocalSwarm(str(folder), 6, "tiny-verify", log_dir=log_dir, server_args=SERVER_ARGS)
    try:
        # beside a liar, the honest servers announce a slow speed: the liar (ten times its measured speed)
        # must attract the traffic whatever the round trips measured on a loaded machine (a few ms
        # either way decided it for this tiny model, whose step takes well under one)
        slow = ["--throughput", "5"] if liar_args else []
        honest = [swarm.add_server((0, 6), ["--dtype", dtype, *slow]) for dtype in dtypes]
        liar = swarm.add_server((0, 6), liar_args, program=LIAR) if liar_args else None
        swarm.wait_ready(honest + ([liar] if liar else []), timeout_s=300)
    except BaseException:
        swarm.stop()
        raise
    return swarm, [p.peer_id for p in honest], liar.peer_id if liar else None


@pytest.fixture(scope="module", params=[["--scale", "1.01"], ["--flip-every", "100"]], ids=["off-by-1pc", "sign-flip"])
def liar_swarm(request, tiny_llama, tmp_path_factory):
    swarm, honest, liar = _swarm(tiny_llama, tmp_path_factory.mktemp("logs-liar"), request.param)
    yield swarm, honest, liar
    swarm.stop()


def _client(swarm, folder, **options):
    from corolla.client.model import DistributedModelForCausalLM

    return DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                       model_id="tiny-verify", verify_seed=0, **options)


def test_a_lying_server_is_caught_distrusted_recorded_and_reported(liar_swarm, tiny_llama, tmp_path, monkeypatch):
    swarm, honest, liar = liar_swarm
    monkeypatch.setenv("COROLLA_HOME", str(tmp_path / "home"))
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with _client(swarm, tiny_llama) as model:
        assert {hop.peer_id for hop in model.client.plan()} == {liar}  # the liar attracts the traffic
        with model.inference_session(max_length=256) as session:
            model.generate(ids, max_new_tokens=200, session=session, eos_token_id=[])
            stats = model.client.verify_stats
            assert stats.caught == [liar], (stats, session.verdicts)
            assert session.rebuilds == 1 and liar not in {hop.peer_id for hop in session.chain}
            caught_at = next(v for v in session.verdicts if v.wrong == liar)
            assert caught_at.primary == liar and {caught_at.verifier, caught_at.referee} == set(honest)
            assert not any(v.wrong in honest for v in session.verdicts)  # honest servers never accused
        assert liar in model.client.reputation.distrusted(model.model_id)  # the local reputation file
        reporter = model.client.dht.peer_id.to_base58()
        _, reports = fetch_swarm_state_and_reports(swarm.dht, model.model_id, 6)
        assert reports.get(reporter) == {liar}  # the signed DHT report, under this client's peer id
    # a later client on this machine never uses it (the reputation file)
    with _client(swarm, tiny_llama) as model:
        assert liar in model.client.distrusted and liar not in {hop.peer_id for hop in model.client.plan()}
    # a client elsewhere (no reputation file) weighs the report: the liar only if no other can serve
    monkeypatch.setenv("COROLLA_HOME", str(tmp_path / "elsewhere"))
    with _client(swarm, tiny_llama) as model:
        assert liar not in model.client.distrusted and liar not in {hop.peer_id for hop in model.client.plan()}
        assert liar in model.client.reported
    # ... and one that does not weigh reports still may route through it (restricted to it here, so the
    # planner's choice among equals does not decide the outcome); weighing them, it is used only as a last resort
    with _client(swarm, tiny_llama, weigh_reports=False, allowed_servers=[liar]) as other:
        assert liar not in other.client.distrusted and {hop.peer_id for hop in other.client.plan()} == {liar}
    with _client(swarm, tiny_llama, allowed_servers=[liar]) as other:
        assert {hop.peer_id for hop in other.client.plan()} == {liar}  # no other can serve


@pytest.mark.parametrize("dtypes", [("float32", "float32", "float32"), ("bfloat16", "bfloat16", "bfloat16"),
                                    ("float32", "bfloat16", "float32"), ("fp16-decode",) * 3],
                         ids=["fp32", "bf16", "mixed", "fp16-decode"])
def test_no_false_alarm_in_long_honest_runs(dtypes, smollm2_dir, tmp_path_factory, tmp_path, monkeypatch):
    """SmolLM2 on three honest servers (each every block) in these dtypes, every step checked."""
    monkeypatch.setenv("COROLLA_HOME", str(tmp_path / "home"))
    swarm = LocalSwarm(str(smollm2_dir), 30, "smollm2-verify", log_dir=tmp_path_factory.mktemp("logs-honest"),
                       server_args=SERVER_ARGS)
    try:
        # fp16-decode: decode steps use float16 copies, a witness's checks (several rows) the float32 weights
        servers = [swarm.add_server((0, 30), ["--dtype", "float32", "--quant", dtype] if dtype == "fp16-decode"
                                    else ["--dtype", dtype]) for dtype in dtypes]
        swarm.wait_ready(servers, timeout_s=600)
        from corolla.client.model import DistributedModelForCausalLM

        with DistributedModelForCausalLM.from_pretrained(smollm2_dir, initial_peers=swarm.initial_peers,
                                                         model_id="smollm2-verify", verify_rate=0.5,
                                                         verify_seed=1) as model:
            ids = model.tokenizer("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                                  return_tensors="pt")["input_ids"]
            with model.inference_session(max_length=256) as session:
                model.generate(ids, max_new_tokens=120, session=session, eos_token_id=[])
                stats = model.client.verify_stats
                checked = list(session.verdicts)
            assert len(checked) >= 10, stats  # (one check at a time: a step may come while one runs)
            assert stats.disputes == 0 and stats.caught == [], (stats, [v for v in checked if not v.agreed])
            # a witness is fed only what came since its last check: each output is compared at most once
            assert sum(v.tokens for v in checked) <= session.position, [v.tokens for v in checked]
            assert len({v.verifier for v in checked}) == 1  # one witness served every check
            deadline = time.monotonic() + 10  # closing the session closed its witness's session too
            peers = [s.peer_id for s in servers]
            while sum(_active_sessions(model, peer) for peer in peers) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert sum(_active_sessions(model, peer) for peer in peers) == 0
            print(f"{dtypes}: {stats.checks} checks, worst honest disagreement {stats.worst_agreeing:.2e}")
    finally:
        swarm.stop()


def _active_sessions(model, peer: str) -> int:
    from hivemind.proto import runtime_pb2

    from corolla.protocol.messages import ServerInfo, decode_meta
    from corolla.protocol.rpc import stub_for

    response = model.client.loop.run(stub_for(model.client.p2p, peer).rpc_info(
        runtime_pb2.ExpertRequest(uid=""), timeout=10), timeout=20)
    return decode_meta(response.metadata, ServerInfo).active_sessions
