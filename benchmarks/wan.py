"""Decode over an emulated wide-area network: 3 servers each behind a delaying proxy, against the latency bound.

This kernel has no netem, so each server's p2pd listens on a port of its own and announces the port
of a ``wanproxy.WanProxy`` in front of it (``corolla server --port P --announce-host 127.0.0.1
--announce-port Q``); every connection to a server (the client's, and the other servers' pushes
and DHT traffic) is dialled at its announced address and so crosses that server's proxy: each
message between two peers takes one one-way delay ``d = RTT / 2`` (its link crosses exactly one
proxy: the dialled peer's). The client dials everyone and is dialled by no one, so it needs no
proxy of its own. One swarm of 3 servers of SmolLM2-135M fp32 (even spans) is started once; the
proxies' delay is then set to each ``--rtt-ms`` in turn (default 0 20 50 100) and two clients
(``push=True``: servers push each step's output to the next server; ``push=False``: the client
relays every hop) generate ``--new-tokens`` greedy tokens after a short chat prompt.

Per RTT and mode: TTFT, decode tok/s and the median ms per decode step (as in ``decode.py``), each
beside its lower bound: compute + latency. Compute = the same mode's figure at RTT 0 (the servers'
and client's own per-step work and loopback messaging, measured in the same run); latency = the
one-way delays a token must cross: with pushes client -> s1 -> s2 -> s3 -> client = 4 d, without
pushes client -> s_i -> client for each of 3 hops = 6 d; TTFT: the same crossings (the client opens
every hop's session at once, ahead of the first step, which is then pushed like the others).
ratio = measured ÷ bound (target: a decode step ≤ 1.15 × bound). ``proxy KiB/step`` = bytes the
proxies forwarded per decode step (both directions, all proxies): it shows that the traffic does
cross them. Every run goes through the shared quiet-machine runner (``_common.QuietRunner``).
Results: a table and ``benchmarks/out/wan.json``.

    .venv/bin/python benchmarks/wan.py [--rtt-ms 0 20 50 100] [--runs 3] [--new-tokens 32]
    .venv/bin/python benchmarks/wan.py --from-json benchmarks/out/wan.json     # the table again, measuring nothing
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

import decode
import wanproxy

import _common  # benchmarks/ is on sys.path when a script in it runs

OUT_DIR = _common.OUT_DIR
CROSSINGS = {True: 4, False: 6}  # one-way delays per decode step: pushes on / off, 3 servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxied(swarm, proxies: wanproxy.ProxyProcess, spans, server_args=(), bandwidth_bps: float | None = None):
    """One server of ``swarm`` per span, each listening on a free port of its own and announcing the port
    of its own proxy in ``proxies`` (so every connection to it crosses that proxy); waits until all are
    ready and returns them."""
    started = []
    for span in spans:
        port = free_port()
        proxy_port = proxies.add(("127.0.0.1", port), bandwidth_bps=bandwidth_bps)
        started.append(swarm.add_server(span, [
            "--port", str(port), "--announce-host", "127.0.0.1", "--announce-port", str(proxy_port), *server_args]))
    swarm.wait_ready(started)
    return started


def report(results: dict[str, Any], console) -> None:
    """Bounds and ratios from measured ``results`` (added to it) and the table."""
    from rich.table import Table

    cfg = results["config"]
    rtts = cfg["rtt_ms"]
    table = Table(title=f"{cfg['model']} decode over {cfg['servers']} proxied servers, fp32 greedy, prompt "
                        f"{cfg['prompt_tokens']} + {cfg['new_tokens']} new tokens, medians of {cfg['runs']} runs")
    for col in ("RTT ms", "push", "crossings", "TTFT ms", "bound", "ratio", "decode tok/s", "bound", "ratio",
                "step ms", "bound", "ratio", "proxy KiB/tok", "tokens = RTT 0", "foreign cpu"):
        table.add_column(col, justify="right")
    for push in (True, False):
        key = "push" if push else "no_push"
        base = results["rtt"]["0"][key]["median"]
        for rtt in rtts:
            entry = results["rtt"][f"{rtt:g}"][key]
            med, k, d_ms = entry["median"], CROSSINGS[push], rtt / 2
            # the first step crosses what the others cross: the client opens the hops' sessions ahead
            k_first = k
            bounds = {"ttft_ms": base["ttft_ms"] + k_first * d_ms, "step_ms": base["step_ms_median"] + k * d_ms}
            bounds["decode_tok_s"] = 1000 / bounds["step_ms"]
            ratios = {"ttft": med["ttft_ms"] / bounds["ttft_ms"], "step": med["step_ms_median"] / bounds["step_ms"],
                      "decode_tok_s": med["decode_tok_s"] / bounds["decode_tok_s"]}
            entry.update(crossings=k, crossings_first_token=k_first, one_way_ms=d_ms, bound=bounds, ratio=ratios)
            same = entry["tokens"] == results["rtt"]["0"][key]["tokens"]
            worst = max(r["foreign_cpu"] for r in entry["runs"])
            step_cell = f"{ratios['step']:.2f}" if ratios["step"] <= 1.15 else f"[red]{ratios['step']:.2f}[/]"
            table.add_row(f"{rtt:g}", "on" if push else "off", f"{k} x {d_ms:g}",
                          f"{med['ttft_ms']:.0f}", f"{bounds['ttft_ms']:.0f}", f"{ratios['ttft']:.2f}",
                          f"{med['decode_tok_s']:.1f}", f"{bounds['decode_tok_s']:.1f}",
                          f"{ratios['decode_tok_s']:.2f}",
                          f"{med['step_ms_median']:.1f}", f"{bounds['step_ms']:.1f}", step_cell,
                          f"{entry['proxy_kib_per_token']:.1f}", "yes" if same else "[red]no[/]", f"{worst:.2f}")
    console.print(table)
    console.print("bound = the same mode's figure at RTT 0 (compute and loopback messaging) + crossings x one-way "
                  "delay (TTFT too); ratio = measured ÷ bound (tok/s: ≥ 0.87 ⇔ "
                  f"step ≤ 1.15 × bound); {cfg['discarded_runs']} disturbed runs repeated")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name or local HF folder (default smollm2-135m)")
    p.add_argument("--servers", type=int, default=3, help="servers, each behind its own proxy (default 3)")
    p.add_argument("--rtt-ms", type=float, nargs="+", default=[0, 20, 50, 100],
                   help="round-trip times to emulate, one-way delay = RTT / 2 (default 0 20 50 100; 0 is always run)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per RTT and mode (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per RTT and mode (default 1)")
    p.add_argument("--new-tokens", type=int, default=32, help="new tokens per run (default 32)")
    p.add_argument("--bandwidth-mbps", type=float, default=None, help="cap each proxy direction (Mbit/s; default none)")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "wan.json", help="JSON results file")
    p.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                   help="measure nothing: print the table of a results file written earlier")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()
    if args.from_json:
        from rich.console import Console

        report(json.loads(args.from_json.read_text()), Console(width=max(Console().width, 160)))
        return 0
    rtts = sorted({0.0, *args.rtt_ms})

    from rich.console import Console
    from transformers import AutoTokenizer

    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm, even_spans

    console = Console(width=max(Console().width, 160))
    ref = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    ids = _common.chat_ids(tokenizer, decode.MESSAGES)
    num_blocks = load_config(ref.path).num_hidden_layers
    spans = even_spans(num_blocks, args.servers)
    bandwidth = args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps else None
    quiet = _common.quiet_runner(args)
    threads = max(1, (os.cpu_count() or 1) // args.servers)
    console.print(f"[bold]{ref.model_id}[/] fp32 greedy, {args.servers} servers {spans} each behind a proxy, "
                  f"prompt {ids.shape[1]} + {args.new_tokens} new tokens, {args.runs} runs after {args.warmup} warm-up")

    swarm = LocalSwarm(str(ref.path), num_blocks, ref.model_id, log_dir=OUT_DIR / "logs" / "wan")
    results: dict[str, Any] = {"rtt": {}}
    clients: dict[bool, Any] = {}
    with wanproxy.ProxyProcess() as proxies:
        try:
            with console.status(f"starting {args.servers} servers behind proxies"):
                start_proxied(swarm, proxies, spans, ["--torch-threads", str(threads)], bandwidth)
                for push in (True, False):
                    clients[push] = DistributedModelForCausalLM.from_pretrained(
                        ref.path, initial_peers=swarm.initial_peers, model_id=ref.model_id, push=push)
            for rtt in rtts:
                proxies.set_delay(rtt / 2000)
                for push in (True, False):
                    label = f"RTT {rtt:g} ms, push {'on' if push else 'off'}"
                    runs, kib = [], []
                    with console.status(label):
                        for i in range(args.warmup + args.runs):
                            before = proxies.bytes_forwarded()
                            run = decode.measured(
                                quiet, lambda p=push: decode.swarm_run(clients[p], ids, args.new_tokens))
                            if i >= args.warmup:
                                runs.append(run)
                                kib.append((proxies.bytes_forwarded() - before) / 1024
                                           / max(len(run.tokens), 1))
                    results["rtt"].setdefault(f"{rtt:g}", {})["push" if push else "no_push"] = {
                        "median": decode.medians(runs), "runs": [r.summary() for r in runs],
                        "proxy_kib_per_token": statistics.median(kib), "tokens": runs[-1].tokens,
                    }
                    console.print(f"{label}: step {decode.medians(runs)['step_ms_median']:.1f} ms")
        finally:
            for c in clients.values():
                c.close()
            with console.status("stopping the servers"):
                swarm.stop()

    results["config"] = {
        "model": ref.model_id, "servers": args.servers, "spans": spans, "rtt_ms": rtts, "runs": args.runs,
        "warmup": args.warmup, "new_tokens": args.new_tokens, "prompt_tokens": ids.shape[1],
        "bandwidth_bytes_s": bandwidth, "server_threads": threads, **_common.environment(),
        "discarded_runs": quiet.discarded,
    }
    report(results, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
