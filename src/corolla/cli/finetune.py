"""``corolla finetune``: train an adapter (soft prompt, deep prompts or LoRA) through the swarm."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time

from corolla.cli.common import add_peers

log = logging.getLogger(__name__)

#: flags that shape the adapter or the data split: a resumed run must keep the checkpoint's
FIXED_ON_RESUME = ("method", "rank", "alpha", "targets", "prompt_len", "max_length", "truncate", "eval_fraction",
                   "seed")


def _targets(text: str) -> tuple[str, ...]:
    from corolla.protocol.messages import LORA_TARGETS

    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if not targets or unknown:
        raise argparse.ArgumentTypeError(f"comma-separated among {','.join(LORA_TARGETS)} (got {text!r})")
    return targets


def register(sub) -> None:
    p = sub.add_parser(
        "finetune", help="train an adapter (prompt, deep prompt or LoRA) through the swarm",
        description="Fine-tune MODEL through the swarm: the servers' weights stay frozen, this client trains "
                    "a soft prompt, deep prompts or LoRA matrices on --data (JSON lines: {\"text\": ...} or "
                    "{\"prompt\": ..., \"completion\": ...}, the loss then on the completion only) and saves "
                    "them in --out, a folder that `--adapter DIR` and PEFT load. A checkpoint goes there every "
                    "--checkpoint-every steps and when Ctrl-C or SIGTERM stops the run; --resume continues it.")
    p.add_argument("model", help="packaged name, local HF folder, GGUF file or Hub repo id")
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="training examples, one JSON object a line")
    p.add_argument("--out", required=True, metavar="DIR", help="where the adapter and its checkpoints go")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out (up to --steps in all)")
    a = p.add_argument_group("adapter (default: the checkpoint's with --resume)")
    a.add_argument("--method", default=None, choices=["prompt", "deep-prompt", "lora"], help="what to train "
                   "(default lora)")
    a.add_argument("--rank", type=int, default=None, help="LoRA rank (default 8)")
    a.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    a.add_argument("--targets", type=_targets, default=None, metavar="q,v",
                   help="LoRA projections, comma-separated among q,k,v,o,gate,up,down (default q,v)")
    a.add_argument("--prompt-len", type=int, default=None, help="prompt tokens for prompt / deep-prompt (default 16)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None,
                   help="optimizer steps in all, resumed ones included (default 100)")
    t.add_argument("--batch-size", type=int, default=None, help="examples per step (default 4)")
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--schedule", default=None, choices=["constant", "linear", "cosine"],
                   help="learning rate over the steps: constant, or down to 0 at --steps (default constant)")
    t.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 0)")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    t.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm (default 1; 0: off)")
    t.add_argument("--max-length", type=int, default=None, help="most tokens per example (default 512)")
    t.add_argument("--truncate", action="store_true", default=None,
                   help="cut examples longer than --max-length instead of stopping with an error")
    t.add_argument("--eval-fraction", type=float, default=None,
                   help="share of the examples held out to measure the loss before and after (default 0.1)")
    t.add_argument("--max-eval-examples", type=int, default=None,
                   help="evaluate on at most this many held-out examples (default 256)")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                   help="save a checkpoint every K steps (default 50; 0: only at the end)")
    t.add_argument("--seed", type=int, default=None, help="seed of the adapter's init, the split and the order "
                   "(default 0)")
    add_peers(p)
    p.set_defaults(func=run_finetune)


def _config(args: argparse.Namespace, saved: dict | None):
    """Flags given > the checkpoint's values (with --resume) > defaults. Flags that would change the
    adapter or the split of a resumed run are refused."""
    from corolla.client.finetune import FinetuneConfig, FinetuneError

    defaults = FinetuneConfig()
    values = {}
    for field in dataclasses.fields(FinetuneConfig):
        given = getattr(args, field.name, None)
        if saved is not None:
            old = saved.get(field.name, getattr(defaults, field.name))
            if isinstance(old, list):
                old = tuple(old)
            if given is not None and field.name in FIXED_ON_RESUME and given != old:
                flag = "--" + field.name.replace("_", "-")
                raise FinetuneError(f"{flag} {given} differs from the checkpoint's ({old}): a resumed run keeps its "
                                    f"adapter and data split; start a new run in another --out to change it")
            values[field.name] = given if given is not None else old
        elif given is not None:
            values[field.name] = given
    return FinetuneConfig(**values)


def run_finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from corolla.client.finetune import (
        STATE_FILE,
        FinetuneError,
        encode,
        file_sha256,
        read_jsonl,
        read_state,
        split_held_out,
    )
    from corolla.models.resolve import resolve_model

    out = Path(args.out)
    saved = None
    if args.resume:
        saved = read_state(out)
    elif (out / STATE_FILE).exists():
        raise FinetuneError(f"{out} already holds a checkpoint (step {read_state(out)['step']}): pass --resume to "
                            f"continue it, or choose another --out")
    config = _config(args, saved["config"] if saved else None)
    console = Console(stderr=True)

    ref = resolve_model(str(args.model))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    raw = read_jsonl(args.data)
    examples = encode(raw, tokenizer, config.max_length, config.truncate, path=args.data)
    train, held_out = split_held_out(examples, config.eval_fraction, config.seed)
    digest = file_sha256(args.data)
    if saved is not None and saved.get("data", {}).get("sha256") not in (None, digest):
        log.warning("%s changed since the checkpoint was saved: the run continues on the new data", args.data)
    data_info = {"path": str(Path(args.data).resolve()), "sha256": digest, "examples": len(examples),
                 "train": len(train), "held_out": len(held_out)}
    print(f"data: {len(examples)} examples from {args.data} ({len(train)} to train on, {len(held_out)} held out); "
          f"{config.method}" + (f" r={config.rank} on {','.join(config.targets)}" if config.method == "lora" else
                                 f" of {config.prompt_len} tokens"), flush=True)
    return _train(args, config, out, saved, train, held_out, data_info, tokenizer, console)


def _train(args, config, out, saved, train, held_out, data_info, tokenizer, console) -> int:
    from corolla.client.finetune import FinetuneError, Stopped, Trainer, pad_id_of, perplexity
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.shutdown import on_stop_signals

    stop = threading.Event()
    restore = on_stop_signals(stop.set, interrupt=True)  # while connecting: a stop interrupts the start-up
    try:
        with console.status(f"connecting to the swarm of {args.model}"):
            model = DistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers,
                                                                model_id=args.model_id)
    except BaseException:
        restore()
        raise
    restore()
    with model:
        trainer = Trainer(model, train, held_out, config, out_dir=out, base_model=str(args.model),
                          pad_id=pad_id_of(tokenizer), data_info=data_info)
        if saved is not None:
            trainer.load_checkpoint(out)
            print(f"resumed from {out} at step {trainer.step} of {config.steps}", flush=True)
        restore = on_stop_signals(lambda: (stop.set(), trainer.request_stop()))
        try:
            outcome: dict = {}
            worker = threading.Thread(target=_work, args=(trainer, console, outcome), name="corolla-finetune",
                                      daemon=True)
            worker.start()
            while worker.is_alive() and not stop.is_set():
                stop.wait(0.2)
            if stop.is_set():  # the step in flight is dropped: the checkpoint holds the last completed one
                trainer.request_stop()
                trainer.save_checkpoint()
                if "progress" in outcome:
                    outcome["progress"].stop()
                print(f"stopped at step {trainer.step}: checkpoint saved in {out} (continue with --resume)",
                      flush=True)
                return 130
        finally:
            restore()
        error = outcome.get("error")
        if error is not None:
            if not isinstance(error, (Stopped, FinetuneError)) and trainer.step > (saved or {}).get("step", 0):
                trainer.save_checkpoint()
                print(f"failed at step {trainer.step}: checkpoint saved in {out} (continue with --resume)",
                      file=sys.stderr, flush=True)
            raise error
        before, after = outcome.get("before"), outcome.get("after")
        if after is not None and before is not None and before[1] == before[1]:  # not NaN
            change = 100 * (after - before[1]) / before[1]
            print(f"held-out loss after {trainer.step} steps: {after:.4f} (perplexity {perplexity(after):.2f}); "
                  f"at step {before[0]}: {before[1]:.4f}, change {change:+.1f}%", flush=True)
        print(f"adapter saved in {out} (step {trainer.step}): use it with --adapter {out}", flush=True)
    return 0


def _work(trainer, console, outcome: dict) -> None:
    """Held-out loss, the steps (a rich progress bar), the final checkpoint and held-out loss. In a thread:
    the main thread answers a stop at once, whatever call is in flight."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from corolla.client.finetune import STATE_FILE, perplexity

    try:
        config = trainer.config
        first = trainer.step
        if trainer.held_out and not any(s == trainer.step for s, _ in trainer.evals):
            with console.status("held-out loss before training"):
                loss = trainer.evaluate()
            trainer.record_eval(loss)
        if trainer.evals:
            start = min(trainer.evals)  # the earliest held-out loss of the run (step 0 unless it had none)
            outcome["before"] = start
            label = "before training" if trainer.step == 0 else f"at step {trainer.step}"
            current = dict(trainer.evals).get(trainer.step, start[1])
            print(f"held-out loss {label}: {current:.4f} (perplexity {perplexity(current):.2f}, "
                  f"{min(len(trainer.held_out), config.max_eval_examples)} examples)", flush=True)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        if trainer.step >= config.steps:
            print(f"already at step {trainer.step} (--steps {config.steps}): nothing to train", flush=True)
        t0, tokens, smooth = time.perf_counter(), 0, None
        outcome["progress"] = progress
        with progress:
            task = progress.add_task("training", total=config.steps, completed=trainer.step, loss="-", speed="-")

            def on_step(result) -> None:
                nonlocal tokens, smooth
                tokens += result.tokens
                smooth = result.loss if smooth is None else 0.9 * smooth + 0.1 * result.loss
                speed = tokens / (time.perf_counter() - t0)
                progress.update(task, completed=result.step, loss=f"{smooth:.4f}", speed=f"{speed:,.0f}")
                every = config.checkpoint_every
                if not console.is_terminal and every and result.step % every == 0:
                    log.info("step %d/%d: loss %.4f, %.0f tok/s", result.step, config.steps, smooth, speed)

            trainer.train(on_step)
        if trainer.step > first or not (trainer.out_dir / STATE_FILE).exists():
            trainer.save_checkpoint()
        if trainer.held_out and trainer.step > first:
            with console.status("held-out loss after training"):
                loss = trainer.evaluate()
            trainer.record_eval(loss)
            trainer.save_checkpoint()  # with the final held-out loss
            outcome["after"] = loss
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        outcome["error"] = e
