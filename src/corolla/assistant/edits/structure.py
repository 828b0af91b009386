"""The structure guard: refuse an edit that removes, renames or re-nests a definition other code uses.

A small model asked to fix one line of a function sometimes sends the function back one level
deeper: the file still parses, so the syntax guard lets it through, yet the function is now nested
inside the one above it and every caller breaks. This guard compares the definitions before and
after the edit. Python only (:mod:`ast`); other languages and files that do not parse are never
refused here.

*Tracked*: the module's and its classes' functions, classes and methods (also inside module-level
``if``/``try``/``with`` blocks), and module-level assignments and imports of names in ``__all__``.
Definitions inside a function are its locals and are not tracked.

*Used*, so protected, is a tracked definition whose name is listed in ``__all__``; or is public (no
leading underscore, dunders included): other modules may import it or call it on an instance, and
one file cannot tell whether they do; or is still referenced in the file after the edit (as a name
or an attribute). Only a private definition that nothing refers to any more may go without asking.

A protected definition that is no longer at its place was ``nested`` (its name is now defined inside
a function), ``moved`` (into another class, or out of one), ``renamed`` (a new definition of the
same kind appeared at its place) or ``removed``. :class:`Allowance` says which of these the request
asked for: the definitions it names when it also says to remove, rename, move, nest, inline or merge
something, or all of them when the caller passes ``everything`` (the CLI's ``--allow-structure``).

Even an allowed removal or renaming of a module-level definition is refused while the file still reads
the old name and nothing in it defines that name any more (``rename calc_avg to mean_of`` that renamed
the ``def`` but not the calls): that file would fail with a NameError the moment those lines run.
"""

from __future__ import annotations

import ast
import builtins
import re
import warnings
from dataclasses import dataclass, field

from corolla.assistant.errors import StructureBreakError
from corolla.assistant.languages import language_of

_VERBS = re.compile(r"\b(?:remov|delet|drop|renam|mov|nest|un-?nest|inlin|merg|combin|refactor|restructur|"
                    r"reorgani[sz])\w*", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SCOPES = (ast.If, ast.Try, ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While) + (
    (ast.TryStar,) if hasattr(ast, "TryStar") else ())


@dataclass(frozen=True)
class Definition:
    """A name defined by a def, class, assignment or import, and the definitions around it."""

    name: str
    kind: str  # "function", "class", "variable" or "import"
    parents: tuple[tuple[str, str], ...] = ()  # (kind, name) of each enclosing def/class, outermost first
    line: int = 0

    @property
    def qualname(self) -> str:
        return ".".join([n for _, n in self.parents] + [self.name])

    @property
    def key(self) -> tuple[tuple[str, ...], str]:
        return tuple(n for _, n in self.parents), self.name

    @property
    def local(self) -> bool:
        """Defined inside a function (a local of it), not reachable from outside."""
        return any(kind == "function" for kind, _ in self.parents)


@dataclass(frozen=True)
class StructureChange:
    """What an edit does to one protected definition; ``to`` is its new qualified name (nested/moved/renamed)."""

    name: str
    qualname: str
    change: str  # "removed", "renamed", "nested" or "moved"
    used: str  # why it is protected: "exported", "public" or "referenced"
    to: str = ""
    to_parent_kind: str = ""  # "function", "class" or "" (module level) for nested/moved

    def describe(self) -> str:
        what = f"`{self.qualname}`"
        if self.change == "nested":
            parent = self.to.rsplit(".", 1)[0]
            how = f"{what} would become nested inside `{parent}`"
        elif self.change == "moved":
            how = (f"{what} would move to the module level" if not self.to_parent_kind
                   else f"{what} would move into class `{self.to.rsplit('.', 1)[0]}`")
        elif self.change == "renamed":
            how = f"{what} would be renamed to `{self.to}`"
        else:
            how = f"{what} would be removed"
        why = {"exported": "it is listed in __all__", "public": "it is public: other code may import or call it",
               "referenced": "the file still refers to it"}[self.used]
        return f"{how} ({why})"


@dataclass(frozen=True)
class Allowance:
    """Which structural changes a request asked for: the definitions in ``names``, or all (``everything``)."""

    names: frozenset[str] = field(default_factory=frozenset)
    everything: bool = False

    @classmethod
    def from_request(cls, text: str, *, everything: bool = False) -> Allowance:
        """The definitions ``text`` names, when it also says to remove, rename, move, nest, inline or merge.

        "rename shorten to truncate" allows changing ``shorten``; "fix the bug in shorten" does not.
        """
        names: set[str] = set()
        if _VERBS.search(text or ""):
            for token in _IDENTIFIER.findall(text):
                names.add(token)
                names.update(token.split("."))
        return cls(frozenset(names), everything)

    def allows(self, change: StructureChange) -> bool:
        return self.everything or change.name in self.names or change.qualname in self.names


NOTHING = Allowance()
EVERYTHING = Allowance(everything=True)


def definitions(tree: ast.Module) -> list[Definition]:
    """Every definition in ``tree``, at any depth, in source order."""
    out: list[Definition] = []

    def walk(body: list[ast.stmt], parents: tuple[tuple[str, str], ...]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                out.append(Definition(node.name, kind, parents, node.lineno))
                walk(node.body, parents + ((kind, node.name),))
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            out.append(Definition(name.id, "variable", parents, node.lineno))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name != "*":
                        out.append(Definition(alias.asname or alias.name.split(".")[0], "import", parents,
                                              node.lineno))
            elif isinstance(node, _SCOPES):  # same scope: a def under `if TYPE_CHECKING:` is still the module's
                for part in ("body", "orelse", "finalbody"):
                    walk(getattr(node, part, []), parents)
                for handler in getattr(node, "handlers", []):
                    walk(handler.body, parents)
            elif isinstance(node, ast.Match):
                for case in node.cases:
                    walk(case.body, parents)

    walk(tree.body, ())
    return out


def exported(tree: ast.Module) -> set[str]:
    """The names in the module's ``__all__`` (string literals assigned or added to it at module level)."""
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            names.update(e.value for e in ast.walk(node.value)
                         if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return names


def referenced(tree: ast.Module) -> set[str]:
    """Every name the code reads, and every attribute it reads (``self.wrap``, ``textwrap.shorten``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return names


def structural_changes(before: str, after: str) -> list[StructureChange]:
    """What turning Python source ``before`` into ``after`` does to the definitions other code uses.

    Empty when either does not parse (the syntax guard speaks for that).
    """
    old, new = _parse(before), _parse(after)
    if old is None or new is None:
        return []
    exports = exported(old) | exported(new)
    uses = referenced(new)
    old_defs = definitions(old)
    new_defs = definitions(new)
    old_keys = {d.key for d in old_defs}
    new_keys = {d.key for d in new_defs}
    # definitions the edit created, where a definition that left its place may have gone
    arrived = [d for d in new_defs if d.key not in old_keys]
    changes: list[StructureChange] = []
    seen: set[tuple[tuple[str, ...], str]] = set()
    for d in old_defs:
        if d.key in new_keys or d.key in seen or d.local:
            continue
        seen.add(d.key)
        if d.kind in ("variable", "import") and (d.parents or d.name not in exports):
            continue
        used = ("exported" if not d.parents and d.name in exports else
                "public" if not d.name.startswith("_") or _dunder(d.name) else
                "referenced" if d.name in uses else "")
        if not used:
            continue
        changes.append(_what_became_of(d, used, arrived))
    return changes


def check_structure(path: str, before: str | None, after: str, allow: Allowance = NOTHING) -> None:
    """Raise :class:`StructureBreakError` if the edit of Python file ``path`` changes a used definition
    that ``allow`` does not cover."""
    if before is None or language_of(path) != "python":
        return
    changes = structural_changes(before, after)
    refused = [c for c in changes if not allow.allows(c)]
    dangling = [] if refused else _dangling(after, changes)
    if dangling:
        listed = "; ".join(f"`{c.qualname}` would be {c.change}" + (f" to `{c.to}`" if c.to else "")
                           + f" but the file still uses `{c.name}` (line{'s' if len(lines) > 1 else ''} "
                           + ", ".join(map(str, lines)) + ")" for c, lines in dangling)
        raise DanglingNameError(f"{path}: the edit would leave names that nothing defines: {listed}. Change "
                                "those uses too, in the same edit", [c for c, _ in dangling])
    if refused:
        listed = "; ".join(c.describe() for c in refused)
        raise StructureBreakError(
            f"{path}: the edit would break code that uses what it changes: {listed}. Keep "
            + ("these definitions where they are, with their names" if len(refused) > 1
               else "the definition where it is, with its name")
            + ", and change only what was asked; if such a change is wanted, the request must say so "
              "(e.g. \"rename X to Y\", \"remove X\")", refused)


class DanglingNameError(StructureBreakError):
    """An allowed removal or renaming that leaves uses of the old name behind (see the module's docstring)."""


def _dangling(after: str, changes: list[StructureChange]) -> list[tuple[StructureChange, list[int]]]:
    """The module-level definitions removed or renamed by ``changes`` that ``after`` still reads (with the
    lines) although nothing in it binds the name any more and it is no builtin."""
    tree = _parse(after)
    gone = [c for c in changes if c.change in ("removed", "renamed") and c.qualname == c.name]
    if tree is None or not gone:
        return []
    bound: set[str] = set()
    reads: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                reads.setdefault(node.id, []).append(node.lineno)
            else:
                bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
            if node.name == "*":
                return []  # a star import may define anything
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return [(c, sorted(set(reads[c.name]))) for c in gone
            if c.name in reads and c.name not in bound and not hasattr(builtins, c.name)]


def _what_became_of(d: Definition, used: str, arrived: list[Definition]) -> StructureChange:
    """Where the protected definition ``d`` went: a new place with its name, a new name at its place, or nowhere.

    Claims the arrived definition it pairs with, so two removed methods do not both become one new one.
    """
    def same_kind(a: Definition) -> bool:  # a def may become a class or the reverse; a variable stays one
        return a.kind == d.kind or {a.kind, d.kind} <= {"function", "class"}

    same_name = next((a for a in arrived if a.name == d.name and same_kind(a)), None)
    if same_name is not None:
        arrived.remove(same_name)
        parent_kind = same_name.parents[-1][0] if same_name.parents else ""
        change = "nested" if same_name.local else "moved"
        return StructureChange(d.name, d.qualname, change, used, same_name.qualname, parent_kind)
    same_place = next((a for a in arrived if a.parents == d.parents and a.kind == d.kind), None)
    if same_place is not None:
        arrived.remove(same_place)
        return StructureChange(d.name, d.qualname, "renamed", used, same_place.qualname)
    return StructureChange(d.name, d.qualname, "removed", used)


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _parse(text: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
