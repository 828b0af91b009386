"""Failover: time from a server's death (kill -9 of its whole process group) to the next token.

On a loopback swarm of SmolLM2-135M (fp32, greedy), three cases:
  random — every span has two servers (a warm replacement); a thread kills a random server of the
           session's chain at a uniformly random time of the generation: while a step is in
           flight, during the prefill, at session open, while one server pushes to the next —
           wherever the moment falls. Each dead server is replaced (outside the timing) before the
           next run. Reports p50 / p90 / max from the kill to the first token after the session
           recovered (the first token after a kill may not have needed the dead server), and the
           time the whole generation lost against an undisturbed one;
  warm   — the old between-steps case: the kill comes from the token callback (the client is
           between two steps), a second server already holds the blocks;
  cold   — between steps too, the dead server was the only one; a new one starts after the kill.
The baseline is the median time between two tokens in the same run ("a failure costs N steps").
Every output must equal an undisturbed run's; the script checks it and exits 1 otherwise.

    .venv/bin/python benchmarks/failover.py                      # random (20 runs), warm, cold (3 each)
    .venv/bin/python benchmarks/failover.py --cases random --random-runs 40 --seed 7
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import _common  # noqa: E402
from corolla.client.model import DistributedModelForCausalLM  # noqa: E402
from corolla.errors import PeerUnresponsiveError  # noqa: E402
from corolla.models.resolve import resolve_model  # noqa: E402
from corolla.swarm.local import LocalSwarm  # noqa: E402

MODEL_ID = "smollm2-135m"
FIRST, SECOND = (0, 15), (15, 30)


def prompt_ids(folder) -> torch.Tensor:
    from transformers import AutoTokenizer

    return _common.chat_ids(AutoTokenizer.from_pretrained(folder),
                            [{"role": "user", "content": "Tell me a short story about a fox."}])


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between the sorted values."""
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def client(folder, swarm) -> DistributedModelForCausalLM:
    return DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                       model_id=MODEL_ID, route_timeout_s=300)


def timed_generate(model, ids, new_tokens, session, on_token=None, recoveries=None):
    """(tokens, each token's time); ``recoveries``, a list, gets the session's recovery count at each token."""
    times = []

    def callback(tokens):
        times.append(time.monotonic())
        if recoveries is not None:
            recoveries.append(session.recoveries)
        if on_token is not None:
            on_token(tokens)

    out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], callback=callback, session=session)
    return out, times


# ---- random moments --------------------------------------------------------------------------------
def random_moments(folder, args, quiet: _common.QuietRunner, console) -> dict:
    ids = prompt_ids(folder)
    max_length = ids.shape[1] + args.new_tokens
    runs = []
    with LocalSwarm(str(folder), 30, MODEL_ID, log_dir=tempfile.mkdtemp(prefix="failover-random-")) as swarm:
        with console.status("starting 4 servers (each span twice)"):
            swarm.start([FIRST, FIRST, SECOND, SECOND])
        with client(folder, swarm) as model:
            undisturbed = []
            for _ in range(3):  # the first warms up the streams and caches
                with model.inference_session(max_length) as session:
                    t0 = time.monotonic()
                    reference, times = timed_generate(model, ids, args.new_tokens, session)
                    undisturbed.append((times[-1] - t0, statistics.median(b - a for a, b in zip(times, times[1:]))))
            gen_s = statistics.median(u[0] for u in undisturbed[1:])
            step_s = statistics.median(u[1] for u in undisturbed[1:])
            console.print(f"undisturbed: {gen_s:.2f} s for {args.new_tokens} tokens, a step {step_s * 1000:.0f} ms")

            def one_run(seed: int) -> dict:
                rng = random.Random(seed)
                delay = rng.uniform(0.0, gen_s)
                killed = {}
                with model.inference_session(max_length) as session:
                    started = threading.Event()

                    def killer():
                        started.wait()
                        time.sleep(delay)
                        hop = rng.randrange(len(session.chain))
                        victim = next(s for s in swarm.servers if s.peer_id == session.chain[hop].peer_id)
                        swarm.kill(victim, signal.SIGKILL)
                        killed.update(at=time.monotonic(), victim=victim, hop=hop)

                    thread = threading.Thread(target=killer, daemon=True)
                    thread.start()
                    t0 = time.monotonic()
                    started.set()
                    recoveries: list[int] = []
                    out, times = timed_generate(model, ids, args.new_tokens, session, recoveries=recoveries)
                    thread.join()
                    failures = list(session.failures)
                # the first token after the kill may not have needed the dead server (it had done its part
                # of that step): the figure is the first token that came after the session recovered
                after = [t for t, n in zip(times, recoveries) if t > killed["at"] and n > 0]
                row = {
                    "seed": seed, "kill_at_s": delay, "hop": killed["hop"],
                    # a kill after the last step costs this generation nothing (the next one notices)
                    "kill_to_next_token_s": after[0] - killed["at"] if after else None,
                    "lost_s": times[-1] - t0 - gen_s,
                    "identical": torch.equal(out, reference),
                    "noticed_by_timeout": any(isinstance(e, PeerUnresponsiveError) for e in failures),
                    "failures": [f"{type(e).__name__}: {e}"[:200] for e in failures],
                }
                swarm.servers.remove(killed["victim"])  # a warm replacement for the next run
                swarm.wait_ready([swarm.add_server(killed["victim"].span)])
                return row

            for run in range(args.random_runs):
                row, measured = quiet(lambda seed=args.seed + run: one_run(seed))
                row["foreign_cpu"] = round(measured.foreign_cpu, 3)
                runs.append(row)
                gap = row["kill_to_next_token_s"]
                console.print(f"random run {run + 1}/{args.random_runs}: kill of hop {row['hop']} at "
                              f"{row['kill_at_s']:.2f} s -> next token "
                              f"{'(none: after the last)' if gap is None else f'{gap:.2f} s'}, generation lost "
                              f"{row['lost_s']:.2f} s, identical {row['identical']}")
    gaps = [r["kill_to_next_token_s"] for r in runs if r["kill_to_next_token_s"] is not None]
    lost = [r["lost_s"] for r in runs]
    return {
        "runs": runs, "step_s_median": step_s, "undisturbed_s": gen_s,
        "kill_to_next_token_s": {"p50": percentile(gaps, 0.5), "p90": percentile(gaps, 0.9), "max": max(gaps)},
        "lost_s": {"p50": percentile(lost, 0.5), "p90": percentile(lost, 0.9), "max": max(lost)},
        "all_identical": all(r["identical"] for r in runs),
        "noticed_by_timeout": sum(r["noticed_by_timeout"] for r in runs),
    }


# ---- between steps (the token callback kills) ---------------------------------------------------------
def between_steps(folder, case: str, args, reference: torch.Tensor | None):
    spans = [FIRST, SECOND, SECOND] if case == "warm" else [FIRST, SECOND]
    with LocalSwarm(str(folder), 30, MODEL_ID, log_dir=tempfile.mkdtemp(prefix="failover-")) as swarm:
        swarm.start(spans)
        with client(folder, swarm) as model:
            ids = prompt_ids(folder)
            killed, tokens = {}, [0]
            with model.inference_session(max_length=256) as session:
                def on_token(_):
                    tokens[0] += 1
                    if tokens[0] == args.kill_at:
                        victim = next(s for s in swarm.servers if s.peer_id == session.chain[1].peer_id)
                        swarm.kill(victim, signal.SIGKILL)
                        killed["at"] = time.monotonic()
                        if case == "cold":
                            swarm.add_server(SECOND)

                out, times = timed_generate(model, ids, args.new_tokens, session, on_token)
            if reference is None:  # an undisturbed run on the same swarm gives the expected output
                reference = model.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[])
    step = statistics.median(b - a for a, b in zip(times, times[1:]))
    return times[args.kill_at] - killed["at"], step, torch.equal(out, reference), reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["random", "warm", "cold"], choices=["random", "warm", "cold"])
    parser.add_argument("--runs", type=int, default=3, help="runs of the warm and cold cases")
    parser.add_argument("--random-runs", type=int, default=20, help="runs of the random case")
    parser.add_argument("--seed", type=int, default=0, help="the random case's first seed (one per run)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--kill-at", type=int, default=32, help="warm/cold: kill after this many tokens")
    _common.add_quiet_args(parser)
    args = parser.parse_args()
    _common.quiet_logs()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    folder = resolve_model(MODEL_ID).path
    result: dict = {"args": vars(args), "env": _common.environment()}
    ok = True
    if "random" in args.cases:
        # wait for a quiet machine before each run, but never repeat one for "foreign" CPU: the killed
        # server's CPU time leaves this process tree with it and would count as someone else's
        quiet = _common.QuietRunner(args.quiet_idle, args.quiet_wait_s, max_foreign_cpu=float("inf"), max_retries=0)
        r = result["random"] = random_moments(folder, args, quiet, console)
        ok &= r["all_identical"]
        table = Table(title=f"failover at random moments, SmolLM2-135M fp32, 2 servers per span, kill -9 of a random "
                            f"server of the chain at a uniformly random time of {args.new_tokens} tokens, "
                            f"{args.random_runs} runs")
        for col in ("", "p50 (s)", "p90 (s)", "max (s)"):
            table.add_column(col)
        for key, label in (("kill_to_next_token_s", "kill → next token after recovery"), ("lost_s", "generation lost")):
            table.add_row(label, *(f"{r[key][q]:.2f}" for q in ("p50", "p90", "max")))
        console.print(table)
        console.print(f"a normal step {r['step_s_median'] * 1000:.0f} ms; identical output in "
                      f"{sum(x['identical'] for x in r['runs'])}/{len(r['runs'])}; deaths noticed by a timeout: "
                      f"{r['noticed_by_timeout']}")
    reference = None
    rows = {}
    for case in (c for c in ("warm", "cold") if c in args.cases):
        results = []
        for _ in range(args.runs):
            recovery, step, same, reference = between_steps(folder, case, args, reference)
            results.append((recovery, step, same))
            console.print(f"{case}: next token {recovery:.2f} s after kill -9 (a normal step: {step * 1000:.0f} ms), "
                          f"output identical: {same}")
        rows[case] = result[case] = {
            "recovery_s_median": statistics.median(r[0] for r in results),
            "step_s_median": statistics.median(r[1] for r in results),
            "recovery_in_steps": statistics.median(r[0] / r[1] for r in results),
            "all_identical": all(r[2] for r in results),
            "runs": len(results),
        }
        ok &= rows[case]["all_identical"]
    if rows:
        table = Table(title=f"failover between steps, kill -9 after {args.kill_at} of {args.new_tokens} tokens")
        for col in ("case", "kill → next token (s)", "normal step (ms)", "failure ÷ step", "identical output"):
            table.add_column(col)
        for case, r in rows.items():
            table.add_row(case, f"{r['recovery_s_median']:.2f}", f"{r['step_s_median'] * 1000:.0f}",
                          f"{r['recovery_in_steps']:.1f}", str(r["all_identical"]))
        console.print(table)
    _common.OUT_DIR.mkdir(exist_ok=True)
    (_common.OUT_DIR / "failover.json").write_text(json.dumps(result, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
