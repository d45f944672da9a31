"""Prefect's temporary local server, tied to the life of the process that uses it.

With no ``PREFECT_API_URL`` Prefect starts a temporary server (a uvicorn process, ~230 MB) for
the first flow run and stops it from an ``atexit`` hook: a ``kill -9`` or a SIGTERM of
``prefect-hpo run`` skips that hook and leaves the server running, re-parented to init, for
good. Here the server is started up front and a small watchdog process holds the read end of a
pipe whose write end only this process holds; when this process ends, however it ends, the
kernel closes the pipe, the watchdog reads end-of-file and stops the server (SIGTERM, then
SIGKILL), after checking it is still the process it was given (its start time), so a reused pid
is never signalled.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["temporary_server"]

logger = logging.getLogger(__name__)

#: argv: read fd, server pid, server start time (clock ticks since boot, /proc/<pid>/stat field 22)
_WATCHDOG = r"""
import os, signal, sys, time
fd, pid, start = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is for the CLI, not for us
while True:
    try:
        if not os.read(fd, 1):
            break
    except InterruptedError:
        continue
def same():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19] == start
    except OSError:
        return False
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
    if not same():
        break
    os.kill(pid, sig)
    end = time.monotonic() + wait
    while time.monotonic() < end and same():
        time.sleep(0.1)
"""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@contextmanager
def temporary_server() -> Iterator[str | None]:
    """Yield the API URL of Prefect's temporary server, started now and stopped when this
    process ends by any means; yield None (and start nothing) when an API is configured, the
    temporary server is disabled, or this system has no ``/proc`` to identify processes by."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value() or not os.path.isdir("/proc"):
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's own client will find and reuse
    server.start()
    assert server.server_process is not None
    read_end, write_end = os.pipe()  # both non-inheritable: trials and other children never hold them
    watchdog = None
    start = _start_time(server.server_process.pid)
    if start is not None:
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(read_end), str(server.server_process.pid), start],
            pass_fds=(read_end,), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    os.close(read_end)
    try:
        yield server.api_url
    finally:
        server.stop()
        os.close(write_end)  # the watchdog wakes, finds the server gone, and exits
        if watchdog is not None:
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.debug("the temporary server's watchdog did not exit")
