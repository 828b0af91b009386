"""API overhead: time to first token and tokens/s through the OpenAI-compatible API against the
Python client directly, on the same swarm, in the same run.

A loopback ``LocalSwarm`` of ``--servers`` servers (default 2) holds SmolLM2-135M; one
``DistributedModelForCausalLM`` serves both paths:

- direct: ``model.stream(ids)`` on the chat prompt rendered with the chat template;
- API: ``corolla api``'s app (uvicorn in a thread of this process, as ``corolla swarm up --chat``
  runs it) asked by the official ``openai`` client for a streamed chat completion with the same
  messages, greedy, the same ``max_tokens``.

Both are greedy, so both produce the same text (checked every run); tokens/s of both use the
direct path's token count. The paths alternate run by run (direct, API, direct, ...), each after
waiting for a quiet machine (as ``decode.py``); medians of ``--runs``. Overhead = how much slower
the API is: ``direct tok/s / API tok/s - 1`` and the TTFT difference. The issue's target: <= 10%.

    .venv/bin/python benchmarks/api.py [--runs 5] [--new-tokens 64] [--servers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import _common
from _common import OUT_DIR

TARGET_OVERHEAD = 0.10
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a short poem about the sea."}]


def direct_run(model, ids, new_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, tokens = None, []
    for step in model.stream(ids, max_new_tokens=new_tokens):
        first = first or time.perf_counter()
        tokens.append(int(step[0]))
    end = time.perf_counter()
    text = model.tokenizer.decode(tokens, skip_special_tokens=True)
    return {"ttft_s": first - t0, "wall_s": end - t0, "tokens": len(tokens), "text": text}


def api_run(client, model_id: str, new_tokens: int, messages: list[dict] = MESSAGES) -> dict:
    """A greedy chat completion streamed by the official ``openai`` client: time to its first text, whole
    time, and the text."""
    t0 = time.perf_counter()
    first, parts = None, []
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=new_tokens,
                                            temperature=0, stream=True)
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first or time.perf_counter()
            parts.append(delta)
    end = time.perf_counter()
    return {"ttft_s": (first or end) - t0, "wall_s": end - t0, "text": "".join(parts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name or local HF folder (default smollm2-135m)")
    p.add_argument("--runs", type=int, default=5, help="runs of each path (default 5)")
    p.add_argument("--new-tokens", type=int, default=64, help="max new tokens per run (default 64)")
    p.add_argument("--servers", type=int, default=2, help="servers in the swarm (default 2)")
    _common.add_quiet_args(p)
    p.add_argument("--out", default=str(OUT_DIR / "api.json"), help="JSON results file")
    args = p.parse_args(argv)
    _common.quiet_logs()

    import openai
    from rich.console import Console
    from rich.table import Table

    console = Console()
    quiet = _common.quiet_runner(args)
    runs: dict[str, list[dict]] = {"direct": [], "api": []}
    with _common.swarm_api(args.model, args.servers, console, "api") as swarm:
        model, ref, spans = swarm.model, swarm.ref, swarm.spans
        client = openai.OpenAI(base_url=swarm.base_url, api_key="unused", max_retries=0)
        ids = _common.chat_ids(model.tokenizer, MESSAGES)
        direct_run(model, ids, args.new_tokens)  # warm-up of both paths
        api_run(client, ref.model_id, args.new_tokens)
        with console.status("measuring") as status:
            for i in range(args.runs):
                status.update(f"run {i + 1} of {args.runs}")
                d, _ = quiet(lambda: direct_run(model, ids, args.new_tokens))
                a, _ = quiet(lambda: api_run(client, ref.model_id, args.new_tokens))
                if a["text"] != d["text"]:
                    raise SystemExit(f"the API's text differs from the client's:\n{a['text']!r}\n{d['text']!r}")
                a["tokens"] = d["tokens"]
                runs["direct"].append(d)
                runs["api"].append(a)

    def med(path: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[path])

    def tok_s(path: str) -> float:
        return statistics.median(r["tokens"] / r["wall_s"] for r in runs[path])

    table = Table(title=f"{ref.model_id}, {args.servers} servers, chat, greedy, up to {args.new_tokens} tokens, "
                        f"medians of {args.runs} runs")
    for col in ("path", "TTFT ms", "tok/s", "tokens"):
        table.add_column(col, justify="right")
    for path in ("direct", "api"):
        table.add_row(path, f"{1000 * med(path, 'ttft_s'):.0f}", f"{tok_s(path):.1f}", f"{med(path, 'tokens'):.0f}")
    console.print(table)
    overhead = tok_s("direct") / tok_s("api") - 1
    ttft_extra_ms = 1000 * (med("api", "ttft_s") - med("direct", "ttft_s"))
    verdict = "met" if overhead <= TARGET_OVERHEAD else "not met"
    console.print(f"API overhead: {100 * overhead:+.1f}% tok/s, {ttft_extra_ms:+.0f} ms TTFT "
                  f"(target <= {100 * TARGET_OVERHEAD:.0f}%: {verdict}; texts equal in every run)")
    result = {"config": {"model": ref.model_id, "servers": args.servers, "spans": spans, "runs": args.runs,
                         "new_tokens": args.new_tokens, **_common.environment()},
              "direct": {"ttft_ms": 1000 * med("direct", "ttft_s"), "tok_s": tok_s("direct")},
              "api": {"ttft_ms": 1000 * med("api", "ttft_s"), "tok_s": tok_s("api")},
              "overhead_tok_s": overhead, "ttft_extra_ms": ttft_extra_ms, "discarded_runs": quiet.discarded,
              "runs": runs}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
