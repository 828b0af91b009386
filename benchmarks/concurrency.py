"""Concurrency: aggregate decode tokens/s of N sessions at once through one loopback swarm.

A loopback ``LocalSwarm`` of ``--servers`` servers (default 2, ``even_spans``) and ONE client
process: one ``DistributedModelForCausalLM`` shared by N Python threads. Each thread runs its
own ``model.generate(ids, max_new_tokens=K, eos_token_id=[])`` (greedy, fp32; EOS never ends a
run early) on its own ~20-token chat prompt, and all N start together behind a
``threading.Barrier``. Per level N (``--sessions``, default 1 4 8 16) it measures

- aggregate tok/s: N x K new tokens / wall time of the level (from the barrier to the last token);
- aggregate decode tok/s: prefill excluded, i.e. the tokens that arrived after *every* session
  had its first token, divided by the time from that moment to the last token;
- the ratio of both to the 1-session level (the baseline, always measured);
- the servers' memory: peak of the summed VmRSS of the server processes during the level
  (and with their children: DHT process and p2pd daemon);
- CPU time per generated token of the servers and of the client side (this process, its p2pd
  and the bootstrap DHT), read from /proc;
- whether every session's tokens equal what its prompt gives alone: before the levels, each
  distinct prompt is generated once solo (this also warms the swarm up).

Levels are measured in rounds (1, 4, 8, 16, 1, 4, 8, 16, ...) and reported as medians of
``--runs`` rounds, so that slow phases of the shared machine hit every level alike. Before each
run the script waits for a quiet machine and repeats runs that other jobs disturbed (as
``decode.py`` does). Results: a rich table, ``benchmarks/out/concurrency.json`` and the curve
``benchmarks/out/concurrency.png`` (with the ideal linear line from the 1-session point).

    .venv/bin/python benchmarks/concurrency.py [--sessions 1 4 8 16] [--runs 3] [--new-tokens 64]
    .venv/bin/python benchmarks/concurrency.py --server-args "--max-sessions 32"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

import _common
from _common import MIB, OUT_DIR

TARGET_SESSIONS, TARGET_RATIO = 8, 4.0  # the target: >= 4x aggregate tok/s at 8 sessions
TOPICS = [
    "the Moon", "Mars", "the Sun", "Jupiter", "volcanoes", "the ocean", "honey bees", "the Eiffel Tower",
    "glaciers", "rainbows", "the Nile", "penguins", "the Roman Empire", "thunderstorms", "coffee", "the piano",
]


def messages(i: int) -> list[dict[str, str]]:
    """The chat of session ``i`` (topics repeat past 16 sessions)."""
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}."}]


# ---- one level: N sessions at once ------------------------------------------------------------------
@dataclasses.dataclass
class Session:
    tokens: list[int]
    times: list[float]  # perf_counter when each new token was known


@dataclasses.dataclass
class LevelRun:
    sessions: int
    new_tokens: int
    start: float
    runs: list[Session]
    tokens_equal_solo: bool
    rss_peak: int = 0  # summed VmRSS of the server processes
    rss_peak_tree: int = 0  # ... with their children
    servers_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    idle_before: float = 1.0
    foreign_cpu: float = 0.0

    @property
    def wall_s(self) -> float:
        return max(s.times[-1] for s in self.runs) - self.start

    @property
    def tok_s(self) -> float:
        return sum(len(s.tokens) for s in self.runs) / self.wall_s

    @property
    def decode_tok_s(self) -> float:
        """Tokens that arrived after every session had its first one / the time from then to the end."""
        all_started = max(s.times[0] for s in self.runs)
        end = max(s.times[-1] for s in self.runs)
        count = sum(t > all_started for s in self.runs for t in s.times)
        return count / (end - all_started) if end > all_started and count else float("nan")

    @property
    def ttft_ms(self) -> float:
        return 1000 * statistics.median(s.times[0] - self.start for s in self.runs)

    @property
    def step_ms(self) -> float:
        gaps = [b - a for s in self.runs for a, b in zip(s.times, s.times[1:])]
        return 1000 * statistics.median(gaps) if gaps else float("nan")

    def summary(self) -> dict[str, float]:
        total = self.sessions * self.new_tokens
        return {"wall_s": self.wall_s, "tok_s": self.tok_s, "decode_tok_s": self.decode_tok_s,
                "per_session_tok_s": self.tok_s / self.sessions, "ttft_ms_median": self.ttft_ms,
                "step_ms_median": self.step_ms, "servers_rss_peak_mib": self.rss_peak / MIB,
                "servers_rss_peak_with_children_mib": self.rss_peak_tree / MIB,
                "servers_cpu_ms_per_token": 1000 * self.servers_cpu_s / total,
                "client_cpu_ms_per_token": 1000 * self.client_cpu_s / total,
                "tokens_equal_solo": self.tokens_equal_solo, "idle_before": self.idle_before,
                "foreign_cpu": self.foreign_cpu}


def run_level(model, prompts: list[torch.Tensor], new_tokens: int, reference: list[list[int]]) -> LevelRun:
    """``len(prompts)`` threads, one ``generate`` each, released together."""
    n = len(prompts)
    barrier = threading.Barrier(n + 1)
    results: list[Session | None] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        times: list[float] = []
        try:
            barrier.wait()
            out = model.generate(prompts[i], max_new_tokens=new_tokens, eos_token_id=[],
                                 callback=lambda _: times.append(time.perf_counter()))
            results[i] = Session(out[0, prompts[i].shape[1]:].tolist(), times)
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,), name=f"session-{i}") for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    runs = [r for r in results if r is not None]
    equal = all(r.tokens == reference[i] for i, r in enumerate(runs))
    return LevelRun(n, new_tokens, start, runs, equal)


def medians(runs: list[LevelRun]) -> dict[str, float]:
    rows = [r.summary() for r in runs]
    out = {k: statistics.median(row[k] for row in rows) for k in rows[0] if k != "tokens_equal_solo"}
    for k in ("servers_rss_peak_mib", "servers_rss_peak_with_children_mib", "foreign_cpu"):
        out[k] = max(row[k] for row in rows)  # peaks and the worst disturbance, not medians
    out["tokens_equal_solo"] = all(row["tokens_equal_solo"] for row in rows)
    return out


def plot(path: Path, levels: list[int], tok_s: list[float], decode_tok_s: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = tok_s[levels.index(1)]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(levels, [base * n for n in levels], ":", color="gray", label="ideal (linear from 1 session)")
    ax.plot(levels, tok_s, "o-", label="aggregate tok/s (whole level)")
    ax.plot(levels, decode_tok_s, "s--", label="aggregate decode tok/s (prefill excluded)")
    if TARGET_SESSIONS in levels:
        ax.plot([TARGET_SESSIONS], [TARGET_RATIO * base], "r*", markersize=12,
                label=f"target: {TARGET_RATIO:g}x at {TARGET_SESSIONS} sessions")
    for n, y in zip(levels, tok_s):
        ax.annotate(f"{y / base:.2f}x", (n, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("tokens/s (all sessions together)")
    ax.set_xticks(levels)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name or local HF folder (default smollm2-135m)")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8, 16],
                   help="concurrent sessions per level (default 1 4 8 16; 1 is always added: it is the baseline)")
    p.add_argument("--runs", type=int, default=3, help="measured rounds over all levels (default 3)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per session (default 64)")
    p.add_argument("--servers", type=int, default=2, help="servers in the swarm, even spans (default 2)")
    p.add_argument("--server-args", default="",
                   help='extra arguments for every `corolla server`, one string split like a shell does, '
                        'e.g. --server-args "--max-sessions 32" (write --server-args="--flag" for a lone flag); '
                        'LocalSwarm adds --torch-threads cores/servers unless given')
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for the server processes")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "concurrency.json", help="JSON results file")
    p.add_argument("--plot", type=Path, default=OUT_DIR / "concurrency.png", help="PNG of the curve")
    args = p.parse_args(argv)
    args.sessions = sorted(set(args.sessions) | {1})
    if min(args.sessions) < 1 or args.runs < 1 or args.new_tokens < 1:
        p.error("--sessions, --runs and --new-tokens must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from transformers import AutoTokenizer

    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm, even_spans

    console = Console(width=max(Console().width, 180))
    ref = resolve_model(args.model)
    path, model_id = ref.path, ref.model_id
    tokenizer = AutoTokenizer.from_pretrained(path)
    num_blocks = load_config(path).num_hidden_layers
    top = max(args.sessions)
    distinct = min(top, len(TOPICS))
    prompts = [_common.chat_ids(tokenizer, messages(i)) for i in range(top)]
    spans = even_spans(num_blocks, args.servers)
    server_args = shlex.split(args.server_args)
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.server_env)) if args.server_env else None
    log_dir = OUT_DIR / "logs" / "concurrency"
    console.print(f"[bold]{model_id}[/] fp32 greedy, {args.servers} servers {spans}, prompts "
                  f"{min(p.shape[1] for p in prompts)}-{max(p.shape[1] for p in prompts)} tokens, "
                  f"{args.new_tokens} new tokens per session, sessions {args.sessions}, {args.runs} rounds; "
                  f"server args {server_args or '-'}; torch {torch.__version__}, {os.cpu_count()} cpus")

    quiet = _common.quiet_runner(args)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    swarm = LocalSwarm(str(path), num_blocks, model_id, log_dir=log_dir, server_args=server_args, env=env)
    model = None
    runs: dict[int, list[LevelRun]] = {n: [] for n in args.sessions}
    try:
        with console.status(f"starting {args.servers} server(s) {spans}"):
            t0 = time.perf_counter()
            swarm.start(spans)
            startup_s = time.perf_counter() - t0
            model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers,
                                                                model_id=model_id)
        servers = [s.process.pid for s in swarm.servers]
        rss_started = sum(_common.rss_bytes(p) for p in servers)

        with progress:
            task = progress.add_task("solo reference per prompt (also the warm-up)", total=distinct)
            reference = []
            for i in range(distinct):
                out = model.generate(prompts[i], max_new_tokens=args.new_tokens, eos_token_id=[])
                reference.append(out[0, prompts[i].shape[1]:].tolist())
                progress.advance(task)
        reference = [reference[i % distinct] for i in range(top)]
        rss_warm = sum(_common.rss_bytes(p) for p in servers)  # weights are paged in by the first steps

        with progress:
            task = progress.add_task(f"{args.runs} rounds of levels {args.sessions}",
                                     total=args.runs * len(args.sessions))
            for _ in range(args.runs):
                for n in args.sessions:
                    progress.update(task, description=f"{n} session(s) at once")

                    def level(n=n) -> LevelRun:
                        with _common.RssPeak(servers) as rss:
                            run = run_level(model, prompts[:n], args.new_tokens, reference)
                        run.rss_peak, run.rss_peak_tree = rss.peak, rss.peak_tree
                        return run

                    run, m = quiet(level)
                    run.servers_cpu_s = m.watch.tree_cpu_s(servers)
                    run.client_cpu_s = m.watch.tree_cpu_s([os.getpid()]) - run.servers_cpu_s
                    run.idle_before, run.foreign_cpu = m.idle_before, m.foreign_cpu
                    runs[n].append(run)
                    progress.advance(task)
    finally:
        with console.status("stopping the client and the swarm"):
            try:
                if model is not None:
                    model.close()
            finally:
                swarm.stop()

    # ---- report ----------------------------------------------------------------------------------
    med = {n: medians(runs[n]) for n in args.sessions}
    base, base_decode = med[1]["tok_s"], med[1]["decode_tok_s"]
    table = Table(title=f"{model_id} on {args.servers} servers, fp32 greedy, {args.new_tokens} new tokens per session, "
                        f"medians of {args.runs} rounds (server args: {args.server_args or 'none'})")
    for col in ("sessions", "tok/s", "ratio", "decode tok/s", "ratio decode", "per session tok/s", "TTFT ms",
                "step ms", "servers RSS MiB", "+children MiB", "servers cpu ms/tok", "client cpu ms/tok",
                "tokens = solo", "foreign cpu"):
        table.add_column(col, justify="right")
    results: dict[str, Any] = {"levels": {}}
    for n in args.sessions:
        m = med[n]
        table.add_row(str(n), f"{m['tok_s']:.1f}", f"{m['tok_s'] / base:.2f}", f"{m['decode_tok_s']:.1f}",
                      f"{m['decode_tok_s'] / base_decode:.2f}", f"{m['per_session_tok_s']:.1f}",
                      f"{m['ttft_ms_median']:.0f}", f"{m['step_ms_median']:.1f}", f"{m['servers_rss_peak_mib']:.0f}",
                      f"{m['servers_rss_peak_with_children_mib']:.0f}", f"{m['servers_cpu_ms_per_token']:.1f}",
                      f"{m['client_cpu_ms_per_token']:.1f}",
                      "[green]yes[/]" if m["tokens_equal_solo"] else "[red]no[/]",
                      f"{m['foreign_cpu']:.2f}" if m["foreign_cpu"] <= args.max_foreign_cpu
                      else f"[red]{m['foreign_cpu']:.2f}[/]")
        results["levels"][str(n)] = {"median": m, "ratio_tok_s": m["tok_s"] / base,
                                     "ratio_decode_tok_s": m["decode_tok_s"] / base_decode,
                                     "runs": [r.summary() for r in runs[n]]}
    console.print(table)
    console.print(f"servers' RSS when idle: {rss_started / MIB:.0f} MiB just after start, "
                  f"{rss_warm / MIB:.0f} MiB after the solo runs; "
                  f"foreign cpu = the most CPUs other jobs used during one kept run "
                  f"({quiet.discarded} disturbed runs repeated)")
    if TARGET_SESSIONS in med:
        ratio = med[TARGET_SESSIONS]["tok_s"] / base
        verdict = "[green]met[/]" if ratio >= TARGET_RATIO else "[yellow]not met[/]"
        console.print(f"target >= {TARGET_RATIO:g}x aggregate tok/s at {TARGET_SESSIONS} sessions: "
                      f"{ratio:.2f}x ({med[TARGET_SESSIONS]['tok_s']:.1f} vs {base:.1f} tok/s) — {verdict}")
    else:
        console.print(f"target >= {TARGET_RATIO:g}x at {TARGET_SESSIONS} sessions: not measured (add it to --sessions)")

    results["target"] = {"sessions": TARGET_SESSIONS, "ratio": TARGET_RATIO,
                         "measured": med[TARGET_SESSIONS]["tok_s"] / base if TARGET_SESSIONS in med else None}
    results["config"] = {
        "model": model_id, "path": str(path), "dtype": "float32", "servers": args.servers, "spans": spans,
        "server_args": server_args, "server_env": args.server_env, "sessions": args.sessions, "runs": args.runs,
        "new_tokens": args.new_tokens, "prompt_tokens": [p.shape[1] for p in prompts], "startup_s": startup_s,
        "servers_rss_started_mib": rss_started / MIB, "servers_rss_warm_mib": rss_warm / MIB,
        "discarded_runs": quiet.discarded, "logs": str(log_dir), **_common.environment(),
    }
    results["solo_tokens"] = reference[:distinct]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    plot(args.plot, args.sessions, [med[n]["tok_s"] for n in args.sessions],
         [med[n]["decode_tok_s"] for n in args.sessions],
         f"{model_id}, {args.servers} servers, one client process, {args.new_tokens} tokens/session "
         f"(server args: {args.server_args or 'none'})")
    console.print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
