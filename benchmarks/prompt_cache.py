"""The API's prompt cache: time to first token of a conversation's later turns with and without it, on
the same swarm, in the same run.

A loopback swarm of ``--servers`` servers (default 1) holds ``--model`` (default the packaged
Qwen2.5-Coder-0.5B); two API apps serve the same client: one with its prompt cache (the default), one
without (``prompt_cache=None``). The official ``openai`` client holds the same conversation with each:
a system prompt carrying a source file (as the assistant's context does, ``--context-lines`` lines of
this repository's ``src/corolla/api/generation.py``), then ``--turns`` user questions, each sent with the
whole conversation so far (the assistant's own replies included), greedy, ``--new-tokens`` tokens a
reply. The two APIs take turns question by question (cache, no cache, cache, ...), so both see the same
machine; the replies must be equal (checked). Turn 1 is cold for both; the ratio that matters is the
later turns' time to first token without ÷ with the cache (medians).

    .venv/bin/python benchmarks/prompt_cache.py [--turns 5] [--new-tokens 32] [--context-lines 120]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

from api import api_run

import _common
from _common import OUT_DIR

QUESTIONS = [
    "What does RepetitionStop do? One sentence.",
    "Which thresholds does RepetitionLimits use by default?",
    "Write a one-line example that builds RepetitionLimits with max_period=8.",
    "What does StopScanner hold back, and why?",
    "Name the events a Generation emits.",
    "What happens when cancel is set?",
    "Summarise the module in one sentence.",
]


def turn(client, model_id: str, messages: list[dict], new_tokens: int) -> dict:
    return api_run(client, model_id, new_tokens, messages)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--servers", type=int, default=1)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--context-lines", type=int, default=120)
    p.add_argument("--json", default=str(OUT_DIR / "prompt_cache.json"))
    args = p.parse_args(argv)
    if not 1 <= args.turns <= len(QUESTIONS):
        p.error(f"--turns: 1 to {len(QUESTIONS)}")

    import openai
    from rich.console import Console

    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving

    _common.quiet_logs()
    console = Console()
    source = Path(__file__).resolve().parents[1] / "src" / "corolla" / "api" / "generation.py"
    context = "\n".join(source.read_text().split("\n")[: args.context_lines])
    system = f"You answer questions about this file briefly.\n\n```python\n{context}\n```"
    rows = []
    with contextlib.ExitStack() as stack:
        swarm = stack.enter_context(_common.swarm_api(args.model, args.servers, console, "prompt_cache"))
        model_id = swarm.ref.model_id
        cached = SwarmEngine(swarm.model)
        plain = SwarmEngine(swarm.model, prompt_cache=None)
        stack.callback(cached.close, 10)
        bases = {"cache": stack.enter_context(serving(create_app(cached), "127.0.0.1", 0)),
                 "none": stack.enter_context(serving(create_app(plain), "127.0.0.1", 0))}
        clients = {k: openai.OpenAI(base_url=f"{b}/v1", api_key="unused", max_retries=0, timeout=600)
                   for k, b in bases.items()}
        for client in clients.values():  # warm: tokenizer, connections, the servers' first steps
            turn(client, model_id, [{"role": "user", "content": "Hi"}], 4)
        prompt_tokens = len(cached.encode(system, add_special_tokens=False))
        conversations = {k: [{"role": "system", "content": system}] for k in clients}
        for n, question in enumerate(QUESTIONS[: args.turns], 1):
            replies = {}
            for kind, client in clients.items():
                messages = conversations[kind]
                messages.append({"role": "user", "content": question})
                r = turn(client, model_id, messages, args.new_tokens)
                messages.append({"role": "assistant", "content": r["text"]})
                replies[kind] = r["text"]
                rows.append({"turn": n, "kind": kind, **r})
                console.print(f"turn {n} {kind:5} ttft {r['ttft_s']:6.2f} s  whole {r['wall_s']:6.2f} s  "
                              f"{json.dumps(r['text'])[:60]}", highlight=False, markup=False)
            if replies["cache"] != replies["none"]:
                console.print(f"[red]turn {n}: the replies differ[/red]")
        stats = cached.prompt_cache.stats

    def median(kind: str, key: str, later: bool) -> float:
        return statistics.median(r[key] for r in rows if r["kind"] == kind and (r["turn"] > 1) == later)

    summary = {
        "model": model_id, "servers": args.servers, "turns": args.turns, "new_tokens": args.new_tokens,
        "system_prompt_tokens": prompt_tokens,
        "same_replies": all(a["text"] == b["text"] for a, b in zip(rows[::2], rows[1::2], strict=True)),
        "first_turn_ttft_s": {k: median(k, "ttft_s", False) for k in clients},
        "later_ttft_p50_s": {k: median(k, "ttft_s", True) for k in clients} if args.turns > 1 else None,
        "later_wall_p50_s": {k: median(k, "wall_s", True) for k in clients} if args.turns > 1 else None,
        "cache_hits": stats.hits, "reused_tokens": stats.reused_tokens,
    }
    if args.turns > 1:
        summary["ttft_speedup"] = summary["later_ttft_p50_s"]["none"] / summary["later_ttft_p50_s"]["cache"]
        console.print(f"later turns: time to first token {summary['later_ttft_p50_s']['none']:.2f} s without the "
                      f"cache, {summary['later_ttft_p50_s']['cache']:.2f} s with it: "
                      f"[bold]{summary['ttft_speedup']:.2f}x[/bold]; replies equal: {summary['same_replies']}; "
                      f"{stats.hits} hits reused {stats.reused_tokens} tokens (system prompt {prompt_tokens})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows, "environment": _common.environment()}, indent=1))
    console.print(f"wrote {out}")
    return 0 if summary["same_replies"] else 1


if __name__ == "__main__":
    sys.exit(main())
