"""Definitions in source files (classes, functions, methods, interfaces, structs, types) via tree-sitter.

Each language has a small table: which node types are definitions, which of them hold further
definitions (a class holds methods, a function's body is not searched), and which plain nodes
merely wrap definitions (``export_statement``, ``decorated_definition``, class bodies). Results are
cached in memory by path, mtime and size, so a warm request re-parses only files that changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corolla.assistant.languages import language_of, parser

MAX_PARSE_BYTES = 256_000  # bigger files are usually generated or data; their symbols are not worth it
MAX_SIGNATURE_CHARS = 160

_JS_DEFS = {"class_declaration": ("class", True), "abstract_class_declaration": ("class", True),
            "function_declaration": ("function", False), "generator_function_declaration": ("function", False),
            "method_definition": ("method", False), "abstract_method_signature": ("method", False),
            "interface_declaration": ("interface", False), "type_alias_declaration": ("type", False),
            "enum_declaration": ("enum", False), "variable_declarator": ("function", False)}
_JS_WRAPPERS = {"program", "export_statement", "class_body", "lexical_declaration", "variable_declaration"}
# node type -> (kind, search inside it); per language, with the wrapper node types to look through
_TABLES: dict[str, tuple[dict[str, tuple[str, bool]], set[str]]] = {
    "python": ({"class_definition": ("class", True), "function_definition": ("function", False)},
               {"module", "decorated_definition", "block"}),
    "javascript": (_JS_DEFS, _JS_WRAPPERS),
    "typescript": (_JS_DEFS, _JS_WRAPPERS),
    "tsx": (_JS_DEFS, _JS_WRAPPERS),
    "go": ({"function_declaration": ("function", False), "method_declaration": ("method", False),
            "type_spec": ("type", False)},
           {"source_file", "type_declaration"}),
    "rust": ({"struct_item": ("struct", False), "enum_item": ("enum", False), "trait_item": ("trait", True),
              "impl_item": ("impl", True), "function_item": ("function", False),
              "function_signature_item": ("method", False), "type_item": ("type", False),
              "mod_item": ("module", True)},
             {"source_file", "declaration_list"}),
    "java": ({"class_declaration": ("class", True), "interface_declaration": ("interface", True),
              "enum_declaration": ("enum", True), "record_declaration": ("class", True),
              "method_declaration": ("method", False), "constructor_declaration": ("method", False)},
             {"program", "class_body", "interface_body", "enum_body", "enum_body_declarations"}),
}
_CONTAINER_KINDS = {"class", "interface", "trait", "impl", "enum"}  # functions inside them are methods
_GO_TYPE_KINDS = {"struct_type": "struct", "interface_type": "interface"}


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str  # class | function | method | interface | struct | type | enum | trait | impl | module
    line: int  # 1-based line of the signature
    signature: str  # that source line, indentation kept


def symbol_language(path: str) -> str | None:
    """The language of ``path`` when the index reads its definitions (a table for it below), else None."""
    language = language_of(path)
    return language if language in _TABLES else None


def extract_symbols(source: bytes, language: str) -> list[Symbol]:
    """The definitions in ``source``, in line order."""
    defs, wrappers = _TABLES[language]
    tree = parser(language).parse(source)
    lines = source.split(b"\n")
    out: list[Symbol] = []

    def visit(node, container: str | None) -> None:
        for child in node.named_children:
            entry = defs.get(child.type)
            if entry is None:
                if child.type in wrappers:
                    visit(child, container)
                continue
            kind, search = entry
            name_node = child.child_by_field_name("type" if child.type == "impl_item" else "name")
            if child.type == "variable_declarator":  # const f = () => ... only
                value = child.child_by_field_name("value")
                if value is None or value.type not in ("arrow_function", "function_expression", "function"):
                    continue
            if child.type == "type_spec":
                body = child.child_by_field_name("type")
                kind = _GO_TYPE_KINDS.get(body.type if body is not None else "", "type")
            if kind == "function" and container in _CONTAINER_KINDS:
                kind = "method"
            row = child.start_point.row
            text = lines[row].decode("utf-8", "replace").rstrip() if row < len(lines) else ""
            name = name_node.text.decode("utf-8", "replace") if name_node is not None else ""
            out.append(Symbol(name, kind, row + 1, text[:MAX_SIGNATURE_CHARS]))
            if search:
                visit(child, kind)

    visit(tree.root_node, None)
    out.sort(key=lambda s: s.line)
    return out


_cache: dict[str, tuple[int, int, tuple[Symbol, ...]]] = {}
_CACHE_MAX = 50_000


def clear_cache() -> None:
    """Forget every cached parse (benchmarks call it to measure a cold start)."""
    _cache.clear()


def file_symbols(root: Path, rel: str, buffer: str | None = None) -> tuple[Symbol, ...]:
    """The symbols of one workspace file (its unsaved buffer when given); () if unparsable."""
    language = symbol_language(rel)
    if language is None:
        return ()
    if buffer is not None:
        data = buffer.encode("utf-8", "replace")
        return tuple(extract_symbols(data, language)) if len(data) <= MAX_PARSE_BYTES else ()
    path = os.path.join(root, rel)
    try:
        st = os.stat(path)
    except OSError:
        return ()
    hit = _cache.get(path)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    symbols: tuple[Symbol, ...] = ()
    if st.st_size <= MAX_PARSE_BYTES:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return ()
        if b"\0" not in data[:8192]:
            symbols = tuple(extract_symbols(data, language))
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[path] = (st.st_mtime_ns, st.st_size, symbols)
    return symbols
