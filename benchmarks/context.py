"""Context engine speed: ``build_context`` on a generated 10,000-file workspace, cold and warm.

The workspace (in a temp folder, removed afterwards) mixes Python, TypeScript/TSX, JavaScript, Go,
Rust, Java, markdown and JSON in nested folders, with a ``.gitignore`` that hides build output and
``node_modules`` (another ``--ignored`` files that must not be listed). The request is realistic:
a current file with a selection and imports, two open files, a query naming a function defined
deep in the tree, the default 3,000-token budget.

Measured, for a git work tree (``git ls-files``) and for the same folder without ``.git`` (a walk
applying the ``.gitignore`` files):
- cold: the in-memory symbol cache cleared before each run (the OS page cache stays warm);
- warm: the cache left from the run before;
- baselines in the same run: listing the files alone (``list_files``) and ``git ls-files`` alone.

Target: 1 s per cold call on this 2-core machine; figures are printed as "x of target" and as
multiples of the listing baseline. Results also go to ``benchmarks/out/context.json``.

    .venv/bin/python benchmarks/context.py [--files 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _common
from _common import OUT_DIR
from corolla.assistant.context import EditorState, build_context, clear_cache, list_files

TARGET_S = 1.0
LANGS = ("py", "ts", "tsx", "js", "go", "rs", "java", "md", "json")
WEIGHTS = (30, 15, 5, 10, 10, 8, 10, 7, 5)
WORDS = ("user", "order", "invoice", "billing", "cart", "session", "token", "cache", "report", "export",
         "price", "stock", "account", "payment", "shipping", "review", "search", "index", "auth", "mail")


STATEMENT = {  # one line of a function body, valid in each language
    "py": "    value_{j} = compute_{j}(arg)  # step {j}",
    "ts": "    const value_{j} = compute_{j}(arg);  // step {j}",
    "tsx": "    const value_{j} = compute_{j}(arg);  // step {j}",
    "js": "    const value_{j} = compute_{j}(arg);  // step {j}",
    "go": "    value_{j} := compute_{j}(arg)  // step {j}",
    "rs": "        let value_{j} = compute_{j}(arg);  // step {j}",
    "java": "        int value_{j} = compute_{j}(arg);  // step {j}",
}


def _name(rng: random.Random, k: int = 2) -> str:
    return "_".join(rng.choice(WORDS) for _ in range(k))


def _camel(snake: str) -> str:
    return "".join(w.title() for w in snake.split("_"))


def source(ext: str, rng: random.Random, stem: str) -> str:
    """A plausible file of ~60-120 lines with a few classes and functions."""
    out: list[str] = ["package app", ""] if ext == "go" else []
    for i in range(rng.randint(3, 6)):
        fn, cls = f"{_name(rng)}_{i}", _camel(f"{stem}_{_name(rng, 1)}_{i}")
        steps = range(rng.randint(5, 15))
        body = [STATEMENT[ext].format(j=j) for j in steps] if ext in STATEMENT else []
        if ext == "py":
            out += [f"class {cls}:", f"    def {fn}(self, arg):", *("    " + b for b in body), "        return arg", ""]
        elif ext in ("ts", "tsx", "js"):
            out += [f"export class {cls} {{", f"  {fn}(arg) {{", *body, "    return arg;", "  }", "}", "",
                    f"export function {fn}_fn(arg) {{", "  return arg;", "}", ""]
        elif ext == "go":
            out += [f"type {cls} struct {{", "    Value int", "}", "", f"func (s *{cls}) {_camel(fn)}(arg int) int {{",
                    *body, "    return arg", "}", ""]
        elif ext == "rs":
            out += [f"pub struct {cls} {{ value: i32 }}", "", f"impl {cls} {{",
                    f"    pub fn {fn}(&self, arg: i32) -> i32 {{", *body, "        arg", "    }", "}", ""]
        elif ext == "java":
            out += [f"class {cls} {{", f"    int {fn}(int arg) {{", *body, "        return arg;", "    }", "}", ""]
        elif ext == "md":
            out += [f"# {cls}", "", *(f"Some notes about {fn} and step {j}." for j in range(8)), ""]
        else:
            out += ["{", *(f'  "{fn}_{j}": {j},' for j in range(8)), '  "end": 0', "}"]
    return "\n".join(out) + "\n"


def generate(root: Path, n_files: int, n_ignored: int, seed: int = 0) -> dict:
    """The workspace; returns the request to time (current file, open files, query)."""
    rng = random.Random(seed)
    (root / ".gitignore").write_text("build/\nnode_modules/\n*.log\n__pycache__/\n")
    folders = [f"{a}/{b}/{c}" for a in ("services", "libs", "apps", "tools", "web")
               for b in WORDS[:10] for c in ("core", "api", "util", "models")]  # 200 leaf folders
    paths = []
    for i in range(n_files):
        ext = rng.choices(LANGS, WEIGHTS)[0]
        paths.append(f"{rng.choice(folders)}/{_name(rng)}_{i}.{ext}")
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        stem = path.stem
        path.write_text(source(rel.rsplit(".", 1)[1], rng, stem))
    for folder in rng.sample(folders, 20):  # nested .gitignore files
        (root / folder / ".gitignore").write_text("*.tmp\n")
        (root / folder / "scratch.tmp").write_text("scratch\n")
    for i in range(n_ignored):
        path = root / ("node_modules" if i % 2 else "build") / f"pkg{i % 37}" / f"ignored_{i}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("function ignored() { return 1 }\n")
    # the request: a Python file that imports a deep module and whose query names its function
    py = [p for p in paths if p.endswith(".py")]
    current, target = py[0], py[len(py) // 2]
    target_module = target[:-3].replace("/", ".")
    fn = next(line.split("def ")[1].split("(")[0] for line in (root / target).read_text().splitlines()
              if "def " in line)
    text = (root / current).read_text()
    (root / current).write_text(f"from {target_module} import {fn}\n\n" + text)
    return {"current": current, "target": target, "open": py[1:3], "fn": fn,
            "query": f"why does {fn} return the wrong total? fix it in #file:{target}"}


def timed(fn, runs: int, before=None) -> list[float]:
    out = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "max_s": max(times), "runs": len(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--files", type=int, default=10_000, help="listed files (default 10000)")
    p.add_argument("--ignored", type=int, default=2_000, help="extra files the .gitignore hides (default 2000)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each kind (default 5)")
    p.add_argument("--budget", type=int, default=3000, help="token budget (default 3000)")
    p.add_argument("--quiet-idle", type=float, default=0.6, help="wait until this share of CPU is idle (0: never)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="corolla-context-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        req = generate(root, args.files, args.ignored)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "init"],
                       cwd=root, check=True)
        print(f"generated {args.files} files (+{args.ignored} ignored) in {time.perf_counter() - t0:.1f} s: {root}")
        state = EditorState(root, current_file=req["current"], selection=(3, 8), open_files=tuple(req["open"]))

        def call():
            return build_context(state, req["query"], budget_tokens=args.budget)

        results = {}
        for mode in ("git", "walk"):
            if mode == "walk":
                shutil.move(root / ".git", root.parent / (root.name + ".git-off"))
            try:
                if args.quiet_idle > 0:
                    _common.wait_quiet(args.quiet_idle, 60.0)
                listed = len(list_files(root))
                base = timed(lambda: list_files(root), args.runs)
                cold = timed(call, args.runs, before=clear_cache)
                warm = timed(call, args.runs)
                ctx = call()
                results[mode] = {"listed": listed, "list_files": summary(base), "cold": summary(cold),
                                 "warm": summary(warm), "parts": ctx.to_json(), "dropped": ctx.dropped}
                if mode == "git":
                    results[mode]["git_ls_files"] = summary(timed(lambda: subprocess.run(
                        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                        capture_output=True, check=True), args.runs))
                results[mode]["target_shown"] = req["target"] in ctx.render()
            finally:
                if mode == "walk":
                    shutil.move(root.parent / (root.name + ".git-off"), root / ".git")

    for mode, r in results.items():
        base = r["list_files"]["median_s"]
        git = (f"; git ls-files alone: median {r['git_ls_files']['median_s'] * 1000:.0f} ms"
               if "git_ls_files" in r else "")
        print(f"\n[{mode}] {r['listed']} files listed; list_files alone: median {base * 1000:.0f} ms" + git)
        for kind in ("cold", "warm"):
            s = r[kind]
            print(f"  build_context {kind}: median {s['median_s']:.3f} s, max {s['max_s']:.3f} s "
                  f"= {s['median_s'] / TARGET_S:.2f}x of target (max {s['max_s'] / TARGET_S:.2f}x), "
                  f"{s['median_s'] / base:.1f}x list_files")
        print(f"  parts: {', '.join(p['kind'] + ('*' if p['truncated'] else '') for p in r['parts'])}; "
              f"dropped: {r['dropped'] or 'none'}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "context.json").write_text(json.dumps({"env": _common.environment(), "args": vars(args),
                                                       "target_s": TARGET_S, "results": results}, indent=2))
    print(f"\nwritten {OUT_DIR / 'context.json'}")


if __name__ == "__main__":
    main()
