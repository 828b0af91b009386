"""Soak: many clients generating for a long time while servers are killed and restarted.

``--clients`` clients (each its own DHT node and p2p daemon, in threads of this process) generate
greedily from a few prompts, over and over, through a swarm where each span has two servers: a
*stable* one, never killed, and a *rotating* one that is killed (``kill -9`` of its process
group, at a random moment) every ``--kill-every-s`` and started again. Every generation is checked
against the first undisturbed one of its prompt. Printed at the end:

- generations done, lost (an exception reached the caller: target 0) and wrong (other tokens);
- recoveries (a server failed under a session, which re-routed and replayed);
- the stable servers' memory (VmRSS of each server's process tree) after warm-up and at its
  highest later: the growth must stay within 10 %;
- sessions still open on every server once the clients are done (target 0);
- what the clients' checks of verified computation saw (each hop has a second server to check
  against): checks, disputes and servers caught (targets 0: every server is honest).

    .venv/bin/python benchmarks/soak.py                       # 8 clients, 30 minutes, a kill a minute
    .venv/bin/python benchmarks/soak.py --minutes 5 --clients 4 --kill-every-s 30

Not part of the test suite (it runs for minutes by design); figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import _common  # noqa: E402
from corolla.client.model import DistributedModelForCausalLM  # noqa: E402
from corolla.models.resolve import resolve_model  # noqa: E402
from corolla.swarm.local import LocalSwarm  # noqa: E402

PROMPTS = ["Write a Python function that reverses a string.", "What is a hash table?",
           "Explain recursion in one paragraph.", "List three sorting algorithms."]


def tree_rss(pid: int) -> int:
    table = _common.proc_table()
    return sum(_common.rss_bytes(p) for p in _common.tree(table, [pid]))


def active_sessions(model, peer: str) -> int | None:
    from hivemind.proto import runtime_pb2

    from corolla.protocol.messages import ServerInfo, decode_meta
    from corolla.protocol.rpc import stub_for

    try:
        response = model.client.loop.run(stub_for(model.client.p2p, peer).rpc_info(
            runtime_pb2.ExpertRequest(uid=""), timeout=10), timeout=20)
        return decode_meta(response.metadata, ServerInfo).active_sessions
    except Exception:
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--kill-every-s", type=float, default=60.0)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--warmup-s", type=float, default=60.0, help="memory is compared with its value at this time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(_common.OUT_DIR / "soak.json"))
    args = p.parse_args()
    _common.quiet_logs()
    rng = random.Random(args.seed)
    ref = resolve_model(args.model)
    from transformers import AutoConfig, AutoTokenizer

    num_blocks = AutoConfig.from_pretrained(ref.path).num_hidden_layers
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    prompts = [_common.chat_ids(tokenizer, [{"role": "user", "content": text}]) for text in PROMPTS]
    half = num_blocks // 2
    spans = [(0, half), (half, num_blocks)]
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"done": 0, "lost": 0, "wrong": 0, "recoveries": 0}
    checks: dict[str, float] = {}
    errors: list[str] = []
    expected: dict[int, list[int]] = {}
    memory: dict[str, list[tuple[float, int]]] = {}
    kills = 0

    with LocalSwarm(str(ref.path), num_blocks, ref.model_id,
                    log_dir=Path(tempfile.mkdtemp(prefix="corolla-soak-")),
                    server_args=["--torch-threads", "1", "--announce-period-s", "2"]) as swarm:
        stable = [swarm.add_server(span) for span in spans]
        rotating = [swarm.add_server(span) for span in spans]
        swarm.wait_ready(stable + rotating, timeout_s=600)
        first = DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                            model_id=ref.model_id)
        for i, ids in enumerate(prompts):  # the reference texts, undisturbed
            expected[i] = first.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[])[0].tolist()

        def client_loop(index: int) -> None:
            with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                             model_id=ref.model_id, route_timeout_s=120) as model:
                turn = index
                while not stop.is_set():
                    i = turn % len(prompts)
                    turn += 1
                    ids = prompts[i]
                    try:
                        with model.inference_session(max_length=ids.shape[1] + args.new_tokens) as session:
                            out = model.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[],
                                                 session=session)[0].tolist()
                            recovered = len(session.failures)
                    except Exception as e:
                        with lock:
                            counts["lost"] += 1
                            errors.append(f"client {index}: {type(e).__name__}: {e}")
                        continue
                    with lock:
                        counts["done"] += 1
                        counts["recoveries"] += recovered
                        counts["wrong"] += out != expected[i]
                stats = model.client.verify_stats  # verified computation at the default rate
                with lock:
                    for key, value in (("checks", stats.checks), ("disputes", stats.disputes),
                                       ("caught", len(stats.caught))):
                        checks[key] = checks.get(key, 0) + value
                    checks["worst_honest_disagreement"] = max(checks.get("worst_honest_disagreement", 0.0),
                                                              stats.worst_agreeing)

        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        started = time.monotonic()
        end = started + 60 * args.minutes
        next_kill = started + rng.uniform(0.5, 1.0) * args.kill_every_s
        next_sample = started
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                for server in stable:
                    memory.setdefault(server.peer_id, []).append((now - started, tree_rss(server.process.pid)))
                next_sample = now + 10
            if now >= next_kill:
                slot = rng.randrange(len(rotating))
                victim = rotating[slot]
                swarm.kill(victim, signal.SIGKILL)
                kills += 1
                rotating[slot] = swarm.add_server(victim.span)
                swarm.wait_ready([rotating[slot]], timeout_s=300)
                next_kill = time.monotonic() + rng.uniform(0.5, 1.5) * args.kill_every_s
                with lock:
                    print(f"[{now - started:6.0f} s] killed and restarted a server of {victim.span}; "
                          f"generations {counts['done']}, lost {counts['lost']}, wrong {counts['wrong']}", flush=True)
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(300)
        time.sleep(5)  # sessions close when their streams end
        left = {s.peer_id: active_sessions(first, s.peer_id) for s in stable + rotating}
        first.close()

    growth = {}
    for peer, series in memory.items():
        after = [rss for t, rss in series if t >= args.warmup_s]
        if len(after) >= 2:
            growth[peer] = max(after) / after[0] - 1
    result = {"config": vars(args), "counts": counts, "kills": kills, "errors": errors[:20], "verification": checks,
              "memory_mib": {peer: [(round(t), rss / 2**20) for t, rss in series] for peer, series in memory.items()},
              "memory_growth_after_warmup": growth, "sessions_left": left,
              "environment": _common.environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    worst = max(growth.values()) if growth else float("nan")
    print(f"\n{args.clients} clients, {args.minutes:g} min, {kills} kills: generations {counts['done']}, "
          f"lost {counts['lost']}, wrong {counts['wrong']}, recoveries {counts['recoveries']}; stable servers' "
          f"memory growth after {args.warmup_s:g} s: max {100 * worst:.1f} % "
          f"(median {100 * statistics.median(growth.values()) if growth else float('nan'):.1f} %); "
          f"sessions left open: {left}; verification: {checks}", flush=True)
    ok = counts["lost"] == 0 and counts["wrong"] == 0 and all(v == 0 for v in left.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
