"""Trials as local processes, with GPU slots, that outlive the flow that started them.

Each attempt runs as ``/bin/sh -c <command>`` inside a small wrapper shell that is the leader of
a new session (so the whole process group can be signalled, and the trial survives the flow's
death). The wrapper writes the command's exit status to a file (atomically, via a rename),
because a restarted flow is no longer the parent and could not learn it otherwise: with the
file, "finished with code N" and "died without a trace" stay distinguishable. While the flow is
the parent, the wrapper's own exit status is the truth and the file is only checked against it.

Files in an attempt's workdir (``$PREFECT_HPO_WORKDIR``):

* ``output.log``: the trial's stdout and stderr (appended; the handle remembers where this
  attempt's output starts).
* ``.launcher-<token>/`` (the handle's ``status_dir``; the trial is not told its name, so a trial
  writing ``exit_code`` into its own folder cannot fake its outcome):

  * ``exit_code``: the command's exit status, written by the wrapper when the command ends
    (``128 + N`` when it was killed by signal N, as shells report it).
  * ``killed``: the reason, written by :meth:`LocalProcessLauncher.kill` before it signals, so a
    restarted flow still reports "timed out after 2 s" instead of "killed by signal 15".

Handles written before ``status_dir`` existed keep those files in the workdir itself.

Which processes belong to an attempt, and may be signalled: the wrapper only if its identity is
confirmed (our own child, or a live session leader whose start time and environment, which
holds the attempt's launch id, match the handle: a handle is data from a checkpoint, and one that
was tampered with must not get an unrelated process killed); then every process of its session,
and every process anywhere that carries the launch id in its environment (a ``setsid`` or
double-forked grandchild leaves the session but keeps the environment). Not covered: a process
that both leaves the session and clears ``PREFECT_HPO_LAUNCH_ID`` from its environment.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_hpo.errors import SpecError, TrialError
from prefect_hpo.launchers.base import LaunchRequest, Launcher, PollResult, TrialState
from prefect_hpo.launchers.gpus import GpuPool
from prefect_hpo.launchers.run_callable import FAILURE_REASON_FILE
from prefect_hpo.trial import PARAMS_ENV, Report, parse_report_line

__all__ = ["LocalProcessLauncher", "check_cwd"]

logger = logging.getLogger(__name__)

LOG_NAME = "output.log"
EXIT_NAME = "exit_code"
KILLED_NAME = "killed"
LAUNCH_ID_ENV = "PREFECT_HPO_LAUNCH_ID"
STATUS_PREFIX = ".launcher-"  # the attempt's bookkeeping folder inside its workdir

_WAIT_STEP_S = 0.02  # how often wait_any and kill look again
_KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the group to disappear
_EXEC_WAIT_S = 1.0  # how long a just-started wrapper may take to finish its exec
_READ_CHUNK = 4 << 20
_MAX_LINE = 1 << 20  # a longer line without a newline is log noise, never a report
_HAS_PROC = os.path.isdir("/proc/self")

# The wrapper: run the command in its own shell (so an ``exit`` or ``exec`` in it cannot skip
# the bookkeeping), then record its status. The trap keeps the wrapper alive through the
# SIGTERM that kill() sends to the group, so it can still record the status; traps are reset to
# the default in the children it starts, so the trial itself still gets SIGTERM. The command and
# the file name arrive as positional parameters, so no quoting of user text is ever needed.
_SETTLE_S = 0.5  # how long a finished trial's leftovers may take to exit before they count as strays
_WRAPPER = (
    "trap : TERM INT HUP\n"
    '/bin/sh -c "$1"\n'
    "rc=$?\n"
    'printf \'%s\' "$rc" > "$2.tmp" && mv -f "$2.tmp" "$2"\n'
    'exit "$rc"\n'
)


@dataclass(frozen=True)
class _ProcStat:
    state: str
    pgrp: int
    session: int
    start: int


def _proc_stat(pid: int) -> _ProcStat | None:
    """State, group, session and start time (clock ticks since boot) of a pid, from /proc."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        rest = data[data.rindex(b")") + 2 :].split()
        return _ProcStat(rest[0].decode("ascii", "replace"), int(rest[2]), int(rest[3]), int(rest[19]))
    except (ValueError, IndexError):
        return None


def _environ_has(pid: int, entry: bytes) -> bool:
    """Whether a process's environment holds ``entry`` (``NAME=value``), e.g. an attempt's
    launch id: unlike a pid or a group id, that is never reused by an unrelated process."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's
        return False
    return entry in environ.split(b"\0")


def _in_group(pid: int, pgid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat.pgrp == pgid


def check_cwd(cwd: str | Path | None) -> None:
    """Refuse a trial working directory that is not a folder on this machine, before any trial
    starts (else each one fails to start). Only for trials that run here: a work pool's or Dask's
    trials run elsewhere, where the folder may exist only there."""
    if cwd is None:
        return
    path = Path(cwd)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
        raise SpecError(f"trial.cwd: {str(cwd)!r} {what}{where}; create it or fix trial.cwd")
    if not os.access(path, os.X_OK):
        raise SpecError(f"trial.cwd: {str(cwd)!r} cannot be entered (no search permission)")


def _with_trial_reason(handle: dict[str, Any], reason: str) -> str:
    """Append what the trial itself said went wrong: a program may write one line to
    ``$PREFECT_HPO_WORKDIR/failure_reason`` before exiting non-zero (run_callable writes the
    exception there), so the status says "exit code 1: ValueError: ..." instead of only a code."""
    try:
        said = (Path(handle["workdir"]) / FAILURE_REASON_FILE).read_text(errors="replace").strip()
    except OSError:
        return reason
    return f"{reason}: {said.splitlines()[0][:500]}" if said else reason


def _describe_exit(rc: int) -> str:
    """'exit code 3', or 'killed by signal 9 (SIGKILL)' for a shell's 128 + N status."""
    if 128 < rc <= 128 + 64:
        sig = rc - 128
        try:
            name = signal.Signals(sig).name
        except ValueError:
            return f"killed by signal {sig}"
        return f"killed by signal {sig} ({name})"
    return f"exit code {rc}"


class LocalProcessLauncher(Launcher):
    """Runs each attempt as a process group on this machine; GPUs come from a :class:`GpuPool`.

    ``gpus``: the device ids trials may use (None: detect them, see
    :func:`~prefect_hpo.launchers.gpus.detect_gpus`). ``kill_grace_s``: how long a killed trial
    gets between SIGTERM and SIGKILL. ``inherit_gpus``: the infrastructure (a pod, a container, a
    pinned worker) chose this process's GPUs; trials keep the ``CUDA_VISIBLE_DEVICES`` they inherit.

    The launcher object only caches (log offsets, Popen objects to reap children, which GPUs it
    holds): every fact needed to find an attempt again is in its handle or its workdir.
    """

    kind = "local"

    def __init__(self, gpus: Sequence[str] | None = None, kill_grace_s: float = 5.0, *, inherit_gpus: bool = False) -> None:
        if kill_grace_s < 0:
            raise SpecError(f"kill_grace_s must be >= 0, got {kill_grace_s}")
        self.inherit_gpus = inherit_gpus
        self.pool = GpuPool([] if inherit_gpus else gpus)
        self.kill_grace_s = float(kill_grace_s)
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._offsets: dict[str, int] = {}
        self._held: dict[str, list[str]] = {}
        self._final: dict[str, PollResult] = {}
        self._kill_reasons: dict[str, str] = {}

    # -- the Launcher interface ---------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        """Start the attempt in a new session; raises TrialError if its GPUs are not free now."""
        n_gpus = request.gpus_per_trial
        if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 0:
            raise SpecError(f"trial.gpus_per_trial must be a non-negative integer, got {n_gpus!r}")
        self._check_gpu_count(n_gpus)
        if request.timeout_s is not None and not request.timeout_s > 0:
            raise SpecError(f"trial timeout must be positive, got {request.timeout_s!r}")
        try:
            params_json = json.dumps(request.params)
        except (TypeError, ValueError) as exc:
            raise TrialError(f"trial {request.index}: parameters are not JSON-serializable ({exc})") from None

        with self._lock:
            self._reap()
            gpus = self.pool.acquire(n_gpus)
            if gpus is None:
                raise TrialError(
                    f"trial {request.index}: needs {n_gpus} GPU(s) but only {self.pool.free} of "
                    f"{self.pool.total} are free now; check free_slots() before launching"
                )
            try:
                handle, proc = self._start(request, params_json, gpus)
            except BaseException:
                self.pool.release(gpus)
                raise
            key = self._key(handle)
            self._procs[key] = proc
            self._offsets[key] = handle["log_start"]
            if gpus:
                self._held[key] = list(gpus)
        logger.info(
            "trial %d attempt %d started: pid %d, GPUs %s, log %s",
            request.index, request.attempt, handle["pid"], gpus or "none", handle["log"],
        )
        return handle

    def poll(self, handle: dict[str, Any]) -> PollResult:
        """Non-blocking, except when it must kill (timeout, malformed report): up to the grace."""
        key = self._key(handle)
        with self._lock:
            self._reap()
            done = self._final.get(key)
            if done is not None:
                return PollResult(done.state, [], done.reason, done.exit_code)
            # Decide "finished" before reading the log, so the read after it sees all output. Only
            # the wrapper's end counts: an exit_code file while it still runs is not its (the
            # wrapper writes it last), so a trial cannot end itself early with a forged status.
            finished = not self._alive(handle, key)
            rc = self._read_exit_file(handle) if finished else None
            reports, malformed = self._read_reports(handle, key, final=finished)
            if finished:
                return self._finish(handle, key, reports, rc, malformed)

            timeout_s = handle.get("timeout_s")
            if malformed is not None:
                reason = malformed
            elif timeout_s is not None and time.time() - float(handle["started_at"]) > float(timeout_s):
                reason = f"timed out after {float(timeout_s):g} s"
            else:
                return PollResult(TrialState.RUNNING, reports)
            logger.warning("trial %s: %s; killing it", handle.get("index"), reason)
            self.kill(handle, reason)
            if malformed is None:
                more, _ = self._read_reports(handle, key, final=True)
                reports.extend(more)
            return self._finish(handle, key, reports, self._read_exit_file(handle), malformed)

    def kill(self, handle: dict[str, Any], reason: str = "killed") -> None:
        """SIGTERM the group, SIGKILL after the grace period; returns once it is gone.

        Blocking on purpose: the attempt's GPUs are released only when no process of it can
        still hold GPU memory. Idempotent.
        """
        key = self._key(handle)
        with self._lock:
            if key not in self._final and self._read_exit_file(handle) is None and self._alive(handle, key):
                self._write_kill_reason(handle, key, reason)
            self._terminate(handle, key, strays_only=False)
            self._release(key)

    def reattach(self, handle: dict[str, Any]) -> bool:
        """True if the attempt still runs (and re-claims its GPUs), False if it is gone."""
        key = self._key(handle)
        with self._lock:
            if key in self._final or not self._alive(handle, key):
                return False  # finished or gone (or not this attempt's process: never signalled)
            if key not in self._held and handle.get("gpus"):
                held: list[str] = []
                for device in handle["gpus"]:
                    try:
                        self.pool.claim([device])
                    except TrialError as exc:
                        logger.warning("trial %s re-attached, but GPU %s: %s", handle.get("index"), device, exc)
                    else:
                        held.append(device)
                self._held[key] = held
            return True

    def wait_any(self, handles: Sequence[dict[str, Any]], timeout_s: float) -> None:
        """Return when an attempt exited, its log grew or its timeout passed; else after timeout_s."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._lock:
            self._reap()
            watched = [(h, self._key(h)) for h in handles if self._key(h) not in self._final]
        if not watched:
            time.sleep(max(0.0, timeout_s))
            return
        sizes = {key: self._log_size(h) for h, key in watched}
        while True:
            with self._lock:
                for h, key in watched:
                    if self._changed(h, key, sizes[key]):
                        return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(_WAIT_STEP_S, remaining))

    def free_slots(self, gpus_per_trial: int) -> int | None:
        """None without GPUs (no limit here); else how many trials' worth of GPUs are free."""
        if gpus_per_trial <= 0:
            return None
        self._check_gpu_count(gpus_per_trial)
        return self.pool.free // gpus_per_trial

    def log_path(self, handle: dict[str, Any]) -> Path | None:
        """The attempt's combined stdout/stderr (shared by attempts that reuse a workdir)."""
        return Path(self._check(handle)["log"])

    # -- starting -----------------------------------------------------------------------------

    def _check_gpu_count(self, n_gpus: int) -> None:
        if n_gpus > self.pool.total:
            raise SpecError(
                f"trial.gpus_per_trial: {n_gpus} GPU(s) per trial but only {self.pool.total} visible "
                f"({list(self.pool.devices) or 'none'}); lower gpus_per_trial, or list more in trial.gpus or CUDA_VISIBLE_DEVICES"
            )

    def _start(
        self, request: LaunchRequest, params_json: str, gpus: list[str]
    ) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
        workdir = Path(request.workdir).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        for stale in (EXIT_NAME, EXIT_NAME + ".tmp", KILLED_NAME, KILLED_NAME + ".tmp", FAILURE_REASON_FILE):
            (workdir / stale).unlink(missing_ok=True)
        for old in workdir.glob(STATUS_PREFIX + "*"):  # an earlier attempt's, in a reused workdir
            shutil.rmtree(old, ignore_errors=True)
        status_dir = workdir / f"{STATUS_PREFIX}{secrets.token_hex(8)}"
        status_dir.mkdir()
        log = workdir / LOG_NAME
        launch_id = uuid.uuid4().hex

        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # python trials' reports arrive as printed
        env.update({str(k): str(v) for k, v in request.env.items()})
        env.update(
            {
                PARAMS_ENV: params_json,
                "PREFECT_HPO_TRIAL_INDEX": str(request.index),
                "PREFECT_HPO_EXPERIMENT": request.experiment,
                "PREFECT_HPO_ATTEMPT": str(request.attempt),
                "PREFECT_HPO_WORKDIR": str(workdir),
                LAUNCH_ID_ENV: launch_id,
            }
        )
        if not self.inherit_gpus:  # "" hides every GPU from a CPU trial instead of letting it grab one
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        started_at = time.time()
        with open(log, "ab") as out:
            log_start = out.tell()
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _WRAPPER, "prefect-hpo-trial", request.command, str(status_dir / EXIT_NAME)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=request.cwd,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the command or env
                shutil.rmtree(status_dir, ignore_errors=True)
                raise TrialError(f"trial {request.index}: cannot start the command ({exc})") from exc
        stat = _proc_stat(proc.pid)  # our unreaped child: readable even if it already exited
        handle: dict[str, Any] = {
            "launcher": "local",
            "version": 2,
            "launch_id": launch_id,
            "experiment": request.experiment,
            "index": request.index,
            "attempt": request.attempt,
            "command": request.command,
            "pid": proc.pid,
            "pgid": proc.pid,  # session leader, hence also group leader
            "pid_start": stat.start if stat is not None else None,
            "workdir": str(workdir),
            "status_dir": str(status_dir),
            "log": str(log),
            "log_start": log_start,
            "started_at": started_at,
            "timeout_s": request.timeout_s,
            "gpus": list(gpus),
        }
        return handle, proc

    # -- watching -----------------------------------------------------------------------------

    @staticmethod
    def _check(handle: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(handle, dict) or handle.get("launcher") != "local":
            kind = handle.get("launcher") if isinstance(handle, dict) else type(handle).__name__
            raise TrialError(f"not a local-process handle (launcher {kind!r})")
        return handle

    def _key(self, handle: dict[str, Any]) -> str:
        handle = self._check(handle)
        return str(handle.get("launch_id") or f"{handle['pid']}:{handle.get('pid_start')}")

    def _reap(self) -> None:
        """Collect exited children so none stays a zombie; forget them once final."""
        for key, proc in list(self._procs.items()):
            if proc.poll() is not None and key in self._final:
                del self._procs[key]

    def _alive(self, handle: dict[str, Any], key: str) -> bool:
        """Whether the wrapper (the group leader) still runs and is this attempt's; a zombie, a
        reused pid or a process the handle merely points at (unconfirmed identity) is not."""
        proc = self._procs.get(key)
        if proc is not None:
            return proc.poll() is None
        return _HAS_PROC and self._confirmed_leader(handle)

    @staticmethod
    def _confirmed_leader(handle: dict[str, Any]) -> bool:
        """The handle's pid is a live session leader that started when the handle says and carries
        the handle's launch id: only then is it the attempt's wrapper (a handle is data from a
        checkpoint, which others may write; without this a forged one gets any process killed)."""
        try:
            pid, pgid, start = int(handle["pid"]), int(handle["pgid"]), handle.get("pid_start")
        except (KeyError, TypeError, ValueError):
            return False
        launch_id = handle.get("launch_id")
        if pid <= 1 or pgid != pid or start is None or not isinstance(launch_id, str) or not launch_id:
            return False
        stat = _proc_stat(pid)
        if stat is None or stat.state in ("Z", "X", "x") or stat.pgrp != pid or stat.session != pid:
            return False
        if stat.start != int(start):
            return False
        # Popen returns once the child starts its exec, and until the exec is done the new
        # environment reads as empty: wait for it (only a just-launched wrapper is in that state)
        deadline = time.monotonic() + _EXEC_WAIT_S
        while True:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                return False
            if environ or time.monotonic() > deadline:
                return f"{LAUNCH_ID_ENV}={launch_id}".encode() in environ.split(b"\0")
            time.sleep(0.005)

    def _leader_pid(self, handle: dict[str, Any], key: str) -> int:
        """The wrapper's pid (also its group's id): our child's own, else the handle's."""
        proc = self._procs.get(key)
        if proc is not None:
            return proc.pid
        try:
            return int(handle["pid"])
        except (KeyError, TypeError, ValueError):  # a damaged handle: no process is its leader
            return -1

    @staticmethod
    def _status_dir(handle: dict[str, Any]) -> Path:
        return Path(handle.get("status_dir") or handle["workdir"])  # older handles: the workdir

    def _read_exit_file(self, handle: dict[str, Any]) -> int | None:
        path = self._status_dir(handle) / EXIT_NAME
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read %s: %s", path, exc)
            return None
        try:
            return int(text)
        except ValueError:
            logger.warning("%s holds %r, not an exit status", path, text)
            return None

    def _read_kill_reason(self, handle: dict[str, Any], key: str) -> str | None:
        try:
            return (self._status_dir(handle) / KILLED_NAME).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return self._kill_reasons.get(key)

    def _write_kill_reason(self, handle: dict[str, Any], key: str, reason: str) -> None:
        self._kill_reasons[key] = reason or "killed"
        path = self._status_dir(handle) / KILLED_NAME
        tmp = path.with_name(KILLED_NAME + ".tmp")
        try:
            tmp.write_text(reason or "killed", encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:  # the trial removed its folder: this launcher still knows
            logger.warning("trial %s: cannot record the kill reason in %s: %s", handle.get("index"), path, exc)

    @staticmethod
    def _log_size(handle: dict[str, Any]) -> int:
        try:
            return os.stat(handle["log"]).st_size
        except OSError:
            return 0

    def _changed(self, handle: dict[str, Any], key: str, size_before: int) -> bool:
        """Whether poll() may have news: exited, output grew, or the timeout passed."""
        if not self._alive(handle, key):
            return True
        if self._log_size(handle) != size_before:
            return True
        timeout_s = handle.get("timeout_s")
        return timeout_s is not None and time.time() - float(handle["started_at"]) > float(timeout_s)

    def _read_reports(self, handle: dict[str, Any], key: str, *, final: bool) -> tuple[list[Report], str | None]:
        """New reports from the log since the last read; only complete lines unless ``final``.

        Returns the reports and, if a report line is malformed, the failure reason (reading
        stops there: the attempt is failed, later lines do not matter).
        """
        offset = self._offsets.get(key, int(handle.get("log_start", 0)))
        reports: list[Report] = []
        try:
            f = open(handle["log"], "rb")
        except FileNotFoundError:
            return reports, None
        with f:
            f.seek(offset)
            tail = b""
            while True:
                chunk = f.read(_READ_CHUNK)
                if not chunk:
                    break
                buf = tail + chunk
                cut = buf.rfind(b"\n") + 1
                lines, tail = buf[:cut], buf[cut:]
                offset += cut
                if len(tail) > _MAX_LINE:  # no report is this long: skip it as log noise
                    offset += len(tail)
                    tail = b""
                malformed = self._parse(lines, reports)
                if malformed is not None:
                    self._offsets[key] = offset
                    return reports, malformed
            if final and tail:
                offset += len(tail)
                malformed = self._parse(tail, reports)
                if malformed is not None:
                    self._offsets[key] = offset
                    return reports, malformed
        self._offsets[key] = offset
        return reports, None

    @staticmethod
    def _parse(data: bytes, reports: list[Report]) -> str | None:
        for raw in data.splitlines():
            try:
                found = parse_report_line(raw.decode("utf-8", errors="replace"))
            except TrialError as exc:
                return f"malformed report line: {exc}"
            if found is not None:
                reports.append(found)
        return None

    def _finish(
        self, handle: dict[str, Any], key: str, reports: list[Report], rc: int | None, malformed: str | None
    ) -> PollResult:
        """Settle a final state (a kill's reason first, then a bad report, then the exit status)."""
        # the wrapper has ended; processes still there get a moment to end on their own (the
        # last member of a pipeline), then whatever the trial really left behind is stopped
        settle = time.monotonic() + _SETTLE_S
        while self._remaining(handle, key, True) and time.monotonic() < settle:
            self._reap()
            time.sleep(_WAIT_STEP_S)
        self._terminate(handle, key, strays_only=True)
        proc = self._procs.get(key)
        if proc is not None:  # our child: its own status is the truth, the file only a copy
            try:
                proc.wait(timeout=_SETTLE_S)
            except subprocess.TimeoutExpired:
                pass
            wrapper_rc = proc.poll()
            if wrapper_rc is not None:
                wrapper_rc = wrapper_rc if wrapper_rc >= 0 else 128 - wrapper_rc
                if rc is not None and rc != wrapper_rc:
                    logger.warning(
                        "trial %s: its exit_code file says %d but the process exited with %d; trusting the process",
                        handle.get("index"), rc, wrapper_rc,
                    )
                rc = wrapper_rc
        killed = self._read_kill_reason(handle, key)
        workdir = Path(handle["workdir"])
        if killed is not None:
            result = PollResult(TrialState.FAILED, reports, killed, rc)
        elif malformed is not None:
            result = PollResult(TrialState.FAILED, reports, malformed, rc)
        elif not workdir.is_dir():  # the trial (or someone) deleted it: its log and reports are gone
            status = f" ({_describe_exit(rc)})" if rc is not None else ""
            result = PollResult(
                TrialState.FAILED, reports, f"attempt folder removed while the trial ran{status}: {workdir}", rc
            )
        elif rc == 0:
            result = PollResult(TrialState.SUCCEEDED, reports, None, 0)
        elif rc is not None:
            result = PollResult(TrialState.FAILED, reports, _with_trial_reason(handle, _describe_exit(rc)), rc)
        else:
            result = PollResult(TrialState.FAILED, reports, "process vanished without an exit status", None)
        self._release(key)
        self._final[key] = PollResult(result.state, [], result.reason, result.exit_code)
        logger.info(
            "trial %s attempt %s %s%s", handle.get("index"), handle.get("attempt"), result.state.value,
            f": {result.reason}" if result.reason else "",
        )
        return result

    # -- stopping -----------------------------------------------------------------------------

    def _release(self, key: str) -> None:
        gpus = self._held.pop(key, None)
        if gpus:
            self.pool.release(gpus)

    def _members(self, handle: dict[str, Any], key: str, leader_alive: bool) -> list[int]:
        """Live (non-zombie) processes of the attempt, leader included when alive: its session's
        processes while its (confirmed) leader runs, and anywhere every process that carries the
        attempt's launch id (a ``setsid`` grandchild has left the session but kept the
        environment). Without a live leader the ids in the handle could have been reused (or
        forged), so then only the launch id counts."""
        leader = self._leader_pid(handle, key)
        if not _HAS_PROC:
            return [leader] if leader_alive else []
        launch_id = handle.get("launch_id")
        needle = f"{LAUNCH_ID_ENV}={launch_id}".encode() if isinstance(launch_id, str) and launch_id else None
        members = []
        with os.scandir("/proc") as entries:
            for entry in entries:
                # never this process: a flow started inside a trial carries that trial's launch id
                if not entry.name.isdigit() or int(entry.name) == os.getpid():
                    continue
                pid = int(entry.name)
                stat = _proc_stat(pid)
                if stat is None or stat.state in ("Z", "X", "x"):
                    continue
                if leader_alive and stat.session == leader:
                    members.append(pid)
                elif needle is not None and _environ_has(pid, needle):
                    members.append(pid)
        return members

    def _signal(self, handle: dict[str, Any], key: str, sig: signal.Signals, strays_only: bool) -> bool:
        """Send ``sig`` to the attempt's processes (or its strays); False when none is left."""
        leader = self._leader_pid(handle, key)
        leader_alive = self._alive(handle, key)
        targets = [p for p in self._members(handle, key, leader_alive) if not (strays_only and p == leader)]
        if leader_alive and not strays_only:
            try:  # the group first, in one go, as a terminal would: the trial sees one SIGTERM
                os.killpg(leader, sig)
            except ProcessLookupError:
                pass
            targets = [p for p in targets if not _in_group(p, leader)]  # the rest: strays outside the group
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        return (leader_alive and not strays_only) or bool(targets)

    def _remaining(self, handle: dict[str, Any], key: str, strays_only: bool) -> bool:
        leader_alive = self._alive(handle, key)
        if leader_alive and not strays_only:
            return True
        leader = self._leader_pid(handle, key)
        return any(p != leader or not strays_only for p in self._members(handle, key, leader_alive))

    def _terminate(self, handle: dict[str, Any], key: str, *, strays_only: bool) -> None:
        """SIGTERM, wait up to the grace period, SIGKILL, wait until the processes are gone.

        ``strays_only``: the trial has finished, but processes it left behind in its group (a
        background job, a forgotten server) would keep holding its GPUs: stop those.
        """
        if not self._remaining(handle, key, strays_only):
            return
        if strays_only:
            logger.warning("trial %s finished but left processes behind; stopping them", handle.get("index"))
        if not self._signal(handle, key, signal.SIGTERM, strays_only):
            return
        deadline = time.monotonic() + self.kill_grace_s
        while time.monotonic() < deadline:
            if not self._remaining(handle, key, strays_only):
                return
            time.sleep(_WAIT_STEP_S)
        logger.warning("trial %s ignored SIGTERM for %g s; sending SIGKILL", handle.get("index"), self.kill_grace_s)
        self._signal(handle, key, signal.SIGKILL, strays_only)
        deadline = time.monotonic() + _KILL_WAIT_S
        while time.monotonic() < deadline:
            if not self._remaining(handle, key, strays_only):
                return
            time.sleep(_WAIT_STEP_S)
        logger.error("trial %s: processes still present %g s after SIGKILL", handle.get("index"), _KILL_WAIT_S)
