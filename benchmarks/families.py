"""Every model family through a 2-server swarm: block sizes, parity with transformers, decode speed.

For each tiny random model of ``tests/tiny_models.py`` (``TINY``: llama, qwen2, mistral, bloom,
falcon, falcon-mq, mixtral, gemma2, gemma3_text, phi3), saved as a users' folder is
(``save_tiny_model``, seed 0), one family at a time (each swarm is stopped before the next starts):

1. **sizes**: the bytes of each block once loaded in float32, read from the checkpoint's headers
   (``corolla.models.loading.block_sizes``; min and max over the blocks), and the measured bytes of
   the two spans of the split actually loaded (``load_span`` + ``module_bytes(span.layers)``, in
   this process), with whether they add up to the header figures;
2. **parity**: a loopback ``LocalSwarm`` of 2 float32 servers (``even_spans(n, 2)``) and one
   ``DistributedModelForCausalLM``; on a fixed 16-token prompt (random ids, seed 0) the largest
   |logit| difference between the swarm's stateless forward and transformers' model on the same
   folder, and whether 32 greedy tokens through an inference session equal transformers' own
   greedy ``generate`` (EOS disabled on both sides, as ``local_greedy`` in tests/swarm/conftest.py);
3. **decode speed**: ``--new-tokens`` new tokens greedy after the same prompt, local Hugging Face
   ``generate`` against ``model.stream`` through the 2 servers, interleaved (local, swarm, local,
   swarm, ... with the swarm up and idle during local runs), medians of ``--runs`` after one
   warm-up run of each; ratio = swarm tok/s / local tok/s (tok/s = new tokens / wall time of the
   whole call, prefill included; decode tok/s excludes the first token);
4. **concurrent sessions** (``--concurrency-families``, default mixtral): ``--sessions`` threads
   sharing one client, each generating ``--new-tokens`` tokens on its own prompt, released
   together (``concurrency.run_level``), against 1 session on the same swarm, in rounds (1, N, 1,
   N, ...), medians of ``--runs`` rounds; the servers batch the steps of sessions that arrive
   together (Mixtral groups a batch's tokens per expert). Every session's tokens must equal its
   prompt's solo run.

The models are tiny (hidden size 64, 3-6 blocks), so the speed figures measure per-token overheads
(hops, Python, messages) rather than compute: a ratio below 1 is expected here, unlike with a real
model (``decode.py``). Every timed run goes through the benchmarks' quiet-machine runner
(``_common.QuietRunner``: wait for idle CPUs, repeat a run that other jobs disturbed).
Results: rich tables and ``benchmarks/out/families.json``; server logs in
``benchmarks/out/logs/families/<family>/``.

    .venv/bin/python benchmarks/families.py                                   # every family, 3 runs, 64 tokens
    .venv/bin/python benchmarks/families.py --families mixtral gemma2 --runs 1 --new-tokens 16
    .venv/bin/python benchmarks/families.py --sessions 8 --concurrency-families mixtral llama
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import concurrency  # run_level: N threads, one generate each, released together
import decode  # local_run / swarm_run / measured / medians: the decode benchmark's timing
import torch

import _common  # benchmarks/ is on sys.path when a script in it runs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.tiny_models
OUT_DIR = _common.OUT_DIR
PROMPT_LEN, PARITY_TOKENS, SERVERS = 16, 32, 2


def prompt(seed: int, vocab: int, length: int = PROMPT_LEN) -> torch.Tensor:
    """Fixed random token ids [1, length] (the tiny models have no tokenizer)."""
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def hf_greedy(ref, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Transformers' own greedy generate, EOS disabled (tests/swarm/conftest.py ``local_greedy``)."""
    return ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                        eos_token_id=None, pad_token_id=0)


def sizes(folder: Path, config, spans: list[tuple[int, int]]) -> dict[str, Any]:
    from corolla.models.loading import block_sizes, load_span, module_bytes

    per_block = block_sizes(folder, config, torch.float32)
    measured = []
    for start, end in spans:
        span = load_span(folder, config, start, end, torch.float32)
        measured.append(module_bytes(span.layers))
        del span
    expected = [sum(per_block[a:b]) for a, b in spans]
    return {"block_bytes": per_block, "block_bytes_min": min(per_block), "block_bytes_max": max(per_block),
            "span_bytes_measured": measured, "span_bytes_from_headers": expected,
            "spans_equal_headers": measured == expected}


def run_family(name: str, args, quiet: _common.QuietRunner, progress, console) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.models.registry import family_for
    from corolla.swarm.local import LocalSwarm, even_spans
    from tests.tiny_models import save_tiny_model

    result: dict[str, Any] = {"family": name}
    with tempfile.TemporaryDirectory(prefix=f"corolla-family-{name}-") as tmp:
        folder = save_tiny_model(name, Path(tmp) / name, seed=0)
        config = load_config(folder)
        n = config.num_hidden_layers
        spans = even_spans(n, SERVERS)
        result.update(model_type=config.model_type, corolla_family=getattr(family_for(config), "name", "?"),
                      num_blocks=n, spans=spans, vocab_size=config.vocab_size)
        result["sizes"] = sizes(folder, config, spans)

        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = prompt(0, config.vocab_size)
        with torch.no_grad():
            ref_logits = ref(ids).logits
            hf_tokens = hf_greedy(ref, ids, PARITY_TOKENS)[0, ids.shape[1]:].tolist()

        log_dir = OUT_DIR / "logs" / "families" / name
        swarm = LocalSwarm(str(folder), n, f"tiny-{name}", log_dir=log_dir, server_args=shlex.split(args.server_args))
        client = None
        try:
            with console.status(f"{name}: starting {SERVERS} servers {spans}"):
                t0 = time.perf_counter()
                swarm.start(spans, timeout_s=args.start_timeout_s)
                result["startup_s"] = time.perf_counter() - t0
                client = DistributedModelForCausalLM.from_pretrained(
                    folder, initial_peers=swarm.initial_peers, model_id=f"tiny-{name}")

            # ---- parity ------------------------------------------------------------------------------
            with torch.no_grad():
                logits = client(ids).logits
            with client.inference_session(max_length=PROMPT_LEN + PARITY_TOKENS) as session:
                out = client.generate(ids, max_new_tokens=PARITY_TOKENS, eos_token_id=[])
                chain = len(session.chain)
            swarm_tokens = out[0, ids.shape[1]:].tolist()
            result["parity"] = {
                "max_abs_logit_diff": (logits - ref_logits).abs().max().item(),
                "max_abs_logit": ref_logits.abs().max().item(),
                "greedy_tokens": PARITY_TOKENS, "tokens_equal_hf": swarm_tokens == hf_tokens,
                "first_mismatch": decode.first_mismatch(hf_tokens, swarm_tokens), "hops": chain,
                "hf_tokens": hf_tokens, "swarm_tokens": swarm_tokens,
            }

            # ---- decode speed: local HF vs the swarm, interleaved ----------------------------------------
            gen_config = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                          pad_token_id=0)
            run_local = functools.partial(decode.local_run, ref, ids, gen_config)
            run_swarm = functools.partial(decode.swarm_run, client, ids, args.new_tokens)
            task = progress.add_task(f"{name}: local / swarm interleaved", total=args.runs + args.warmup)
            for _ in range(args.warmup):  # not counted
                run_local()
                run_swarm()
                progress.advance(task)
            local_runs, swarm_runs = [], []
            for _ in range(args.runs):
                local_runs.append(decode.measured(quiet, run_local))
                swarm_runs.append(decode.measured(quiet, run_swarm))
                progress.advance(task)
            progress.remove_task(task)
            local_med, swarm_med = decode.medians(local_runs), decode.medians(swarm_runs)
            reference = local_runs[0].tokens
            mismatch = [decode.first_mismatch(reference, r.tokens) for r in swarm_runs]
            result["decode"] = {
                "local_median": local_med, "swarm_median": swarm_med,
                "ratio_tok_s": swarm_med["tok_s"] / local_med["tok_s"],
                "ratio_decode_tok_s": swarm_med["decode_tok_s"] / local_med["decode_tok_s"],
                "tokens_equal_local": all(m is None for m in mismatch),
                "local_runs_agree": all(r.tokens == local_runs[0].tokens for r in local_runs),
                "first_mismatch": mismatch,
                "foreign_cpu_max": max(r.foreign_cpu for r in local_runs + swarm_runs),
                "local_runs": [r.summary() for r in local_runs], "swarm_runs": [r.summary() for r in swarm_runs],
            }

            # ---- concurrent sessions -------------------------------------------------------------------
            if name in args.concurrency_families:
                result["concurrency"] = run_concurrency(name, client, config.vocab_size, args, quiet, progress,
                                                        swarm)
        except Exception as e:  # reported, and the other families still run
            result["error"] = f"{type(e).__name__}: {e}"
            result["traceback"] = traceback.format_exc()
            result["log_tails"] = [s.log_tail(20) for s in swarm.servers]
            console.print(f"[red]{name}: {result['error']}[/]")
        finally:
            with console.status(f"{name}: stopping the swarm"):
                try:
                    if client is not None:
                        client.close()
                finally:
                    swarm.stop()
        result["logs"] = str(log_dir)
    return result


def run_concurrency(name: str, client, vocab: int, args, quiet: _common.QuietRunner, progress, swarm
                    ) -> dict[str, Any]:
    n = args.sessions
    prompts = [prompt(100 + i, vocab) for i in range(n)]
    task = progress.add_task(f"{name}: solo reference per prompt", total=n)
    solo = []
    for p in prompts:  # also warms the swarm up for every prompt length
        solo.append(client.generate(p, max_new_tokens=args.new_tokens, eos_token_id=[])[0, p.shape[1]:].tolist())
        progress.advance(task)
    progress.remove_task(task)
    servers = [s.process.pid for s in swarm.servers]
    levels: dict[int, list[concurrency.LevelRun]] = {1: [], n: []}
    task = progress.add_task(f"{name}: 1 vs {n} sessions, {args.runs} rounds", total=2 * args.runs)
    for _ in range(args.runs):
        for level in (1, n):
            run, m = quiet(lambda level=level: concurrency.run_level(client, prompts[:level], args.new_tokens,
                                                                     solo[:level]))
            run.servers_cpu_s = m.watch.tree_cpu_s(servers)
            run.client_cpu_s = m.watch.tree_cpu_s([os.getpid()]) - run.servers_cpu_s
            run.idle_before, run.foreign_cpu = m.idle_before, m.foreign_cpu
            levels[level].append(run)
            progress.advance(task)
    progress.remove_task(task)
    med = {level: concurrency.medians(runs) for level, runs in levels.items()}
    return {
        "sessions": n, "new_tokens": args.new_tokens,
        "one": med[1], "many": med[n],
        "ratio_tok_s": med[n]["tok_s"] / med[1]["tok_s"],
        "ratio_decode_tok_s": med[n]["decode_tok_s"] / med[1]["decode_tok_s"],
        "tokens_equal_solo": med[1]["tokens_equal_solo"] and med[n]["tokens_equal_solo"],
        "runs": {str(level): [r.summary() for r in runs] for level, runs in levels.items()},
    }


# ---- report --------------------------------------------------------------------------------------
def kib(x: float) -> str:
    return f"{x / 1024:.1f}"


def report(results: list[dict[str, Any]], args, quiet: _common.QuietRunner, console) -> None:
    from rich.table import Table

    def yes_no(ok: bool, detail: str = "") -> str:
        return "[green]yes[/]" if ok else f"[red]no{detail}[/]"

    def cpu(x: float) -> str:
        return f"{x:.2f}" if x <= args.max_foreign_cpu else f"[red]{x:.2f}[/]"

    table = Table(title=f"Families on {SERVERS} fp32 servers: sizes, parity with transformers ({PROMPT_LEN}-token "
                        f"prompt, {PARITY_TOKENS} greedy tokens), decode {args.new_tokens} tokens, medians of "
                        f"{args.runs} runs")
    for col in ("family", "spans", "block KiB min-max", "span KiB loaded", "= hdr", "max |Δlogit|", "max |logit|",
                f"{PARITY_TOKENS} tok = HF", "local tok/s", "swarm tok/s", "ratio", "ratio decode", "swarm step ms",
                "= local", "foreign cpu"):
        table.add_column(col, justify="left" if col in ("family", "spans") else "right", no_wrap=True)
    for r in results:
        s = r.get("sizes")
        cells = [r["family"], ",".join(f"{a}:{b}" for a, b in r.get("spans", []))]
        if s:
            cells += [f"{kib(s['block_bytes_min'])}-{kib(s['block_bytes_max'])}",
                      "+".join(kib(b) for b in s["span_bytes_measured"]), yes_no(s["spans_equal_headers"])]
        else:
            cells += ["-"] * 3
        p = r.get("parity")
        if p:
            first = p["first_mismatch"]
            cells += [f"{p['max_abs_logit_diff']:.2e}", f"{p['max_abs_logit']:.1f}",
                      yes_no(p["tokens_equal_hf"], f", from {first}" if first is not None else "")]
        else:
            cells += ["-"] * 3
        d = r.get("decode")
        if d:
            bad = [m for m in d["first_mismatch"] if m is not None]
            cells += [f"{d['local_median']['tok_s']:.1f}", f"{d['swarm_median']['tok_s']:.1f}",
                      f"{d['ratio_tok_s']:.2f}", f"{d['ratio_decode_tok_s']:.2f}",
                      f"{d['swarm_median']['step_ms_median']:.1f}",
                      yes_no(not bad, f", from {min(bad)}" if bad else ""), cpu(d["foreign_cpu_max"])]
        else:
            cells += ["-"] * 7
        if "error" in r:
            cells[-1] = "[red]failed[/]"
        table.add_row(*cells)
    console.print(table)

    conc = [r for r in results if "concurrency" in r]
    if conc:
        table = Table(title=f"Concurrent sessions: {args.sessions} threads sharing one client vs 1 session, same "
                            f"swarm, {args.new_tokens} tokens each, medians of {args.runs} rounds")
        for col in ("family", "1 session tok/s", f"{args.sessions} sessions tok/s", "ratio", "ratio decode",
                    "step ms (1)", f"step ms ({args.sessions})", "servers cpu ms/tok (1)",
                    f"servers cpu ms/tok ({args.sessions})", "tokens = solo", "foreign cpu"):
            table.add_column(col, justify="left" if col == "family" else "right")
        for r in conc:
            c = r["concurrency"]
            table.add_row(r["family"], f"{c['one']['tok_s']:.1f}", f"{c['many']['tok_s']:.1f}",
                          f"{c['ratio_tok_s']:.2f}", f"{c['ratio_decode_tok_s']:.2f}",
                          f"{c['one']['step_ms_median']:.1f}", f"{c['many']['step_ms_median']:.1f}",
                          f"{c['one']['servers_cpu_ms_per_token']:.1f}", f"{c['many']['servers_cpu_ms_per_token']:.1f}",
                          yes_no(c["tokens_equal_solo"]), cpu(max(c["one"]["foreign_cpu"], c["many"]["foreign_cpu"])))
        console.print(table)
    for r in results:
        if "error" in r:
            console.print(f"[red]{r['family']} failed:[/] {r['error']}")
            for i, tail in enumerate(r.get("log_tails", [])):
                console.print(f"  server {i} log tail:\n{tail}")
    console.print(f"KiB = 1024 bytes, float32. max |logit| is transformers' largest logit on the prompt (the scale "
                  f"of the difference). tok/s = new tokens / wall time of the call (prefill included); ratio = swarm "
                  f"÷ local Hugging Face on the same tiny model. foreign cpu = the most CPUs other jobs used during "
                  f"one kept run ({quiet.discarded} disturbed runs repeated).")


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    from tests.tiny_models import TINY

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(TINY), choices=list(TINY), metavar="FAMILY",
                   help=f"which tiny models (default all: {' '.join(TINY)})")
    p.add_argument("--runs", type=int, default=3, help="measured runs (decode) and rounds (sessions) (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs of local and swarm, not counted (default 1)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per decode run and per session (default 64)")
    p.add_argument("--sessions", type=int, default=8, help="concurrent sessions against 1 (default 8)")
    p.add_argument("--concurrency-families", nargs="*", default=["mixtral"], choices=list(TINY), metavar="FAMILY",
                   help="families whose swarm also runs the concurrent sessions (default mixtral; none: no names)")
    p.add_argument("--server-args", default="",
                   help="extra arguments for every `corolla server`, one string split like a shell does "
                        "(LocalSwarm adds --torch-threads cores/servers unless given)")
    p.add_argument("--start-timeout-s", type=float, default=600.0, help="longest wait for a swarm to be ready")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "families.json", help="JSON results file")
    args = p.parse_args(argv)
    if args.runs < 1 or args.new_tokens < 1 or args.sessions < 2:
        p.error("--runs and --new-tokens must be >= 1, --sessions >= 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(width=max(Console().width, 230))
    console.print(f"families {' '.join(args.families)}; {SERVERS} fp32 servers each; {args.runs} runs, "
                  f"{args.new_tokens} new tokens; {args.sessions} sessions for "
                  f"{' '.join(args.concurrency_families) or '-'}; "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    quiet = _common.quiet_runner(args)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    results = []
    t0 = time.perf_counter()
    with progress:
        for name in args.families:
            started = time.perf_counter()
            result = run_family(name, args, quiet, progress, console)
            result["wall_s"] = time.perf_counter() - started
            results.append(result)
            p, d = result.get("parity"), result.get("decode")
            if p and d:
                progress.console.print(f"{name}: max |Δlogit| {p['max_abs_logit_diff']:.2e}, 32 tokens = HF "
                                       f"{p['tokens_equal_hf']}, decode ratio {d['ratio_tok_s']:.2f} "
                                       f"({result['wall_s']:.0f} s)")
    wall = time.perf_counter() - t0
    report(results, args, quiet, console)
    console.print(f"wall time {wall:.0f} s")

    out = {"config": {"families": args.families, "servers": SERVERS, "dtype": "float32", "prompt_tokens": PROMPT_LEN,
                      "parity_tokens": PARITY_TOKENS, "new_tokens": args.new_tokens, "runs": args.runs,
                      "sessions": args.sessions, "concurrency_families": args.concurrency_families,
                      "server_args": args.server_args, "discarded_runs": quiet.discarded, "wall_s": wall,
                      **_common.environment()},
           "families": {r["family"]: r for r in results}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {args.out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
