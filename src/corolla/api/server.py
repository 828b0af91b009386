"""Serving an app with uvicorn: in the foreground (``corolla api``, ``assistant serve``) or in a
background thread (``swarm up``, tests), stopping within a bound whatever its clients are doing.

uvicorn's own graceful shutdown waits for every open response to finish, with no limit: a streamed
generation of thousands of tokens, or one stuck on a swarm that is gone, kept the process alive for
minutes. :class:`ApiServer` first closes the app's open requests (``app.state.closing``, see
:class:`corolla.sse.Closing`: streams end with an error event, generations are cancelled),
then gives responses :data:`GRACE_S` to end before cancelling them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

from corolla.errors import CorollaError

GRACE_S = 2  # after the app's requests were closed, how long responses may take to end (uvicorn wants an int)


def _closing_of(app):
    state = getattr(app, "state", None)
    return getattr(state, "closing", None)


def _server_class():
    import uvicorn

    class ApiServer(uvicorn.Server):
        """uvicorn's server that closes the app's requests first when it shuts down, and leaves
        signals to the command (uvicorn would re-raise SIGTERM once done, killing the process before
        its own clean-up: closing sessions, stopping the DHT)."""

        def __init__(self, config, closing=None):
            super().__init__(config)
            self.closing = closing

        async def startup(self, sockets=None) -> None:
            if self.closing is not None:
                self.closing.reopen()
            await super().startup(sockets)

        async def shutdown(self, sockets=None) -> None:
            if self.closing is not None:
                self.closing.close()
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return ApiServer


def make_server(app, host: str, port: int, *, log_level: str = "warning"):
    """An :class:`ApiServer` for ``app`` (``server.should_exit = True`` stops it)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=GRACE_S)
    return _server_class()(config, _closing_of(app))


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CorollaError(f"cannot listen on {host}:{port}: {e}; pick another --port") from e
    return sock


def serve_forever(app, host: str = "127.0.0.1", port: int = 8000, *, on_started: Callable[[str], None] | None = None,
                  log_level: str = "warning") -> None:
    """Serve ``app`` in this thread until a stop is requested (SIGTERM or Ctrl-C, see
    :mod:`corolla.shutdown`); ``on_started`` gets the base URL once it accepts connections."""
    from corolla.shutdown import STOP, on_stop_signals

    sock = _bind(host, port)
    server = make_server(app, host, sock.getsockname()[1], log_level=log_level)
    on_stop_signals(lambda: setattr(server, "should_exit", True))
    if on_started is not None:
        def announce() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if server.started:
                on_started(url(server))

        threading.Thread(target=announce, name="corolla-api-started", daemon=True).start()
    if not STOP.requested:
        server.run(sockets=[sock])
    sock.close()


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 8000, *, timeout_s: float = 30.0,
                    log_level: str = "warning"):
    """Start uvicorn in a daemon thread and wait until it accepts connections.

    Returns ``(server, thread)``; ``server.config.port`` is the bound port (useful with
    ``port=0``). Stop with :func:`stop_server` (or ``server.should_exit = True; thread.join()``).
    """
    sock = _bind(host, port)
    server = make_server(app, host, sock.getsockname()[1], log_level=log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="corolla-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise CorollaError(f"the API server did not start on {host}:{server.config.port}")
        time.sleep(0.02)
    return server, thread


def stop_server(server, thread: threading.Thread, timeout_s: float = GRACE_S + 2.0) -> None:
    """Stop a server started by :func:`serve_in_thread`: its open requests end with an error, and
    the thread is given ``timeout_s`` (then uvicorn is told to stop waiting for anything)."""
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
