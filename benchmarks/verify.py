"""Verified computation: what checking costs an honest client, and how fast a liar is caught.

Overhead: ``--model`` on ``--servers`` servers that each hold every block (so each hop has a
second server to check against). Runs alternate between a client that never checks
(``verify_rate=0``) and one at ``--rate`` (default: the product's default, 1 step in 20);
each generates ``--new-tokens`` greedily. Printed: tok/s of each, their ratio (the overhead), and
the checks made. On this machine the checking server shares the client's and the serving
server's two cores: a check costs the serving server CPU time it would have on its own machine.

Detection: the same swarm plus a liar (tests/swarm/liar.py: off by 1 % on every step, or the sign
of one step in 100 flipped) that announces itself faster so the client routes through it; for
``--seeds`` sampling seeds, the steps the client made through the liar until it distrusted it
(for the sign flip: counted from the flipped step, as the liar logs it).

    .venv/bin/python benchmarks/verify.py                    # smollm2-135m, 2 honest servers, 3 runs
    .venv/bin/python benchmarks/verify.py --runs 5 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import re
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

LIAR = (sys.executable, "-m", "tests.swarm.liar")


def tok_per_s(model, ids, new_tokens: int) -> tuple[list[int], float]:
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[])
    return out[0, ids.shape[1]:].tolist(), new_tokens / (time.perf_counter() - start)


def steps_until_caught(swarm, ref, ids, liar: str, seed: int, max_tokens: int) -> int | None:
    """Tokens generated through the liar until the client distrusted it (None: never)."""
    with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                     model_id=ref.model_id, verify_seed=seed,
                                                     report_wrong=False) as model:
        model.client.distrusted.discard(liar)  # each seed starts from no knowledge
        with model.inference_session(max_length=ids.shape[1] + max_tokens + 8) as session:
            for i, _ in enumerate(model.stream(ids, max_new_tokens=max_tokens, eos_token_id=[], session=session)):
                if liar in model.client.verify_stats.caught:
                    return i + 1
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--servers", type=int, default=2, help="honest servers, each with every block")
    p.add_argument("--rate", type=float, default=None, help="checked share of steps (default: the product's)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3, help="sampling seeds per liar for detection")
    p.add_argument("--max-tokens", type=int, default=300, help="give up on detection after this many tokens")
    p.add_argument("--out", default=str(_common.OUT_DIR / "verify.json"))
    args = p.parse_args()
    _common.quiet_logs()
    from corolla.client.config import ClientConfig

    rate = ClientConfig.verify_rate if args.rate is None else args.rate
    ref = resolve_model(args.model)
    from transformers import AutoConfig, AutoTokenizer

    n = AutoConfig.from_pretrained(ref.path).num_hidden_layers
    ids = _common.chat_ids(AutoTokenizer.from_pretrained(ref.path),
                           [{"role": "user", "content": "Write a Python function that merges two sorted lists."}])
    result: dict = {"model": args.model, "servers": args.servers, "rate": rate, "new_tokens": args.new_tokens}
    log_dir = _common.OUT_DIR / "logs" / "verify"
    with LocalSwarm(str(ref.path), n, ref.model_id, log_dir=log_dir, server_args=["--torch-threads", "1"]) as swarm:
        servers = [swarm.add_server((0, n)) for _ in range(args.servers)]
        swarm.wait_ready(servers, timeout_s=600)
        plain_tps, checked_tps, same, checks = [], [], [], 0
        with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                         model_id=ref.model_id, verify_rate=0.0) as plain, \
                DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                            model_id=ref.model_id, verify_rate=rate,
                                                            verify_seed=0) as checked:
            baseline, _ = tok_per_s(plain, ids, args.new_tokens)  # warm-up
            tok_per_s(checked, ids, args.new_tokens)
            for run in range(args.runs):
                tokens, tps = tok_per_s(plain, ids, args.new_tokens)
                plain_tps.append(tps)
                same.append(tokens == baseline)
                tokens, tps = tok_per_s(checked, ids, args.new_tokens)
                checked_tps.append(tps)
                same.append(tokens == baseline)
                print(f"run {run + 1}: {plain_tps[-1]:.2f} tok/s unchecked, {tps:.2f} checked "
                      f"(x{tps / plain_tps[-1]:.3f})", flush=True)
            stats = checked.client.verify_stats
            checks = stats.checks
        ratio = statistics.median(checked_tps) / statistics.median(plain_tps)
        result.update(unchecked_tps=plain_tps, checked_tps=checked_tps, ratio=ratio, checks=checks,
                      disputes=stats.disputes, worst_honest_disagreement=stats.worst_agreeing, outputs_equal=all(same))
        print(f"overhead at rate {rate}: checked ÷ unchecked tok/s = x{ratio:.3f} ({(1 - ratio) * 100:.1f} % slower); "
              f"{checks} checks, {stats.disputes} disputes, worst honest disagreement {stats.worst_agreeing:.2e}; "
              f"outputs equal: {all(same)}", flush=True)

        detection = {}
        for name, liar_args in (("off by 1%", ["--scale", "1.01"]), ("sign flip 1 in 100", ["--flip-every", "100"])):
            liar = swarm.add_server((0, n), liar_args, program=LIAR)
            swarm.wait_ready([liar], timeout_s=600)
            found = []
            for seed in range(args.seeds):
                log_size = liar.log_path.stat().st_size
                steps = steps_until_caught(swarm, ref, ids, liar.peer_id, seed, args.max_tokens)
                flips = [int(m) for m in re.findall(r"flipped the sign of step (\d+)",
                                                    liar.log_path.read_text()[log_size:])]
                found.append({"seed": seed, "tokens_until_caught": steps, "flips_before": len(flips)})
                print(f"{name}, seed {seed}: caught after {steps} tokens (liar flips logged meanwhile: {len(flips)})",
                      flush=True)
            detection[name] = found
            swarm.kill(liar)
        result["detection"] = detection
    result["environment"] = _common.environment()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result["outputs_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
