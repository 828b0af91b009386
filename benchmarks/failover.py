"""Failover: time from a server's death (kill -9) to the next generated token.

Two cases on a loopback swarm of SmolLM2-135M (fp32, greedy):
  warm — a second server already holds the dead server's blocks;
  cold — the dead server was the only one; a replacement is started right after the kill.
The baseline is the median time between two tokens in the same run (so the figure reads as
"a failure costs N ordinary steps"). Output must equal an undisturbed run; the script checks it.

    .venv/bin/python benchmarks/failover.py [--runs 3] [--new-tokens 64] [--kill-at 32]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from corolla.client.model import DistributedModelForCausalLM  # noqa: E402
from corolla.models.resolve import resolve_model  # noqa: E402
from corolla.swarm.local import LocalSwarm  # noqa: E402

MODEL_ID = "smollm2-135m"


def prompt_ids(folder) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me a short story about a fox."}],
                                   tokenize=False, add_generation_prompt=True)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def one_run(folder, case: str, new_tokens: int, kill_at: int, reference: torch.Tensor | None):
    spans = [(0, 15), (15, 30), (15, 30)] if case == "warm" else [(0, 15), (15, 30)]
    with LocalSwarm(str(folder), 30, MODEL_ID, log_dir=tempfile.mkdtemp(prefix="failover-")) as swarm:
        swarm.start(spans)
        with DistributedModelForCausalLM.from_pretrained(folder, initial_peers=swarm.initial_peers,
                                                         model_id=MODEL_ID, route_timeout_s=300) as model:
            ids = prompt_ids(folder)
            times, killed = [], {}
            with model.inference_session(max_length=256) as session:
                def on_token(_):
                    times.append(time.monotonic())
                    if len(times) == kill_at:
                        victim = next(s for s in swarm.servers if s.peer_id == session.chain[1].peer_id)
                        swarm.kill(victim, signal.SIGKILL)
                        killed["at"] = time.monotonic()
                        if case == "cold":
                            swarm.add_server((15, 30))

                out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], callback=on_token)
            if reference is None:  # an undisturbed run on the same swarm gives the expected output
                reference = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=[])
    gaps = [b - a for a, b in zip(times, times[1:])]
    step = statistics.median(gaps)
    return times[kill_at] - killed["at"], step, torch.equal(out, reference), reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--kill-at", type=int, default=32, help="kill after this many tokens")
    args = parser.parse_args()
    folder = resolve_model("smollm2-135m").path
    rows, reference = {}, None
    for case in ("warm", "cold"):
        results = []
        for _ in range(args.runs):
            recovery, step, same, reference = one_run(folder, case, args.new_tokens, args.kill_at, reference)
            results.append((recovery, step, same))
            print(f"{case}: next token {recovery:.2f} s after kill -9 (a normal step: {step * 1000:.0f} ms), "
                  f"output identical: {same}", flush=True)
        rows[case] = {
            "recovery_s_median": statistics.median(r[0] for r in results),
            "step_s_median": statistics.median(r[1] for r in results),
            "recovery_in_steps": statistics.median(r[0] / r[1] for r in results),
            "all_identical": all(r[2] for r in results),
            "runs": len(results),
        }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"failover, SmolLM2-135M fp32, kill -9 after {args.kill_at} of {args.new_tokens} tokens")
    for col in ("case", "kill → next token (s)", "normal step (ms)", "failure ÷ step", "identical output"):
        table.add_column(col)
    for case, r in rows.items():
        table.add_row(case, f"{r['recovery_s_median']:.2f}", f"{r['step_s_median'] * 1000:.0f}",
                      f"{r['recovery_in_steps']:.1f}", str(r["all_identical"]))
    Console().print(table)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "failover.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["all_identical"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
