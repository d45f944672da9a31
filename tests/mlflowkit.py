"""A real MLflow tracking server on loopback that a test can stop (an outage) and start again.

Two ways to run the same server: ``"app"`` serves MLflow's own tracking-server application
(``mlflow.server.app``, what ``mlflow server`` serves) from one process with werkzeug; it is
healthy in ~2 s, so outage tests fit the default suite. ``"cli"`` is ``mlflow server --workers 1``
itself (~30 s to healthy, many processes), for the e2e suite. Both keep their SQLite database
and artifacts in one folder and come back on the same port with the same records. A stop kills
the whole process group at once: nothing answers, as when the server's host goes away.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

BIN = Path(sys.executable).parent

_APP = textwrap.dedent(
    """
    import os, sys
    port, root = int(sys.argv[1]), sys.argv[2]
    os.environ["_MLFLOW_SERVER_FILE_STORE"] = f"sqlite:///{root}/mlflow.db"
    os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = "mlflow-artifacts:/"
    os.environ["_MLFLOW_SERVER_ARTIFACT_DESTINATION"] = f"{root}/artifacts"
    os.environ["_MLFLOW_SERVER_SERVE_ARTIFACTS"] = "true"
    from werkzeug.serving import make_server
    from mlflow.server import app
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """One tracking server's folder and port; :meth:`start` and :meth:`stop` as often as needed."""

    def __init__(self, root: Path, kind: str = "app") -> None:
        self.root = root
        self.kind = kind
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 120.0) -> None:
        assert self._proc is None, "already running"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        if self.kind == "app":
            cmd = [sys.executable, "-c", _APP, str(self.port), str(self.root)]
        else:
            cmd = [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db", "--artifacts-destination", str(self.root / "artifacts"),
            ]
        with (self.root / "server.log").open("ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                pytest.fail(f"MLflow server exited at start; see {self.root / 'server.log'}")
            try:
                if requests.get(self.uri + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"MLflow server not healthy in {timeout_s:g} s; see {self.root / 'server.log'}")

    def stop(self) -> None:
        """Kill the server's process group (by its id) and wait for it: an outage, not a shutdown."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also ends a paused (SIGSTOPped) server
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel, nothing answers."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze it (SIGCONT): the requests that waited are answered."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started ``app`` server in ``tmp_path/mlflow-server``; stopped at the end whatever happens."""
    server = MlflowServer(tmp_path / "mlflow-server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def nothing_listening() -> str:
    """An HTTP URI on loopback where no server listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"
