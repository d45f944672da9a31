"""The local launcher against handles and trials that lie: forged checkpoints, forged exit
statuses, escaped grandchildren, a deleted attempt folder. Real processes, no mocks."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_hpo.errors import SpecError
from prefect_hpo.launchers.base import LaunchRequest, PollResult, TrialState
from prefect_hpo.launchers.local import LocalProcessLauncher, check_cwd

pytestmark = pytest.mark.timeout(60)

PY = shlex.quote(sys.executable)


def request(tmp_path: Path, command: str, **kwargs: Any) -> LaunchRequest:
    kwargs.setdefault("workdir", tmp_path / "attempt")
    return LaunchRequest("exp", 0, 1, command, {}, {}, **kwargs)


def run_to_end(launcher: LocalProcessLauncher, handle: dict, limit_s: float = 20.0) -> PollResult:
    deadline = time.monotonic() + limit_s
    while (result := launcher.poll(handle)).state is TrialState.RUNNING:
        assert time.monotonic() < deadline, "trial did not finish in time"
        launcher.wait_any([handle], 0.5)
    return result


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(predicate: Any, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


# -- a tampered checkpoint never gets an unrelated process signalled ----------------------------


@pytest.fixture
def bystander():
    """An unrelated process, leader of its own session (the most convincing target)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("forgery", ["pid_start null", "pid_start wrong", "pid_start right, launch id wrong",
                                     "no launch id", "pgid of another group", "pid not a number"])
def test_forged_handle_never_signals_an_unrelated_process(tmp_path: Path, bystander: subprocess.Popen, forgery: str) -> None:
    workdir = tmp_path / "attempt"
    workdir.mkdir()
    pid = bystander.pid
    handle: dict[str, Any] = {
        "launcher": "local", "version": 2, "launch_id": "f" * 32, "experiment": "exp", "index": 0, "attempt": 1,
        "command": "sleep 60", "pid": pid, "pgid": pid, "pid_start": start_time(pid), "workdir": str(workdir),
        "status_dir": str(workdir), "log": str(workdir / "output.log"), "log_start": 0, "started_at": time.time(),
        "timeout_s": 0.01, "gpus": [],
    }
    if forgery == "pid_start null":
        handle["pid_start"] = None
    elif forgery == "pid_start wrong":
        handle["pid_start"] += 1
    elif forgery == "no launch id":
        del handle["launch_id"]
    elif forgery == "pid not a number":
        handle["pid"] = handle["pgid"] = "1; kill"
    elif forgery == "pgid of another group":
        handle["pgid"] = os.getpgid(0)  # the test's own group: killpg would hit pytest
    launcher = LocalProcessLauncher(kill_grace_s=0.5)
    assert launcher.reattach(dict(handle)) is False
    result = launcher.poll(dict(handle))  # timeout_s passed long ago: a believed handle would be killed
    launcher.kill(dict(handle), "stopped early")
    LocalProcessLauncher(kill_grace_s=0.5).kill(dict(handle))
    time.sleep(0.2)
    assert alive(pid) and bystander.poll() is None
    # not this attempt's process: the attempt is treated as vanished, which the flow re-runs
    assert result.state is TrialState.FAILED and result.exit_code is None and "vanished" in result.reason


def test_a_genuine_handle_is_still_recognised_after_a_restart(tmp_path: Path) -> None:
    first = LocalProcessLauncher(kill_grace_s=0.5)
    handle = first.launch(request(tmp_path, "sleep 60"))
    saved = json.loads(json.dumps(handle))
    second = LocalProcessLauncher(kill_grace_s=0.5)
    assert second.reattach(saved) is True
    second.kill(saved, "stopped early")
    wait_for(lambda: not alive(handle["pid"]) or first.poll(handle).state is not TrialState.RUNNING)
    assert second.poll(saved).reason == "stopped early"


# -- the trial cannot fake its own outcome -------------------------------------------------------

FORGE_ZERO = 'printf 0 > "$PREFECT_HPO_WORKDIR/exit_code"; printf 0 > exit_code; sleep 0.3; exit 3'


@pytest.mark.parametrize("watcher", ["parent", "restarted flow"])
def test_a_trial_writing_exit_code_0_and_exiting_3_fails(tmp_path: Path, watcher: str) -> None:
    parent = LocalProcessLauncher()
    handle = parent.launch(request(tmp_path, FORGE_ZERO, cwd=tmp_path))
    if watcher == "restarted flow":
        wait_for(lambda: (Path(handle["status_dir"]) / "exit_code").exists())
        parent = LocalProcessLauncher()  # no longer the parent: only the files remain
    result = run_to_end(parent, json.loads(json.dumps(handle)))
    assert (result.state, result.exit_code, result.reason) == (TrialState.FAILED, 3, "exit code 3")


def test_a_forged_status_file_while_the_trial_runs_is_ignored(tmp_path: Path) -> None:
    """Even one written into the launcher's own folder: the trial is finished when its wrapper is."""
    command = 'for d in "$PREFECT_HPO_WORKDIR"/.launcher-*; do printf 0 > "$d/exit_code"; done; sleep 0.5; exit 3'
    launcher = LocalProcessLauncher()
    handle = launcher.launch(request(tmp_path, command))
    wait_for(lambda: (Path(handle["status_dir"]) / "exit_code").exists())
    assert launcher.poll(handle).state is TrialState.RUNNING
    assert LocalProcessLauncher().poll(json.loads(json.dumps(handle))).state is TrialState.RUNNING
    result = run_to_end(launcher, handle)
    assert (result.state, result.exit_code) == (TrialState.FAILED, 3)


@pytest.mark.parametrize("watcher", ["parent", "restarted flow"])
def test_a_trial_that_deletes_its_attempt_folder_is_reported_as_such(tmp_path: Path, watcher: str) -> None:
    command = 'echo "PREFECT_HPO_REPORT {\\"step\\": null, \\"metrics\\": {\\"loss\\": 1}}"; rm -rf "$PREFECT_HPO_WORKDIR"; exit 0'
    launcher = LocalProcessLauncher()
    handle = launcher.launch(request(tmp_path, command, cwd=tmp_path))
    if watcher == "restarted flow":
        wait_for(lambda: not Path(handle["workdir"]).exists())
        launcher = LocalProcessLauncher()
    result = run_to_end(launcher, json.loads(json.dumps(handle)))
    assert result.state is TrialState.FAILED
    assert result.reason.startswith("attempt folder removed while the trial ran"), result.reason
    assert "vanished" not in result.reason  # a vanished process is re-run; this trial is the culprit
    if watcher == "parent":
        assert result.exit_code == 0 and "(exit code 0)" in result.reason


# -- every process a trial starts is tracked, also those that leave its session ------------------

# Leaves the trial's session (os.setsid), then records its pid atomically: "escaped" is a child of
# the trial's shell, "orphan" is double-forked (its parent subshell exits at once).
_SETSID = (
    "import os, time; os.setsid(); p = os.path.join(os.environ['PREFECT_HPO_WORKDIR'], '{name}'); "
    "open(p + '.tmp', 'w').write(str(os.getpid())); os.replace(p + '.tmp', p); time.sleep(60)"
)
ESCAPE = (
    f"{PY} -c {shlex.quote(_SETSID.format(name='escaped.pid'))} & "
    f"( {PY} -c {shlex.quote(_SETSID.format(name='orphan.pid'))} & ); "
)


def _pids(workdir: Path) -> list[int]:
    wait_for(lambda: (workdir / "escaped.pid").exists() and (workdir / "orphan.pid").exists())
    return [int((workdir / name).read_text()) for name in ("escaped.pid", "orphan.pid")]


def test_setsid_grandchildren_do_not_outlive_their_finished_trial(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=1.0)
    handle = launcher.launch(request(tmp_path, ESCAPE + "sleep 0.5; exit 0"))
    pids = _pids(Path(handle["workdir"]))
    assert all(os.getsid(p) == p for p in pids)  # really left the trial's session
    result = run_to_end(launcher, handle)
    assert result.state is TrialState.SUCCEEDED
    wait_for(lambda: not any(alive(p) for p in pids), limit_s=5.0)


@pytest.mark.parametrize("watcher", ["parent", "restarted flow"])
def test_timeout_kills_setsid_grandchildren_too(tmp_path: Path, watcher: str) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=1.0)
    handle = launcher.launch(request(tmp_path, ESCAPE + "sleep 60", timeout_s=1.0))
    pids = _pids(Path(handle["workdir"]))
    if watcher == "restarted flow":
        launcher = LocalProcessLauncher(kill_grace_s=1.0)
        assert launcher.reattach(handle) is True
    result = run_to_end(launcher, handle)
    assert result.state is TrialState.FAILED and result.reason == "timed out after 1 s"
    wait_for(lambda: not any(alive(p) for p in pids + [handle["pid"]]), limit_s=5.0)


@pytest.mark.parametrize("watcher", ["parent", "restarted flow"])
def test_escaped_processes_are_found_after_the_wrapper_died(tmp_path: Path, watcher: str) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=1.0)
    handle = launcher.launch(request(tmp_path, ESCAPE + "sleep 60"))
    pids = _pids(Path(handle["workdir"]))
    os.killpg(handle["pgid"], signal.SIGKILL)  # wrapper and trial gone; the escaped ones live on
    if watcher == "restarted flow":
        wait_for(lambda: not alive(handle["pid"]))
        launcher = LocalProcessLauncher(kill_grace_s=1.0)
    result = run_to_end(launcher, json.loads(json.dumps(handle)))
    assert result.state is TrialState.FAILED
    wait_for(lambda: not any(alive(p) for p in pids), limit_s=5.0)


# -- a working directory that is not there is refused up front -----------------------------------


def test_check_cwd_names_the_field(tmp_path: Path) -> None:
    check_cwd(None)
    check_cwd(tmp_path)
    with pytest.raises(SpecError, match=r"trial\.cwd: .*missing.* does not exist"):
        check_cwd(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match=r"trial\.cwd: .* is not a directory"):
        check_cwd(tmp_path / "file")


def test_a_handle_of_the_previous_version_is_still_watched(tmp_path: Path) -> None:
    """Checkpoints written before ``status_dir`` keep their exit status in the workdir itself."""
    from prefect_hpo.launchers.local import _WRAPPER, _proc_stat

    workdir = tmp_path / "old"
    workdir.mkdir()
    env = {**os.environ, "PREFECT_HPO_LAUNCH_ID": "a" * 32, "PREFECT_HPO_EXPERIMENT": "exp"}
    with open(workdir / "output.log", "ab") as out:  # started the way version 1 started it
        proc = subprocess.Popen(["/bin/sh", "-c", _WRAPPER, "prefect-hpo-trial", "sleep 0.5; exit 4", str(workdir / "exit_code")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stat = _proc_stat(proc.pid)
    assert stat is not None
    handle = {"launcher": "local", "version": 1, "launch_id": "a" * 32, "experiment": "exp", "index": 0, "attempt": 1,
              "command": "sleep 0.5; exit 4", "pid": proc.pid, "pgid": proc.pid, "pid_start": stat.start,
              "workdir": str(workdir), "log": str(workdir / "output.log"), "log_start": 0, "started_at": time.time(),
              "timeout_s": None, "gpus": []}
    launcher = LocalProcessLauncher()
    assert launcher.reattach(handle) is True
    proc.wait()
    result = run_to_end(launcher, handle)
    assert (result.state, result.exit_code, result.reason) == (TrialState.FAILED, 4, "exit code 4")
