"""Speculative decoding on a loopback swarm: tok/s with and without a drafter, acceptance rates.

Tasks: a code prompt (continue a function) and an edit (a file + "rewrite it with one change":
prompt lookup copies most of it). Greedy, so every drafter's tokens must equal plain decoding's
(checked). Runs are interleaved (plain, lookup, draft, plain, ...) so each ratio is against
plain runs taken at the same time on this shared machine. Loopback has almost no round-trip
time, where speculation gains least: the issue's targets (>= 1.5x at 50 ms RTT with a draft
model, >= 2x on the edit task with lookup) need a real or emulated WAN (see benchmarks/wan.py).

    .venv/bin/python benchmarks/speculative.py [--model smollm2-135m] [--draft MODEL] [--new-tokens 64] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import _common  # benchmarks/ is on sys.path when a script in it runs

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
TASKS = {
    "code": [{"role": "user", "content": "Write a Python function that checks whether a string is a palindrome."}],
    "edit": [{"role": "user", "content": "Rewrite this file with one change: count_words lowercases each word. "
                                         "Reply with the whole file.\n\n" + FILE}],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--draft", default=None, help="a draft model (same tokenizer); default: lookup only")
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()

    from corolla.client.chat import render
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.client.speculative import DraftModel
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm

    ref = resolve_model(args.model)
    blocks = load_config(ref.path).num_hidden_layers
    spans = [(i * blocks // args.servers, (i + 1) * blocks // args.servers) for i in range(args.servers)]
    drafts = {"plain": None, "lookup": "lookup"}
    if args.draft:
        drafts["draft"] = DraftModel.load(args.draft).model
    swarm = LocalSwarm(str(ref.path), blocks, "bench-spec", log_dir=_common.OUT_DIR / "logs-speculative",
                       server_args=["--torch-threads", "1"])
    results = {}
    try:
        swarm.start(spans)
        with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                         model_id="bench-spec") as model:
            for task, messages in TASKS.items():
                ids = render(model.tokenizer, messages)
                times = {name: [] for name in drafts}
                stats, outputs = {}, {}
                for _ in range(args.runs):
                    for name, draft in drafts.items():
                        start = time.perf_counter()
                        out = model.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[], draft=draft)
                        times[name].append(time.perf_counter() - start)
                        outputs[name] = out
                        stats[name] = model.last_speculation if draft is not None else None
                for name in drafts:
                    if not torch.equal(outputs[name], outputs["plain"]):
                        raise SystemExit(f"{task}/{name}: output differs from plain greedy decoding")
                plain_s = statistics.median(times["plain"])
                for name in drafts:
                    s = statistics.median(times[name])
                    st = stats[name]
                    results[f"{task}/{name}"] = {
                        "tok_s": args.new_tokens / s, "speedup": plain_s / s,
                        "acceptance": st.acceptance if st else None,
                        "tokens_per_step": st.tokens_per_step if st else 1.0,
                    }
    finally:
        swarm.stop()
    print(f"{args.model}, {args.servers} servers on loopback, {args.new_tokens} new tokens, greedy, "
          f"median of {args.runs}")
    for key, r in results.items():
        acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
        print(f"{key:14s} {r['tok_s']:7.1f} tok/s  x{r['speedup']:.2f}  acceptance {acc}  "
              f"tokens/step {r['tokens_per_step']:.2f}")
    (_common.OUT_DIR / "speculative.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
