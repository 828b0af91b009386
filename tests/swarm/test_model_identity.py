"""Model identity on a real swarm: a server on other weights under the same name never enters an
honest client's chain.

Two real servers of SmolLM2-135M under the one name ``smollm2-135m``: one on the packaged weights,
one on a perturbed copy (one tensor of block 7 scaled by 1.01, as another checkpoint or a different
quantisation would be). Each announces under ``name@digest`` of its own weights, so an honest
client (and ``swarm status``) sees two models; the honest client's chains use only the honest
server and its tokens equal Hugging Face's own greedy generation on the packaged weights.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from corolla.models.manifest import manifest_of
from corolla.swarm.local import LocalSwarm
from tests.swarm.conftest import SERVER_ARGS, local_greedy

pytestmark = pytest.mark.slow
NAME = "smollm2-135m"


def perturbed_copy(folder, out):
    shutil.copytree(folder, out)
    tensors = load_file(out / "model.safetensors")
    name = next(n for n in sorted(tensors) if ".layers.7." in n and n.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def two_weights(smollm2_dir, tmp_path_factory):
    other = perturbed_copy(smollm2_dir, tmp_path_factory.mktemp("perturbed") / "smollm2")
    honest = LocalSwarm(str(smollm2_dir), 30, NAME, log_dir=tmp_path_factory.mktemp("logs-honest"),
                        server_args=SERVER_ARGS)
    odd = None
    try:
        good = honest.add_server((0, 30))
        honest.wait_ready([good], timeout_s=600)
        odd = LocalSwarm(str(other), 30, NAME, log_dir=tmp_path_factory.mktemp("logs-odd"),
                         server_args=SERVER_ARGS, dht=honest.dht)
        bad = odd.add_server((0, 30))
        odd.wait_ready([bad], timeout_s=600)
        yield honest, odd, other, good.peer_id, bad.peer_id
    finally:
        if odd is not None:
            odd.stop()
        honest.stop()


def test_each_server_announces_under_its_own_weights_digest(two_weights, smollm2_dir):
    honest, odd, other, good, bad = two_weights
    digest, other_digest = manifest_of(smollm2_dir).short, manifest_of(other).short
    assert digest != other_digest
    assert honest.model_id == f"{NAME}@{digest}" and odd.model_id == f"{NAME}@{other_digest}"
    assert [s.peer_id for s in honest.state().servers] == [good]
    assert [s.peer_id for s in odd.state().servers] == [bad]
    hashes = manifest_of(smollm2_dir).blocks
    info = honest.state().servers[0].info
    assert info.block_hashes == tuple(h[:16] for h in hashes)


def test_an_honest_client_never_routes_through_the_other_weights(two_weights, smollm2_dir):
    from transformers import AutoModelForCausalLM

    from corolla.client.model import DistributedModelForCausalLM

    honest, odd, _, good, bad = two_weights
    ids = torch.tensor([[1, 504, 3458, 314, 260, 3822, 28, 1326]])
    ref = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    with torch.no_grad():
        expected = local_greedy(ref, ids, 8)
    with DistributedModelForCausalLM.from_pretrained(smollm2_dir, initial_peers=honest.initial_peers,
                                                     model_id=NAME) as model:
        assert model.model_id == honest.model_id and model.name == NAME
        for _ in range(3):
            assert model.client.plan() and {hop.peer_id for hop in model.client.plan()} == {good}
            with torch.no_grad():
                assert torch.equal(model.generate(ids, max_new_tokens=8), expected)
    busy = odd.state().servers[0].info
    assert busy.active_sessions == 0 and busy.steps_served == 0  # never asked for anything


def test_a_server_claiming_another_digest_refuses_to_start(two_weights, smollm2_dir, tmp_path):
    honest, _, other, _, _ = two_weights
    claimed = f"{NAME}@{manifest_of(smollm2_dir).short}"  # the honest key, on the perturbed weights
    proc = subprocess.run(
        [sys.executable, "-m", "corolla", "server", str(other), "--model-id", claimed, "--blocks", "0:2",
         "--initial-peers", *honest.initial_peers, *SERVER_ARGS],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"names digest {manifest_of(smollm2_dir).short}" in proc.stderr + proc.stdout


def test_swarm_status_shows_each_digest(two_weights, smollm2_dir, capsys):
    from corolla.cli.main import main

    honest, odd, other, _, _ = two_weights
    assert main(["swarm", "status", "--initial-peers", *honest.initial_peers, "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert sorted((m["model_id"], m["digest"]) for m in models) == sorted(
        [(NAME, manifest_of(smollm2_dir).short), (NAME, manifest_of(other).short)])
    peers = ["--initial-peers", *honest.initial_peers]
    assert main(["swarm", "status", "--model-id", NAME, *peers, "--json"]) != 0  # ambiguous by name alone
    assert "several models named" in capsys.readouterr().err
    assert main(["swarm", "status", NAME, *peers, "--json"]) == 0  # the packaged model: its own digest
    assert json.loads(capsys.readouterr().out)["swarm_key"] == honest.model_id
    assert main(["swarm", "status", str(other), "--model-id", NAME, *peers, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["swarm_key"] == odd.model_id
