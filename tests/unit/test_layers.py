"""The layers of corolla hold: every module's imports, read with ``ast`` (nothing is imported).

Dependencies point downward (see DESIGN.md)::

    cli ─> api, assistant ─> client, server ─> models, swarm ─> protocol, errors

and a few neutral modules that import nothing of corolla may be used by anyone. Each rule below
says why it exists; a wrong arrow fails here, not in a review.

What counts as an import: every ``import`` and ``from ... import`` of a corolla module anywhere in
a file, at module level or inside a function, under ``if TYPE_CHECKING:`` or not. A function-level
import is still a dependency (it runs the first time the function does); hiding an upward import
or a cycle in a function only moves the failure to run time. Lazily imported third-party packages
(torch, transformers, rich...) are not checked here: deferring heavy dependencies is encouraged.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "corolla"

#: modules that import nothing of corolla, so that any layer may use them
NEUTRAL = {
    "corolla.errors": "the documented exception tree: every layer raises its errors, and they must be "
                      "importable without loading any other part of corolla",
    "corolla.shutdown": "the stop deadline of long-running commands (stdlib only): servers, the API and the "
                        "assistant's service all arm it",
    "corolla.sse": "server-sent events (starlette and anyio only): the OpenAI-compatible API and the "
                   "assistant's service both stream through it, and neither may import the other",
    "corolla.cache": "where corolla keeps models and measurements, file locks and atomic writes (stdlib "
                     "only): models fetch into it, servers keep their throughput figures in it",
}

ANY_NEUTRAL = frozenset(NEUTRAL)

#: what each layer may import besides its own modules, and why
MAY_IMPORT: dict[str, tuple[frozenset[str], str]] = {
    "protocol": (frozenset({"corolla.errors"}),
                 "wire types are the bottom layer together with errors: every peer (and any tool reading the DHT) "
                 "parses them, so they depend on nothing else of corolla, not even the other neutral modules"),
    "models": (frozenset({"protocol"}) | ANY_NEUTRAL,
               "model families, loading and the model cache serve servers and clients alike; they know nothing of "
               "the network (swarm) or of who runs them"),
    "swarm": (frozenset({"protocol"}) | ANY_NEUTRAL,
              "hivemind glue (DHT, announcements, discovery, routing) is pure swarm logic: it may start server "
              "processes as commands (swarm/local.py) but never imports server, client or model code"),
    "server": (frozenset({"protocol", "models", "swarm"}) | ANY_NEUTRAL,
               "a peer serves blocks: it must run without the client, the API, the assistant or the CLI"),
    "client": (frozenset({"protocol", "models", "swarm"}) | ANY_NEUTRAL,
               "a client chains servers over the wire only: it never imports server code, nor anything built on "
               "top of it"),
    "api": (frozenset({"protocol", "models", "swarm", "client"}) | ANY_NEUTRAL,
            "the OpenAI-compatible API drives a client; it never runs a server in-process and knows nothing of the "
            "assistant that may call it"),
    "assistant": (frozenset({"corolla.errors", "corolla.shutdown", "corolla.sse"}),
                  "the assistant reaches a model only through an OpenAI-compatible endpoint, so it works with any "
                  "endpoint and tests can script the model; it does not even know where corolla keeps models "
                  "(corolla.cache): its caller (the CLI) hands it what it needs, such as where a tokenizer is"),
}

#: modules at the top, which may import anything: the command line and the package's public facade
TOP = {"cli", "__main__", ROOT}

#: names of the root package that anyone may import: constants defined there, importing nothing
ROOT_CONSTANTS = {"__version__"}


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the corolla module imported (a package's ``__init__`` is the package's name)
    line: int
    lazy: bool  # inside a function (runs when the function first does)

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}" + (" (inside a function)" if self.lazy else "")


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


MODULES = module_files()


def _known(name: str) -> str:
    """The module ``name`` refers to: itself, or the closest package above it that exists."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _walk(node: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, lazy
        inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inner)


def imports_of(module: str) -> list[Import]:
    """The corolla modules that ``module`` imports, resolved to files (relative imports included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, lazy in _walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [_known(alias.name) for alias in node.names if alias.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                if base == ROOT and alias.name in ROOT_CONSTANTS:
                    continue  # `from corolla import __version__`: a constant, no dependency
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in MODULES else _known(base))
        found += [Import(module, t, node.lineno, lazy) for t in dict.fromkeys(targets) if t != module]
    return found


ALL_IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def layer_of(module: str) -> str:
    """``protocol``, ``models``, ... for packages; the module itself for top-level modules."""
    if module == ROOT:
        return ROOT
    if module in NEUTRAL:
        return module
    return module.split(".")[1]


# ---- the reader itself ------------------------------------------------------------------------------
def test_the_reader_sees_imports_of_every_kind():
    """Guards against a vacuous pass: plain, submodule (``from package import module``) and function-level
    imports are all found."""
    cli_main = {i.target for i in imports_of("corolla.cli.main")}
    assert {"corolla.cli.agent", "corolla.cli.server", "corolla.errors"} <= cli_main  # `from corolla.cli import agent`
    assert "corolla" not in cli_main  # `from corolla import __version__` is a constant
    cli_models = [i for i in imports_of("corolla.cli.models") if i.target == "corolla.models.resolve"]
    assert cli_models and all(i.lazy for i in cli_models)
    assert any(i.target == "corolla.protocol.messages" for i in imports_of("corolla.swarm.discovery"))


def test_every_module_belongs_to_a_layer():
    """A new package or top-level module must be placed in the rules below before it is used."""
    known = set(MAY_IMPORT) | TOP | set(NEUTRAL)
    unplaced = sorted(m for m in MODULES if layer_of(m) not in known)
    assert unplaced == [], f"add these to MAY_IMPORT, TOP or NEUTRAL in {Path(__file__).name}: {unplaced}"


# ---- the rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("neutral", sorted(NEUTRAL))
def test_neutral_modules_import_nothing_of_corolla(neutral):
    assert neutral in MODULES, f"{neutral} is listed as neutral but does not exist"
    wrong = [str(i) for i in ALL_IMPORTS if i.source == neutral]
    assert wrong == [], f"{neutral} must import nothing of corolla ({NEUTRAL[neutral]}):\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_layer_imports_only_what_is_below_it(layer):
    allowed, reason = MAY_IMPORT[layer]
    wrong = [str(i) for i in ALL_IMPORTS
             if layer_of(i.source) == layer and layer_of(i.target) not in allowed | {layer}]
    assert wrong == [], (f"{layer} may import only itself and {', '.join(sorted(allowed))}: {reason}.\n"
                         + "\n".join(wrong))


def test_nothing_imports_the_command_line():
    """The CLI maps flags onto the layers' config objects; nothing below may depend on it (only ``python -m
    corolla`` starts it)."""
    wrong = [str(i) for i in ALL_IMPORTS
             if layer_of(i.target) == "cli" and layer_of(i.source) not in ("cli", "__main__")]
    assert wrong == [], "\n".join(wrong)


def test_only_the_top_imports_the_package_facade():
    """``corolla/__init__.py`` re-exports the client (lazily); importing it from a lower layer would be an
    upward arrow in disguise. Its constants (``__version__``) are free to use."""
    wrong = [str(i) for i in ALL_IMPORTS if i.target == ROOT and layer_of(i.source) not in TOP]
    assert wrong == [], "\n".join(wrong)


# ---- no cycles --------------------------------------------------------------------------------------
def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_cycles():
    fake = [Import("corolla.models.fetch", "corolla.models.resolve", 1, False),
            Import("corolla.models.resolve", "corolla.models.convert", 1, True),
            Import("corolla.models.convert", "corolla.models.fetch", 1, False)]
    assert import_cycles(fake) == [["corolla.models.convert", "corolla.models.fetch", "corolla.models.resolve"]]


def test_no_import_cycles():
    """Modules that import each other (even inside a function) cannot be understood, tested or split
    one at a time, and their import order matters; the layers forbid cycles between packages, this
    forbids them between the modules of a package."""
    cycles = import_cycles(ALL_IMPORTS)
    shown = []
    for cycle in cycles:
        members = set(cycle)
        shown.append(" <-> ".join(cycle) + "\n  " + "\n  ".join(
            str(i) for i in ALL_IMPORTS if i.source in members and i.target in members))
    assert cycles == [], "import cycles:\n" + "\n".join(shown)
