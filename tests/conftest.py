"""Shared test setup: a deterministic hypothesis profile, the real data cache, a local HTTP
server for download tests, and a way to make folders read-only that also holds for root.

Environment (CI sets the first three):

* ``GPTCOURSE_DATA_DIR`` -- folder(s) holding the real corpora (read-only is fine). When it is
  unset and a ``../shared/data`` folder sits beside the clone (the course machines), that
  folder is used, like the Makefile does.
* ``TIKTOKEN_CACHE_DIR`` -- tiktoken's cache holding GPT-2's files (offline machines).
* ``GPTCOURSE_PROFILE=ci``.
* ``HYPOTHESIS_PROFILE`` -- ``ci`` (default: derandomized, no example database, no deadline)
  or ``explore`` (random inputs) to hunt for new failing cases locally, e.g.
  ``HYPOTHESIS_PROFILE=explore HYPOTHESIS_SCALE=20 pytest tests/test_tokenizer.py`` (the scale
  multiplies each test's ``max_examples``).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from loopback import loopback_http

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_REPO = Path(__file__).resolve().parents[1]
for _var, _folder in [
    ("GPTCOURSE_DATA_DIR", _REPO.parent / "shared" / "data"),
    ("TIKTOKEN_CACHE_DIR", _REPO.parent / "shared" / "tiktoken-cache"),
]:
    if not os.environ.get(_var) and _folder.is_dir():
        os.environ[_var] = str(_folder)


# --------------------------------------------------------------------------------------
# A local HTTP server (127.0.0.1, a free port) serving bytes the test chooses
# --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: LocalServer = self.server.owner  # type: ignore[attr-defined]
        with server.lock:
            server.hits[self.path] += 1
            route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "not found")
            return
        body, mode = route
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode == "truncate":
            # promise the whole file, send half of it, hang up
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


class LocalServer:
    """``serve(path, body)`` then download ``url(path)``; ``hits[path]`` counts GET requests.

    ``mode="truncate"`` sends a ``Content-Length`` of the full body but only half of the
    bytes, then closes the connection (a download that drops mid-file).
    """

    def __init__(self, httpd) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        httpd.owner = self
        self.port = httpd.server_address[1]

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        assert path.startswith("/") and mode in ("ok", "truncate")
        with self.lock:
            self.routes[path] = (body, mode)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    with loopback_http(_Handler, monkeypatch) as httpd:
        yield LocalServer(httpd)


# --------------------------------------------------------------------------------------
# Read-only folders, also when the tests run as root
# --------------------------------------------------------------------------------------


@pytest.fixture
def make_readonly(monkeypatch: pytest.MonkeyPatch):
    """``make_readonly(folder)``: chmod the folder and its files read-only for this test.

    Root ignores permission bits, so under root ``os.access`` is also made to answer "no
    write access" for those folders -- what a normal user's process would be told. The
    modes are restored afterwards so pytest can clean up ``tmp_path``.
    """
    frozen: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK:
            p = Path(os.fspath(path)).resolve()
            if any(p == f or f in p.parents for f in frozen):
                return False
        return real_access(path, mode, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", access)

    def freeze(folder: Path) -> Path:
        folder = Path(folder).resolve()
        for f in folder.rglob("*"):
            f.chmod(0o555 if f.is_dir() else 0o444)
        folder.chmod(0o555)
        frozen.append(folder)
        return folder

    yield freeze
    for folder in frozen:
        for f in [folder, *folder.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o644)

