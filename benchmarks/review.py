"""Review and /fix on seeded bugs: does the assistant find the bug a change introduces, and can it fix it?

Each case is a real file (a copy of a standard-library module: textwrap, shlex, calendar, colorsys,
html, string; or a small realistic module written here: orders.py, config.py, paging.py) and one
seeded bug: an exact text replacement (``old`` -> ``new``, found exactly once) of one of these kinds:
wrong argument, missing return, boundary change, wrong comparison, off-by-one (slice, range, index),
inverted condition, wrong operator, swapped arguments, wrong variable, wrong value, wrong function,
wrong dict key, mutable default, exception swallowed. Each case has a check: a few lines of Python
run against the file (loaded by path, in a subprocess, 30 s) that pass on the clean file and fail on
the buggy one (``--verify`` proves it, no model needed). Four benign cases change code without
changing behaviour (a rename, an equivalent condition): they count false alarms.

For each case, a git repository in a temporary folder holds the clean file, committed; the change is
applied and left unstaged. Then, through the assistant's own code paths (``corolla.assistant.core``):

- **review**: ``Assistant.respond("/review unstaged")``, what ``corolla review unstaged`` runs. The
  bug is *found* when the reply does not declare the change clean and either cites a changed line
  (new-file number, +-2; written ``FILE:LINE``, ``line N`` or ``LN``) or quotes the buggy code (the
  changed part of the line as the prompt's summary shows it, when that is at least 4 characters and
  occurs nowhere in the clean file, e.g. ``split(',')``).
  It *declares the change clean* when it holds no ``FILE:LINE:`` finding and says "no bugs" (or
  "looks right/good/correct/fine", "no issues"). A benign case is a *false alarm* unless the reply
  declares it clean (``verdicts``: its ``line N: OK`` lines are no findings, and a reply of only such
  lines declares it clean). Variants: ``list``, ``reasoned`` and ``verdicts`` are ``review_style``
  settings of the assistant (straight to the ``FILE:LINE:`` list; one sentence on how the change
  alters the function's behaviour first; BUG or OK for each changed line); ``legacy`` sends the
  prompt ``/review`` had before issue 20 (the bare ``git diff`` and a generic senior-engineer task),
  built here, as the baseline of the same run.
- **fix**: ``Assistant.fix`` (what ``corolla fix FILE:A-B --error SYMPTOM`` asks, with one retry of
  an unusable reply) with the function the bug is in selected and the check's failure as the
  diagnostic (e.g. ``AssertionError: shorten('Hello  world!', width=12) returned 'Hello [...]', not
  'Hello world!'``). *Correct* when the proposal, applied, makes the check pass. This measures
  repairing, not locating: the review measures locating.

Output: a line per case and variant, then a table per model: reviews that found the bug, false
alarms on benign changes, fixes that are correct (refused: the reply could not be applied), mean
latency. JSON in ``benchmarks/out/review.json``.

    .venv/bin/python benchmarks/review.py --verify
    .venv/bin/python benchmarks/review.py --models qwen2.5-coder-0.5b qwen2.5-coder-1.5b [--cases 12]
    .venv/bin/python benchmarks/review.py --endpoint http://127.0.0.1:8000/v1 --models NAME
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from review_cases import BENIGN, CASES, PRELUDE, Case

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
CHECK_TIMEOUT_S = 30.0
TAIL = 2000

# ---- checks -----------------------------------------------------------------------------------------
def run_check(case: Case, file: Path) -> tuple[bool, str]:
    """(passed, the last line of its error: the symptom a failing test would show)."""
    with tempfile.NamedTemporaryFile("w", suffix="_check.py", delete=False) as f:
        f.write(PRELUDE + case.check + "\n")
    try:
        out = subprocess.run([sys.executable, f.name, str(file)], capture_output=True, text=True,
                             timeout=CHECK_TIMEOUT_S, cwd=file.parent)
    except subprocess.TimeoutExpired:
        return False, f"the check timed out after {CHECK_TIMEOUT_S:.0f} s"
    finally:
        Path(f.name).unlink()
    lines = [x for x in out.stderr.strip().splitlines() if x.strip()]
    return out.returncode == 0, (lines[-1] if lines else f"exit {out.returncode}")


def verify_case(case: Case) -> list[str]:
    problems = []
    clean = case.clean()
    if clean.count(case.old) != 1:
        return [f"`old` occurs {clean.count(case.old)} times in {case.source}, not once"]
    with tempfile.TemporaryDirectory(prefix="corolla-review-verify-") as tmp:
        file = Path(tmp) / case.file
        file.write_text(clean)
        ok, why = run_check(case, file)
        if not ok:
            problems.append(f"the check fails on the clean file: {why}")
        file.write_text(case.changed())
        ok, why = run_check(case, file)
        if case.bug and ok:
            problems.append("the check passes on the buggy file")
        if not case.bug and not ok:
            problems.append(f"the check fails on the benign change: {why}")
    if case.bug and fix_range(case) is None:
        problems.append("the change is not inside a function")
    return problems


# ---- what changed, and scoring --------------------------------------------------------------------
def changed_lines(case: Case) -> list[int]:
    """New-file numbers of the changed lines (a pure deletion: the line after it)."""
    old, new = case.clean().splitlines(), case.changed().splitlines()
    out = []
    for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            out.extend(range(j1 + 1, j2 + 1) if j2 > j1 else [j1 + 1])
    return out


def buggy_fragment(case: Case) -> str | None:
    """The changed part of a one-line change as the review prompt's summary shows it, when quoting it means
    quoting the new code: at least 4 characters, and nowhere in the clean file (else None)."""
    from corolla.assistant.context.diffview import _changed_part

    old, new = case.clean().splitlines(), case.changed().splitlines()
    ops = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if op[0] != "equal"]
    if len(ops) != 1 or ops[0][0] != "replace" or ops[0][2] - ops[0][1] != 1 or ops[0][4] - ops[0][3] != 1:
        return None
    _, fragment = _changed_part(old[ops[0][1]], new[ops[0][3]])
    return fragment if len(fragment) >= 4 and fragment not in case.clean() else None


_CITED = re.compile(r"(?:\.\w+:|\bline[s]?\s*:?\s*|\bL)(\d+)", re.I)
_CLEAN = re.compile(r"no bugs?\b|no (?:issues|problems)\b|looks (?:right|good|correct|fine)", re.I)


def cited_lines(reply: str) -> set[int]:
    return {int(n) for n in _CITED.findall(reply)}


_OK_LINE = re.compile(r"^\W*(?:line\s*)?[\w./-]*:?\d+\W*:\s*\**OK\b", re.I | re.M)  # a verdicts-style "line N: OK: ..."


def without_ok_lines(reply: str) -> str:
    """The reply without the lines that judge a changed line right (the ``verdicts`` style)."""
    return "\n".join(line for line in reply.splitlines() if not _OK_LINE.match(line))


def declares_clean(reply: str) -> bool:
    from corolla.assistant.commands import parse_findings

    rest = without_ok_lines(reply)
    if rest != reply and not rest.strip():
        return True  # every changed line judged OK
    return not parse_findings(rest) and bool(_CLEAN.search(rest))


def found(case: Case, reply: str) -> bool:
    if declares_clean(reply):
        return False
    reply = without_ok_lines(reply)
    lines = changed_lines(case)
    if any(abs(n - line) <= 2 for n in cited_lines(reply) for line in lines):
        return True
    fragment = buggy_fragment(case)
    return fragment is not None and fragment in reply


def fix_range(case: Case) -> tuple[int, int] | None:
    """The innermost function or method around the first changed line of the buggy file."""
    from corolla.assistant.context.enclosing import scopes_at

    text = case.changed()
    scopes = [s for s in scopes_at(text, case.file, changed_lines(case)[0]) if s.kind in ("function", "method")]
    return (scopes[-1].start_line, scopes[-1].end_line) if scopes else None


# ---- one case -------------------------------------------------------------------------------------
def stage(case: Case, dest: Path) -> Path:
    """A git repository with the clean file committed and the change in the work tree, unstaged."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(dest), "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
                       check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (dest / case.file).write_text(case.clean())
    git("add", case.file)
    git("commit", "-q", "-m", f"Add {case.file}")
    (dest / case.file).write_text(case.changed())
    return dest


LEGACY_REVIEW_TASK = (  # /review's task before issue 20, for the baseline
    "Review the diff below as a careful senior engineer. List concrete findings as bullets, most important "
    "first, each with the file and line: bugs, missing error handling, security problems, missing tests, "
    "and departures from the project's instructions. If it looks right, say so in one line.")


def review(case: Case, variant: str, llm, assistant) -> dict:
    from corolla.assistant import commands, git

    t0 = time.perf_counter()
    try:
        if variant == "legacy":
            _, diff = git.diff(assistant.root, "unstaged")
            user = (f"The unstaged changes:\n```diff\n{git.clip_diff(diff)}\n```\n\nunstaged\n\n{LEGACY_REVIEW_TASK}")
            messages = [{"role": "system", "content": commands.BASE_SYSTEM}, {"role": "user", "content": user}]
            reply = "".join(llm.stream(messages))
        else:
            assistant.config.review_style = variant
            events = assistant.respond("/review unstaged", assistant.state())
            reply = "".join(e["text"] for e in events if e["type"] == "delta")
        error = ""
    except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
        reply, error = "", f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    outcome = ("error" if error else "found" if found(case, reply) else "missed") if case.bug else \
        ("error" if error else "clean" if declares_clean(reply) else "false alarm")
    return {"case": case.name, "kind": case.kind, "task": "review", "variant": variant, "outcome": outcome,
            "wall_s": wall, "reply": reply[-TAIL:], "reply_chars": len(reply), "error": error,
            "changed_lines": changed_lines(case)}


def fix(case: Case, assistant, work: Path) -> dict:
    from corolla.assistant.errors import EditError

    ok, symptom = run_check(case, work / case.file)
    span = fix_range(case)
    state = assistant.state(current_file=case.file, selection=span, open_files=(case.file,), diagnostics=(symptom,))
    t0 = time.perf_counter()
    result = {"case": case.name, "kind": case.kind, "task": "fix", "variant": "fix", "symptom": symptom,
              "selection": span, "error": "", "diff": ""}
    try:
        outcome = assistant.fix("", state)
        assistant.accept(outcome.edit_id)
        result["diff"] = outcome.proposal.diff[-TAIL:]
        passed, why = run_check(case, work / case.file)
        result["outcome"], result["check"] = ("correct" if passed else "wrong"), why
    except EditError as e:
        result["outcome"], result["error"] = "refused", f"{type(e).__name__}: {e}"[-TAIL:]
    except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
        result["outcome"], result["error"] = "error", f"{type(e).__name__}: {e}"[-TAIL:]
    result["wall_s"] = time.perf_counter() - t0
    return result


def run_model(cases: list[Case], benign: list[Case], llm, fix_llm, *, variants: list[str], do_fix: bool,
              console, on_row=None) -> list[dict]:
    """Every case: reviews through ``llm``, fixes through ``fix_llm`` (:class:`corolla.assistant.llm.LLM`
    objects, the same model with different reply limits); its rows, printed (and given to ``on_row``)
    as they come."""
    from corolla.assistant.core import Assistant
    from corolla.models.resolve import local_tokenizer

    model = llm.model
    results = []
    for case in [*cases, *benign]:
        with tempfile.TemporaryDirectory(prefix=f"corolla-review-{case.name}-") as tmp:
            work = stage(case, Path(tmp))
            assistant = Assistant(llm, work, find_tokenizer=local_tokenizer)
            rows = [review(case, v, llm, assistant) for v in variants]
            if do_fix and case.bug:
                rows.append(fix(case, Assistant(fix_llm, work, find_tokenizer=local_tokenizer), work))
        for r in rows:
            r["model"] = model
            detail = " ".join((r.get("error") or r.get("reply") or r.get("check") or "").split())[:90]
            console.print(f"{model:22} {case.name:26} {r['variant']:8} {r['outcome']:11} {r['wall_s']:6.1f} s  "
                          f"{detail}", highlight=False, markup=False)
        results.extend(rows)
        if on_row is not None:
            for r in rows:
                on_row(r)
    return results


def summarize(results: list[dict], n_bugs: int, n_benign: int) -> list[dict]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        for variant in dict.fromkeys(r["variant"] for r in results if r["model"] == model):
            mine = [r for r in results if r["model"] == model and r["variant"] == variant]
            count = {o: sum(r["outcome"] == o for r in mine) for o in
                     ("found", "missed", "clean", "false alarm", "correct", "wrong", "refused", "error")}
            bug_rows = [r for r in mine if r["kind"] != "benign"]
            rows.append({"model": model, "variant": variant, **count, "bugs": n_bugs, "benign": n_benign,
                         "mean_wall_s": statistics.mean(r["wall_s"] for r in bug_rows) if bug_rows else None,
                         "mean_reply_chars": statistics.mean(r.get("reply_chars", 0) for r in mine) if mine else 0})
    return rows


@contextlib.contextmanager
def own_endpoint(model_name: str, servers: int, console, patience_s: float):
    """``servers`` servers of ``model_name`` in a LocalSwarm and corolla's API over a client of it, as
    ``_common.swarm_api`` starts them, with the client's patience raised: on a shared 2-core machine
    (load 15 and more) a server's prefill of a review prompt can take longer than the default 60 s
    and a busy server may not answer a liveness probe within 2 s; the client would then re-route to
    the same server, replay and time out again, forever. Yields (base URL with /v1, model id)."""
    import _common
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serving
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.models.resolve import resolve_model
    from corolla.swarm.local import LocalSwarm, even_spans

    _common.quiet_logs()
    ref = resolve_model(model_name)
    n_layers = load_config(ref.path).num_hidden_layers
    spans = even_spans(n_layers, servers)
    swarm = LocalSwarm(str(ref.path), n_layers, ref.model_id, log_dir=OUT_DIR / "logs" / f"review-{model_name}")
    with contextlib.ExitStack() as stack:
        stack.callback(swarm.stop)
        with console.status(f"starting {servers} server(s) of {ref.model_id} {spans}"):
            swarm.start(spans)
            model = stack.enter_context(DistributedModelForCausalLM.from_pretrained(
                ref.path, initial_peers=swarm.initial_peers, model_id=ref.model_id,
                request_timeout_s=patience_s, liveness_timeout_s=patience_s / 10))
            base = stack.enter_context(serving(create_app(SwarmEngine(model)), "127.0.0.1", 0))
        yield f"{base}/v1", ref.model_id


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verify", action="store_true",
                   help="no model: every check passes on the clean file and fails on the buggy one")
    p.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b"],
                   help="packaged models, each in its own swarm (or model names at --endpoint)")
    p.add_argument("--endpoint", default=None, help="an OpenAI-compatible base URL (.../v1) instead of own swarms")
    p.add_argument("--servers", type=int, default=2, help="servers of each own swarm (default 2, as in issue 20)")
    p.add_argument("--patience-s", type=float, default=600.0,
                   help="the own swarm's client: longest step through one server (default 600; corolla's is 60), "
                        "and a tenth of it for a liveness probe (corolla's is 2 s)")
    p.add_argument("--cases", type=int, default=None, help="only the first N bug cases (default all)")
    p.add_argument("--benign", type=int, default=len(BENIGN), help=f"benign cases (default {len(BENIGN)})")
    p.add_argument("--variants", nargs="*", default=["list", "reasoned", "verdicts", "legacy"],
                   choices=["list", "reasoned", "verdicts", "legacy"],
                   help="review prompts: list, reasoned and verdicts (AssistantConfig.review_style: straight to the "
                        "list of bugs, one sentence on the behaviour first, a verdict on each changed line), legacy "
                        "(before issue 20); default all; none (`--variants` alone): /fix only")
    p.add_argument("--no-fix", action="store_true", help="reviews only")
    p.add_argument("--max-tokens", type=int, default=320, help="longest review (default 320)")
    p.add_argument("--fix-max-tokens", type=int, default=1024,
                   help="longest fix (default 1024, corolla's; a fix is also cut at twice the code it rewrites)")
    p.add_argument("--json", default=str(OUT_DIR / "review.json"))
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    cases, benign = CASES[:args.cases], BENIGN[:args.benign]
    if args.verify:
        bad = 0
        for case in [*CASES, *BENIGN]:
            problems = verify_case(case)
            bad += bool(problems)
            console.print(f"{case.name:26} {case.kind:20} {'ok' if not problems else 'NOT OK: ' + '; '.join(problems)}",
                          highlight=False, markup=False)
        kinds = sorted({c.kind for c in CASES})
        console.print(f"{len(CASES) + len(BENIGN) - bad}/{len(CASES) + len(BENIGN)} cases honest; "
                      f"{len(CASES)} bugs of {len(kinds)} kinds: {', '.join(kinds)}", highlight=False)
        return 1 if bad else 0

    from corolla.assistant.llm import LLM, LLMConfig

    results: list[dict] = []
    rows_file = Path(args.json).with_suffix(".rows.jsonl")  # each row as it comes: a killed run keeps them
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text("")

    def keep(row: dict) -> None:
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    for name in args.models:
        with contextlib.ExitStack() as stack:
            if args.endpoint:
                endpoint, model_id = args.endpoint, name
            else:
                endpoint, model_id = stack.enter_context(own_endpoint(name, args.servers, console, args.patience_s))
            llm = LLM(LLMConfig(endpoint=endpoint, model=model_id, max_tokens=args.max_tokens))
            fix_llm = LLM(LLMConfig(endpoint=endpoint, model=model_id, max_tokens=args.fix_max_tokens))
            results += run_model(cases, benign, llm, fix_llm, variants=args.variants, do_fix=not args.no_fix,
                                 console=console, on_row=keep)

    summary = summarize(results, len(cases), len(benign))
    table = Table(title=f"review and /fix on {len(cases)} seeded bugs and {len(benign)} benign changes")
    for col in ("model", "variant", "review found", "false alarms", "fix correct", "fix refused", "mean latency"):
        table.add_column(col)
    for s in summary:
        is_fix = s["variant"] == "fix"
        table.add_row(s["model"], s["variant"], "" if is_fix else f"{s['found']}/{s['bugs']}",
                      "" if is_fix else f"{s['false alarm']}/{s['benign']}",
                      f"{s['correct']}/{s['bugs']}" if is_fix else "", f"{s['refused']}" if is_fix else "",
                      f"{s['mean_wall_s']:.1f} s" if s["mean_wall_s"] is not None else "")
    console.print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {"models": args.models, "endpoint": args.endpoint or "own swarm", "servers": args.servers,
              "cases": [c.name for c in cases], "benign": [c.name for c in benign], "variants": args.variants,
              "max_tokens": args.max_tokens, "fix_max_tokens": args.fix_max_tokens, "patience_s": args.patience_s,
              "python": sys.version.split()[0],
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv}
    out.write_text(json.dumps({"config": config, "summary": summary, "results": results}, indent=1))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
