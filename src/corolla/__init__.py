"""corolla: large language models on a peer-to-peer swarm, and a coding assistant on top."""

__version__ = "0.1.0"

__all__ = ["DistributedModelForCausalLM", "SwarmAdapter", "__version__"]


def __getattr__(name: str):
    # heavy imports (torch, hivemind) only when the client is actually used
    if name == "DistributedModelForCausalLM":
        from corolla.client.model import DistributedModelForCausalLM

        return DistributedModelForCausalLM
    if name == "SwarmAdapter":
        from corolla.client.training import SwarmAdapter

        return SwarmAdapter
    raise AttributeError(name)
