"""Running the app under uvicorn: in the foreground (``copycatch serve``) or in a background thread.

The listening socket is bound here, before uvicorn starts, so ``port=0`` picks a free port whose number we
know (tests, notebooks, the load benchmark). Shutdown is graceful: on SIGINT/SIGTERM (foreground) or on
leaving :func:`serve_in_thread`, uvicorn stops accepting connections, lets in-flight requests finish (up to
``shutdown_timeout`` seconds), then the app's lifespan drains the batcher and closes the ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..core.errors import InvalidArgument


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgument(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def make_server(
    app: Any,
    *,
    log_level: str = "info",
    access_log: bool = True,
    shutdown_timeout: float = 30.0,
    limit_concurrency: int | None = None,
) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=shutdown_timeout,
        limit_concurrency=limit_concurrency,
        server_header=False,
    )
    return uvicorn.Server(config)


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def run(app: Any, sock: socket.socket, **options: Any) -> int:
    """Serve in the foreground until SIGINT/SIGTERM, shut down gracefully, and return the signal number.

    uvicorn handles the signal itself while serving and, once the in-flight requests are answered, raises it
    again for whatever handler was there before; ours turns that into a normal return, so the caller can
    report a clean stop and exit 0 instead of dying by the signal.
    """
    server = make_server(app, **options)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except _Stopped as stopped:
        return int(stopped.args[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 30.0,
    **options: Any,
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread; yields its base URL; stops it (gracefully) on exit."""
    sock = bind_socket(host, port)
    server = make_server(app, log_level=log_level, access_log=False, **options)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced to the caller below
            failure.append(exc)

    thread = threading.Thread(target=target, name="copycatch-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if failure or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"server failed to start: {failure[0] if failure else 'thread exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server did not start within {startup_timeout} s")
        time.sleep(0.01)
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=options.get("shutdown_timeout", 30.0) + 10)
        sock.close()


@dataclasses.dataclass
class Server:
    """A protected prediction API bound to its socket, ready to :meth:`run` in the foreground."""

    app: Any
    sock: socket.socket

    @property
    def url(self) -> str:
        return base_url(self.sock)

    @property
    def service(self) -> Any:
        return self.app.state.service

    def run(self, **options: Any) -> int:
        """Serve until SIGINT/SIGTERM (see :func:`run`); returns the signal number that stopped it."""
        return run(self.app, self.sock, **options)

    def close(self) -> None:
        self.sock.close()


def open_server(oracle: Any, config: Any, *, host: str = "127.0.0.1", port: int = 0, **app_options: Any) -> Server:
    """Bind ``host:port`` first (a taken port is reported before the ledger is opened), then build the app."""
    from .app import create_app

    sock = bind_socket(host, port)
    try:
        return Server(create_app(oracle, config, **app_options), sock)
    except BaseException:
        sock.close()
        raise
