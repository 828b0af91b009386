"""Server precision: speed, memory and output quality of fp32, bf16 and int8 servers.

For each precision (``--precisions``, default fp32 bf16 int8; fp32 always runs first: it is the
baseline) the script starts a 1-server loopback ``LocalSwarm`` holding every block of the model,
with these server arguments:

    fp32  --dtype float32
    bf16  --dtype bfloat16
    int8  --dtype float32 --quant int8

and one client (which keeps the embeddings and the LM head in fp32). Swarms run one after
another; each is stopped before the next starts. A server that does not start (e.g. a flag it
does not know yet) is reported as failed with the tail of its log; the others still run.

Per precision it measures
- decode speed: ``--new-tokens`` new tokens greedily after a ~20-token chat prompt (EOS never
  ends a run early), timed token by token through ``model.stream``: TTFT, tok/s (whole call) and
  decode tok/s (first to last token); medians of ``--runs`` runs after ``--warmup``; ratios to fp32;
- memory: VmRSS of the server process just after start, after the warm-up, and its peak while
  the swarm was in use (also with its children: DHT process and p2pd daemon);
- quality against the fp32 server: a stateless forward (``model(ids).logits``, [1, T, V]) over a
  fixed ~300-token English + Python text; per position, whether the argmax equals fp32's
  (agreement = share of equal positions), the largest absolute logit difference and the mean
  KL(fp32 || this) of the next-token distributions; and the first of the greedy decode tokens
  that differs from fp32's.

Results: a rich table and ``benchmarks/out/precision.json``; server logs in
``benchmarks/out/logs/precision/<precision>/``.

    .venv/bin/python benchmarks/precision.py [--precisions fp32 bf16 int8] [--runs 3] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import _common
from _common import MIB, OUT_DIR

PRECISIONS = {
    "fp32": ["--dtype", "float32"],
    "bf16": ["--dtype", "bfloat16"],
    "int8": ["--dtype", "float32", "--quant", "int8"],
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about the Moon."},
]
# the fixed text of the quality check (~300 tokens of English prose and Python code)
TEXT = '''The lighthouse stood at the end of a narrow spit of land, and for more than a century its keepers \
had written the weather into a leather book every evening: the wind, the height of the waves, the ships \
that passed and the ones that did not come back. When the light was automated, the last keeper carried \
the books to the town library, where they are still read by sailors, historians and children who want \
to know what a storm looked like before there were satellites.

Below is a small Python function that counts how often each word occurs in a text and returns the most \
common ones, ignoring case and punctuation.

```python
import re
from collections import Counter


def top_words(text: str, n: int = 5) -> list[tuple[str, int]]:
    """Return the n most common words of text with their counts."""
    words = re.findall(r"[a-z']+", text.lower())
    counts = Counter(word for word in words if len(word) > 2)
    return counts.most_common(n)


if __name__ == "__main__":
    sample = "The sea was calm, the sky was clear, and the sea birds were loud."
    for word, count in top_words(sample):
        print(f"{word}: {count}")
```

Running it prints the word "the" first, because it is by far the most frequent word in English, followed \
by "sea" and "was".
'''


# ---- measurement -------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    ttft_s: float
    total_s: float
    tokens: list[int]
    idle_before: float = 1.0
    foreign_cpu: float = 0.0

    def summary(self) -> dict[str, float]:
        n, decode = len(self.tokens), self.total_s - self.ttft_s
        return {"ttft_ms": 1000 * self.ttft_s, "total_s": self.total_s, "tok_s": n / self.total_s,
                "decode_tok_s": (n - 1) / decode if n > 1 and decode > 0 else float("nan"),
                "idle_before": self.idle_before, "foreign_cpu": self.foreign_cpu}


def decode_run(model, ids: torch.Tensor, new_tokens: int) -> Run:
    start = time.perf_counter()
    first, tokens = None, []
    for step in model.stream(ids, max_new_tokens=new_tokens, eos_token_id=[]):  # [B] each step
        first = first or time.perf_counter()
        tokens.append(int(step[0]))
    return Run(first - start, time.perf_counter() - start, tokens)


def compare(logits: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Next-token agreement of ``logits`` [T, V] with the fp32 ``ref`` [T, V]."""
    logp, ref_logp = torch.log_softmax(logits.double(), -1), torch.log_softmax(ref.double(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # KL(fp32 || this) per position
    return {"agreement": (logits.argmax(-1) == ref.argmax(-1)).double().mean().item(),
            "max_abs_logit_diff": (logits - ref).abs().max().item(), "mean_kl": kl.mean().item(),
            "max_kl": kl.max().item()}


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def report(console, out: dict[str, Any]) -> None:
    """The rich table of ``out`` (what is written to the JSON file)."""
    from rich.table import Table

    results, cfg = out["precisions"], out["config"]
    fp32 = results["fp32"]
    base = fp32["median"] if fp32["status"] == "ok" else None
    table = Table(title=f"{cfg['model']} on 1 server: decode {cfg['prompt_tokens']} + {cfg['new_tokens']} tokens "
                        f"(medians of {cfg['runs']} runs), quality over {cfg['text_tokens']} tokens vs the fp32 server")
    for col in ("precision", "server args", "tok/s", "ratio", "decode tok/s", "ratio decode", "TTFT ms",
                "RSS warm MiB", "RSS peak MiB", "ratio RSS", "w/ children MiB", "argmax agreement",
                "max Δlogit", "mean KL", "greedy = fp32", "foreign cpu"):
        table.add_column(col, justify="left" if col in ("precision", "server args") else "right",
                         no_wrap=col in ("precision", "server args", "argmax agreement", "mean KL", "greedy = fp32"))
    for name, res in results.items():
        args_cell = " ".join(res["server_args"])
        if res["status"] != "ok":
            table.add_row(name, args_cell, "[red]failed[/]", *[""] * 13)
            continue
        m, q = res["median"], res.get("quality")
        ratio = (lambda k, m=m: f"{m[k] / base[k]:.2f}") if base else (lambda k: "-")
        mismatch = res.get("first_token_mismatch", -1)
        foreign = max(r["foreign_cpu"] for r in res["runs"])
        table.add_row(
            name, args_cell, f"{m['tok_s']:.1f}", ratio("tok_s"), f"{m['decode_tok_s']:.1f}", ratio("decode_tok_s"),
            f"{m['ttft_ms']:.0f}", f"{res['rss_warm_mib']:.0f}", f"{res['rss_peak_mib']:.0f}",
            f"{res['rss_peak_mib'] / fp32['rss_peak_mib']:.2f}" if base else "-",
            f"{res['rss_peak_with_children_mib']:.0f}",
            "reference" if name == "fp32" else f"{q['agreement']:.3f}" if q else "-",
            "-" if name == "fp32" or not q else f"{q['max_abs_logit_diff']:.3f}",
            "-" if name == "fp32" or not q else f"{q['mean_kl']:.2e}",
            "reference" if name == "fp32" else "-" if mismatch == -1 else
            "[green]yes[/]" if mismatch is None else f"[yellow]from token {mismatch}[/]",
            f"{foreign:.2f}" if foreign <= cfg["max_foreign_cpu"] else f"[red]{foreign:.2f}[/]",
        )
    console.print(table)
    for name, res in results.items():
        if res["status"] != "ok":
            console.print(f"[red]{name}[/] failed at {res['stage']}: {res['error']}; server log "
                          f"{res['logs']}/server-0.log ends with:\n[dim]{res['log_tail']}[/]")
    console.print(f"foreign cpu = the most CPUs other jobs used during one kept decode run "
                  f"({cfg['discarded_runs']} disturbed runs repeated); RSS = the server process's VmRSS "
                  f"(w/ children: with its DHT process and p2pd daemon)")


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name or local HF folder (default smollm2-135m)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"], metavar="P",
                   help=f"server precisions among {', '.join(PRECISIONS)} (default all; fp32 always runs first)")
    p.add_argument("--runs", type=int, default=3, help="measured decode runs per precision (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up decode runs per precision, not counted (default 1)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per decode run (default 64)")
    p.add_argument("--server-args", default="",
                   help='extra arguments for every server after the precision\'s own, split like a shell does, '
                        'e.g. --server-args "--torch-threads 2" (write --server-args="--flag" for a lone flag)')
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for the server processes")
    p.add_argument("--start-timeout-s", type=float, default=300.0, help="longest wait for a server to be ready")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "precision.json", help="JSON results file")
    args = p.parse_args(argv)
    wanted = [x for item in args.precisions for x in item.replace(",", " ").split()]
    unknown = [x for x in wanted if x not in PRECISIONS]
    if unknown:
        p.error(f"unknown precision(s) {unknown}; choose among {', '.join(PRECISIONS)}")
    args.precisions = ["fp32"] + [x for x in dict.fromkeys(wanted) if x != "fp32"]
    if args.runs < 1 or args.new_tokens < 1:
        p.error("--runs and --new-tokens must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()

    from rich.console import Console
    from transformers import AutoTokenizer

    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm

    console = Console(width=max(Console().width, 200))
    ref = resolve_model(args.model)
    path, model_id = ref.path, ref.model_id
    tokenizer = AutoTokenizer.from_pretrained(path)
    num_blocks = load_config(path).num_hidden_layers
    ids = _common.chat_ids(tokenizer, MESSAGES)
    text_ids = torch.tensor([tokenizer(TEXT)["input_ids"]], dtype=torch.long)  # [1, T]
    extra = shlex.split(args.server_args)
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.server_env)) if args.server_env else None
    console.print(f"[bold]{model_id}[/] on 1 server (blocks 0:{num_blocks}), precisions {args.precisions}; decode: "
                  f"prompt {ids.shape[1]} + {args.new_tokens} new tokens greedy, {args.runs} runs after {args.warmup} "
                  f"warm-up; quality: forward over {text_ids.shape[1]} tokens; extra server args {extra or '-'}; "
                  f"torch {torch.__version__}, {os.cpu_count()} cpus")

    quiet = _common.quiet_runner(args)
    results: dict[str, dict[str, Any]] = {}
    ref_logits: torch.Tensor | None = None
    ref_tokens: list[int] | None = None
    for name in args.precisions:
        server_args = PRECISIONS[name] + extra
        log_dir = OUT_DIR / "logs" / "precision" / name
        res: dict[str, Any] = {"server_args": server_args, "logs": str(log_dir), "status": "ok"}
        results[name] = res
        swarm = LocalSwarm(str(path), num_blocks, model_id, log_dir=log_dir, server_args=server_args, env=env)
        model = None
        stage = "start"
        try:
            with console.status(f"{name}: starting the server ({shlex.join(server_args)})"):
                t0 = time.perf_counter()
                swarm.start([(0, num_blocks)], timeout_s=args.start_timeout_s)
                res["startup_s"] = time.perf_counter() - t0
            server = swarm.servers[0]
            res["rss_started_mib"] = _common.rss_bytes(server.process.pid) / MIB
            with _common.RssPeak([server.process.pid]) as rss:
                stage = "decode"
                model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers,
                                                                    model_id=model_id)
                with console.status(f"{name}: {args.warmup} warm-up + {args.runs} decode runs"):
                    for _ in range(args.warmup):
                        decode_run(model, ids, args.new_tokens)
                    res["rss_warm_mib"] = _common.rss_bytes(server.process.pid) / MIB
                    runs = []
                    for _ in range(args.runs):
                        run, m = quiet(lambda model=model: decode_run(model, ids, args.new_tokens))
                        run.idle_before, run.foreign_cpu = m.idle_before, m.foreign_cpu
                        runs.append(run)
                stage = "forward"
                with console.status(f"{name}: forward over {text_ids.shape[1]} tokens"):
                    logits = model(text_ids).logits[0].float()  # [T, V]
            res["rss_peak_mib"], res["rss_peak_with_children_mib"] = rss.peak / MIB, rss.peak_tree / MIB
            rows = [r.summary() for r in runs]
            res["median"] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
            res["runs"] = rows
            res["tokens"] = runs[0].tokens
            res["tokens_stable"] = all(r.tokens == runs[0].tokens for r in runs)
            if name == "fp32":
                ref_logits, ref_tokens = logits, runs[0].tokens
            if ref_logits is not None and ref_tokens is not None:
                res["quality"] = compare(logits, ref_logits)
                res["first_token_mismatch"] = first_mismatch(ref_tokens, runs[0].tokens)
            console.print(f"{name}: {res['median']['tok_s']:.1f} tok/s, peak RSS {res['rss_peak_mib']:.0f} MiB"
                          + (f", agreement {res['quality']['agreement']:.3f}" if "quality" in res else ""))
        except Exception as e:  # a server that fails to start or dies: report it, go on with the others
            tail = swarm.servers[0].log_tail(15) if swarm.servers else ""
            first_line = str(e).splitlines()[0].rstrip(":") if str(e) else ""
            res.update(status="failed", stage=stage, error=f"{type(e).__name__}: {first_line}", log_tail=tail)
            console.print(f"[red]{name}: failed at {stage}: {res['error']}[/] (log tail below the table)")
        finally:
            with console.status(f"{name}: stopping"):
                try:
                    if model is not None:
                        model.close()
                finally:
                    swarm.stop()

    out = {"precisions": results, "config": {
        "model": model_id, "path": str(path), "precisions": args.precisions, "server_args": extra,
        "server_env": args.server_env, "runs": args.runs, "warmup": args.warmup, "new_tokens": args.new_tokens,
        "prompt_tokens": ids.shape[1], "text_tokens": text_ids.shape[1], "max_foreign_cpu": args.max_foreign_cpu,
        "discarded_runs": quiet.discarded, **_common.environment(),
    }}
    report(console, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
