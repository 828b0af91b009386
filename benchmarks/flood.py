"""An honest client's decode step under a flood of fresh identities, ÷ the same step idle.

One server of ``--model`` (all blocks; the server's default fair limits unless ``--server-args``
says otherwise) and a client the server knows (a warm-up generation). Runs alternate: the client
generates ``--new-tokens`` greedily with the server idle, then again while ``--identities``
hostile identities (each its own p2p daemon, all in one process of their own: tests/swarm/flood.py)
open sessions and step them as fast as they can, hold more streams than allowed, leave some silent
and spam ``rpc_info``. Printed: median step ms idle and under flood, their ratio, the flood's answers
and refusals by error type, and whether the flooded output equals the idle one.

    .venv/bin/python benchmarks/flood.py                      # smollm2-135m, 50 identities, 3 runs
    .venv/bin/python benchmarks/flood.py --identities 20 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import _common  # noqa: E402
from corolla.client.model import DistributedModelForCausalLM  # noqa: E402
from corolla.models.resolve import resolve_model  # noqa: E402
from corolla.swarm.local import LocalSwarm  # noqa: E402
from tests.swarm.flood import Flood, server_maddrs  # noqa: E402


def timed(model, ids, new_tokens: int) -> tuple[list[int], float]:
    """The tokens and the median gap between two of them (ms)."""
    stamps, tokens = [], []
    for token in model.stream(ids, max_new_tokens=new_tokens, eos_token_id=[]):
        stamps.append(time.perf_counter())
        tokens.append(int(token))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return tokens, 1000 * statistics.median(gaps)


def _flood_process(conn, peer: str, maddrs: list[str], model_id: str, identities: int, num_blocks: int,
                   hidden_size: int, cpus: set[int] | None) -> None:
    """The flood in a process of its own (as an attacker's machine would be): the honest client's
    process then shares only the cores with it, not its interpreter. Answers "count" with the
    flood's answers so far; on "stop" sends the answers by type and ends. ``cpus``: the cores it
    may use (None: any)."""
    if cpus:  # the flood's own cores (its p2p daemons inherit them), as if it ran on another machine
        os.sched_setaffinity(0, cpus)
    with Flood(peer, maddrs, model_id, identities, num_blocks=num_blocks, hidden_size=hidden_size) as flood:
        conn.send("ready")
        while conn.recv() != "stop":
            conn.send(flood.requests)
    conn.send(dict(flood.codes))


class FloodProcess:
    def __init__(self, *args):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_flood_process, args=(child, *args), daemon=True)
        self.codes: dict[str, int] = {}

    def __enter__(self) -> FloodProcess:
        self._process.start()
        if not self._conn.poll(300) or self._conn.recv() != "ready":
            raise RuntimeError("the flood did not start")
        return self

    @property
    def requests(self) -> int:
        self._conn.send("count")
        return self._conn.recv()

    def __exit__(self, *exc) -> None:
        self._conn.send("stop")
        if self._conn.poll(180):
            self.codes = self._conn.recv()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--identities", type=int, default=50)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                   help="extra `corolla server` flags (last on the line), e.g. --peer-requests-per-s 100")
    p.add_argument("--split-cpus", action="store_true",
                   help="the flood on the last core, the server and the client on the others (one torch thread), "
                        "as if the attackers ran elsewhere: measures the server's policy, not the machine's starvation")
    p.add_argument("--out", default=str(_common.OUT_DIR / "flood.json"))
    args = p.parse_args()
    flood_cpus = None
    if args.split_cpus:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            p.error("--split-cpus needs 2 cores or more")
        flood_cpus = {cores[-1]}
        os.sched_setaffinity(0, set(cores[:-1]))  # this process, and the server it starts, on the others
        args.server_args = ["--torch-threads", str(len(cores) - 1), *args.server_args]
    _common.quiet_logs()
    ref = resolve_model(args.model)
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(ref.path)
    num_blocks = config.num_hidden_layers
    ids = _common.chat_ids(AutoTokenizer.from_pretrained(ref.path),
                           [{"role": "user", "content": "Write a Python function that merges two sorted lists."}])
    idle_ms, flood_ms, same, codes, answers = [], [], [], {}, []
    with LocalSwarm(str(ref.path), num_blocks, ref.model_id, log_dir=_common.OUT_DIR / "logs" / "flood",
                    server_args=["--torch-threads", "2", *args.server_args]) as swarm:
        server = swarm.add_server((0, num_blocks))
        swarm.wait_ready([server], timeout_s=600)
        maddrs = server_maddrs(swarm, server.peer_id)
        with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                         model_id=ref.model_id) as model:
            baseline, _ = timed(model, ids, args.new_tokens)  # warm-up; the server now knows this client
            for run in range(args.runs):
                tokens, ms = timed(model, ids, args.new_tokens)
                idle_ms.append(ms)
                same.append(tokens == baseline)
                with FloodProcess(server.peer_id, maddrs, swarm.model_id, args.identities, num_blocks,
                                  config.hidden_size, flood_cpus) as flood:
                    time.sleep(2)
                    before = flood.requests
                    tokens, ms = timed(model, ids, args.new_tokens)
                    answers.append(flood.requests - before)
                flood_ms.append(ms)
                same.append(tokens == baseline)
                for code, n in flood.codes.items():
                    codes[code] = codes.get(code, 0) + n
                print(f"run {run + 1}: step idle {idle_ms[-1]:.1f} ms, under flood {ms:.1f} ms "
                      f"(x{ms / idle_ms[-1]:.2f}); flood answers during the generation {answers[-1]}", flush=True)
    ratio = statistics.median(flood_ms) / statistics.median(idle_ms)
    result = {
        "model": args.model, "identities": args.identities, "runs": args.runs, "new_tokens": args.new_tokens,
        "server_args": args.server_args, "split_cpus": args.split_cpus,
        "idle_step_ms": idle_ms, "flood_step_ms": flood_ms, "ratio": ratio,
        "flood_codes": codes, "flood_answers_during": answers, "outputs_equal": all(same),
        "environment": _common.environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{args.model}, {args.identities} hostile identities, {args.runs} runs: median step idle "
          f"{statistics.median(idle_ms):.1f} ms, under flood {statistics.median(flood_ms):.1f} ms, "
          f"ratio x{ratio:.2f}; outputs equal: {all(same)}; flood answered by type: {codes}")
    if not codes.get("ok"):  # e.g. the flood named the model wrong: only refusals, no load
        print("the flood was never served: it measured nothing", file=sys.stderr)
        return 1
    return 0 if all(same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
