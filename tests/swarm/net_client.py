"""A client on another "host" (tests/swarm/test_hosts.py): greedy generation through the swarm.

Usage: python net_client.py FOLDER MODEL_ID IDS NEW_TOKENS PAUSE_AT ALLOWED MADDR...  (IDS: comma-separated
token ids; ALLOWED: comma-separated peer ids of the servers it may use, or "any")
Prints ``chain PEER...`` once PAUSE_AT tokens are out (PAUSE_AT 0: never) and waits for a line on
stdin before going on (the test kills a server meanwhile), then ``tokens ID,ID,...`` and
``recoveries N``.
"""

from __future__ import annotations

import sys

import torch


def main(folder: str, model_id: str, ids: str, new_tokens: str, pause_at: str, allowed: str, *peers: str) -> None:
    from corolla.client.model import DistributedModelForCausalLM

    torch.set_num_threads(1)
    prompt = torch.tensor([[int(t) for t in ids.split(",")]])
    count = 0
    options = {} if allowed == "any" else {"allowed_servers": allowed.split(",")}
    with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=list(peers), model_id=model_id,
                                                     **options) as model:
        with model.inference_session(max_length=128) as session:
            def on_token(_):
                nonlocal count
                count += 1
                if count == int(pause_at):
                    print("chain " + " ".join(hop.peer_id for hop in session.chain), flush=True)
                    sys.stdin.readline()

            out = model.generate(prompt, max_new_tokens=int(new_tokens), eos_token_id=[], callback=on_token)
            recoveries = session.recoveries
    print("tokens " + ",".join(str(t) for t in out[0].tolist()), flush=True)
    print(f"recoveries {recoveries}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
