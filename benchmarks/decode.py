"""Decode speed: local Hugging Face ``generate`` vs the same model through a loopback swarm.

Greedy, fp32, ``--new-tokens`` new tokens after a short chat prompt (the tokenizer's chat
template). EOS never stops a run (``eos_token_id=None`` locally, ``eos_token_id=[]`` on the
swarm), so every run yields the same number of tokens and the swarm's tokens must equal the
local ones.

Per run it measures
- TTFT: from the call until the first new token is known (prefill; for the swarm also routing
  and opening the session streams); also for a long prompt (``--long-prompt-tokens``, default
  512 tokens of source code, 2 new tokens), where the swarm pipelines the prompt's pieces across
  its servers;
- tok/s: new tokens / wall time of the whole call (end to end, prefill included);
- decode tok/s and step ms: from the first new token to the last (decode steps only).

The machine is small and shared, so the local baseline is measured *interleaved* with the swarm
runs (local, swarm, local, swarm, ... while the swarm is up and idle between its runs): each
swarm size's ratio is against the local runs taken at the same time. Every run goes through the
benchmarks' shared quiet-machine runner (``_common.QuietRunner``: wait up to ``--quiet-wait-s``
until the CPUs are mostly idle, repeat a run during which other jobs took CPU) and records how
idle the machine was and how much CPU others took. Results: a rich table and
``benchmarks/out/decode.json``.

    .venv/bin/python benchmarks/decode.py [--runs 5] [--new-tokens 64] [--servers 1 2 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import _common  # benchmarks/ is on sys.path when a script in it runs

OUT_DIR = _common.OUT_DIR
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about the Moon."},
]


# ---- measurement -------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    ttft_s: float
    total_s: float
    tokens: list[int]
    step_times_s: list[float]  # gaps between consecutive new tokens (decode steps)
    idle_before: float = 1.0  # fraction of CPU time idle just before the run (1.0 = quiet machine)
    foreign_cpu: float = 0.0  # CPUs that processes outside this benchmark used, on average, during the run

    @property
    def tok_s(self) -> float:
        return len(self.tokens) / self.total_s

    @property
    def decode_tok_s(self) -> float:
        decode = self.total_s - self.ttft_s
        return (len(self.tokens) - 1) / decode if decode > 0 and len(self.tokens) > 1 else float("nan")

    @property
    def step_ms(self) -> float:
        return 1000 * statistics.median(self.step_times_s) if self.step_times_s else float("nan")

    def summary(self) -> dict[str, float]:
        return {"ttft_ms": 1000 * self.ttft_s, "total_s": self.total_s, "tok_s": self.tok_s,
                "decode_tok_s": self.decode_tok_s, "step_ms_median": self.step_ms, "idle_before": self.idle_before,
                "foreign_cpu": self.foreign_cpu}


class _Clock:
    """Records when each new token arrives (HF streamer protocol, or ``token()`` directly)."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._prompt_seen = False
        self.start = time.perf_counter()

    def token(self, token_id: int) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(token_id)

    # HF streamer: the first put() is the prompt, then one put() per new token
    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.token(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass

    def run(self) -> Run:
        end = time.perf_counter()
        steps = [b - a for a, b in zip(self.times, self.times[1:])]
        return Run(self.times[0] - self.start, end - self.start, self.tokens, steps)


def local_run(model, ids: torch.Tensor, generation_config) -> Run:
    clock = _Clock()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=generation_config,
                             streamer=clock)
    run = clock.run()
    if out[0, ids.shape[1]:].tolist() != run.tokens:
        raise RuntimeError("the streamer saw other tokens than generate returned")
    return run


def swarm_run(model, ids: torch.Tensor, new_tokens: int) -> Run:
    clock = _Clock()
    for tokens in model.stream(ids, max_new_tokens=new_tokens, eos_token_id=[]):  # [B] each step
        clock.token(int(tokens[0]))
    return clock.run()


def measured(quiet: _common.QuietRunner, fn) -> Run:
    """``fn()`` through the shared quiet-machine runner; the run records how quiet the machine was."""
    run, m = quiet(fn)
    run.idle_before, run.foreign_cpu = m.idle_before, m.foreign_cpu
    return run


def medians(runs: list[Run]) -> dict[str, float]:
    keys = runs[0].summary().keys()
    return {k: statistics.median(r.summary()[k] for r in runs) for k in keys}


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def long_prompt(tokenizer, tokens: int) -> torch.Tensor:
    """``tokens`` tokens of source code (corolla's own client session module, repeated as needed)."""
    from corolla.client import session

    text = Path(session.__file__).read_text()
    ids = tokenizer(text, return_tensors="pt").input_ids
    while ids.shape[1] < tokens:
        ids = torch.cat([ids, ids], dim=1)
    return ids[:, :tokens]


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name or local HF folder (default smollm2-135m)")
    p.add_argument("--runs", type=int, default=5, help="measured runs per setup (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per setup, not counted (default 1)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per run (default 64)")
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2, 3], help="swarm sizes (default 1 2 3)")
    p.add_argument("--server-threads", type=int, default=None,
                   help="torch threads per server process (default: LocalSwarm's share, cores // servers)")
    p.add_argument("--compression", default="none", choices=["none", "fp16", "bf16", "int8"],
                   help="how the client and servers send hidden states (default none: float32)")
    p.add_argument("--no-push", action="store_true",
                   help="the client relays every hop's output itself instead of servers pushing it to the next one")
    p.add_argument("--long-prompt-tokens", type=int, default=512,
                   help="also time the first token after a prompt this long (default 512; 0 = not)")
    p.add_argument("--pipeline-chunks", type=int, default=None,
                   help="pieces a prompt is pipelined in across the servers (default: the client's; 1 = none)")
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for the server processes, e.g. OMP_WAIT_POLICY=PASSIVE")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "decode.json", help="JSON results file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm, even_spans

    console = Console(width=max(Console().width, 160))
    ref = resolve_model(args.model)
    path, model_id = ref.path, ref.model_id
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = _common.chat_ids(tokenizer, MESSAGES)  # [1, T]
    long_ids = long_prompt(tokenizer, args.long_prompt_tokens) if args.long_prompt_tokens else None
    console.print(f"[bold]{model_id}[/] fp32 greedy, prompt {ids.shape[1]} tokens, {args.new_tokens} new tokens, "
                  f"{args.runs} runs after {args.warmup} warm-up; torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus")

    with console.status("loading the local model"):
        local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    num_blocks = local.config.num_hidden_layers
    gen_config = GenerationConfig(
        max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,  # EOS must not end a run early
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )

    quiet = _common.quiet_runner(args)
    run_local = functools.partial(local_run, local, ids, gen_config)
    long_config = GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=None,
                                   pad_token_id=gen_config.pad_token_id)
    run_local_long = functools.partial(local_run, local, long_ids, long_config) if long_ids is not None else None
    long_reference = run_local_long().tokens if run_local_long else None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    with progress:
        task = progress.add_task("local warm-up", total=args.warmup)
        for _ in range(args.warmup):
            reference = run_local().tokens
            progress.advance(task)
    if not args.warmup:
        reference = run_local().tokens

    setups: list[dict[str, Any]] = []
    for n in args.servers:
        spans = even_spans(num_blocks, n)
        log_dir = OUT_DIR / "logs" / f"swarm-{n}"
        server_args = ["--torch-threads", str(args.server_threads)] if args.server_threads else []
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.server_env)) if args.server_env else None
        swarm = LocalSwarm(str(path), num_blocks, model_id, log_dir=log_dir, server_args=server_args, env=env)
        local_runs: list[Run] = []
        swarm_runs: list[Run] = []
        long_local: list[Run] = []
        long_swarm: list[Run] = []
        try:
            with console.status(f"starting {n} server(s) {spans}"):
                t0 = time.perf_counter()
                swarm.start(spans)
                startup_s = time.perf_counter() - t0
                client = DistributedModelForCausalLM.from_pretrained(
                    path, initial_peers=swarm.initial_peers, model_id=model_id, push=not args.no_push,
                    compression=args.compression,
                    **({"pipeline_chunks": args.pipeline_chunks} if args.pipeline_chunks else {}))
            run_swarm = functools.partial(swarm_run, client, ids, args.new_tokens)
            run_swarm_long = functools.partial(swarm_run, client, long_ids, 2) if long_ids is not None else None
            try:
                with progress:
                    task = progress.add_task(f"swarm of {n} (interleaved with local)", total=args.warmup + args.runs)
                    for i in range(args.warmup + args.runs):
                        if i < args.warmup:
                            run_swarm()
                            if run_swarm_long:
                                run_swarm_long()
                        else:
                            local_runs.append(measured(quiet, run_local))
                            swarm_runs.append(measured(quiet, run_swarm))
                            if run_swarm_long:
                                long_local.append(measured(quiet, run_local_long))
                                long_swarm.append(measured(quiet, run_swarm_long))
                        progress.advance(task)
            finally:
                client.close()
        finally:
            with console.status(f"stopping {n} server(s)"):
                swarm.stop()
        for r in local_runs:
            if r.tokens != reference:
                console.print("[red]local runs disagree with each other[/]")
        setups.append({"servers": n, "spans": spans, "startup_s": startup_s, "local": local_runs,
                       "swarm": swarm_runs, "mismatch": [first_mismatch(reference, r.tokens) for r in swarm_runs],
                       "long_local": long_local, "long_swarm": long_swarm,
                       "long_mismatch": [first_mismatch(long_reference, r.tokens) for r in long_swarm],
                       "logs": str(log_dir)})

    # ---- report ----------------------------------------------------------------------------------
    def cpu_cell(runs: list[Run]) -> str:
        worst = max(r.foreign_cpu for r in runs)
        return f"{worst:.2f}" if worst <= args.max_foreign_cpu else f"[red]{worst:.2f}[/]"

    all_local = [r for s in setups for r in s["local"]]
    local_med = medians(all_local)
    table = Table(title=f"{model_id} decode, fp32 greedy, prompt {ids.shape[1]} + {args.new_tokens} new tokens, "
                        f"medians of {args.runs} runs")
    long_n = long_ids.shape[1] if long_ids is not None else 0
    for col in ("setup", "spans", "TTFT ms", "tok/s", "decode tok/s", "step ms", "paired local tok/s",
                "ratio tok/s", "ratio decode", "ratio TTFT", f"TTFT {long_n} ms", f"ratio TTFT {long_n}",
                "tokens = local", "foreign cpu"):
        table.add_column(col, justify="left" if col in ("setup", "spans") else "right", no_wrap=col == "spans")
    all_long_local = [r for s in setups for r in s["long_local"]]
    long_local_ms = f"{medians(all_long_local)['ttft_ms']:.0f}" if all_long_local else "-"
    table.add_row("local HF", f"0:{num_blocks}", f"{local_med['ttft_ms']:.0f}", f"{local_med['tok_s']:.1f}",
                  f"{local_med['decode_tok_s']:.1f}", f"{local_med['step_ms_median']:.1f}", "", "1.00", "1.00",
                  "1.00", long_local_ms, "1.00", "-", cpu_cell(all_local))
    results: dict[str, Any] = {
        "local": {"median": local_med, "runs": [r.summary() for r in all_local]},
        "swarm": {},
    }
    for s in setups:
        n, med, paired = s["servers"], medians(s["swarm"]), medians(s["local"])
        ratio = med["tok_s"] / paired["tok_s"]
        ratio_decode = med["decode_tok_s"] / paired["decode_tok_s"]
        ratio_ttft = med["ttft_ms"] / paired["ttft_ms"]
        bad = [m for m in s["mismatch"] + s["long_mismatch"] if m is not None]
        long_med = medians(s["long_swarm"]) if s["long_swarm"] else None
        long_paired = medians(s["long_local"]) if s["long_local"] else None
        ratio_long = long_med["ttft_ms"] / long_paired["ttft_ms"] if long_med else None
        table.add_row(f"swarm x{n}", ",".join(f"{a}:{b}" for a, b in s["spans"]), f"{med['ttft_ms']:.0f}",
                      f"{med['tok_s']:.1f}", f"{med['decode_tok_s']:.1f}", f"{med['step_ms_median']:.1f}",
                      f"{paired['tok_s']:.1f}", f"{ratio:.2f}", f"{ratio_decode:.2f}", f"{ratio_ttft:.2f}",
                      f"{long_med['ttft_ms']:.0f}" if long_med else "-", f"{ratio_long:.2f}" if long_med else "-",
                      "[green]yes[/]" if not bad else f"[red]no, from token {min(bad)}[/]",
                      cpu_cell(s["swarm"] + s["local"] + s["long_swarm"] + s["long_local"]))
        results["swarm"][str(n)] = {
            "spans": s["spans"], "startup_s": s["startup_s"], "median": med, "paired_local_median": paired,
            "ratio_tok_s": ratio, "ratio_decode_tok_s": ratio_decode, "ratio_ttft": ratio_ttft,
            "long_prompt": {"median": long_med, "paired_local_median": long_paired, "ratio_ttft": ratio_long,
                            "runs": [r.summary() for r in s["long_swarm"]],
                            "paired_local_runs": [r.summary() for r in s["long_local"]]},
            "tokens_equal_local": not bad,
            "first_mismatch": s["mismatch"], "runs": [r.summary() for r in s["swarm"]],
            "paired_local_runs": [r.summary() for r in s["local"]], "logs": s["logs"],
        }
    console.print(table)
    console.print(f"foreign cpu = the most CPUs that other jobs on the machine used during one kept run "
                  f"(runs above {args.max_foreign_cpu} were repeated; {quiet.discarded} discarded)")
    console.print("text: " + repr(tokenizer.decode(reference, skip_special_tokens=False)[:160]))

    results["config"] = {
        "model": model_id, "path": str(path), "dtype": "float32", "prompt_tokens": ids.shape[1],
        "long_prompt_tokens": long_n, "pipeline_chunks": args.pipeline_chunks,
        "new_tokens": args.new_tokens, "runs": args.runs, "warmup": args.warmup, "servers": args.servers,
        "server_threads": args.server_threads, "push": not args.no_push, "compression": args.compression,
        "server_env": args.server_env, **_common.environment(), "discarded_runs": quiet.discarded,
    }
    results["local_tokens"] = reference
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
