"""Server-hosted adapters through the API: ``MODEL:NAME`` in ``/v1/models`` and in requests, with the
official ``openai`` client. First over a scripted engine (quick), then a tiny Llama (with a ChatML
tokenizer built here) on one real server that hosts adapter "a" (a PEFT LoRA made with the real
``peft`` package)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import openai
import pytest
import torch

from corolla.api import prompts
from corolla.api.app import create_app
from corolla.api.engine import SwarmEngine
from corolla.client.sampling import TextDelta
from corolla.errors import UnknownAdapterError
from corolla.swarm.local import LocalSwarm
from tests.api.conftest import FakeEngine, openai_client, served
from tests.swarm.test_hosted_adapters import make_peft_adapter

MODEL_ID = "tiny-api-adapters"
QUESTION = "Write a function that adds two numbers."
MAX_TOKENS = 12


def save_chat_model(folder: Path) -> Path:
    """A tiny random Llama whose vocabulary is the ChatML test tokenizer's (saved beside it)."""
    import transformers

    from tests.offline_tokenizer import chatml_tokenizer
    from tests.tiny_models import TINY

    tokenizer = chatml_tokenizer(tools=False, fim=False)
    spec = {k: v for k, v in TINY["llama"].items() if k != "cls"}
    config = transformers.LlamaConfig(**{**spec, "vocab_size": len(tokenizer)},
                                      eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)  # random init leaves tiny logits; scaled, greedy decoding has no near-ties
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- over a scripted engine --------------------------------------------------------------------------
@dataclasses.dataclass
class AdapterEngine(FakeEngine):
    """Servers (as ``/api/swarm`` shows them) host "a" and, on one not online yet, "later"; a
    generation asking for another adapter fails as routing would."""

    def swarm_status(self) -> dict:
        servers = [{"peer_id": "p1", "state": "online", "adapters": ["a"]},
                   {"peer_id": "p2", "state": "online", "adapters": []},
                   {"peer_id": "p3", "state": "joining", "adapters": ["later"]}]
        return {"model_id": self.model_id, "num_blocks": 2, "coverage": [2, 2], "servers": servers}

    def stream(self, prompt_ids, options):
        if options.adapter not in (None, "a"):
            raise UnknownAdapterError(f"no server of {self.model_id} hosts adapter {options.adapter!r}")
        yield from super().stream(prompt_ids, options)


@pytest.fixture(scope="module")
def scripted(tokenizer):
    engine = AdapterEngine(tokenizer)
    with served(create_app(engine, web_dir=None)) as base:
        yield engine, openai_client(base)


def test_scripted_models_list_adapters_of_online_servers(scripted):
    _, client = scripted
    assert [m.id for m in client.models.list()] == ["fake-model", "fake-model:a"]
    assert client.models.retrieve("fake-model:a").id == "fake-model:a"
    for name in ("fake-model:later", "fake-model:nope", "other-model:a"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)


def test_scripted_requests_pass_the_adapter_on(scripted):
    engine, client = scripted
    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model="fake-model:a", messages=messages, temperature=0)
    assert reply.model == "fake-model:a" and reply.choices[0].message.content == "Hello, world!"
    assert engine.options[-1].adapter == "a"
    client.completions.create(model="fake-model", prompt="x", max_tokens=2)
    assert engine.options[-1].adapter is None
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError, match="nope") as caught:
            client.chat.completions.create(model="fake-model:nope", messages=messages, stream=stream)
        assert caught.value.body["code"] == "model_not_found"
    for name in ("other-model:a", "fake-model:", "fake-model:-x", "fake-model:a b"):  # no such model, or no valid name
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=name, messages=messages)


# ---- over a real swarm -------------------------------------------------------------------------------
@dataclasses.dataclass
class AdapterApi:
    folder: Path
    swarm: LocalSwarm
    engine: SwarmEngine
    base: str


@pytest.fixture(scope="module")
def api(tmp_path_factory):  # used by slow tests only: started on first use
    from corolla.client.model import DistributedModelForCausalLM

    folder = save_chat_model(tmp_path_factory.mktemp("tiny-chat"))
    adapter = make_peft_adapter(folder, tmp_path_factory.mktemp("adapter-a"))
    swarm = LocalSwarm(str(folder), 6, MODEL_ID, log_dir=tmp_path_factory.mktemp("logs-api-adapters"),
                       server_args=["--max-session-length", "256", "--torch-threads", "1"])
    try:
        swarm.wait_ready([swarm.add_server((0, 6), ["--adapter", f"a={adapter}"])], timeout_s=300)
        with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                         model_id=MODEL_ID) as model:
            engine = SwarmEngine(model)
            with served(create_app(engine)) as base:
                yield AdapterApi(folder, swarm, engine, base)
    finally:
        swarm.stop()


@pytest.fixture(scope="module")
def client(api):
    return openai_client(api.base)


def python_client_text(api: AdapterApi, adapter: str | None) -> str:
    """The same chat's greedy answer from the Python client (``adapter="a"`` or none), detokenised as
    the API does."""
    from corolla.client.model import DistributedModelForCausalLM

    tokenizer = api.engine.tokenizer
    text = prompts.render_chat(tokenizer, [{"role": "user", "content": QUESTION, "tool_calls": []}], None, None)
    ids = torch.tensor([api.engine.encode(text, add_special_tokens=False)])
    with DistributedModelForCausalLM.from_pretrained(api.folder, initial_peers=api.swarm.initial_peers,
                                                     model_id=MODEL_ID, adapter=adapter) as model:
        eos = model.eos_token_ids() | {tokenizer.eos_token_id}
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, eos_token_id=sorted(eos))
    decoder, parts = TextDelta(tokenizer), []
    for token in out[0, ids.shape[1]:].tolist():
        if token in eos:
            break
        parts.append(decoder.push(token))
    return "".join(parts)


def chat(client, model: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                          temperature=0, max_tokens=MAX_TOKENS, **kw)


@pytest.mark.slow  # starts a server process
def test_models_lists_the_hosted_adapters(client):
    assert [m.id for m in client.models.list()] == [MODEL_ID, f"{MODEL_ID}:a"]
    assert client.models.retrieve(f"{MODEL_ID}:a").id == f"{MODEL_ID}:a"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(f"{MODEL_ID}:nope")


@pytest.mark.slow
def test_chat_with_the_adapter_equals_the_python_client(api, client):
    with_adapter, plain = python_client_text(api, "a"), python_client_text(api, None)
    assert with_adapter != plain  # the adapter does change the answer (else this test would prove nothing)
    answer = chat(client, f"{MODEL_ID}:a")
    assert answer.model == f"{MODEL_ID}:a"
    assert answer.choices[0].message.content == with_adapter
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, f"{MODEL_ID}:a", stream=True)
                       if c.choices)
    assert streamed == with_adapter
    assert chat(client, MODEL_ID).choices[0].message.content == plain


@pytest.mark.slow
def test_an_adapter_no_server_hosts_is_a_404(client):
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError, match="nope"):
            chat(client, f"{MODEL_ID}:nope", stream=stream)
    with pytest.raises(openai.NotFoundError):
        chat(client, f"{MODEL_ID}:bad name")  # not even a valid adapter name
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=f"{MODEL_ID}:nope", prompt="def add(", max_tokens=4)
