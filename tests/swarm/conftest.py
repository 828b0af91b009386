"""Swarm fixtures: real hivemind DHT + p2pd on loopback and real server processes.

One swarm per model for the whole run. Each swarm holds the same blocks split three ways (1, 2 and 3
servers); a test picks a split by restricting the client to that split's servers.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corolla.swarm.local import LocalSwarm
from tests.tiny_models import save_tiny_model

SERVER_ARGS = ["--max-session-length", "256", "--torch-threads", "1"]


def three_splits(n: int) -> list[list[tuple[int, int]]]:
    """The blocks split over 1, 2 and 3 servers, at different boundaries."""
    return [[(0, n)], [(0, n // 2), (n // 2, n)], [(0, 1), (1, n - 2), (n - 2, n)]]


@dataclasses.dataclass
class SwarmUnderTest:
    swarm: LocalSwarm
    folder: object
    model_id: str
    splits: list[list[tuple[int, int]]]
    peers_by_split: list[list[str]]

    @property
    def initial_peers(self) -> list[str]:
        return self.swarm.initial_peers

    def client(self, split: int | None = None, **options):
        from corolla.client.model import DistributedModelForCausalLM

        if split is not None:
            options["allowed_servers"] = self.peers_by_split[split]
        return DistributedModelForCausalLM.from_pretrained(
            self.folder, initial_peers=self.initial_peers, model_id=self.model_id, **options
        )


def start_swarm(folder, model_id: str, num_blocks: int, log_dir) -> SwarmUnderTest:
    splits = three_splits(num_blocks)
    swarm = LocalSwarm(str(folder), num_blocks, model_id, log_dir=log_dir, server_args=SERVER_ARGS)
    try:
        procs = [[swarm.add_server(span) for span in split] for split in splits]
        swarm.wait_ready([p for split in procs for p in split], timeout_s=600)
    except BaseException:
        swarm.stop()
        raise
    return SwarmUnderTest(swarm, folder, swarm.model_id, splits, [[p.peer_id for p in split] for split in procs])


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_swarm(request, tmp_path_factory):
    family = request.param
    folder = save_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
    sut = start_swarm(folder, f"tiny-{family}", 6, tmp_path_factory.mktemp(f"logs-{family}"))
    yield sut
    sut.swarm.stop()


@pytest.fixture(scope="session")
def smollm2_swarm(smollm2_dir, tmp_path_factory):
    sut = start_swarm(smollm2_dir, "smollm2-135m", 30, tmp_path_factory.mktemp("logs-smollm2"))
    yield sut
    sut.swarm.stop()


def local_greedy(ref, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Hugging Face's own greedy generate, EOS disabled so lengths match."""
    return ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                        eos_token_id=None, pad_token_id=0)
