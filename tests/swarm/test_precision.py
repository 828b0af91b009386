"""Servers of one chain in different precisions: bf16 next to fp32, and int8 weights.

Activations travel as float32 and each server converts them to its own dtype, so neighbours
with different dtypes just work; the results stay close to the fp32 model's.
"""

from __future__ import annotations

import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from corolla.protocol.messages import ServerInfo, decode_meta
from corolla.protocol.rpc import stub_for
from corolla.swarm.local import LocalSwarm
from tests.tiny_models import save_tiny_model

SERVERS = {
    "fp32-front": ((0, 3), ["--dtype", "float32"]),
    "bf16-back": ((3, 6), ["--dtype", "bfloat16"]),
    "int8-all": ((0, 6), ["--dtype", "float32", "--quant", "int8"]),
    "fp16-decode-all": ((0, 6), ["--dtype", "float32", "--quant", "fp16-decode"]),
}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-precision"))
    local = LocalSwarm(str(folder), 6, "tiny-precision", log_dir=tmp_path_factory.mktemp("logs-precision"),
                       server_args=["--torch-threads", "1"])
    try:
        procs = {name: local.add_server(span, args) for name, (span, args) in SERVERS.items()}
        local.wait_ready(list(procs.values()), timeout_s=300)
        yield local, folder, {name: p.peer_id for name, p in procs.items()}
    finally:
        local.stop()


def client(swarm, *names, **options):
    from corolla.client.model import DistributedModelForCausalLM

    local, folder, peers = swarm
    return DistributedModelForCausalLM.from_pretrained(
        folder, initial_peers=local.initial_peers, model_id="tiny-precision",
        allowed_servers=[peers[n] for n in names], **options)


@pytest.fixture(scope="module")
def ref(swarm):
    return AutoModelForCausalLM.from_pretrained(swarm[1]).eval()


@pytest.mark.parametrize("names", [("fp32-front", "bf16-back"), ("int8-all",), ("fp16-decode-all",)],
                         ids=["fp32+bf16", "int8", "fp16-decode"])
def test_chain_in_other_precisions_stays_close_to_fp32(swarm, ref, names):
    ids = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(5))
    options = {"head_fp16_decode": True} if names == ("fp16-decode-all",) else {}
    with client(swarm, *names, **options) as model:
        with torch.no_grad():
            logits = model(ids).logits
            expected = ref(ids).logits
        out = model.generate(ids, max_new_tokens=8, eos_token_id=[])
        with model.inference_session(max_length=32) as session:
            model.generate(ids, max_new_tokens=1, eos_token_id=[])
            assert [h.peer_id for h in session.chain] == [swarm[2][n] for n in names]
    scale = expected.abs().max()
    assert (logits - expected).abs().max() < 0.1 * scale  # bf16 / int8 rounding, not a broken chain
    agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreement >= 0.75
    assert out.shape == (1, 24)


def test_servers_announce_their_precision(swarm):
    with client(swarm, "int8-all") as model:
        infos = {}
        for name, peer in swarm[2].items():
            response = model.client.loop.run(stub_for(model.client.p2p, peer).rpc_info(
                runtime_pb2.ExpertRequest(uid="tiny-precision"), timeout=10))
            infos[name] = decode_meta(response.metadata, ServerInfo)
    assert (infos["bf16-back"].dtype, infos["bf16-back"].quant) == ("bfloat16", "none")
    assert (infos["int8-all"].dtype, infos["int8-all"].quant) == ("float32", "int8")
    assert infos["fp32-front"].quant == "none"
    assert (infos["fp16-decode-all"].dtype, infos["fp16-decode-all"].quant) == ("float32", "fp16-decode")


def test_fp16_decode_steps_stay_close_to_fp32(swarm, ref):
    """One token at a time (the float16 copies, on the server and in the client's head) against
    transformers' float32 model fed the same tokens: the same greedy choice wherever fp32 is sure."""
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(7))
    with client(swarm, "fp16-decode-all", head_fp16_decode=True) as model:
        assert model.head.weight16 is not None and model.head.weight16.dtype == torch.float16
        out = model.generate(ids, max_new_tokens=10, eos_token_id=[])
    with torch.no_grad():
        want = ref(out).logits[0]
    sure = []
    for n in range(ids.shape[1], out.shape[1]):
        top2 = want[n - 1].topk(2).values
        if top2[0] - top2[1] > 0.05 * want[n - 1].abs().max():
            sure.append(int(out[0, n]) == int(want[n - 1].argmax()))
    assert len(sure) >= 5 and all(sure), sure
