"""A server that computes wrong on purpose, for the tests of verified computation only (never a
product option): ``python -m tests.swarm.liar (--scale F | --flip-every N) SERVER ARGS...`` runs
``corolla server SERVER ARGS...`` whose inference steps come out scaled by F (``--scale 1.01``:
off by 1 %), or with their sign flipped once every N steps it computes. Its stateless forwards
stay right (a liar that answers checks honestly), and it announces itself ten times faster than
it is, so that clients route through it, as a cheater after traffic would.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--scale", type=float)
    group.add_argument("--flip-every", type=int)
    args, server_args = parser.parse_known_args(argv)

    from corolla.server import batching, server

    compute, info = batching.Batcher._compute, server.Server.info
    computed = [0]

    def lying_compute(self, batch):
        outputs = compute(self, batch)
        computed[0] += 1
        if args.scale is not None:
            return [out * args.scale for out in outputs]
        if computed[0] % args.flip_every == 0:
            print(f"liar: flipped the sign of step {computed[0]}", flush=True)
            return [-out for out in outputs]
        return outputs

    def boasting_info(self, *a, **kw):
        real = info(self, *a, **kw)
        return real.model_copy(update={"inference_rps": real.inference_rps * 10 + 100.0,
                                       "forward_tps": real.forward_tps * 10 + 1000.0})

    batching.Batcher._compute = lying_compute
    server.Server.info = boasting_info
    from corolla.cli.main import main as corolla

    return corolla(["server", *server_args])


if __name__ == "__main__":
    sys.exit(main())
