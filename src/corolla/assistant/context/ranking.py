"""Which files matter for a request, in two stages so that a 10,000-file workspace stays fast.

1. Cheap signals over every path, no file opened: imported by the current file, the file name
   equals an identifier of the query or selection, path words found in the query, same folder as
   the current file, open in the editor.
2. Only the best candidates (a fixed number, so the result is deterministic) are parsed; files that
   define identifiers used in the query, the selection or the current file gain weight.

Ties are broken by path depth, then path. Both stages are pure functions of their inputs.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from corolla.assistant.context.symbols import Symbol, symbol_language

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
STOPWORDS = frozenset("""
and are but can could does for from has have how into its not now off our out please should that the
their them then there these this those use using was what when where which while who why will with
would you your about after again all also any because been before being both did doing each few
further here just more most must need only other over same some such than too under until very
make fix add explain show tell find change update write code file files function method class test tests
self cls none true false null nil def var let const return import from package public private static
void int str string bool float new func fn pub impl struct type interface async await yield pass else elif
""".split())
PKG_FILES = frozenset({"__init__", "index", "mod", "lib", "main"})


def identifiers(text: str) -> set[str]:
    """Identifiers worth matching in ``text``: three characters or more, not a common word."""
    return {m for m in _IDENT.findall(text) if len(m) >= 3 and m.lower() not in STOPWORDS}


def words(name: str) -> list[str]:
    """``UserStore``/``user_store``/``user-store.py`` -> ``["user", "store", ...]`` (lowercase)."""
    return [w.lower() for w in _WORD.findall(name)]


def _codelike(name: str) -> bool:
    return "_" in name.strip("_") or name[1:] != name[1:].lower() or any(c.isdigit() for c in name)


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# ---- imports of the current file --------------------------------------------------------------
_PY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]*(?:\(([^)]*)\)|([\w \t,*]+))", re.M)
_PY_IMPORT = re.compile(r"^\s*import\s+([\w.]+(?:\s*,\s*[\w.]+)*)", re.M)
_JS_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)['"]([^'"\n]+)['"]""")
_GO_IMPORT_BLOCK = re.compile(r"^\s*import\s*\(([^)]*)\)", re.M)
_GO_IMPORT = re.compile(r'^\s*import\s+(?:[\w.]+\s+)?"([^"]+)"', re.M)
_RUST_USE = re.compile(r"^\s*(?:pub\s+)?use\s+(\w+(?:::\w+)*)(?:::\{([^}]*)\})?", re.M)
_RUST_MOD = re.compile(r"^\s*(?:pub\s+)?mod\s+(\w+)\s*;", re.M)
_JAVA_IMPORT = re.compile(r"^\s*import\s+(?:static\s+)?([\w.]+)(\.\*)?\s*;", re.M)


def import_fragments(rel: str, text: str) -> list[str]:
    """Path fragments (no extension) of what ``rel`` imports; relative imports resolved against it."""
    language, folder = symbol_language(rel), posixpath.dirname(rel)
    out: list[str] = []
    if language == "python":
        for module, grouped, names in _PY_FROM.findall(text):
            names = grouped or names
            dots = len(module) - len(module.lstrip("."))
            base = module[dots:].replace(".", "/")
            if dots:
                up = folder
                for _ in range(dots - 1):
                    up = posixpath.dirname(up)
                base = posixpath.join(up, base) if base else up
            if base:
                out.append(base)
            out += [posixpath.join(base, n) for n in re.findall(r"\w+", names) if n != "as"]
        for group in _PY_IMPORT.findall(text):
            out += [m.strip().replace(".", "/") for m in group.split(",")]
    elif language in ("javascript", "typescript", "tsx"):
        for spec in _JS_IMPORT.findall(text):
            if spec.startswith("."):
                out.append(posixpath.normpath(posixpath.join(folder, spec)))
            else:
                out.append(re.sub(r"^[@~]/", "", spec))
    elif language == "go":
        for block in _GO_IMPORT_BLOCK.findall(text):
            out += re.findall(r'"([^"]+)"', block)
        out += _GO_IMPORT.findall(text)
    elif language == "rust":
        for path, names in _RUST_USE.findall(text):
            base = "/".join(p for p in path.split("::") if p not in ("crate", "self", "super", ""))
            out.append(base)
            out += [posixpath.join(base, n.strip()) for n in names.split(",") if n.strip().isidentifier()]
        out += [posixpath.join(folder, m) for m in _RUST_MOD.findall(text)]
    elif language == "java":
        out += [m.replace(".", "/") for m, _ in _JAVA_IMPORT.findall(text)]
    return sorted({f.strip("/") for f in out if f.strip("/") and not f.startswith("..")})


def _aligned(a: str, b: str) -> bool:
    """Whether one path is a suffix of the other at a ``/`` boundary."""
    if len(a) < len(b):
        a, b = b, a
    return a == b or a.endswith("/" + b)


def imported_files(fragments: Iterable[str], files: Iterable[str]) -> set[str]:
    """The files that the import fragments name (modules, or packages/directories of them)."""
    by_last: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for f in files:  # str operations, not posixpath: this runs for every file of the workspace
        slash = f.rfind("/")
        folder, name = f[:max(slash, 0)], f[slash + 1:]
        dot = name.rfind(".")
        stem = name[:dot] if dot > 0 else name
        by_last[stem].append((f[:slash + 1 + dot] if dot > 0 else f, f))
        if folder and (stem in PKG_FILES or name.endswith((".go", ".java"))):
            by_last[folder[folder.rfind("/") + 1:]].append((folder, f))
    hits: set[str] = set()
    for frag in fragments:
        for target, f in by_last.get(posixpath.basename(frag), ()):
            if _aligned(target, frag):
                hits.add(f)
    return hits


# ---- scoring ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signals:
    """What a request tells about relevance (built once per request)."""

    query_idents: frozenset[str] = frozenset()  # identifiers written in the query
    selection_idents: frozenset[str] = frozenset()
    current_idents: frozenset[str] = frozenset()  # identifiers used in the current file
    current_file: str | None = None
    open_files: frozenset[str] = frozenset()
    imported: frozenset[str] = frozenset()  # files the current file imports

    @functools.cached_property
    def query_words(self) -> frozenset[str]:
        return frozenset(w for i in self.query_idents for w in words(i) if len(w) >= 4 and w not in STOPWORDS)


def cheap_scores(files: list[str], signals: Signals) -> dict[str, float]:
    """Stage 1: a score for every path from its name and place alone (no file is read)."""
    scores: dict[str, float] = defaultdict(float)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_stem[_norm(f[f.rfind("/") + 1:].split(".", 1)[0])].append(f)
    for weight, idents in ((8.0, signals.query_idents), (5.0, signals.selection_idents),
                           (1.0, signals.current_idents)):
        for norm in sorted({_norm(i) for i in idents}):
            for f in by_stem.get(norm, ()):
                scores[f] += weight
    qwords = sorted(signals.query_words)
    folder = posixpath.dirname(signals.current_file) if signals.current_file else None
    parent = posixpath.dirname(folder) if folder else None
    for f in files:
        if qwords:
            low = f.lower()
            hits = sum(1 for w in qwords if w in low)
            if hits:
                scores[f] += 2.0 * hits
        if folder is not None:
            here = f[:max(f.rfind("/"), 0)]
            if here == folder:
                scores[f] += 3.0
            elif here == parent or here[:max(here.rfind("/"), 0)] == folder:
                scores[f] += 1.0
    for f in signals.imported:
        scores[f] += 10.0
    for f in signals.open_files:
        scores[f] += 4.0
    return scores


def symbol_score(symbols: Iterable[Symbol], signals: Signals) -> float:
    """Stage 2: weight for defining what the query, the selection or the current file uses."""
    names = {s.name for s in symbols if len(s.name) >= 3}
    if not names:
        return 0.0
    query_lower = {i.lower() for i in signals.query_idents}
    # a name that looks like code (snake_case, camelCase) is a stronger hint than a plain word
    score = sum(10.0 if _codelike(n) else 5.0 for n in names if n.lower() in query_lower)
    score += 4.0 * len(names & signals.selection_idents)
    score += 1.5 * min(len(names & signals.current_idents), 8)
    qwords = signals.query_words
    if qwords:  # UserStore when the query says "user store"
        score += 2.0 * sum(1 for n in names if len(ws := set(words(n))) > 1 and ws <= qwords)
    return score


def rank_key(path: str, score: float) -> tuple[float, int, str]:
    """Best first; ties: shallower paths, then alphabetical (deterministic)."""
    return (-score, path.count("/"), path)
