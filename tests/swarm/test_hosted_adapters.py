"""Server-hosted LoRA adapters: ``corolla server … --adapter NAME=PATH``, clients with ``adapter="NAME"``.

One swarm for the module, a tiny Llama (6 blocks) on three servers: two (blocks 0:3 and 3:6) host
adapter "a", a PEFT LoRA made here with the real ``peft`` package; the third holds every block and
hosts nothing, so a route through it would be the shortest one: adapter sessions must never take it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from corolla.client.session import InferenceSession
from corolla.errors import UnknownAdapterError
from corolla.models.loading import load_config
from corolla.models.peft import load_lora
from corolla.protocol.messages import ServerInfo, decode_meta
from corolla.protocol.rpc import stub_for
from corolla.server.server import load_hosted
from corolla.swarm.local import LocalSwarm
from tests.tiny_models import save_tiny_model

MODEL_ID = "tiny-hosted"
SERVER_ARGS = ["--max-session-length", "256", "--torch-threads", "1"]


def make_peft_adapter(model_folder: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter of the model in ``model_folder`` saved by PEFT itself (q and v projections, rank 4),
    its B matrices random (PEFT starts them at zero, which would change nothing)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_folder),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    model.save_pretrained(out)
    return out


def peft_model(model_folder: Path, adapter_folder: Path):
    """The Hugging Face model with the adapter, as PEFT applies it (the reference)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_folder), adapter_folder).eval()


@dataclasses.dataclass
class Hosted:
    swarm: LocalSwarm
    folder: Path
    adapter: Path
    hosts: list[str]  # the peers hosting "a" (blocks 0:3 and 3:6)
    plain: str  # the peer with every block and no adapter

    def client(self, **options):
        from corolla.client.model import DistributedModelForCausalLM

        return DistributedModelForCausalLM.from_pretrained(self.folder, initial_peers=self.swarm.initial_peers,
                                                           model_id=MODEL_ID, **options)


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-hosted"))
    adapter = make_peft_adapter(folder, tmp_path_factory.mktemp("adapter-a"))
    swarm = LocalSwarm(str(folder), 6, MODEL_ID, log_dir=tmp_path_factory.mktemp("logs-hosted"),
                       server_args=SERVER_ARGS)
    try:
        hosts = [swarm.add_server(span, ["--adapter", f"a={adapter}"]) for span in ((0, 3), (3, 6))]
        plain = swarm.add_server((0, 6))
        swarm.wait_ready([*hosts, plain], timeout_s=300)
        yield Hosted(swarm, folder, adapter, [p.peer_id for p in hosts], plain.peer_id)
    finally:
        swarm.stop()


@pytest.fixture(scope="module")
def refs(hosted):
    """(base model, model with the adapter applied by PEFT)."""
    return AutoModelForCausalLM.from_pretrained(hosted.folder).eval(), peft_model(hosted.folder, hosted.adapter)


def prompt(seed: int, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 320, (1, length), generator=torch.Generator().manual_seed(seed))


def greedy(ref, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Hugging Face's (or PEFT's) own greedy generate, EOS disabled so lengths match."""
    with torch.no_grad():
        return ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            do_sample=False, eos_token_id=None, pad_token_id=0)


def server_info(model, peer_id: str) -> ServerInfo:
    response = model.client.loop.run(
        stub_for(model.client.p2p, peer_id).rpc_info(runtime_pb2.ExpertRequest(uid=MODEL_ID), timeout=10))
    return decode_meta(response.metadata, ServerInfo)


def test_servers_announce_their_adapters(hosted):
    infos = {s.peer_id: s.info for s in hosted.swarm.state().servers}
    assert [infos[p].adapters for p in hosted.hosts] == [("a",), ("a",)]
    assert infos[hosted.plain].adapters == ()


def test_adapter_matches_peft_and_routes_only_through_its_hosts(hosted, refs):
    base, with_lora = refs
    ids = prompt(1)
    with torch.no_grad():
        expected = with_lora(ids).logits
        assert (expected - base(ids).logits).abs().max() > 1e-2  # the adapter does change the model
    with hosted.client(adapter="a") as model:
        assert {hop.peer_id for hop in model.client.plan()} <= set(hosted.hosts)
        logits = model(ids).logits  # a stateless forward with the hosted adapter
        assert (logits - expected).abs().max() <= 1e-4
        with model.inference_session(max_length=64) as session:
            out = model.generate(ids, max_new_tokens=12, eos_token_id=[], session=session)
            chain = session.chain
        assert [hop.peer_id for hop in chain] == hosted.hosts  # never the shorter route through the plain server
        assert torch.equal(out, greedy(with_lora, ids, 12))


def test_a_client_without_adapter_gets_the_base_model(hosted, refs):
    base, _ = refs
    ids = prompt(2)
    with hosted.client() as model:
        with torch.no_grad():
            assert (model(ids).logits - base(ids).logits).abs().max() <= 1e-4
        assert torch.equal(model.generate(ids, max_new_tokens=12, eos_token_id=[]), greedy(base, ids, 12))


def test_batched_sessions_keep_their_own_adapters(hosted, refs):
    """Sessions with and without the adapter on the same servers at once: the servers batch their
    steps together, and each still gets its solo output."""
    base, with_lora = refs
    prompts = [prompt(300 + i, 6 + 2 * i) for i in range(6)]
    uses_adapter = [i % 2 == 0 for i in range(6)]
    results: dict[int, torch.Tensor] = {}
    sent: dict[int, int] = {}
    errors: list[BaseException] = []
    # one client (its LM head batches the sessions' steps, so they reach the servers together) restricted
    # to the hosts; the adapter sessions use a view of it that asks for "a", as the API does
    with hosted.client(allowed_servers=hosted.hosts, max_retries=0) as model:
        before = server_info(model, hosted.hosts[0])
        barrier = threading.Barrier(len(prompts))

        def run(i: int) -> None:
            try:
                client = model.client.with_adapter("a") if uses_adapter[i] else model.client
                session = InferenceSession(client, 64)
                barrier.wait()
                try:
                    results[i] = model.generate(prompts[i], max_new_tokens=16, eos_token_id=[], session=session)
                    sent[i] = session.steps  # 16, or more where the prompt went as pipelined pieces
                finally:
                    session.close()
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        after = server_info(model, hosted.hosts[0])
    assert not errors, errors
    for i, ids in enumerate(prompts):
        ref = with_lora if uses_adapter[i] else base
        assert torch.equal(results[i], greedy(ref, ids, 16)), f"session {i} differs from its solo run"
    steps = after.steps_served - before.steps_served
    batches = after.batches_run - before.batches_run
    assert steps == sum(sent.values()) and all(n >= 16 for n in sent.values())
    assert batches < steps  # steps of different sessions (with and without the adapter) shared forwards


def test_an_adapter_no_server_hosts_is_a_typed_error_at_once(hosted):
    ids = prompt(3)
    with hosted.client(adapter="nope", route_timeout_s=60) as model:
        t0 = time.monotonic()
        with pytest.raises(UnknownAdapterError, match="'nope'"):
            model.generate(ids, max_new_tokens=4)
        with pytest.raises(UnknownAdapterError, match=r"adapters hosted now: a\)"):
            model(ids)
        assert time.monotonic() - t0 < 30  # not the wait for missing blocks (route_timeout_s)


def test_hosted_adapters_are_sliced_to_the_span(hosted):
    """What a server keeps for blocks 2:5 (as after moving there): those blocks' LoRA, keyed by local block."""
    config = load_config(hosted.folder)
    full = load_lora(hosted.adapter, config)
    sliced = load_hosted((("a", str(hosted.adapter)),), config, 2, 5, torch.bfloat16)["a"]
    assert sorted(sliced.lora) == [(b, t) for b in range(3) for t in ("q", "v")]
    assert sliced.scale == full.scale == 2.0
    for (b, t), (a, bb) in sliced.lora.items():
        assert a.dtype == bb.dtype == torch.bfloat16
        assert torch.equal(a, full.pairs[(b + 2, t)][0].to(torch.bfloat16))
        assert torch.equal(bb, full.pairs[(b + 2, t)][1].to(torch.bfloat16))


@pytest.mark.parametrize("flag, message", [
    ("bad", "use NAME=PATH"),
    ("a=/no/such/folder", "is not a folder"),
    ("a b={folder}", "the name must be"),
])
def test_server_refuses_bad_adapter_flags(hosted, flag, message):
    result = subprocess.run([sys.executable, "-m", "corolla", "server", str(hosted.folder), "--new-swarm",
                             "--adapter", flag.format(folder=hosted.adapter)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --adapter") and message in lines[0], result.stderr
