"""Speculative decoding over an emulated WAN: tok/s with and without a drafter, acceptance rates.

A swarm of ``--servers`` (3) servers of the target (``--model``, default qwen2.5-coder-1.5b, fp32,
even spans, 1 torch thread each) runs behind delaying proxies as in ``wan.py`` (each server listens
on its own port and announces its proxy's, so every connection to it crosses one one-way delay
``RTT / 2``); the proxies' delay is set to each ``--rtt-ms`` in turn (default 0 and 50). Cases
(``--cases``, DRAFTER:TASK):

- ``draft:code``: a small local draft model (``--draft``, default qwen2.5-coder-0.5b: the target's
  tokenizer) on code prompts (``CODE_PROMPTS``: every prompt once per run, ``--new-tokens`` each);
- ``lookup:edit``: prompt lookup on an edit task (a file and "rewrite it with one change": the
  reply copies most of the prompt), up to ``--edit-new-tokens`` tokens.

Greedy, EOS ends a generation as it would for a user. Plain decoding through the same swarm at the
same RTT is the baseline; runs are interleaved (plain, speculative, plain, ...), each through the
shared quiet-machine runner (``_common.QuietRunner``), and every speculative output must equal the
plain greedy output (checked; the script stops otherwise). Each speculative run starts with a fresh
drafter (a draft model's cache is not reused between runs). Columns: tok/s = new tokens / wall
time of the whole call (prefill included) for both; ratio = speculative ÷ plain (medians of
``--runs``); acceptance = accepted ÷ drafted tokens; tokens/step = tokens emitted per verification
step through the swarm; k = drafted tokens per step (k adapts). Results: a table and
``benchmarks/out/speculative.json``; server logs in ``benchmarks/out/logs/speculative/``.

    .venv/bin/python benchmarks/speculative.py [--rtt-ms 0 50] [--runs 3] [--cases draft:code lookup:edit]
    .venv/bin/python benchmarks/speculative.py --from-json benchmarks/out/speculative.json   # the table again
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import wan
import wanproxy

import _common  # benchmarks/ is on sys.path when a script in it runs

OUT_DIR = _common.OUT_DIR

FILE = '''def parse_args(argv):
    parser = argparse.ArgumentParser(description="count words")
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=10)
    return parser.parse_args(argv)


def count_words(text):
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def main(argv=None):
    args = parse_args(argv)
    with open(args.path) as f:
        counts = count_words(f.read())
    for word, n in sorted(counts.items(), key=lambda kv: -kv[1])[: args.top]:
        print(word, n)
'''
CODE_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function binary_search(items, target) that returns the index of target in the sorted "
    "list items, or -1 if it is not there.",
]
EDIT_PROMPT = ("Rewrite this file with one change: count_words lowercases each word. Reply with the whole "
               "file in one code block and nothing else.\n\n" + FILE)
TASKS = {
    "code": [[{"role": "user", "content": p}] for p in CODE_PROMPTS],
    "edit": [[{"role": "user", "content": EDIT_PROMPT}]],
}


def git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain", "--", "src").splitlines()}


def one_run(model, prompts: list, new_tokens: int, draft: Any) -> dict[str, Any]:
    """Every prompt once, one after another; ``draft`` None: plain decoding."""
    tokens: list[list[int]] = []
    stats = dict.fromkeys(("steps", "drafted", "accepted", "emitted", "draft_s", "target_s", "ahead_drafted",
                           "ahead_used", "k_sum"), 0)
    t0 = time.perf_counter()
    ttft = None
    for ids in prompts:
        out: list[int] = []
        for step in model.stream(ids, max_new_tokens=new_tokens, draft=draft):
            if ttft is None:
                ttft = time.perf_counter() - t0
            out.append(int(step[0]))
        tokens.append(out)
        if draft is not None:
            for key in stats:
                stats[key] += getattr(model.last_speculation, key)
    wall = time.perf_counter() - t0
    n = sum(map(len, tokens))
    return {"wall_s": wall, "new_tokens": n, "tok_s": n / wall, "ttft_first_s": ttft, "tokens": tokens,
            **({"speculation": stats} if draft is not None else {})}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {"tok_s": statistics.median(r["tok_s"] for r in runs),
           "foreign_cpu_max": max(r["foreign_cpu"] for r in runs)}
    if "speculation" in runs[0]:
        tot = {k: sum(r["speculation"][k] for r in runs) for k in runs[0]["speculation"]}
        out.update(acceptance=tot["accepted"] / max(tot["drafted"], 1),
                   tokens_per_step=tot["emitted"] / max(tot["steps"], 1),
                   k_mean=tot["drafted"] / max(tot["steps"], 1))
        if "draft_s" in tot:  # where the time went: drafting in line, verification steps; drafts made ahead
            out.update(draft_s=statistics.median(r["speculation"]["draft_s"] for r in runs),
                       target_s=statistics.median(r["speculation"]["target_s"] for r in runs),
                       ahead_used=tot["ahead_used"] / max(tot["drafted"], 1))
    return out


def report(results: dict[str, Any], console) -> None:
    from rich.table import Table

    cfg = results["config"]
    table = Table(title=f"speculative decoding: {cfg['model']} on {cfg['servers']} proxied servers, draft "
                        f"{cfg['draft']}, fp32 greedy, medians of {cfg['runs']} runs (interleaved with plain)")
    for col in ("RTT ms", "drafter", "task", "tok/s", "plain tok/s", "ratio", "acceptance", "tokens/step", "k",
                "= plain", "foreign cpu"):
        table.add_column(col, justify="right")
    for row in results["rows"]:
        s, p = row["spec"], row["plain"]
        table.add_row(f"{row['rtt_ms']:g}", row["drafter"], row["task"], f"{s['tok_s']:.2f}", f"{p['tok_s']:.2f}",
                      f"{row['ratio']:.2f}", f"{s['acceptance']:.2f}", f"{s['tokens_per_step']:.2f}",
                      f"{s['k_mean']:.1f}", "yes" if row["equal"] else "[red]no[/]",
                      f"{max(s['foreign_cpu_max'], p['foreign_cpu_max']):.2f}")
    console.print(table)
    console.print(f"tok/s: new tokens / wall time, prefill included; k: drafted tokens per step; foreign cpu: most "
                  f"CPUs other processes used during one kept run; {cfg['discarded_runs']} disturbed runs repeated; "
                  f"commit {cfg['git']['commit'][:10]}{' + uncommitted src changes' if cfg['git']['dirty'] else ''}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="the target: packaged name or local HF folder")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b", help="the draft model of draft:* cases (same tokenizer)")
    p.add_argument("--cases", nargs="+", default=["draft:code", "lookup:edit"], metavar="DRAFTER:TASK",
                   help="drafter (draft, lookup) : task (code, edit); default draft:code lookup:edit")
    p.add_argument("--servers", type=int, default=3, help="servers, each behind its own proxy (default 3)")
    p.add_argument("--rtt-ms", type=float, nargs="+", default=[0, 50],
                   help="round-trip times to emulate, one-way delay = RTT / 2 (default 0 50)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per RTT and case (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per case at the first RTT (default 1)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per code prompt at most (default 64)")
    p.add_argument("--edit-new-tokens", type=int, default=256, help="tokens of the edit at most (default 256)")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "speculative.json", help="JSON results file")
    p.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                   help="measure nothing: print the table of a results file written earlier")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()
    from rich.console import Console

    console = Console(width=max(Console().width, 160))
    if args.from_json:
        report(json.loads(args.from_json.read_text()), console)
        return 0
    cases = [tuple(c.split(":")) for c in args.cases]
    if any(d not in ("draft", "lookup") or t not in TASKS for d, t in cases):
        raise SystemExit(f"--cases: DRAFTER:TASK with DRAFTER in draft, lookup and TASK in {', '.join(TASKS)}")

    from transformers import AutoTokenizer

    from corolla.client.model import DistributedModelForCausalLM
    from corolla.client.speculative import DraftModel
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm, even_spans

    ref = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    prompts = {task: [_common.chat_ids(tokenizer, m) for m in messages] for task, messages in TASKS.items()}
    limits = {"code": args.new_tokens, "edit": args.edit_new_tokens}
    num_blocks = load_config(ref.path).num_hidden_layers
    spans = even_spans(num_blocks, args.servers)
    threads = max(1, (os.cpu_count() or 1) // args.servers)
    quiet = _common.quiet_runner(args)
    drafters: dict[str, Any] = {"lookup": "lookup"}
    if any(d == "draft" for d, _ in cases):
        with console.status(f"loading the draft model {args.draft}"):
            # the weights, loaded once; generate() wraps them in a fresh DraftModel (its own cache) every call
            drafters["draft"] = DraftModel.load(args.draft).model
    console.print(f"[bold]{ref.model_id}[/] fp32 greedy, {args.servers} servers {spans} each behind a proxy, "
                  f"cases {' '.join(args.cases)}, RTT {args.rtt_ms} ms, {args.runs} runs after {args.warmup} warm-up")

    swarm = LocalSwarm(str(ref.path), num_blocks, ref.model_id, log_dir=OUT_DIR / "logs" / "speculative")
    rows: list[dict[str, Any]] = []
    with wanproxy.ProxyProcess() as proxies:
        try:
            with console.status(f"starting {args.servers} servers behind proxies"):
                wan.start_proxied(swarm, proxies, spans, ["--torch-threads", str(threads)])
            with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                             model_id=ref.model_id) as model:
                for rtt in args.rtt_ms:
                    proxies.set_delay(rtt / 2000)
                    for drafter, task in cases:
                        label = f"RTT {rtt:g} ms, {drafter} on {task}"
                        kept: dict[str, list] = {"plain": [], "spec": []}
                        warmup = args.warmup if rtt == args.rtt_ms[0] else 0  # then the swarm and client are warm
                        for i in range(warmup + args.runs):
                            for mode, draft in (("plain", None), ("spec", drafters[drafter])):
                                with console.status(f"{label}: {mode} run {i + 1}/{warmup + args.runs}"):
                                    run, m = quiet(lambda d=draft, t=task: one_run(model, prompts[t], limits[t], d))
                                run.update(idle_before=m.idle_before, foreign_cpu=m.foreign_cpu)
                                console.log(f"{label}: {mode} {run['new_tokens']} tokens {run['wall_s']:.1f} s, "
                                            f"foreign cpu {m.foreign_cpu:.2f}{' (warm-up)' if i < warmup else ''}")
                                if i >= warmup:
                                    kept[mode].append(run)
                        equal = all(r["tokens"] == kept["plain"][0]["tokens"] for r in kept["spec"] + kept["plain"])
                        row = {"rtt_ms": rtt, "drafter": drafter, "task": task, "equal": equal,
                               "plain": summarize(kept["plain"]), "spec": summarize(kept["spec"]),
                               "runs": {k: [{x: y for x, y in r.items() if x != "tokens"} for r in v]
                                        for k, v in kept.items()},
                               "tokens": kept["plain"][0]["tokens"]}
                        row["ratio"] = row["spec"]["tok_s"] / row["plain"]["tok_s"]
                        rows.append(row)
                        console.print(f"{label}: {row['spec']['tok_s']:.2f} vs plain {row['plain']['tok_s']:.2f} tok/s "
                                      f"(x{row['ratio']:.2f}), acceptance {row['spec']['acceptance']:.2f}")
                        if not equal:
                            raise SystemExit(f"{label}: the output differs from plain greedy decoding")
        finally:
            with console.status("stopping the servers"):
                swarm.stop()

    results = {"rows": rows, "config": {
        "model": ref.model_id, "draft": args.draft, "servers": args.servers, "spans": spans, "rtt_ms": args.rtt_ms,
        "runs": args.runs, "warmup": args.warmup, "new_tokens": args.new_tokens,
        "edit_new_tokens": args.edit_new_tokens,
        "prompt_tokens": {t: [p.shape[1] for p in v] for t, v in prompts.items()},
        "server_threads": threads, "discarded_runs": quiet.discarded, "git": git_state(), **_common.environment(),
    }}
    report(results, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
