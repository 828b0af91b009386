"""Speculative decoding through a real swarm: greedy output equals plain greedy decoding, with
prompt lookup and with a draft model; a rollback is validated by the servers; a server killed
after a rollback is replaced and the replay holds exactly the kept tokens."""

from __future__ import annotations

import signal

import pytest
import torch
from transformers import AutoModelForCausalLM

from corolla.client.speculative import DraftConfig
from corolla.errors import BadRequestError
from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import local_greedy
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory):
    # another tiny model with the same vocabulary (320 ids), as qwen2.5-coder-0.5b drafts for -1.5b
    return AutoModelForCausalLM.from_pretrained(save_tiny_model("qwen2", tmp_path_factory.mktemp("draft"), seed=1))


def _prompt(seed: int) -> torch.Tensor:
    part = torch.randint(3, 320, (1, 8), generator=torch.Generator().manual_seed(seed))
    return torch.cat([part, part[:, :5]], 1)  # a repeat: prompt lookup has something to copy


@pytest.mark.parametrize("split", [0, 2])
def test_greedy_with_lookup_and_draft_model_equals_plain_greedy(tiny_swarm, draft_model, split):
    ids = _prompt(split)
    with tiny_swarm.client(split) as model:
        plain = model.generate(ids, max_new_tokens=40, eos_token_id=[])
        ref = AutoModelForCausalLM.from_pretrained(tiny_swarm.folder)
        assert torch.equal(plain, local_greedy(ref, ids, 40))
        for draft in ("lookup", draft_model, str(tiny_swarm.folder)):  # a name/folder loads it locally
            out = model.generate(ids, max_new_tokens=40, eos_token_id=[], draft=draft)
            stats = model.last_speculation
            assert torch.equal(out, plain), draft
            assert stats.emitted == 40
        # the target itself as draft: every draft accepted, far fewer steps than tokens
        assert stats.accepted == stats.drafted and stats.steps < 20


def test_eos_stop_strings_and_sessions_behave_as_plain(tiny_swarm):
    ids = _prompt(5)
    with tiny_swarm.client(1) as model:
        plain = model.generate(ids, max_new_tokens=30, eos_token_id=[])
        eos = int(plain[0, ids.shape[1] + 7])  # a token it generates: stops there
        for draft in (None, "lookup", str(tiny_swarm.folder)):
            out = model.generate(ids, max_new_tokens=30, eos_token_id=eos, draft=draft)
            first = (plain[0, ids.shape[1]:] == eos).nonzero()[0, 0]
            assert torch.equal(out, plain[:, : ids.shape[1] + int(first) + 1]), draft
        # inside a session: speculative then plain continues as one generation would
        with model.inference_session(max_length=64) as session:
            a = model.generate(ids, max_new_tokens=12, eos_token_id=[], draft=str(tiny_swarm.folder))
            b = model.generate(None, max_new_tokens=10, eos_token_id=[])
            assert session.position == ids.shape[1] + 21  # the last token waits for the next step
        assert torch.equal(torch.cat([a, b[:, :]], 1)[:, : ids.shape[1] + 22], plain[:, : ids.shape[1] + 22])


def test_a_rollback_past_the_session_is_refused(tiny_swarm):
    with tiny_swarm.client(0) as model, model.inference_session(max_length=32) as session:
        model.generate(_prompt(1), max_new_tokens=3, eos_token_id=[])
        stream = session._hops[0].stream
        hidden = torch.zeros(1, 1, model.config.hidden_size)
        with pytest.raises(BadRequestError, match="cannot truncate"):
            model.client.loop.run(stream.step_truncating(hidden, session.position + 5))


ARGS = ["--torch-threads", "1", "--announce-period-s", "1"]


def test_server_killed_after_a_rollback_replays_the_kept_tokens(tmp_path):
    folder = save_tiny_model("llama", tmp_path / "tiny")
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    swarm = LocalSwarm(str(folder), 6, "tiny-spec-failover", log_dir=tmp_path, server_args=ARGS)
    try:
        swarm.start([(0, 3), (3, 6), (3, 6)])
        ids = _prompt(7)
        from corolla.client.model import DistributedModelForCausalLM

        with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                         model_id=swarm.model_id) as model:
            model.draft_config = DraftConfig(k=3, max_k=4)
            drafter = AutoModelForCausalLM.from_pretrained(save_tiny_model("qwen2", tmp_path / "draft", seed=1))
            killed = {}
            with model.inference_session(max_length=80) as session:
                def on_token(_):
                    if not killed and session.truncations >= 2:
                        victim = next(s for s in swarm.servers if s.peer_id == session.chain[1].peer_id)
                        swarm.kill(victim, signal.SIGKILL)
                        killed["truncations"] = session.truncations

                out = model.generate(ids, max_new_tokens=40, eos_token_id=[], callback=on_token, draft=drafter)
                assert killed and session.recoveries == 1
        assert torch.equal(out, local_greedy(ref, ids, 40))
    finally:
        swarm.stop()
