"""The API over a real swarm (SmolLM2-135M on 2 server processes), through the official ``openai`` client."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import torch
from hivemind.proto import runtime_pb2

from corolla.api.app import create_app
from corolla.api.engine import SwarmEngine
from corolla.protocol.messages import ServerInfo, decode_meta
from corolla.protocol.rpc import stub_for
from tests.api.conftest import http_get, openai_client, served

pytestmark = pytest.mark.slow  # a real pretrained model on real server processes

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def client(api_swarm):
    return openai_client(api_swarm.base)


def chat(client, model, content, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, **kw)


def streamed_text(stream) -> tuple[str, str | None]:
    text, finish = [], None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def server_info(model, peer_id: str) -> ServerInfo:
    response = model.client.loop.run(
        stub_for(model.client.p2p, peer_id).rpc_info(runtime_pb2.ExpertRequest(uid=model.model_id), timeout=10))
    return decode_meta(response.metadata, ServerInfo)


def test_models_and_swarm_state(api_swarm, client):
    assert [m.id for m in client.models.list()] == [api_swarm.model_id]
    status, body = http_get(f"{api_swarm.base}/api/swarm")
    (state,) = json.loads(body)["models"]
    assert status == 200 and state["model_id"] == api_swarm.model_id and state["num_blocks"] == 30
    assert state["coverage"] == [1] * 30
    servers = {s["peer_id"]: s for s in state["servers"]}
    assert set(servers) == set(api_swarm.peers)
    assert sorted((s["start_block"], s["end_block"]) for s in servers.values()) == [(0, 15), (15, 30)]
    for s in servers.values():
        assert s["state"] == "online" and s["inference_rps"] > 0 and s["cache_tokens_left"] > 0
        assert {"forward_tps", "active_sessions", "queued_requests", "dtype", "quant", "public_name",
                "version"} <= set(s)


def test_chat_streamed_equals_whole_and_stop_cuts(api_swarm, client):
    whole = chat(client, api_swarm.model_id, "Name three colors.", max_tokens=12)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    streamed, finish = streamed_text(chat(client, api_swarm.model_id, "Name three colors.", max_tokens=12, stream=True))
    assert (streamed, finish) == (text, whole.choices[0].finish_reason)
    stop = text.strip().split()[1] if len(text.split()) > 1 else text.strip()[-1]
    cut = chat(client, api_swarm.model_id, "Name three colors.", max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_completion_equals_the_python_client(api_swarm, client):
    prompt = "The capital of France is"
    reply = client.completions.create(model=api_swarm.model_id, prompt=prompt, max_tokens=8, temperature=0)
    tok = api_swarm.model.tokenizer
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = api_swarm.model.generate(ids, max_new_tokens=8)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.choices[0].text == expected
    assert reply.usage.prompt_tokens == ids.shape[1]


def test_tool_call_reply_is_well_formed(api_swarm, client):
    reply = client.chat.completions.create(
        model=api_swarm.model_id, temperature=0, max_tokens=24, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    choice = reply.choices[0]
    if choice.finish_reason == "tool_calls":  # the 135M model followed the format
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    else:
        assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
        assert not choice.message.tool_calls


def test_parallel_streams_equal_sequential_greedy(api_swarm, client):
    prompts = ["Say hi.", "What is 2+2?", "Name a fruit.", "Tell me a color."]
    sequential = [chat(client, api_swarm.model_id, p, max_tokens=10).choices[0].message.content for p in prompts]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = streamed_text(chat(client, api_swarm.model_id, prompts[i], max_tokens=10, stream=True))[0]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert [results[i] for i in range(len(prompts))] == sequential


def test_disconnect_mid_stream_closes_the_sessions(api_swarm, client):
    stream = chat(client, api_swarm.model_id, "Write a long story about a dragon.", max_tokens=400, stream=True)
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    assert api_swarm.engine.open_sessions == 1
    stream.close()
    deadline = time.monotonic() + 30
    while True:  # the servers hold only what the prompt cache keeps (finished generations), not this one
        active = [server_info(api_swarm.model, peer).active_sessions for peer in api_swarm.peers]
        kept = len(api_swarm.engine.prompt_cache)
        if api_swarm.engine.open_sessions == 0 and active == [kept, kept]:
            break
        assert time.monotonic() < deadline, \
            f"sessions still open: engine {api_swarm.engine.open_sessions}, servers {active}, kept {kept}"
        time.sleep(0.1)


def test_bad_requests_and_unknown_model(api_swarm, client):
    with pytest.raises(openai.BadRequestError):
        chat(client, api_swarm.model_id, "x", max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        chat(client, "no-such-model", "x")


def test_no_route_is_503(api_swarm):
    from corolla.client.model import DistributedModelForCausalLM

    with DistributedModelForCausalLM.from_pretrained(
        api_swarm.folder, initial_peers=api_swarm.swarm.initial_peers, model_id=api_swarm.model_id,
        allowed_servers=["12D3KooWNoSuchPeerNoSuchPeerNoSuchPeerNoSuchPeer"], route_timeout_s=0.5,
    ) as model:
        with served(create_app(SwarmEngine(model), web_dir=None)) as base:
            with pytest.raises(openai.InternalServerError) as info:
                chat(openai_client(base), api_swarm.model_id, "Hi", max_tokens=4)
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"]
    assert "no server online" in info.value.body["message"]
