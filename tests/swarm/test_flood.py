"""A flood of fresh identities against one real server: the honest client's text stays the same.

50 hostile identities (each its own p2p daemon, so its own peer id), all driven from this process,
flood the only server of a tiny model: each opens more streams than a peer may hold (some left
silent, slowloris-style), opens sessions and steps them as fast as it can, and spams ``rpc_info``.
A client the server already knows generates meanwhile; its tokens must equal local greedy, and the
hostile side must have met the server's limits (typed errors), which is what kept it serving.
"""

from __future__ import annotations

import time

import pytest
import torch

from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import local_greedy
from tests.swarm.flood import Flood, server_maddrs
from tests.tiny_models import save_tiny_model

IDENTITIES = 50
LIMIT_ARGS = ["--peer-requests-per-s", "30", "--streams-per-peer", "4", "--new-peer-sessions", "8"]


@pytest.fixture(scope="module")
def guarded_swarm(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-flood"))
    swarm = LocalSwarm(str(folder), 6, "tiny-flood", log_dir=tmp_path_factory.mktemp("logs-flood"),
                       server_args=["--max-session-length", "256", "--torch-threads", "1", *LIMIT_ARGS])
    try:
        server = swarm.add_server((0, 6))
        swarm.wait_ready([server], timeout_s=600)
        yield swarm, server, folder
    finally:
        swarm.stop()


def test_a_flood_of_fresh_identities_leaves_a_known_client_its_text(guarded_swarm):
    from transformers import AutoModelForCausalLM

    from corolla.client.model import DistributedModelForCausalLM

    swarm, server, folder = guarded_swarm
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(5))
    expected = local_greedy(ref, ids, 32)
    with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                     model_id="tiny-flood") as model:
        assert torch.equal(model.generate(ids, max_new_tokens=32, eos_token_id=[]), expected)  # now a known peer
        with Flood(server.peer_id, server_maddrs(swarm, server.peer_id), swarm.model_id, IDENTITIES) as flood:
            time.sleep(3)  # the flood is on
            out = model.generate(ids, max_new_tokens=32, eos_token_id=[])
            during = flood.requests
        assert torch.equal(out, expected)
    print(f"flood: {IDENTITIES} identities, {flood.requests} answers to them, codes {dict(flood.codes)}")
    assert during > 0, "the flood never reached the server"
    refused = {code: n for code, n in flood.codes.items() if code != "ok"}
    # the limits are what held: fresh identities' sessions, rates and streams were refused with typed errors
    assert {"ServerBusyError", "TooManyStreamsError", "RateLimitedError"} <= set(refused), flood.codes
