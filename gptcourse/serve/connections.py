"""Connections: uvicorn with a header timeout and a connection limit, and a background server
for notebooks, tests and benchmarks."""

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from .. import validate
from .protocol import ServeError

__all__ = ["DEFAULT_BACKLOG", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_KEEP_ALIVE",
           "DEFAULT_MAX_CONNECTIONS", "background", "server_options"]

#: defaults of the connection limits (see :func:`server_options`)
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEP_ALIVE = 5.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_BACKLOG = 128

log = logging.getLogger("uvicorn.error")  # the server's log, formatted by uvicorn


# --------------------------------------------------------------------------------------
# connections: a header timeout and a connection limit for uvicorn
# --------------------------------------------------------------------------------------


def _guarded_protocol():
    """uvicorn's h11 protocol, with a deadline for request headers and a connection limit."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        last_warning = 0.0  # the "connection limit" warning: at most one every 10 s

        def __init__(self, *args: Any, header_timeout: float, max_connections: int, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.header_timeout, self.max_connections = header_timeout, max_connections
            self.deadline: asyncio.TimerHandle | None = None
            self.refused = False
            self.born = time.monotonic()

        def idle(self) -> bool:
            """No request in progress (maybe part of one's headers)."""
            return self.cycle is None or self.cycle.response_complete

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self.max_connections:
                idle = [c for c in self.connections
                        if c is not self and isinstance(c, GuardedH11Protocol) and c.idle()]
                self.warn(f"{len(self.connections) - 1} connections open, the limit "
                          f"(--max-connections {self.max_connections}): closing idle ones"
                          + ("" if idle else ", refusing new ones with 503"))
                if not idle:
                    self.refuse()
                    return
                oldest = min(idle, key=lambda c: c.born)
                oldest.transport.close()
                oldest.connections.discard(oldest)  # connection_lost comes later
            self.arm()

        def warn(self, message: str) -> None:
            now = time.monotonic()
            if now - GuardedH11Protocol.last_warning > 10:
                GuardedH11Protocol.last_warning = now
                self.logger.warning(message)

        def refuse(self) -> None:
            err = ServeError("the server is at its connection limit; retry in a moment", status=503,
                             type="server_error", code="server_busy")
            body = json.dumps(err.body()).encode()
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                 b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))
            self.transport.close()
            self.connections.discard(self)
            self.refused = True  # what arrives before the close is dropped

        def arm(self) -> None:
            """Close the connection unless a request's headers arrive within the timeout."""
            self.disarm()
            self.deadline = self.loop.call_later(self.header_timeout, self.expire)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def expire(self) -> None:
            if self.idle() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete
                self.disarm()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            if self.transport.is_closing():
                self.disarm()
            elif self.cycle is cycle:  # waiting for the next request (keep-alive)
                self.arm()
            else:  # a pipelined request started at once
                self.disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def server_options(host: str = "127.0.0.1", port: int = 8000, *,
                   header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                   keep_alive: float = DEFAULT_KEEP_ALIVE,
                   max_connections: int = DEFAULT_MAX_CONNECTIONS,
                   backlog: int = DEFAULT_BACKLOG, log_level: str = "info") -> dict:
    """Keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for a server that survives
    slow and idle clients: request headers must arrive within ``header_timeout`` seconds of
    connecting (or of the previous response), an idle keep-alive connection closes after
    ``keep_alive`` seconds, and at most ``max_connections`` connections are open (the oldest
    idle one is closed for a new one; 503 when all are busy). ``max_connections`` is lowered
    to stay under the process's limit on open files."""
    for name, v in (("header_timeout", header_timeout), ("keep_alive", keep_alive)):
        validate.number(name, v, min=0, min_open=True, finite=False)  # seconds (inf: never)
    max_connections = validate.integer("max_connections", max_connections, min=1)
    backlog = validate.integer("backlog", backlog, min=1)
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and max_connections > soft - 64:
            max_connections = max(1, soft - 64)  # keep files for the model, logs, the listener
    http = functools.partial(_guarded_protocol(), header_timeout=header_timeout,
                             max_connections=max_connections)
    return {"host": host, "port": port, "http": http, "timeout_keep_alive": keep_alive,
            "backlog": backlog, "log_level": log_level}


# --------------------------------------------------------------------------------------
# loading and running
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0,
               **options: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields the base URL
    (``http://host:port``; ``port=0`` picks a free one) and stops the server on exit.
    For notebooks, tests and benchmarks; ``gptcourse serve`` runs in the foreground.
    ``options`` are :func:`server_options`' (``header_timeout``, ``max_connections``, ...;
    ``log_level`` defaults to ``"warning"`` here).

    The socket is created with ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on accepted
    connections, as ``uvicorn.run`` does (with protocol 0 it does not, and every keep-alive
    response waits ~40 ms for a delayed ACK)."""
    import socket
    import threading

    import uvicorn

    kw = server_options(host, port, **{"log_level": "warning", **options})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **kw))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

