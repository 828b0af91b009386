"""The `corolla` command end to end: real processes, real SmolLM2, loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.processes import kill_tagged, processes_with, tagged_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "corolla"]


def wait_gone(tag: str, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_with(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def local_greedy_text(folder, prompt: str, new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    if any(t in eos for t in new):
        new = new[: next(i for i, t in enumerate(new) if t in eos)]
    return tok.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def swarm_up(smollm2_dir, tmp_path_factory):
    """`corolla swarm up smollm2-135m --servers 2`, left running for the module's tests."""
    env, tag = tagged_env()
    log = tmp_path_factory.mktemp("swarm-up") / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*CLI, "swarm", "up", "smollm2-135m", "--servers", "2"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        peers = None
        while peers is None:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("join it with: --initial-peers "):
                    peers = line.split("--initial-peers ", 1)[1].split()
            if proc.poll() is not None:
                pytest.fail(f"swarm up exited early:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"swarm up did not become ready:\n{text[-3000:]}")
            time.sleep(0.2)
        assert "swarm ready: all 30 blocks of smollm2-135m are served" in log.read_text()
        yield proc, peers, tag, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        kill_tagged(tag)


def test_generate_matches_local_model(swarm_up, smollm2_dir):
    _, peers, _, _ = swarm_up
    prompt = "The capital of France is"
    result = subprocess.run([*CLI, "generate", "smollm2-135m", prompt, "--max-new-tokens", "12",
                             "--initial-peers", *peers], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == local_greedy_text(smollm2_dir, prompt, 12).strip()


def test_generate_with_a_draft_prints_the_same(swarm_up, smollm2_dir):
    _, peers, _, _ = swarm_up
    prompt = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n"
    expected = local_greedy_text(smollm2_dir, prompt, 12).strip()
    for draft in ("lookup", str(smollm2_dir)):
        result = subprocess.run([*CLI, "generate", "smollm2-135m", prompt, "--max-new-tokens", "12", "--draft", draft,
                                 "--initial-peers", *peers], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == expected, draft


def test_swarm_status(swarm_up, smollm2_dir):
    import torch

    from corolla.models.loading import block_sizes, load_config

    _, peers, _, _ = swarm_up
    result = subprocess.run([*CLI, "swarm", "status", "smollm2-135m", "--initial-peers", *peers, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    status = json.loads(result.stdout)
    assert status["num_blocks"] == 30 and all(c == 1 for c in status["coverage"])
    assert sorted((s["start_block"], s["end_block"]) for s in status["servers"]) == [(0, 15), (15, 30)]
    sizes = block_sizes(smollm2_dir, load_config(smollm2_dir), torch.float32)
    for s in status["servers"]:  # measured once loaded = read from the checkpoint's headers
        assert s["weight_bytes"] == sum(sizes[s["start_block"] : s["end_block"]]) > 0
    table = subprocess.run([*CLI, "swarm", "status", "smollm2-135m", "--initial-peers", *peers],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "blocks with no server: none" in table.stdout


def test_piped_chat_answers_and_exits(swarm_up):
    _, peers, _, _ = swarm_up
    result = subprocess.run([*CLI, "chat", "smollm2-135m", "--initial-peers", *peers, "--max-new-tokens", "24"],
                            input="What is the capital of France?\nAnd of Italy?\n", capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # two answers; the second needs the first turn as context (one session across turns)
    assert "Paris" in result.stdout and "Rome" in result.stdout, result.stdout


def test_sigterm_stops_every_process(swarm_up):
    proc, _, tag, log = swarm_up
    assert len(processes_with(tag)) >= 5  # swarm up + 2 servers (+ their DHT children and p2pd daemons)
    proc.send_signal(signal.SIGTERM)  # only the swarm-up process: it must stop the rest itself
    assert proc.wait(60) == 0
    assert wait_gone(tag) == [], log.read_text()[-2000:]


@pytest.mark.parametrize("quant", ["none", "fp16-decode"])
def test_swarm_up_chat_with_piped_input(smollm2_dir, quant):
    """What `make run` does (QUANT=none, and fp16-decode): a whole local swarm, the API and web pages
    on a printed URL while the terminal chat runs, one answer to piped input, then everything stops."""
    import httpx
    import openai

    env, tag = tagged_env()
    proc = subprocess.Popen([*CLI, "swarm", "up", "smollm2-135m", "--servers", "3", "--chat", "--api-port", "0",
                             "--max-new-tokens", "24", "--quant", quant], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        lines = []
        while not any("OpenAI-compatible API: " in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)[-3000:]  # exited before printing the URL
            lines.append(line)
        base = next(line for line in lines if "OpenAI-compatible API: " in line).split("OpenAI-compatible API: ")[1]
        client = openai.OpenAI(base_url=base.strip(), api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
        swarm = httpx.get(base.strip().removesuffix("/v1") + "/api/swarm", timeout=30).json()["models"][0]
        assert [s["quant"] for s in swarm["servers"]] == [quant] * 3
        reply = client.chat.completions.create(model="smollm2-135m", max_tokens=24, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in reply.choices[0].message.content
        out, err = proc.communicate("What is the capital of France?\n", timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "Paris" in out
        assert wait_gone(tag) == []
    finally:
        proc.kill()
        kill_tagged(tag)


def test_dht_identity_keeps_the_address_across_restarts(tmp_path):
    identity = tmp_path / "bootstrap.key"
    addresses = []
    for _ in range(2):
        env, tag = tagged_env()
        proc = subprocess.Popen([*CLI, "dht", "--identity", str(identity)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
            assert lines[1].strip().startswith("--initial-peers /ip4/127.0.0.1/tcp/"), lines
            addresses.append(lines[1].split("/p2p/")[1].split()[0])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert wait_gone(tag) == []  # its DHT child and p2pd stop too
        finally:
            kill_tagged(tag)
    assert identity.exists() and addresses[0] == addresses[1]


def test_api_refuses_a_negative_prompt_cache_before_starting():
    result = subprocess.run([*CLI, "api", "--prompt-cache", "-1"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--prompt-cache: a number of sessions, 0 or more" in result.stderr


def test_help_for_every_command():
    for args in (["--help"], ["server", "--help"], ["swarm", "up", "--help"], ["swarm", "status", "--help"],
                 ["generate", "--help"], ["chat", "--help"], ["dht", "--help"], ["models", "fetch", "--help"],
                 ["models", "list", "--help"], ["api", "--help"]):
        result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage: corolla" in result.stdout, (args, result.stderr)
