"""The pure parts of completions as you type (fill-in-the-middle), used by :mod:`corolla.assistant.completions`.

Given the text around the cursor they decide, without I/O: the shape (:func:`plan`: one line, a block,
or nothing), the prompt within its token budget (:func:`build_prompt`, with the snippets the caller
found), when the streamed middle is complete (:class:`Cutter`) and what of it to show (:func:`finish`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from corolla.assistant.context.budget import CHARS_PER_TOKEN_MAX, Counter, largest_fit
from corolla.assistant.context.ranking import identifiers
from corolla.assistant.context.symbols import Symbol
from corolla.assistant.languages import language_of

FIM_OVERHEAD_TOKENS = 3  # <|fim_prefix|> <|fim_suffix|> <|fim_middle|>


@dataclasses.dataclass(frozen=True)
class CompletionConfig:
    # The whole prompt of one line: snippets, prefix and suffix windows. Small, because the prefill is what a
    # CPU swarm makes you wait for before the first ghost text: Qwen2.5-Coder-0.5B's blocks cost about
    # 0.2 s + 8 ms a token of one core, and on HumanEval single-line infilling 128 tokens did as well as 640
    # (benchmarks/completions.py --budget-tokens 640 128 80).
    budget_tokens: int = 128
    suffix_tokens: int = 32  # at most this much of the budget for the text after the cursor
    snippet_tokens: int = 32  # at most this much for snippets from other places
    # A block takes seconds to write anyway, and needs more of the function above it (128 tokens solved
    # 11 of 18 HumanEval blocks against 14 with the whole file), so its prompt may be bigger.
    block_budget_tokens: int = 384
    block_suffix_tokens: int = 96
    block_snippet_tokens: int = 96
    max_snippets: int = 3
    snippet_lines: int = 10  # lines of one definition shown at most
    near_lines: int = 8  # lines around the cursor whose identifiers choose the snippets
    single_line_tokens: int = 48  # max_tokens of a one-line completion
    multi_line_tokens: int = 128  # max_tokens of a block
    multi_line_lines: int = 16  # a block is cut after this many lines
    temperature: float = 0.0
    repo_map: bool = True  # look for definitions in the repo map's best files too
    repo_parse: int = 40  # files parsed at most for that (repomap.rank_files' max_parse)
    repo_deadline_s: float = 0.1
    files_ttl_s: float = 10.0  # the workspace's file list is listed again after this long
    cache_entries: int = 256


# ---- languages ---------------------------------------------------------------------------------
# VS Code language ids (and tree-sitter names) -> the names used here
_ALIASES = {"javascriptreact": "javascript", "typescriptreact": "tsx", "jsx": "javascript", "py": "python",
            "shellscript": "shell", "bash": "shell", "sh": "shell", "c++": "cpp"}
INDENT_LANGUAGES = frozenset({"python", "yaml"})  # blocks open with ":" and are made by indentation
_HASH = frozenset({"python", "shell", "ruby", "yaml", "toml", "perl", "r", "julia", "elixir", "makefile",
                   "dockerfile", "powershell", "coffeescript", "nim", "cmake"})
_DASHES = frozenset({"sql", "lua", "haskell", "elm", "ada"})
_SLASHES = frozenset({"javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "csharp", "kotlin",
                      "swift", "scala", "dart", "php", "groovy", "zig", "objective-c", "objective-cpp", "proto",
                      "jsonc", "less", "scss", "solidity", "vue", "svelte"})
_NO_SNIPPETS = frozenset({"plaintext", "markdown", "json", "html", "xml", "css", "csv", "log", "scminput"})
_OPENERS = "([{"
_CLOSERS = ")]}"
_REST_OK = re.compile(r"""^[\s)\]}>"'`;:,]*$""")  # what may follow the cursor on its line (closers)
_WORD = re.compile(r"\w")


def normalize_language(language: str | None, path: str | None) -> str | None:
    """A VS Code language id (or, without one, the path's language) in this module's names."""
    if language:
        lang = language.strip().lower()
        return _ALIASES.get(lang, lang)
    return language_of(path) if path else None


def line_stops(language: str | None) -> list[str]:
    """The API's stop sequences for a one-line completion: its end, and a comment after its code in the
    usual two-space form (the API then ends the generation itself, and keeps its session for the next
    keystroke; the :class:`Cutter` catches the other forms)."""
    comment = line_comment(language)
    return ["\n", f"  {comment} "] if comment else ["\n"]


def line_comment(language: str | None) -> str | None:
    """The line comment that snippets are written in; None where snippets make no sense."""
    if language is None or language in _NO_SNIPPETS:
        return None
    if language in _HASH:
        return "#"
    if language in _DASHES:
        return "--"
    if language in _SLASHES:
        return "//"
    return None


def _width(line: str) -> int:
    """The indentation width of ``line`` (tabs count 4)."""
    stripped = line.lstrip(" \t")
    return len(line[: len(line) - len(stripped)].expandtabs(4))


# ---- the plan: one line, a block, or nothing --------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    multiline: bool
    reason: str
    language: str | None = None
    header_width: int = 0  # a block's lines are indented deeper than the line that opened it
    skip: bool = False  # no completion here (the cursor is inside a word, or code follows it)
    close_line: str | None = None  # a block may end with this closing line when the suffix lacks it


def _opener(line: str, language: str | None) -> str | None:
    """The character that opens a block at the end of ``line`` (":" for Python and YAML), or None."""
    text = line.rstrip()
    if language == "python":
        text = re.sub(r"\s+#.*$", "", text).rstrip()  # if x:  # comment
    if not text:
        return None
    last = text[-1]
    if last in _OPENERS or (last == ":" and language in INDENT_LANGUAGES):
        return last
    return None


def plan(prefix: str, suffix: str, language: str | None = None, *, multiline: bool | None = None) -> Plan:
    """Whether to complete one line or a block at the cursor between ``prefix`` and ``suffix``.

    A block where the syntax suggests one: the cursor is on an empty line (or at the end of the line)
    right after a line that opens a block (ends with ``:`` in Python/YAML, or with ``{`` ``(`` ``[``),
    and that block is still empty (the next line of the suffix is not indented deeper than the opening
    line). Otherwise one line. Nothing (``skip``) when the cursor is inside a word or code follows it
    on its line (only closing brackets, quotes and punctuation may). ``multiline`` forces the shape."""
    before = prefix[prefix.rfind("\n") + 1:]
    after = suffix.split("\n", 1)[0]
    if before and _WORD.match(before[-1:]) and _WORD.match(after[:1]):
        return Plan(False, "the cursor is inside a word", language, skip=True)
    if not _REST_OK.match(after):
        return Plan(False, "code follows the cursor on its line", language, skip=True)
    blank_line = before.strip() == "" and after.strip() == ""
    header = None
    if blank_line:
        lines = prefix.split("\n")[:-1]
        header = next((line for line in reversed(lines) if line.strip()), None)
    elif after.strip() == "" and _opener(before, language):
        header = before  # at the end of the opening line itself
    opener = _opener(header, language) if header is not None else None
    header_width = _width(header) if header is not None else _width(before)
    if opener is not None and blank_line and _width(before) <= header_width and before:
        opener = None  # on an empty line not indented into the block: a new statement
    close_line = None
    if opener is not None and opener in _OPENERS:
        close_line = _CLOSERS[_OPENERS.index(opener)]
    if multiline is not None:  # without an opener, a block goes on while it is indented as deep as the cursor
        width = header_width if opener is not None else _width(before) - 1
        return Plan(multiline, "asked by the editor", language, width, close_line=close_line)
    if opener is None:
        return Plan(False, "one line", language, header_width)
    rest = suffix.split("\n")[1:] if "\n" in suffix else []
    following = next((line for line in rest if line.strip()), None)
    if following is not None and _width(following) > header_width:
        return Plan(False, "one line: the block already has a body", language, header_width)
    return Plan(True, f"an empty block after {opener!r}", language, header_width, close_line=close_line)


# ---- snippets --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Snippet:
    path: str
    line: int  # 1-based line of the definition
    name: str
    text: str

    @property
    def label(self) -> str:
        return f"{self.path}:{self.line} {self.name}"


def near_identifiers(prefix: str, suffix: str, lines: int) -> list[str]:
    """Identifiers of the ``lines`` lines before the cursor and a few after, the closest first."""
    before = prefix.split("\n")[-lines:]
    after = suffix.split("\n")[: max(2, lines // 4)]
    order: dict[str, int] = {}
    for distance, line in enumerate(reversed(before)):
        for name in reversed(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line)):
            order.setdefault(name, distance)
    for distance, line in enumerate(after):
        for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line):
            order.setdefault(name, distance + 1)
    wanted = identifiers("\n".join(before + after))
    seen = {name: i for i, name in enumerate(order)}  # within a line: nearer the cursor first
    return sorted((n for n in order if n in wanted), key=lambda n: (order[n], seen[n]))


def definition_text(lines: Sequence[str], symbol: Symbol, symbols: Sequence[Symbol], max_lines: int) -> str:
    """The source of ``symbol``'s definition: its lines while they are indented deeper (a closing bracket
    at its own indentation included), at most ``max_lines``; for a class, its header and its methods'
    signature lines."""
    start = symbol.line - 1
    if start >= len(lines):
        return symbol.signature
    width = _width(lines[start])
    body: list[int] = [start]
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and _width(line) <= width:
            if line.strip()[0] in _CLOSERS:
                body.append(end)
            break
        body.append(end)
        end += 1
    if symbol.kind in ("class", "interface", "trait", "impl", "struct") and len(body) > max_lines:
        inside = {i + 1 for i in body}
        members = [s.line - 1 for s in symbols if s.line in inside and s.line != symbol.line]
        body = [start, *members[: max_lines - 1]]
    text = [lines[i].rstrip() for i in body[:max_lines]]
    while text and not text[-1].strip():
        text.pop()
    base = " " * width
    return "\n".join(line[width:] if line.startswith(base) else line.lstrip() for line in text)


def render_snippets(snippets: Sequence[Snippet], comment: str) -> str:
    """The snippets as comment lines, each under ``Path: FILE``, ending with a newline ("" for none)."""
    out: list[str] = []
    for s in snippets:
        out.append(f"{comment} Path: {s.path}")
        out.extend(f"{comment} {line}".rstrip() for line in s.text.split("\n"))
    return "\n".join(out) + "\n" if out else ""


# ---- the prompt ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FimPrompt:
    prefix: str  # the rendered snippets, then the prefix window
    suffix: str  # the suffix window
    snippets: tuple[Snippet, ...]
    tokens: int  # counted (FIM tokens included)
    prefix_lines: int  # lines of the prefix window (the cursor's line included)
    suffix_lines: int
    first_line: int = 0  # the prefix window's first line in the prefix (0-based)


STICKY_SLACK = 0.25  # a prefix window keeps its start while it holds up to this much more than its room


def _fit_tail(lines: list[str], budget: int, count: Counter) -> int:
    """How many of the last ``lines`` fit ``budget`` tokens joined (at least 1: the cursor's line)."""
    chars, limit = 0, 0
    for line in reversed(lines):  # bound by characters first: never tokenise much more than fits
        chars += len(line) + 1
        if chars > budget * CHARS_PER_TOKEN_MAX and limit:
            break
        limit += 1
    return max(1, largest_fit(limit, lambda k: count("\n".join(lines[-k:])) <= budget))


def _fit_head(lines: list[str], budget: int, count: Counter) -> int:
    chars, limit = 0, 0
    for line in lines:
        chars += len(line) + 1
        if chars > budget * CHARS_PER_TOKEN_MAX and limit:
            break
        limit += 1
    return max(1, largest_fit(limit, lambda k: count("\n".join(lines[:k])) <= budget))


def _clip_line_start(line: str, budget: int, count: Counter) -> str:
    """The end of a single over-long line (minified code) that fits ``budget``."""
    if count(line) <= budget:
        return line
    keep = largest_fit(len(line), lambda k: count(line[-k:]) <= budget)
    return line[-keep:] if keep else ""


def build_prompt(prefix: str, suffix: str, count: Counter, config: CompletionConfig,
                 candidates: Callable[[int], Sequence[Snippet]] = lambda first_line: (),
                 language: str | None = None, block: bool = False, start_line: int | None = None) -> FimPrompt:
    """The FIM prompt within ``config.budget_tokens`` (``block_budget_tokens`` for a ``block``): the
    suffix window first (up to ``suffix_tokens``), snippets (up to ``snippet_tokens``, best first, whole
    ones only), the prefix window with the rest. ``candidates(first_visible_line)`` gives the snippets
    worth showing, best first (1-based line of the prefix's first line in the window: definitions below
    it are visible anyway).

    ``start_line``: where the last prompt's prefix window began (0-based, :attr:`FimPrompt.first_line`).
    The window keeps that start while what it then holds fits the room by ``STICKY_SLACK`` more: as the
    user types, the prompt then grows at its end only, and the API's prompt cache reuses everything
    before the cursor's line instead of computing a window that slid by a line again."""
    total, suffix_cap, snippet_cap = (
        (config.block_budget_tokens, config.block_suffix_tokens, config.block_snippet_tokens) if block
        else (config.budget_tokens, config.suffix_tokens, config.snippet_tokens))
    budget = max(total - FIM_OVERHEAD_TOKENS, 8)
    suffix_lines = suffix.split("\n")
    n_suffix = _fit_head(suffix_lines, min(suffix_cap, budget // 2), count)
    suffix_text = "\n".join(suffix_lines[:n_suffix])
    suffix_used = count(suffix_text)
    prefix_lines = prefix.split("\n")
    room = budget - suffix_used
    comment = line_comment(language)
    reserve = min(snippet_cap, room // 3) if comment else 0
    n_prefix = _fit_tail(prefix_lines, max(room - reserve, 1), count)
    chosen: list[Snippet] = []
    snippet_text, snippet_used = "", 0
    if comment and reserve > 0:
        first_visible = len(prefix_lines) - n_prefix + 1
        for snippet in candidates(first_visible):
            if len(chosen) == config.max_snippets:
                break
            text = render_snippets([*chosen, snippet], comment)
            used = count(text)
            if used <= reserve:
                chosen.append(snippet)
                snippet_text, snippet_used = text, used
    n_prefix = _fit_tail(prefix_lines, max(room - snippet_used, 1), count)
    if start_line is not None and 0 <= start_line < len(prefix_lines) - n_prefix:  # the last window began above
        kept = prefix_lines[start_line:]
        if count("\n".join(kept)) <= max(room - snippet_used, 1) * (1 + STICKY_SLACK):
            n_prefix = len(kept)
    window = prefix_lines[-n_prefix:]
    if n_prefix == 1:  # only the cursor's line, and maybe not even that
        window = [_clip_line_start(window[0], max(room - snippet_used, 1), count)]
    prefix_text = snippet_text + "\n".join(window)
    tokens = count(prefix_text) + suffix_used + FIM_OVERHEAD_TOKENS
    return FimPrompt(prefix_text, suffix_text, tuple(chosen), tokens, n_prefix, n_suffix, len(prefix_lines) - n_prefix)


# ---- the middle: cutting the stream and cleaning the result ---------------------------------
class Cutter:
    """Collects the streamed middle and says when it is complete: at the end of the line for one
    line, or where a comment starts after its code (``x = 1  # ...``: the code is what one waits for,
    and a trailing comment costs as many tokens again); for a block, at the first line that is not
    indented deeper than the block's opening line (a closing bracket line is kept when the suffix lacks
    it), or after ``max_lines`` lines."""

    def __init__(self, plan_: Plan, prefix: str, suffix: str, max_lines: int):
        self.plan, self.max_lines = plan_, max_lines
        self.text = ""
        self.reason: str | None = None
        self._before = prefix[prefix.rfind("\n") + 1:]
        following = [line for line in suffix.split("\n")[1:] if line.strip()]
        self._suffix_closes = bool(following) and plan_.close_line is not None and \
            following[0].strip().startswith(plan_.close_line)
        comment = line_comment(plan_.language)
        self._comment = re.compile(rf"\S(\s+){re.escape(comment)}") if comment else None

    def push(self, piece: str) -> bool:
        """Add streamed text; True once the completion is complete (stop reading)."""
        self.text += piece
        if not self.plan.multiline:
            cut = self.text.find("\n")
            if cut >= 0:
                self.text, self.reason = self.text[:cut], "end_of_line"
                return True
            return self._trailing_comment()
        lines = self.text.split("\n")
        for i in range(1, len(lines)):
            line, complete = lines[i], i < len(lines) - 1
            if i >= self.max_lines:
                return self._cut(lines, i, "max_lines")
            if not line.strip():
                continue
            if _width(line) <= self.plan.header_width:
                closing = self.plan.close_line is not None and line.strip().startswith(self.plan.close_line)
                if closing and not self._suffix_closes:
                    if not complete:
                        return False  # wait for the rest of the closing line
                    return self._cut(lines, i + 1, "block_end")
                return self._cut(lines, i, "block_end")
        return False

    def _trailing_comment(self) -> bool:
        """Cut a line where a comment starts after code (outside a string literal, in the middle)."""
        if self._comment is None:
            return False
        line = self._before + self.text
        for match in self._comment.finditer(line):
            start = match.start(1)
            if start < len(self._before):
                continue  # the comment began before the cursor: the user is writing it
            head = line[:start]
            if head.count('"') % 2 or head.count("'") % 2 or head.count("`") % 2:
                continue  # inside a string
            self.text, self.reason = self.text[: start - len(self._before)].rstrip(), "comment"
            return True
        return False

    def _cut(self, lines: list[str], keep: int, reason: str) -> bool:
        self.text, self.reason = "\n".join(lines[:keep]), reason
        return True


def _balance(text: str) -> int:
    return sum(text.count(c) for c in _OPENERS) - sum(text.count(c) for c in _CLOSERS)


def finish(text: str, plan_: Plan, prefix: str, suffix: str) -> str:
    """The completion to show: one line or the block, without trailing whitespace and without what
    merely repeats the suffix (the rest of the cursor's line, or the lines that follow)."""
    before = prefix[prefix.rfind("\n") + 1:]
    rest = suffix.split("\n", 1)[0].strip()
    if not plan_.multiline:
        text = text.split("\n", 1)[0]
    lines = [line.rstrip() for line in text.split("\n")]
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if plan_.multiline:
        following = [line.strip() for line in suffix.split("\n")[1:] if line.strip()]
        for k in range(min(len(lines) - 1, len(following)), 0, -1):  # the block repeats what follows it
            if [line.strip() for line in lines[-k:]] == following[:k]:
                lines = lines[:-k]
                break
    if rest and len(lines) == 1:  # "foo)" before ")": keep one ")" unless the line's brackets need both
        last = lines[-1]
        if last.endswith(rest) and (not any(c in rest for c in _OPENERS + _CLOSERS)
                                    or _balance(before + last + rest) < 0):
            lines[-1] = last[: len(last) - len(rest)].rstrip()
    out = "\n".join(lines)
    return out if out.strip() else ""
