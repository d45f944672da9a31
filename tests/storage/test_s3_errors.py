"""S3 endpoints that are not S3 or do not answer: real servers on loopback, no mocks of boto3.

Each case is an ``AWS_ENDPOINT_URL`` mistake people make: a web server (Python's own http.server,
or an app that answers every GET with its HTML page), or a port whose server accepts connections
and never answers. The store must say that it could not be read, naming the endpoint and what
came back, instead of a lease "held by host ?, pid ?" or a minute and a half of silence.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from prefect_hpo.errors import LeaseHeldError, StorageError
from prefect_hpo.storage.checkpoint import S3Store, open_store
from prefect_hpo.storage.s3_client import S3Settings


class _WebApp(http.server.BaseHTTPRequestHandler):
    """A web app: every GET/HEAD is its HTML page (with an ETag), PUT/DELETE are 404."""

    def _page(self, status: int) -> None:
        body = b"<!doctype html><html><body>Welcome to the dashboard</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("ETag", '"page-1"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._page(200)

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._page(404)

    do_DELETE = do_PUT

    def log_message(self, *args: object) -> None:  # quiet
        pass


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _point_boto3_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(params=["http.server", "web app"])
def not_s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[str]:
    """AWS_ENDPOINT_URL at an HTTP server that is not S3; yields its URL."""
    monkeypatch.chdir(tmp_path)  # http.server serves the current folder: an empty one
    handler = _Quiet if request.param == "http.server" else _WebApp
    for endpoint in _serve(handler):
        _point_boto3_at(monkeypatch, endpoint)
        yield endpoint


_OPERATIONS: dict[str, Callable[[S3Store], object]] = {
    "read": lambda s: s.read("exp"),
    "write": lambda s: s.write("exp", "{}"),
    "exists": lambda s: s.exists("exp"),
    "list_names": lambda s: s.list_names(),
    "read_lease": lambda s: s.read_lease("exp"),
    "acquire_lease": lambda s: s.acquire_lease("exp"),
}


@pytest.mark.parametrize("operation", list(_OPERATIONS))
def test_an_endpoint_that_is_not_s3_is_named_with_what_it_answered(not_s3: str, operation: str) -> None:
    store = open_store("s3://bucket/hpo")
    with pytest.raises(StorageError) as info:
        _OPERATIONS[operation](store)
    assert not isinstance(info.value, LeaseHeldError)  # was: "held by ... host ?, pid ?"
    message = str(info.value)
    assert not_s3 in message and "does not look like an S3 endpoint" in message, message
    assert "HTTP " in message and "text/html" in message, message  # what came back
    assert "AWS_ENDPOINT_URL" in message, message


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A port whose server accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        _point_boto3_at(monkeypatch, endpoint)
        yield endpoint


def test_a_silent_endpoint_gives_up_with_a_storage_error_saying_so(silent_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HPO_S3_READ_TIMEOUT_S", "0.3")
    monkeypatch.setenv("PREFECT_HPO_S3_MAX_ATTEMPTS", "2")
    store = open_store("s3://bucket/hpo")
    with pytest.raises(StorageError) as info:
        store.read("exp")
    message = str(info.value)
    assert silent_endpoint in message and "did not answer" in message, message
    assert "0.3 s per request, tried 2 times" in message, message


def test_the_default_client_waits_a_bounded_time(silent_endpoint: str) -> None:
    """The defaults (not the test's shortened ones): timeouts and retries the docstring adds up."""
    store = open_store("s3://bucket/hpo")
    assert isinstance(store, S3Store)
    config = store._client.meta.config
    settings = S3Settings()
    assert (config.connect_timeout, config.read_timeout) == (settings.connect_timeout_s, settings.read_timeout_s) == (3.0, 5.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_bad_timeout_setting_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PREFECT_HPO_S3_READ_TIMEOUT_S", value)
    with pytest.raises(StorageError, match="PREFECT_HPO_S3_READ_TIMEOUT_S"):
        S3Settings()


def test_real_s3_conflicts_and_missing_keys_still_mean_what_they_meant(s3_uri: str) -> None:
    """moto (real S3 semantics): a missing key is None, a held lease is a LeaseHeldError."""
    store = open_store(s3_uri)
    assert store.read("exp") is None and store.read_lease("exp") is None and not store.exists("exp")
    with store.acquire_lease("exp"):
        with pytest.raises(LeaseHeldError, match=r"Z \(in \d+ s\)"):
            open_store(s3_uri).acquire_lease("exp")
