"""Progress bars for what a person waits on (model fetch, hashing, conversion)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


@contextlib.contextmanager
def progress_bar(enabled: bool = True, unit: str = "bytes") -> Iterator[Progress]:
    """A rich progress display on stderr; silent when not ``enabled``.

    ``unit="bytes"`` shows sizes and speed; ``unit="steps"`` shows counts. Both show elapsed time.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns: tuple[Any, ...] = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    if unit == "bytes":
        columns += (DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    else:
        columns += (MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        yield bar
