"""A Hugging Face hub on the loopback address, for tests that download by name without reaching the internet.

`FakeHub` serves `/{repo_id}/resolve/{revision}/{filename}` with the headers huggingface_hub reads (`X-Repo-Commit`,
`ETag`, `Content-Length`; 404 with `X-Error-Code: EntryNotFound` for a missing file) and, for plain URLs,
`/raw/{path}`. It counts the GETs of each file and can cut a transfer short. The `hub` fixture points
huggingface_hub's settings (endpoint, cache under the test's folder, online) at it for one test.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class FakeHub:
    """Files served in the hub's URL layout; `gets` counts the transfers of each served path."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.raw: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        self.cut_short: set[str] = set()  # paths whose body stops half-way (the connection closes)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, filename: str, data: bytes) -> str:
        """Serve `data` as `filename` of `repo`; returns its sha256."""
        self.files[(repo, filename)] = data
        return hashlib.sha256(data).hexdigest()

    def add_raw(self, path: str, data: bytes) -> str:
        """Serve `data` at the plain URL `{url}/raw/{path}`; returns that URL."""
        self.raw[path] = data
        return f"{self.url}/raw/{path}"

    def reset(self) -> None:
        self.files.clear()
        self.raw.clear()
        self.gets.clear()
        self.cut_short.clear()

    def _find(self, path: str) -> bytes | None:
        if path.startswith("/raw/"):
            return self.raw.get(path[len("/raw/") :])
        match = _RESOLVE.match(path)
        return self.files.get((match["repo"], match["file"])) if match else None

    def _handler(hub) -> type[BaseHTTPRequestHandler]:  # noqa: N805 (the handler closes over the hub)
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _headers(self, data: bytes | None) -> None:
                self.send_response(200 if data is not None else 404)
                self.send_header("X-Repo-Commit", COMMIT)
                if data is None:
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                else:
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                self._headers(hub._find(self.path.split("?")[0]))

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                data = hub._find(path)
                self._headers(data)
                if data is None:
                    return
                hub.gets[path] += 1
                if path in hub.cut_short:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        return Handler


_HUB: FakeHub | None = None


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The loopback hub, empty, with huggingface_hub pointed at it: online, cache in `tmp_path/hf/hub`."""
    global _HUB
    from huggingface_hub import constants

    if _HUB is None:
        _HUB = FakeHub()
    _HUB.reset()
    home = tmp_path / "hf"
    # huggingface_hub's own stderr handler keeps the stream of the test that first used it: route its warnings
    # (download retries) through the root logger instead, which pytest captures per test
    monkeypatch.setattr(logging.getLogger("huggingface_hub"), "handlers", [])
    monkeypatch.setattr(logging.getLogger("huggingface_hub"), "propagate", True)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "ENDPOINT", _HUB.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", _HUB.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    for name in ("AGENT_HARNESSES_PATH", "CHECK_FOR_UPDATE_DONE_PATH"):  # files the library may write in HF_HOME
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, str(home / Path(getattr(constants, name)).name))
    yield _HUB
    _HUB.reset()


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """`HF_HUB_OFFLINE=1` for the rest of a test (as the variable does when set before the import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
