"""Where corolla keeps what it downloads, converts and measures, and how it writes there safely.

Everything lands under :func:`cache_root` (``$COROLLA_HOME``, default ``~/.cache/corolla``)::

    models/<name>/         one entry per model (see corolla.models.fetch and corolla.models.resolve)
    hub/                   Hugging Face Hub downloads
    throughput.json        measured server speeds (see corolla.server.throughput)

Several processes share the cache, so folders are guarded by :func:`file_lock`, files are written
with :func:`atomic_write_text` (or renamed into place), and what an interrupted run left is removed
under the lock with :func:`remove_stale`.

Neutral: standard library only, no other part of corolla (see tests/unit/test_layers.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where corolla keeps models: ``$COROLLA_HOME`` or ``~/.cache/corolla``."""
    home = os.environ.get("COROLLA_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "corolla"


def models_root() -> Path:
    return cache_root() / "models"


def model_dir(name: str) -> Path:
    """The cache entry of model ``name`` (a packaged name, or ``gguf-<hash>`` for a local GGUF)."""
    return models_root() / name


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder/.lock`` (other processes wait)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale(folder: Path, *patterns: str) -> None:
    """Delete what an interrupted fetch or conversion left behind; call only under ``file_lock``."""
    for pattern in patterns:
        for path in folder.glob(pattern):
            logger.info("removing %s, left by an interrupted run", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def public_mode(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if directory else 0o666) & ~umask)
