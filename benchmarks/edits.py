"""Edit formats: the share of small edit tasks a model solves through ``corolla edit``, per edit format.

Each task is a folder of ``benchmarks/edit_tasks/`` (14 of them): a small file (Python, two in
JavaScript), ``task.json`` (``file``, ``lines`` [A, B] or null, ``instruction``, ``check``), a pytest
check (``test_check.py``: the behaviour the instruction asks for, and that the old behaviour still
works) and ``solution/`` (a reference edit). For each task and each format the task is copied into a
fresh temporary folder (without ``solution/``), the assistant's CLI is run as a subprocess::

    corolla edit FILE[:A-B] -m INSTRUCTION --format {whole,search_replace} --yes --workspace DIR \\
        --endpoint URL --model NAME

and then the check (pytest, 60 s). Outcome per run:

- solved: the edit was applied (exit 0) and the check passes;
- unsolved: applied, the file still parses and imports, but the check fails;
- broken: applied, but the file no longer parses (``compile`` / ``node --check``) or the check
  could not even be collected (the module does not import);
- refused: ``corolla edit`` exited 2 (it would not apply what the model answered; file untouched);
- error: any other exit status, or a time-out.

By default the script starts its own swarm of the packaged ``--model`` (``qwen2.5-coder-0.5b``, one
server holding all blocks; ``--servers N`` splits them) and serves the OpenAI-compatible API over
it in this process, as ``corolla swarm up --chat`` does; ``--endpoint URL`` (the API's base URL,
``.../v1``) uses a running one instead. Edits run one at a time; the output is a table of task x
format, then per format the share solved (e.g. "whole: 7/14 (50%)") with refused and broken counts.

``--verify`` needs no model: it checks that every task is honest, i.e. its check fails (without a
collection error) on the original file and passes on ``solution/``, that ``lines`` lies inside the
file and that the solution changes nothing outside those lines. Exit status 1 if any task is not.

    .venv/bin/python benchmarks/edits.py --verify
    .venv/bin/python benchmarks/edits.py [--formats whole search_replace] [--tasks 02 sum] [--servers 1]
    .venv/bin/python benchmarks/edits.py --endpoint http://127.0.0.1:8000/v1 --model qwen2.5-coder-0.5b
    .venv/bin/python benchmarks/edits.py --formats whole agent    # agent mode against a single edit
    .venv/bin/python benchmarks/edits.py --formats agent --agent-mode tools   # the agent in tools mode

``agent`` runs the assistant's agent (tool loop) on each task instead of one edit: it sees the check
and may run it (``run_tests``); after each of up to 3 rounds the pristine check is run and a failure
is fed into the next round. ``--agent-mode`` (auto, tools, blocks; default auto, which is blocks here:
every task names its file) picks how it works (:mod:`corolla.assistant.agent.modes`); the JSON keeps
each agent run's transcript (the model's replies and what came back, cut short).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import difflib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS_DIR = HERE / "edit_tasks"
OUT_DIR = HERE / "out"
FORMATS = ("whole", "search_replace")
AGENT = "agent"  # agent mode: the tool loop with the check visible, up to AGENT_ROUNDS rounds
AGENT_ROUNDS = 3
OUTCOMES = ("solved", "unsolved", "broken", "refused", "error")
CHECK_TIMEOUT_S = 60.0
TAIL = 2000  # characters of a log or diff kept in the JSON
TRANSCRIPT_CHARS = 1500  # of each reply or result kept in an agent run's transcript


@dataclasses.dataclass
class Task:
    name: str
    folder: Path
    file: str
    lines: tuple[int, int] | None
    instruction: str
    check: str

    @property
    def target(self) -> str:
        """The FILE[:A-B] argument of ``corolla edit``."""
        return self.file if self.lines is None else f"{self.file}:{self.lines[0]}-{self.lines[1]}"


def load_tasks(folder: Path = TASKS_DIR, only: list[str] | None = None) -> list[Task]:
    """The tasks of ``folder`` in name order; ``only``: keep those whose name contains one of these."""
    tasks = []
    for spec in sorted(folder.glob("*/task.json")):
        name = spec.parent.name
        if only and not any(word in name for word in only):
            continue
        data = json.loads(spec.read_text())
        lines = tuple(data["lines"]) if data.get("lines") else None
        tasks.append(Task(name, spec.parent, data["file"], lines, data["instruction"],
                          data.get("check", "test_check.py")))
    return tasks


def stage(task: Task, dest: Path, solution: bool = False) -> Path:
    """A copy of the task in ``dest`` (``solution/`` and ``task.json`` left out; with ``solution``
    its files replace the originals). Returns ``dest``."""
    ignore = shutil.ignore_patterns("solution", "task.json", "__pycache__", ".pytest_cache")
    shutil.copytree(task.folder, dest, ignore=ignore, dirs_exist_ok=True)
    if solution:
        shutil.copytree(task.folder / "solution", dest, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    return dest


def syntax_error(path: Path) -> str | None:
    """Why ``path`` does not parse (Python: ``compile``; JavaScript: ``node --check``), or None."""
    if path.suffix == ".py":
        try:
            compile(path.read_text(), str(path), "exec")
        except (SyntaxError, ValueError, UnicodeDecodeError) as e:
            return f"{type(e).__name__}: {e}"
        return None
    if path.suffix in (".js", ".cjs", ".mjs"):
        node = shutil.which("node")
        if node is None:
            return None
        out = subprocess.run([node, "--check", str(path)], capture_output=True, text=True, timeout=30)
        return (out.stderr.strip()[-TAIL:] or "node --check failed") if out.returncode else None
    return None


def run_check(task: Task, workdir: Path, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[int, str]:
    """pytest on the task's check in ``workdir``: (exit status, output tail); -1 on a time-out.

    pytest's exit status: 0 passed, 1 some test failed, 2 collection error or interrupted, 5 none collected.
    """
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(workdir), task.check]
    try:
        out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        return -1, f"check timed out after {timeout_s:.0f} s\n{(e.stdout or b'')[-TAIL:]!r}"
    return out.returncode, (out.stdout + out.stderr)[-TAIL:]


# ---- --verify: every check fails on the original and passes on the solution -----------------------
def verify_task(task: Task) -> list[str]:
    """What is wrong with ``task`` (empty: it is honest)."""
    problems = []
    original = (task.folder / task.file).read_text()
    solved_path = task.folder / "solution" / task.file
    if not solved_path.is_file():
        return [f"solution/{task.file} is missing"]
    solved = solved_path.read_text()
    if solved == original:
        problems.append("the solution is the original file")
    old, new = original.splitlines(), solved.splitlines()
    if not 10 <= len(old) <= 60:
        problems.append(f"{task.file} has {len(old)} lines (10 to 60 expected)")
    if task.lines is not None:
        a, b = task.lines
        if not 1 <= a <= b <= len(old):
            problems.append(f"lines {a}-{b} are not inside the file's {len(old)} lines")
        elif (len(new) < a - 1 + len(old) - b or old[: a - 1] != new[: a - 1]
              or old[b:] != new[len(new) - (len(old) - b):]):
            problems.append(f"the solution changes lines outside {a}-{b}")
    with tempfile.TemporaryDirectory(prefix="corolla-edit-verify-") as tmp:
        before = stage(task, Path(tmp) / "original")
        if err := syntax_error(before / task.file):
            problems.append(f"the original does not parse: {err}")
        rc, log = run_check(task, before)
        if rc != 1:
            what = "passes" if rc == 0 else f"does not fail cleanly (pytest exit {rc})"
            problems.append(f"the check {what} on the original:\n{log}")
        after = stage(task, Path(tmp) / "solution", solution=True)
        if err := syntax_error(after / task.file):
            problems.append(f"the solution does not parse: {err}")
        rc, log = run_check(task, after)
        if rc != 0:
            problems.append(f"the check fails on the solution (pytest exit {rc}):\n{log}")
    return problems


def verify(tasks: list[Task], jobs: int = 2) -> dict[str, list[str]]:
    """``verify_task`` for every task (``jobs`` at a time): name -> problems."""
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        return dict(zip((t.name for t in tasks), pool.map(verify_task, tasks)))


# ---- agent mode: the tool loop, the check visible, up to 3 rounds ----------------------------------
def run_agent(task: Task, *, endpoint: str, model: str, rounds: int = AGENT_ROUNDS, max_steps: int = 6,
              round_wall_s: float = 90.0, mode: str = "auto") -> dict:
    """The agent (``corolla.assistant.agent.Agent``) on a fresh copy of ``task``: it sees the check
    (``test_check.py``) and may run it; after each round the pristine check is run, and a failure is
    fed to the next round. Graded like an edit; a check the agent changed is put back before grading.
    ``mode``: the agent's mode (auto, tools, blocks)."""
    from corolla.assistant.agent.loop import Agent, AgentConfig
    from corolla.assistant.agent.policy import CommandPolicy
    from corolla.assistant.agent.writes import map_range
    from corolla.assistant.llm import LLM, LLMConfig

    with tempfile.TemporaryDirectory(prefix=f"corolla-agent-{task.name}-") as tmp:
        work = stage(task, Path(tmp))
        path, check = work / task.file, work / task.check
        original, check_text = path.read_text(), check.read_text()
        where = f"{task.file} lines {task.lines[0]}-{task.lines[1]}" if task.lines else task.file
        prompt = (f"In {where}: {task.instruction}\nThe tests in {task.check} check the result: change "
                  f"{task.file} until they pass. Do not change {task.check}.")
        llm = LLM(LLMConfig(endpoint=endpoint, model=model, max_tokens=768))
        result = {"task": task.name, "format": AGENT, "mode": mode, "exit": None, "changed": False,
                  "check_exit": None, "detail": "", "rounds": 0, "steps": 0, "stderr": "", "stdout": "", "diff": "",
                  "transcript": []}
        t0 = time.perf_counter()
        try:
            for round_ in range(1, rounds + 1):
                def keep(type_: str, data, round_=round_) -> None:
                    if type_ == "assistant":
                        text = data.get("text") or json.dumps(data.get("tool_calls"))
                    elif type_ in ("tool_result", "tool_call", "malformed", "task"):
                        text = json.dumps({k: v for k, v in data.items() if k not in ("data", "config")})
                    else:
                        return
                    result["transcript"].append([round_, type_, text[:TRANSCRIPT_CHARS]])

                agent = Agent(llm, work, policy=CommandPolicy(timeout_s=CHECK_TIMEOUT_S),
                              config=AgentConfig(max_steps=max_steps, max_wall_s=round_wall_s, mode=mode),
                              on_event=keep)
                report = agent.run(prompt)
                result["rounds"], result["steps"] = round_, result["steps"] + report.steps
                result["stdout"] = report.to_text()[-TAIL:]
                if report.status == "error" and "model endpoint" in report.error:  # the swarm, not the agent
                    raise RuntimeError(report.error)
                if check.read_text() != check_text:
                    check.write_text(check_text)
                    result["detail"] = "the agent changed the check (put back before grading)"
                check_rc, log = run_check(task, work)
                result["check_exit"], result["check_log"] = check_rc, log
                if check_rc == 0:
                    break
                if task.lines and path.is_file():  # where the task's lines are now
                    moved = map_range(original.splitlines(), path.read_text().splitlines(), *task.lines)
                    where = f"{task.file} lines {moved[0]}-{moved[1]}" if moved else task.file
                prompt = (f"In {where}: {task.instruction}\nThe tests in {task.check} still fail:\n{log[-1200:]}\n"
                          f"Fix {task.file} so that they pass. Do not change {task.check}.")
        except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
            result["outcome"], result["detail"] = "error", f"{type(e).__name__}: {e}"
            result["wall_s"] = time.perf_counter() - t0
            return result
        result["wall_s"] = time.perf_counter() - t0
        edited = path.read_text() if path.is_file() else ""
        result["changed"] = edited != original
        result["diff"] = "".join(difflib.unified_diff(original.splitlines(True), edited.splitlines(True),
                                                      task.file, task.file))[-TAIL:]
        if err := (syntax_error(path) if path.is_file() else "the file is gone"):
            result["outcome"], result["detail"] = "broken", err
        elif result["check_exit"] == 0:
            result["outcome"] = "solved"
        elif result["check_exit"] in (2, 3, 4, 5):
            result["outcome"], result["detail"] = "broken", f"check not collected (pytest exit {result['check_exit']})"
        else:
            result["outcome"] = "unsolved"
        return result


# ---- one edit through the CLI --------------------------------------------------------------------
def run_edit(task: Task, fmt: str, *, endpoint: str, model: str, corolla: str, timeout_s: float) -> dict:
    """``corolla edit`` on a fresh copy of ``task`` with format ``fmt``, then its check."""
    with tempfile.TemporaryDirectory(prefix=f"corolla-edit-{task.name}-") as tmp:
        work = stage(task, Path(tmp))
        path = work / task.file
        original = path.read_text()
        cmd = [corolla, "edit", task.target, "-m", task.instruction, "--format", fmt, "--yes",
               "--workspace", str(work), "--endpoint", endpoint, "--model", model]
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout_s,
                                 stdin=subprocess.DEVNULL)
            rc, stdout, stderr = out.returncode, out.stdout, out.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = None, _text(e.stdout), _text(e.stderr) + f"\ntimed out after {timeout_s:.0f} s"
        wall = time.perf_counter() - t0
        edited = path.read_text() if path.is_file() else ""
        diff = "".join(difflib.unified_diff(original.splitlines(True), edited.splitlines(True), task.file, task.file))
        result = {"task": task.name, "format": fmt, "exit": rc, "wall_s": wall, "changed": edited != original,
                  "stderr": stderr[-TAIL:], "stdout": stdout[-TAIL:], "diff": diff[-TAIL:], "check_exit": None,
                  "detail": ""}
        if rc == 2:
            result["outcome"] = "refused"
            if edited != original:
                result["detail"] = "refused, yet the file changed"
        elif rc != 0:
            result["outcome"] = "error"
            result["detail"] = f"corolla edit exit {rc}"
        elif err := (syntax_error(path) if path.is_file() else "the file is gone"):
            result["outcome"], result["detail"] = "broken", err
        else:
            check_rc, log = run_check(task, work)
            result["check_exit"], result["check_log"] = check_rc, log
            if check_rc == 0:
                result["outcome"] = "solved"
            elif check_rc in (2, 3, 4, 5):
                result["outcome"], result["detail"] = "broken", f"check not collected (pytest exit {check_rc})"
            else:
                result["outcome"] = "unsolved"
                result["detail"] = "file unchanged" if edited == original else ""
        return result


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def summarize(results: list[dict], formats: list[str], n_tasks: int) -> dict[str, dict]:
    summary = {}
    for fmt in formats:
        rows = [r for r in results if r["format"] == fmt]
        counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
        summary[fmt] = {**counts, "tasks": n_tasks, "share_solved": counts["solved"] / max(n_tasks, 1),
                        "median_wall_s": statistics.median(r["wall_s"] for r in rows) if rows else None}
    return summary


def best_format(summary: dict[str, dict]) -> str:
    """Most solved; then fewer broken, fewer refused; then the order of FORMATS."""
    order = {f: i for i, f in enumerate(FORMATS)}
    return min(summary, key=lambda f: (-summary[f]["solved"], summary[f]["broken"], summary[f]["refused"],
                                       order.get(f, len(order))))


@contextlib.contextmanager
def own_endpoint(model_name: str, servers: int, console):
    """A LocalSwarm of ``model_name`` and the API served over it: yields (base URL with /v1, model id)."""
    import _common

    _common.quiet_logs()
    with _common.swarm_api(model_name, servers, console, "edits") as swarm:
        yield swarm.base_url, swarm.ref.model_id


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verify", action="store_true",
                   help="no model: check that every task's check fails on the original and passes on solution/")
    p.add_argument("--endpoint", default=None,
                   help="an OpenAI-compatible API's base URL (.../v1) to use instead of starting a swarm")
    p.add_argument("--model", default="qwen2.5-coder-0.5b",
                   help="packaged model for the own swarm, or the model name at --endpoint "
                        "(default qwen2.5-coder-0.5b)")
    p.add_argument("--servers", type=int, default=1, help="servers of the own swarm (default 1: all blocks on one)")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS + (AGENT,),
                   help="edit formats (default both); `agent` adds agent mode (the check visible, up to 3 rounds)")
    p.add_argument("--agent-mode", default="auto", choices=("auto", "tools", "blocks"),
                   help="the agent's mode for `agent` (default auto: blocks, since every task names its file)")
    p.add_argument("--agent-steps", type=int, default=6, help="model replies per agent round (default 6)")
    p.add_argument("--agent-round-s", type=float, default=90.0,
                   help="wall-clock cap of an agent round in seconds (default 90; raise it on a loaded machine)")
    p.add_argument("--tasks", nargs="+", default=None, help="only the tasks whose folder name contains one of these")
    p.add_argument("--timeout-s", type=float, default=600.0, help="limit of one `corolla edit` run (default 600)")
    p.add_argument("--corolla", default=str(Path(sys.executable).parent / "corolla"),
                   help="the corolla executable (default: the one next to this Python)")
    p.add_argument("--jobs", type=int, default=2, help="tasks verified at a time with --verify (default 2)")
    p.add_argument("--json", default=None,
                   help=f"JSON results file (default {OUT_DIR.name}/edits.json for a model run; none for --verify)")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    tasks = load_tasks(only=args.tasks)
    if not tasks:
        console.print(f"no task matches {args.tasks}")
        return 2

    if args.verify:
        problems = verify(tasks, args.jobs)
        table = Table(title=f"{len(tasks)} edit tasks: the check fails on the original and passes on solution/")
        for col in ("task", "target", "verdict"):
            table.add_column(col)
        for task in tasks:
            table.add_row(task.name, task.target, "ok" if not problems[task.name] else "[red]NOT OK[/red]")
        console.print(table)
        for name, found in problems.items():
            for problem in found:
                console.print(f"[red]{name}[/red]: {problem}", markup=True, highlight=False)
        bad = sum(bool(found) for found in problems.values())
        console.print(f"{len(tasks) - bad}/{len(tasks)} tasks honest")
        if args.json:
            Path(args.json).write_text(json.dumps(problems, indent=1))
        return 1 if bad else 0

    if not Path(args.corolla).exists() and shutil.which(args.corolla) is None:
        console.print(f"no corolla executable at {args.corolla}")
        return 2
    results: list[dict] = []
    out = Path(args.json) if args.json else OUT_DIR / "edits.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    with contextlib.ExitStack() as stack:
        if args.endpoint:
            endpoint, model_id = args.endpoint, args.model
        else:
            endpoint, model_id = stack.enter_context(own_endpoint(args.model, args.servers, console))
        with console.status("editing") as status:
            for task in tasks:
                for fmt in args.formats:
                    status.update(f"{task.name} ({fmt}), {len(results) + 1} of {len(tasks) * len(args.formats)}")
                    if fmt == AGENT:
                        r = run_agent(task, endpoint=endpoint, model=model_id, mode=args.agent_mode,
                                      max_steps=args.agent_steps, round_wall_s=args.agent_round_s)
                    else:
                        r = run_edit(task, fmt, endpoint=endpoint, model=model_id, corolla=args.corolla,
                                     timeout_s=args.timeout_s)
                    results.append(r)
                    partial.write_text(json.dumps({"partial": True, "results": results}, indent=1))  # follow a long run
                    detail = " ".join(r["detail"].split())[:80]
                    console.print(f"{task.name:28} {fmt:15} {r['outcome']:9} {r['wall_s']:6.1f} s {detail}",
                                  highlight=False, markup=False)

    colors = {"solved": "green", "unsolved": "yellow", "broken": "red", "refused": "magenta", "error": "red"}
    table = Table(title=f"{model_id}: {len(tasks)} edit tasks x {len(args.formats)} formats")
    table.add_column("task")
    table.add_column("target")
    for fmt in args.formats:
        table.add_column(f"agent ({args.agent_mode})" if fmt == AGENT else fmt)
    by_key = {(r["task"], r["format"]): r for r in results}
    for task in tasks:
        cells = []
        for fmt in args.formats:
            r = by_key[(task.name, fmt)]
            cells.append(f"[{colors[r['outcome']]}]{r['outcome']}[/] {r['wall_s']:.0f} s")
        table.add_row(task.name, task.target, *cells)
    console.print(table)
    summary = summarize(results, args.formats, len(tasks))
    for fmt, s in summary.items():
        console.print(f"{fmt}: {s['solved']}/{s['tasks']} ({100 * s['share_solved']:.0f}%) solved, "
                      f"{s['unsolved']} unsolved, {s['refused']} refused, {s['broken']} broken, {s['error']} errors; "
                      f"median {s['median_wall_s']:.1f} s per edit", highlight=False)
    edit_formats = {f: v for f, v in summary.items() if f in FORMATS}
    best = best_format(edit_formats) if edit_formats else None
    if best:
        console.print(f"best edit format on this run: {best}", highlight=False)

    config = {"model": model_id, "endpoint": args.endpoint or "own swarm",
              "servers": None if args.endpoint else args.servers,
              "formats": args.formats, "agent_mode": args.agent_mode if AGENT in args.formats else None,
              "agent_steps": args.agent_steps, "agent_round_s": args.agent_round_s,
              "tasks": [t.name for t in tasks], "timeout_s": args.timeout_s,
              "python": sys.version.split()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv}
    out.write_text(json.dumps({"config": config, "summary": summary, "best_format": best, "results": results},
                              indent=1))
    partial.unlink(missing_ok=True)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
