"""Several models in one swarm, through the API.

First :class:`SwarmCatalogue` and the app over scripted engines and a made-up swarm (quick, offline):
which models are listed, how a request finds its model, what a model this host cannot run answers.
Then the real thing (slow): ``corolla swarm up`` with two tiny models of different families on one
bootstrap peer (``multi_swarm`` in tests/conftest.py), ``corolla swarm status`` without a model, and
the official ``openai`` client routing completions to each model, whose answers equal that model's
own Hugging Face greedy generation.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import openai
import pytest
import torch

from corolla.api.app import create_app
from corolla.api.catalogue import SwarmCatalogue
from corolla.api.errors import APIError
from corolla.client.sampling import TextDelta
from corolla.errors import ModelError
from corolla.protocol.messages import ServerInfo
from corolla.swarm.discovery import ServerRecord, SwarmState
from tests.api.conftest import FakeEngine, http_get, openai_client, served


# ---- over scripted engines and a made-up swarm ---------------------------------------------------------
def save_config(folder: Path, layers: int) -> Path:
    """A model folder with only its config (what the catalogue reads of its own models)."""
    import transformers

    from tests.tiny_models import TINY

    spec = {k: v for k, v in TINY["llama"].items() if k != "cls"}
    transformers.LlamaConfig(**{**spec, "num_hidden_layers": layers}).save_pretrained(folder)
    return folder


def state(model_id: str, num_blocks: int, *spans: tuple[int, int, str], adapters=()) -> SwarmState:
    servers = tuple(
        ServerRecord(f"peer-{model_id}-{i}", ServerInfo(state=s, start_block=a, end_block=b, version="0.1.0",
                                                        dtype="float32", inference_rps=10.0, forward_tps=100.0,
                                                        cache_tokens_left=1000, adapters=adapters))
        for i, (a, b, s) in enumerate(spans))
    return SwarmState(model_id, num_blocks, servers)


class Swarm:
    """A made-up swarm the catalogue reads (``read_swarm``); ``fail`` makes the next reads raise."""

    def __init__(self, states: list[SwarmState]):
        self.states, self.fail, self.asked = states, False, []

    def __call__(self, dht, models) -> list[SwarmState]:
        self.asked.append(dict(models))
        if self.fail:
            raise TimeoutError("the DHT did not answer")
        listed = {s.model_id for s in self.states}
        return self.states + [SwarmState(m, n, ()) for m, n in models.items() if m not in listed]


def bare_name(name: str, folder: Path) -> str:
    """Made-up folders hold no weights: their models' keys are their names (no digest)."""
    return name


@pytest.fixture
def made_up(tmp_path, tokenizer):
    """This host has the folder of "own" (4 blocks, no server yet); the swarm serves "coder" (covered, hosts
    adapter "a"), "chat" (covered) and "half" (blocks 2-3 missing). "coder" is packaged-like: it resolves."""
    swarm = Swarm([
        state("coder", 2, (0, 2, "online"), adapters=("a",)),
        state("chat", 4, (0, 2, "online"), (2, 4, "online")),
        state("half", 4, (0, 2, "online"), (2, 4, "joining")),
    ])
    opened: list[tuple[str, Path]] = []
    gate = threading.Event()
    gate.set()

    def open_engine(model_id: str, folder: Path):
        gate.wait(10)
        opened.append((model_id, folder))
        return FakeEngine(tokenizer, reply=lambda prompt, m=model_id: [f"from {m}"], model_id=model_id)

    def resolve(model_id: str) -> Path:
        if model_id != "coder":
            raise ModelError(f"no folder for {model_id!r} here")
        return tmp_path / "coder-folder"

    catalogue = SwarmCatalogue(None, {"own": save_config(tmp_path / "own", 4)}, open_engine=open_engine,
                               resolve=resolve, read_swarm=swarm, state_max_age_s=0.0, key=bare_name)
    return catalogue, swarm, opened, gate


def test_listed_are_this_hosts_models_then_those_the_swarm_covers(made_up):
    catalogue, swarm, _, _ = made_up
    assert catalogue.listed() == ["own", "chat", "coder"]  # "half" is not covered: not listed ...
    assert swarm.asked[-1] == {"own": 4}  # (the catalogue's own models are read with their config's blocks)
    assert all(catalogue.known(m) for m in ("own", "chat", "coder", "half"))  # ... but still routed (then a 503)
    assert not catalogue.known("nope")
    assert [s["model_id"] for s in catalogue.swarm()] == ["own", "chat", "coder", "half"]
    assert [s["coverage"] for s in catalogue.swarm()] == [[0] * 4, [1] * 4, [1, 1], [1, 1, 0, 0]]


def test_a_failed_read_keeps_the_last_state(made_up):
    catalogue, swarm, _, _ = made_up
    before = catalogue.listed()
    swarm.fail = True
    assert catalogue.listed() == before


def test_a_failed_first_read_still_lists_this_hosts_models(tmp_path):
    def broken(dht, models):
        raise TimeoutError("no DHT")

    catalogue = SwarmCatalogue(None, {"own": save_config(tmp_path / "own", 3)}, read_swarm=broken, key=bare_name)
    assert catalogue.listed() == ["own"] and catalogue.swarm()[0]["coverage"] == [0, 0, 0]


def test_one_client_per_model_started_on_first_use(made_up):
    catalogue, _, opened, gate = made_up
    assert opened == []  # nothing starts before a request asks for it
    gate.clear()  # the first client takes a while to start: every request for it waits for that one
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(catalogue.engine("coder"))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(got) == 4 and all(e is got[0] for e in got)
    assert opened == [("coder", Path(opened[0][1]))] and opened[0][1].name == "coder-folder"
    assert catalogue.engine("own").model_id == "own" and opened[-1][1].name == "own"  # its own folder


def test_a_model_this_host_cannot_run_is_a_clear_404(made_up):
    catalogue, _, opened, _ = made_up
    with pytest.raises(APIError) as caught:
        catalogue.engine("chat")
    error = caught.value
    assert error.status == 404 and error.code == "model_unavailable" and error.param == "model"
    assert "'chat'" in error.message and "no folder for 'chat' here" in error.message and "corolla api" in error.message
    assert opened == []


def test_models_are_named_without_their_digest_unless_two_share_a_name(tmp_path, tokenizer):
    """Keys are name@digest; the API names a model by its name alone, except where the swarm holds
    other weights under a name (another digest of this API's own model, or two of another's)."""
    own, coder, odd = "own@" + "a" * 16, "coder@" + "b" * 16, "coder@" + "c" * 16
    swarm = Swarm([state(coder, 2, (0, 2, "online")), state("own@" + "d" * 16, 4, (0, 4, "online")),
                   state("chat@" + "e" * 16, 2, (0, 2, "online"))])
    opened = []

    def open_engine(key, folder):
        opened.append(key)
        return FakeEngine(tokenizer, reply=lambda prompt: ["x"], model_id=key)

    catalogue = SwarmCatalogue(None, {"own": save_config(tmp_path / "own", 4)}, read_swarm=swarm, state_max_age_s=0.0,
                               key=lambda name, folder: own if name == "own" else "coder@" + "b" * 16,
                               resolve=lambda name: tmp_path / name, open_engine=open_engine)
    assert catalogue.listed() == ["own", "chat", "coder", "own@" + "d" * 16]  # "own" is this API's model
    assert swarm.asked[-1] == {own: 4}  # read by its key
    assert [(s["model_id"], s["digest"]) for s in catalogue.swarm()][:2] == [("own", "a" * 16), ("chat", "e" * 16)]
    catalogue.engine("coder")  # a packaged model whose weights are the swarm's: runs
    assert opened == [coder]
    swarm.states.append(state(odd, 2, (0, 2, "online")))
    assert catalogue.listed() == ["own", "chat", coder, odd, "own@" + "d" * 16]  # two "coder"s: by key
    with pytest.raises(APIError) as caught:
        catalogue.engine(odd)  # this host's "coder" folder holds other weights than these
    assert caught.value.code == "model_unavailable" and "other weights" in caught.value.message


def test_close_refuses_new_requests_and_closes_what_it_started(made_up):
    catalogue, _, _, _ = made_up
    engine = catalogue.engine("coder")
    closed = []
    engine.close = lambda timeout_s: closed.append(timeout_s) or True
    assert catalogue.close(1.0) and len(closed) == 1
    with pytest.raises(APIError) as caught:
        catalogue.engine("coder")
    assert caught.value.status == 503


@pytest.fixture
def made_up_api(made_up):
    catalogue = made_up[0]
    with served(create_app(catalogue=catalogue, web_dir=None)) as base:
        yield base, openai_client(base)


def test_api_lists_and_routes_every_model(made_up_api):
    base, client = made_up_api
    assert [m.id for m in client.models.list()] == ["own", "chat", "coder", "coder:a"]
    for model in ("own", "coder", "coder:a"):
        reply = client.completions.create(model=model, prompt="x", max_tokens=4)
        assert reply.model == model and reply.choices[0].text == f"from {model.split(':')[0]}"
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == f"from {model.split(':')[0]}"
    assert client.models.retrieve("half").id == "half"  # announced, not covered yet: known all the same
    states = json.loads(http_get(f"{base}/api/swarm")[1])["models"]
    assert [s["model_id"] for s in states] == ["own", "chat", "coder", "half"]


def test_api_unknown_and_unavailable_models(made_up_api):
    _, client = made_up_api
    messages = [{"role": "user", "content": "hi"}]
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="nope", messages=messages, stream=stream)
        assert caught.value.body["code"] == "model_not_found"
        assert "'own', 'chat', 'coder'" in caught.value.body["message"]  # what it does serve
    for name in ("nope", "nope:a", "coder:bad name"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="chat", prompt="x", max_tokens=2)
    assert caught.value.body["code"] == "model_unavailable" and "corolla api" in caught.value.body["message"]


def test_create_app_wants_an_engine_or_a_catalogue(made_up, tokenizer):
    with pytest.raises(ValueError):
        create_app()
    with pytest.raises(ValueError):
        create_app(FakeEngine(tokenizer), catalogue=made_up[0])


# ---- a real swarm of two models ------------------------------------------------------------------------
def local_greedy_text(folder: Path, prompt: str, max_tokens: int) -> str:
    """The model's own Hugging Face greedy generation, stopped at EOS and detokenised as the API does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    decoder, parts = TextDelta(tokenizer), []
    for token in out[0, ids.shape[1]:].tolist():
        if token == eos:
            break
        parts.append(decoder.push(token))
    return "".join(parts)


PROMPT = "def add(a, b):"
MAX_TOKENS = 10


@pytest.mark.slow
def test_status_without_a_model_lists_every_model(multi_swarm, capsys, monkeypatch):
    from corolla.cli.main import main

    peers = ["--initial-peers", *multi_swarm.peers]
    assert main(["swarm", "status", *peers, "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert [m["model_id"] for m in models] == sorted(multi_swarm.folders)
    for m in models:
        assert m["num_blocks"] == 6 and m["coverage"] == [1] * 6
        assert [(s["start_block"], s["end_block"], s["state"]) for s in m["servers"]] == [(0, 6, "online")]
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["swarm", "status", *peers]) == 0
    text = capsys.readouterr().out
    assert "2 models in this swarm" in text and all(m in text for m in multi_swarm.folders)
    assert "MiB per block" in text and "?" not in text  # every server announced what its blocks weigh
    # one model by the name the swarm lists it under: no need for its files
    qwen = next(m for m in multi_swarm.folders if "qwen2" in m)
    assert main(["swarm", "status", qwen, *peers, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["coverage"] == [1] * 6


@pytest.mark.slow
def test_api_lists_both_and_routes_each_request_to_its_model(multi_swarm):
    client = openai_client(multi_swarm.base)
    assert [m.id for m in client.models.list()] == list(multi_swarm.folders)  # in the order swarm up got them
    expected = {m: local_greedy_text(folder, PROMPT, MAX_TOKENS) for m, folder in multi_swarm.folders.items()}
    assert len(set(expected.values())) == 2  # the two models answer differently: a mix-up would show
    for model_id, text in expected.items():
        reply = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        assert reply.model == model_id and reply.choices[0].text == text
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=model_id, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True))
        assert streamed == text
    state = json.loads(http_get(f"{multi_swarm.base}/api/swarm")[1])
    assert [(s["model_id"], s["coverage"]) for s in state["models"]] == [(m, [1] * 6) for m in multi_swarm.folders]


@pytest.mark.slow
def test_api_unknown_model_is_a_404(multi_swarm):
    client = openai_client(multi_swarm.base)
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2, stream=stream)
        assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.slow
def test_api_host_with_one_folder_lists_both_and_says_what_it_lacks(multi_swarm):
    """An API that has only the first model's folder: the second is listed (the swarm covers it), and a
    request for it says this host cannot run it and what to do."""
    from corolla.swarm.dht import start_dht

    first, second = multi_swarm.folders
    dht = start_dht(multi_swarm.peers, client_mode=True)
    catalogue = SwarmCatalogue(dht, {first: multi_swarm.folders[first]})
    try:
        with served(create_app(catalogue=catalogue, web_dir=None)) as base:
            client = openai_client(base)
            assert [m.id for m in client.models.list()] == [first, second]
            with pytest.raises(openai.NotFoundError) as caught:
                client.completions.create(model=second, prompt=PROMPT, max_tokens=2)
            assert caught.value.body["code"] == "model_unavailable" and second in caught.value.body["message"]
            reply = client.completions.create(model=first, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
            assert reply.choices[0].text == local_greedy_text(multi_swarm.folders[first], PROMPT, MAX_TOKENS)
    finally:
        catalogue.close(2.0)
        dht.shutdown()
