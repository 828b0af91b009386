"""Serving the app with uvicorn: in the foreground (``corolla api``) or in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from corolla.errors import CorollaError


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 8000, *, timeout_s: float = 30.0,
                    log_level: str = "warning"):
    """Start uvicorn in a daemon thread and wait until it accepts connections.

    Returns ``(server, thread)``; ``server.config.port`` is the bound port (useful with
    ``port=0``). Stop with :func:`stop_server` (or ``server.should_exit = True; thread.join()``).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CorollaError(f"cannot listen on {host}:{port}: {e}; pick another --port") from e
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="corolla-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise CorollaError(f"the API server did not start on {host}:{config.port}")
        time.sleep(0.02)
    return server, thread


def stop_server(server, thread: threading.Thread, timeout_s: float = 10.0) -> None:
    server.should_exit = True
    thread.join(timeout_s)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout_s)


def url(server) -> str:
    return f"http://{server.config.host}:{server.config.port}"


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 8000, **options) -> Iterator[str]:
    """``app`` served in a thread while inside; yields its base URL (``/v1`` not included)."""
    server, thread = serve_in_thread(app, host, port, **options)
    try:
        yield url(server)
    finally:
        stop_server(server, thread)
