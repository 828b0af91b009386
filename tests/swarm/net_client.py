"""A client on another "host" (tests/swarm/test_hosts.py): greedy generation through the swarm, one
request per line on stdin, so that one process (imports, torch) serves every test of the module.

Usage: python net_client.py FOLDER MODEL_ID MADDR...

Each line ``gen IDS NEW_TOKENS ALLOWED [REPEAT]`` (IDS: comma-separated token ids; ALLOWED:
comma-separated peer ids of the servers it may use, or "any") starts a fresh client (its own DHT
node, no bans) and generates REPEAT times (default 1), each in a session of its own over the same
connections. Whenever the client plans a chain of servers (a session's first one, and each
re-route after a failure) it prints ``chain PEER...`` at once, before the session opens a stream
there: the test kills a server from the first one at a random moment after it. Each generation
prints ``tokens ID,ID,...`` and ``recoveries N``; a failed request prints ``error TYPE: MESSAGE``.
"""

from __future__ import annotations

import logging
import sys
import traceback

import torch


def main(folder: str, model_id: str, *peers: str) -> None:
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.client.remote import SwarmClient

    plan = SwarmClient.plan

    def announced_plan(self, *args, **kwargs):
        hops = plan(self, *args, **kwargs)
        print("chain " + " ".join(hop.peer_id for hop in hops), flush=True)
        return hops

    SwarmClient.plan = announced_plan
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for line in sys.stdin:
        command, *args = line.split()
        if command == "quit":
            break
        ids, new_tokens, allowed, *repeat = args
        prompt = torch.tensor([[int(t) for t in ids.split(",")]])
        options = {} if allowed == "any" else {"allowed_servers": allowed.split(",")}
        try:
            with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=list(peers), model_id=model_id,
                                                             **options) as model:
                for _ in range(int(repeat[0]) if repeat else 1):
                    with model.inference_session(max_length=prompt.shape[1] + int(new_tokens)) as session:
                        out = model.generate(prompt, max_new_tokens=int(new_tokens), eos_token_id=[])
                        recoveries = session.recoveries
                    print("tokens " + ",".join(str(t) for t in out[0].tolist()), flush=True)
                    print(f"recoveries {recoveries}", flush=True)
        except Exception as e:
            traceback.print_exc()
            print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
