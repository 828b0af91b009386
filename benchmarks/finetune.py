"""Fine-tuning through the swarm: the speed of one training step against the same step run locally,
and a real LoRA fine-tune of SmolLM2-135M on the Python standard library's source.

**(a) step** — one training step, forward + backward, of a batch of ``--batch-size`` x ``--seq-len``
tokens (default 4 x 128, cut from standard-library source files) with LoRA r=8 on q,v, fp32:

- local: Hugging Face ``AutoModelForCausalLM`` + PEFT LoRA (``PeftModel``), ``model(**batch).loss.backward()``;
- swarm: ``DistributedModelForCausalLM`` with a client-owned ``SwarmAdapter`` (the same LoRA matrices: the
  swarm's adapter is saved and loaded into PEFT), over a loopback ``LocalSwarm`` of 1, 2 and 3 servers
  (``--servers``): the batch goes as ``train_pipeline`` micro-batches, each through every hop on a
  training stream (the server keeps the hop's autograd graph until the gradient comes back on the same
  stream), then backward hop by hop in reverse. ``--train-streams off`` uses the stateless forward and
  backward calls instead, in which each server recomputes its span's forward under autograd.

Each swarm size's runs are interleaved with local runs (local, swarm, local, swarm, ...) through the
benchmarks' quiet-machine runner (``_common.QuietRunner``), medians of ``--runs``; ratio = local step
time / swarm step time (1.0 = as fast as local; target >= 0.8 at 2 servers). Every run also checks the
swarm's loss and LoRA gradients against the local ones. Per step it records the forward and backward
times and the CPU time of the servers and of the client side.

**(b) tune** — ``--steps`` (default 200) LoRA steps (r=8 on q,v,up,down, ``--tune-targets``; batch 4 x 128;
AdamW lr 2e-3, cosine schedule after 10 warm-up steps) through a 2-server swarm
(``--tune-servers``) with ``corolla.client.finetune.Trainer``: training chunks are 128-token pieces of
the standard library's top-level modules (``sysconfig.get_paths()["stdlib"]/*.py``, sorted), every
10th module held out; the held-out loss is measured on ``--eval-chunks`` chunks of the held-out modules
before and after (target: down >= 10%). The adapter is saved in ``benchmarks/out/finetune-adapter``
(use it with ``--adapter``).

Results: rich tables and ``benchmarks/out/finetune.json``; server logs in ``benchmarks/out/logs/finetune-*``.

    .venv/bin/python benchmarks/finetune.py                       # (a) 1 2 3 servers, 5 runs; then (b) 200 steps
    .venv/bin/python benchmarks/finetune.py --parts step --servers 2 --runs 3
    .venv/bin/python benchmarks/finetune.py --parts tune --steps 50
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _common  # benchmarks/ is on sys.path when a script in it runs

OUT_DIR = _common.OUT_DIR


# ---- data: the standard library's source, in chunks -----------------------------------------------
def stdlib_files() -> list[Path]:
    """The standard library's top-level modules, sorted by name (deterministic on a given Python)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, held out): every 10th file (index % 10 == 5) is held out."""
    return [f for i, f in enumerate(files) if i % 10 != 5], [f for i, f in enumerate(files) if i % 10 == 5]


def chunks_of(tokenizer, files: list[Path], seq_len: int) -> list[list[list[int]]]:
    """Per file, its tokens cut into consecutive pieces of ``seq_len`` (the last partial one dropped)."""
    out = []
    for f in files:
        ids = tokenizer(f.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        out.append([ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)])
    return out


def round_robin(per_file: list[list[list[int]]], limit: int) -> list[list[int]]:
    """Chunk 0 of every file, then chunk 1 of every file, ... up to ``limit`` chunks."""
    out, depth = [], 0
    while len(out) < limit and any(depth < len(c) for c in per_file):
        out += [c[depth] for c in per_file if depth < len(c)][: limit - len(out)]
        depth += 1
    return out


# ---- (a) one step -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Step:
    total_s: float
    forward_s: float
    backward_s: float
    loss: float
    idle_before: float = 1.0
    foreign_cpu: float = 0.0
    servers_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    grad_max_rel_diff: float | None = None  # swarm only: max |g_swarm - g_local| / max |g_local|

    def summary(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def timed_step(model, batch: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> Step:
    """Forward + backward; leaves the gradients in ``params`` (cleared before)."""
    for p in params:
        p.grad = None
    t0 = time.perf_counter()
    loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return Step(t2 - t0, t1 - t0, t2 - t1, float(loss.detach()))


def measured(quiet, fn, server_pids: list[int]) -> Step:
    step, m = quiet(fn)
    step.idle_before, step.foreign_cpu = m.idle_before, m.foreign_cpu
    servers = m.watch.tree_cpu_s(server_pids) if server_pids else 0.0
    step.servers_cpu_s, step.client_cpu_s = servers, m.watch.tree_cpu_s([os.getpid()]) - servers
    return step


def lora_pairs(adapter, peft_model, num_blocks: int):
    """(swarm parameter, local PEFT parameter) of every LoRA matrix."""
    local = dict(peft_model.named_parameters())
    pairs = []
    for b in range(num_blocks):
        for t in adapter.lora_targets:
            for which, table in (("A", adapter.lora_A), ("B", adapter.lora_B)):
                name = f"base_model.model.model.layers.{b}.self_attn.{t}_proj.lora_{which}.default.weight"
                pairs.append((table[f"{b}_{t}"], local[name]))
    return pairs


def grad_diff(pairs) -> float:
    worst, scale = 0.0, 0.0
    for mine, theirs in pairs:
        worst = max(worst, float((mine.grad - theirs.grad).abs().max()))
        scale = max(scale, float(theirs.grad.abs().max()))
    return worst / max(scale, 1e-30)


def client_options(args) -> dict[str, Any]:
    options: dict[str, Any] = {"train_pipeline": args.train_pipeline} if args.train_pipeline else {}
    if args.train_streams == "off":
        options["train_streams"] = False
    return options


def run_step_part(args, console, progress, ref, tokenizer, batch_chunks) -> dict[str, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from corolla.client.finetune import Example, collate
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.client.training import SwarmAdapter
    from corolla.models.loading import load_config
    from corolla.swarm.local import LocalSwarm, even_spans

    config = load_config(ref.path)
    num_blocks = config.num_hidden_layers
    batch = collate([Example(tuple(c), tuple(c)) for c in batch_chunks], 0)  # [B, T] each, no padding
    adapter = SwarmAdapter.create(config, "lora", rank=args.rank, targets=("q", "v"), seed=0)
    with tempfile.TemporaryDirectory() as folder:
        adapter.save_pretrained(folder, config)
        with console.status("loading the local model + PEFT LoRA"):
            base = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
            local = PeftModel.from_pretrained(base, folder, is_trainable=True).train()
    local_params = [p for p in local.parameters() if p.requires_grad]
    pairs = lora_pairs(adapter, local, num_blocks)
    quiet = _common.quiet_runner(args)

    def run_local() -> Step:
        return timed_step(local, batch, local_params)

    server_args = shlex.split(args.server_args)
    if args.server_threads:
        server_args += ["--torch-threads", str(args.server_threads)]
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.server_env)) if args.server_env else None
    setups = []
    for n in args.servers:
        spans = even_spans(num_blocks, n)
        log_dir = OUT_DIR / "logs" / f"finetune-step-{n}"
        swarm = LocalSwarm(str(ref.path), num_blocks, ref.model_id, log_dir=log_dir, server_args=server_args, env=env)
        local_runs: list[Step] = []
        swarm_runs: list[Step] = []
        try:
            with console.status(f"starting {n} server(s) {spans}"):
                swarm.start(spans)
                client = DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                                     model_id=ref.model_id, **client_options(args))
            client.adapter = adapter
            pids = [s.process.pid for s in swarm.servers]

            def run_swarm(client=client) -> Step:
                step = timed_step(client, batch, list(adapter.parameters()))
                return step

            try:
                with progress:
                    task = progress.add_task(f"(a) swarm of {n}, interleaved with local", total=args.warmup + args.runs)
                    for i in range(args.warmup + args.runs):
                        if i < args.warmup:
                            run_local()
                            run_swarm()
                        else:
                            local_runs.append(measured(quiet, run_local, []))
                            step = measured(quiet, run_swarm, pids)
                            step.grad_max_rel_diff = grad_diff(pairs)
                            swarm_runs.append(step)
                        progress.advance(task)
            finally:
                client.close()
        finally:
            with console.status(f"stopping {n} server(s)"):
                swarm.stop()
        setups.append({"servers": n, "spans": spans, "local": local_runs, "swarm": swarm_runs, "logs": str(log_dir)})
    return {"setups": setups, "tokens": int(batch["attention_mask"].sum()), "batch": list(batch["input_ids"].shape),
            "quiet": quiet}


def medians(runs: list[Step]) -> dict[str, float]:
    keys = runs[0].summary().keys()
    return {k: statistics.median(r.summary()[k] for r in runs) for k in keys}


def report_step(args, console, ref, part) -> dict[str, Any]:
    from rich.table import Table

    b, t = part["batch"]
    table = Table(title=f"{ref.model_id} training step (forward + backward), LoRA r={args.rank} on q,v, fp32, "
                        f"batch {b} x {t}; medians of {args.runs} runs")
    for col in ("setup", "spans", "step s", "forward s", "backward s", "tok/s", "paired local s", "ratio",
                "servers cpu s", "client cpu s", "|Δloss|", "grad rel diff", "foreign cpu"):
        table.add_column(col, justify="left" if col in ("setup", "spans") else "right")
    all_local = [r for s in part["setups"] for r in s["local"]]
    lm = medians(all_local)
    table.add_row("local HF + PEFT", "-", f"{lm['total_s']:.3f}", f"{lm['forward_s']:.3f}", f"{lm['backward_s']:.3f}",
                  f"{part['tokens'] / lm['total_s']:.0f}", "", "1.00", "", f"{lm['client_cpu_s']:.2f}", "", "",
                  f"{max(r.foreign_cpu for r in all_local):.2f}")
    results: dict[str, Any] = {"local": {"median": lm, "runs": [r.summary() for r in all_local]}, "swarm": {}}
    for s in part["setups"]:
        sm, pm = medians(s["swarm"]), medians(s["local"])
        ratio = pm["total_s"] / sm["total_s"]
        dloss = max(abs(a.loss - b.loss) for a, b in zip(s["swarm"], s["local"]))
        grad = max(r.grad_max_rel_diff for r in s["swarm"])
        worst = max(r.foreign_cpu for r in s["swarm"] + s["local"])
        color = "green" if ratio >= 0.8 else "red"
        table.add_row(f"swarm x{s['servers']}", ",".join(f"{a}:{b}" for a, b in s["spans"]), f"{sm['total_s']:.3f}",
                      f"{sm['forward_s']:.3f}", f"{sm['backward_s']:.3f}", f"{part['tokens'] / sm['total_s']:.0f}",
                      f"{pm['total_s']:.3f}", f"[{color}]{ratio:.2f}[/]", f"{sm['servers_cpu_s']:.2f}",
                      f"{sm['client_cpu_s']:.2f}", f"{dloss:.1e}", f"{grad:.1e}", f"{worst:.2f}")
        results["swarm"][str(s["servers"])] = {
            "spans": s["spans"], "median": sm, "paired_local_median": pm, "ratio": ratio, "max_loss_diff": dloss,
            "max_grad_rel_diff": grad, "runs": [r.summary() for r in s["swarm"]],
            "paired_local_runs": [r.summary() for r in s["local"]], "logs": s["logs"],
        }
    console.print(table)
    threads = args.server_threads or "cores ÷ servers (LocalSwarm's share)"
    console.print(f"servers: --torch-threads {threads}, env {args.server_env or '-'}, args {args.server_args or '-'}; "
                  f"client train_pipeline {args.train_pipeline or 'default'}, training streams {args.train_streams}")
    console.print("ratio = paired local step time ÷ swarm step time (target ≥ 0.8 at 2 servers); cpu = CPU seconds "
                  "per step of the server processes (with their DHT and p2pd children) and of everything else; "
                  f"|Δloss| and grad rel diff: swarm vs local; {part['quiet'].discarded} disturbed runs repeated")
    return results


# ---- (b) a real fine-tune ----------------------------------------------------------------------------
def run_tune(args, console, ref, tokenizer, train_chunks, held_chunks) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from corolla.client.finetune import Example, FinetuneConfig, Trainer, perplexity
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.swarm.local import LocalSwarm, even_spans

    num_blocks = load_config(ref.path).num_hidden_layers
    spans = even_spans(num_blocks, args.tune_servers)
    train = [Example(tuple(c), tuple(c), "stdlib") for c in train_chunks]
    held = [Example(tuple(c), tuple(c), "stdlib held out") for c in held_chunks]
    config = FinetuneConfig(method="lora", rank=args.rank, targets=tuple(args.tune_targets.split(",")),
                            steps=args.steps, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                            warmup_steps=args.warmup_steps, max_length=args.seq_len,
                            max_eval_examples=len(held), checkpoint_every=50, seed=0)
    out_dir = OUT_DIR / "finetune-adapter"
    for name in ("trainer_state.json", "optimizer.safetensors", "adapter_config.json", "adapter_model.safetensors"):
        (out_dir / name).unlink(missing_ok=True)  # a fresh run
    server_args = shlex.split(args.server_args)
    if args.server_threads:
        server_args += ["--torch-threads", str(args.server_threads)]
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.server_env)) if args.server_env else None
    swarm = LocalSwarm(str(ref.path), num_blocks, ref.model_id, log_dir=OUT_DIR / "logs" / "finetune-tune",
                       server_args=server_args, env=env)
    try:
        with console.status(f"(b) starting {args.tune_servers} server(s) {spans}"):
            swarm.start(spans)
        with DistributedModelForCausalLM.from_pretrained(ref.path, initial_peers=swarm.initial_peers,
                                                         model_id=ref.model_id, **client_options(args)) as model:
            trainer = Trainer(model, train, held, config, out_dir=out_dir, base_model=ref.model_id,
                              data_info={"train_chunks": len(train), "held_out_chunks": len(held)})
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=console)
            with progress:
                task = progress.add_task("(b) held-out loss before", total=len(range(0, len(held), args.batch_size)),
                                         info="")
                t0 = time.perf_counter()
                before = trainer.evaluate(lambda done, total: progress.update(task, completed=done))
                eval_before_s = time.perf_counter() - t0
                trainer.record_eval(before)
                progress.update(task, info=f"loss {before:.4f}")
                task = progress.add_task(f"(b) training {args.steps} steps", total=args.steps, info="")
                t0, tokens, smooth = time.perf_counter(), 0, None

                def on_step(r) -> None:
                    nonlocal tokens, smooth
                    tokens += r.tokens
                    smooth = r.loss if smooth is None else 0.9 * smooth + 0.1 * r.loss
                    progress.update(task, completed=r.step, info=f"loss {smooth:.4f}, "
                                    f"{tokens / (time.perf_counter() - t0):.0f} tok/s")

                trainer.train(on_step)
                train_s = time.perf_counter() - t0
                task = progress.add_task("(b) held-out loss after", total=len(range(0, len(held), args.batch_size)),
                                         info="")
                after = trainer.evaluate(lambda done, total: progress.update(task, completed=done))
                trainer.record_eval(after)
                progress.update(task, info=f"loss {after:.4f}")
            trainer.save_checkpoint()
    finally:
        with console.status("stopping the servers"):
            swarm.stop()
    change = (after - before) / before
    color = "green" if change <= -0.10 else "red"
    console.print(f"(b) LoRA r={args.rank} {args.tune_targets} on {len(train)} training chunks of {args.seq_len} "
                  f"tokens ({args.steps} steps x {args.batch_size}, lr {args.lr} {args.schedule}, warm-up "
                  f"{args.warmup_steps}, {args.tune_servers} servers): held-out loss "
                  f"{before:.4f} (ppl {perplexity(before):.2f}) -> {after:.4f} (ppl {perplexity(after):.2f}) = "
                  f"[{color}]{100 * change:+.1f}%[/] (target ≤ -10%); {train_s:.0f} s of training, "
                  f"{tokens / train_s:.0f} tok/s; adapter in {out_dir}")
    return {"spans": spans, "config": config.to_json(), "train_chunks": len(train), "held_out_chunks": len(held),
            "held_out_loss_before": before, "held_out_loss_after": after, "change": change,
            "train_s": train_s, "eval_before_s": eval_before_s, "tokens": tokens, "tok_s": tokens / train_s,
            "train_loss": trainer.losses, "adapter": str(out_dir)}


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="packaged name or local HF folder (default smollm2-135m)")
    p.add_argument("--parts", nargs="+", default=["step", "tune"], choices=["step", "tune"],
                   help="(a) step timing, (b) a real fine-tune (default both)")
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2, 3], help="(a) swarm sizes (default 1 2 3)")
    p.add_argument("--runs", type=int, default=5, help="(a) measured runs per swarm size (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="(a) warm-up runs per swarm size (default 1)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example (default 128)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--steps", type=int, default=200, help="(b) training steps (default 200)")
    p.add_argument("--lr", type=float, default=2e-3, help="(b) AdamW peak learning rate (default 2e-3)")
    p.add_argument("--schedule", default="cosine", choices=["constant", "linear", "cosine"],
                   help="(b) learning rate schedule (default cosine, down to 0 at --steps)")
    p.add_argument("--warmup-steps", type=int, default=10, help="(b) linear warm-up steps (default 10)")
    p.add_argument("--tune-targets", default="q,v,up,down",
                   help="(b) LoRA projections, comma-separated (default q,v,up,down)")
    p.add_argument("--tune-servers", type=int, default=2, help="(b) servers (default 2)")
    p.add_argument("--eval-chunks", type=int, default=64, help="(b) held-out chunks evaluated (default 64)")
    p.add_argument("--train-chunks", type=int, default=4000, help="(b) most training chunks (default 4000)")
    p.add_argument("--server-threads", type=int, default=None,
                   help="torch threads per server (default: LocalSwarm's share, cores ÷ servers)")
    p.add_argument("--train-pipeline", type=int, default=None,
                   help="micro-batches a step's batch goes as (ClientConfig.train_pipeline; default: the client's)")
    p.add_argument("--train-streams", default="on", choices=["on", "off"],
                   help="off: stateless forward and backward calls (servers recompute) instead of training streams")
    p.add_argument("--server-args", default="", help="more arguments for every server, as one string")
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for the servers, e.g. OMP_WAIT_POLICY=PASSIVE")
    _common.add_quiet_args(p)
    p.add_argument("--out", type=Path, default=OUT_DIR / "finetune.json", help="JSON results file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.quiet_logs()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import AutoTokenizer

    from corolla.models.resolve import resolve_model

    console = Console(width=max(Console().width, 180))
    ref = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    train_files, held_files = split_files(stdlib_files())
    with console.status("tokenizing the standard library"):
        train_chunks = round_robin(chunks_of(tokenizer, train_files, args.seq_len), args.train_chunks)
        held_chunks = round_robin(chunks_of(tokenizer, held_files, args.seq_len), args.eval_chunks)
    console.print(f"[bold]{ref.model_id}[/] fp32; data: {len(train_files)} standard-library modules "
                  f"({len(train_chunks)} chunks of {args.seq_len} tokens), {len(held_files)} held out "
                  f"({len(held_chunks)} chunks); torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"{os.cpu_count()} cpus; load average {os.getloadavg()[0]:.2f}")
    results: dict[str, Any] = {"config": {**vars(args), "out": str(args.out), "model": ref.model_id,
                                          "path": str(ref.path), **_common.environment(),
                                          "stdlib": sysconfig.get_paths()["stdlib"],
                                          "held_out_files": [f.name for f in held_files]}}
    if "step" in args.parts:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True)
        part = run_step_part(args, console, progress, ref, tokenizer, train_chunks[: args.batch_size])
        results["step"] = report_step(args, console, ref, part)
    if "tune" in args.parts:
        results["tune"] = run_tune(args, console, ref, tokenizer, train_chunks, held_chunks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
