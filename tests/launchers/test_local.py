"""LocalProcessLauncher and the callable runner, with real subprocesses (no mocks).

GPU tests use fake device ids such as ["0", "1", "2"]: the launcher only hands ids out through
CUDA_VISIBLE_DEVICES, so a fake list is a faithful stand-in for real GPUs on this GPU-less
machine. A "restart" of the flow is simulated by a second launcher object that only gets the
JSON handle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from processes import gone, group_alive

from prefect_hpo.errors import SpecError, TrialError
from prefect_hpo.launchers.base import LaunchRequest, PollResult, TrialState
from prefect_hpo.launchers.local import LocalProcessLauncher
from prefect_hpo.trial import Report

pytestmark = pytest.mark.timeout(60)

PY = shlex.quote(sys.executable)


def py(code: str) -> str:
    """A shell command running ``code`` with this interpreter (which has prefect_hpo)."""
    return f"{PY} -c {shlex.quote(textwrap.dedent(code))}"


def request(tmp_path: Path, command: str, *, index: int = 0, **kwargs: Any) -> LaunchRequest:
    kwargs.setdefault("workdir", tmp_path / f"trial-{index}")
    kwargs.setdefault("params", {})
    kwargs.setdefault("env", {})
    return LaunchRequest(experiment="exp", index=index, attempt=kwargs.pop("attempt", 1), command=command, **kwargs)


def run_to_end(launcher: LocalProcessLauncher, handle: dict, limit_s: float = 20.0) -> tuple[PollResult, list[Report]]:
    """Poll like the flow does until a final state; returns it and every report seen."""
    deadline = time.monotonic() + limit_s
    seen: list[Report] = []
    while True:
        result = launcher.poll(handle)
        seen.extend(result.reports)
        if result.state is not TrialState.RUNNING:
            return result, seen
        assert time.monotonic() < deadline, "trial did not finish in time"
        launcher.wait_any([handle], 0.5)


def wait_for(predicate: Any, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


REPORT3 = """
    import sys
    from prefect_hpo.trial import report
    print("hello stdout")
    print("hello stderr", file=sys.stderr)
    for step in range(3):
        report(step=step, loss=1.0 / (step + 1))
"""


def test_success_reports_in_order_and_log_has_stdout_and_stderr(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher()
    handle = launcher.launch(request(tmp_path, py(REPORT3)))
    assert json.loads(json.dumps(handle)) == handle
    for key in ("launcher", "pid", "pgid", "pid_start", "workdir", "log", "started_at", "timeout_s", "gpus"):
        assert key in handle
    assert handle["pgid"] == handle["pid"] and isinstance(handle["pid_start"], int)
    result, reports = run_to_end(launcher, handle)
    assert result.state is TrialState.SUCCEEDED and result.exit_code == 0 and result.reason is None
    assert [r.step for r in reports] == [0, 1, 2]
    assert reports[1].metrics == {"loss": 0.5}
    log = launcher.log_path(handle).read_text()
    assert "hello stdout" in log and "hello stderr" in log
    # final states are sticky and carry no repeated reports
    again = launcher.poll(handle)
    assert again.state is TrialState.SUCCEEDED and again.reports == []


def test_environment_given_to_the_trial(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(gpus=["0", "1"])  # fake GPUs: a CPU trial must see none
    code = """
        import json, os
        keys = ["PREFECT_HPO_PARAMS", "PREFECT_HPO_TRIAL_INDEX", "PREFECT_HPO_EXPERIMENT",
                "PREFECT_HPO_ATTEMPT", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "MLFLOW_RUN_ID"]
        with open("env.json", "w") as f:
            json.dump({k: os.environ.get(k) for k in keys}, f)
    """
    params = {"lr": 0.01, "layers": 3, "act": "relu", "nested": {"a": [1, 2]}}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    req = request(tmp_path, py(code), index=7, attempt=2, params=params, env={"MLFLOW_RUN_ID": "abc"}, cwd=cwd)
    handle = launcher.launch(req)
    result, _ = run_to_end(launcher, handle)
    assert result.state is TrialState.SUCCEEDED
    seen = json.loads((cwd / "env.json").read_text())
    assert json.loads(seen["PREFECT_HPO_PARAMS"]) == params
    assert seen["PREFECT_HPO_TRIAL_INDEX"] == "7"
    assert seen["PREFECT_HPO_EXPERIMENT"] == "exp"
    assert seen["PREFECT_HPO_ATTEMPT"] == "2"
    assert seen["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["PYTHONUNBUFFERED"] == "1"
    assert seen["MLFLOW_RUN_ID"] == "abc"
    assert launcher.free_slots(0) is None


def test_nonzero_exit_fails_with_its_code(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher()
    command = "echo 'PREFECT_HPO_REPORT {\"step\": 0, \"metrics\": {\"x\": 1}}'; exit 3"
    handle = launcher.launch(request(tmp_path, command))
    result, reports = run_to_end(launcher, handle)
    assert (result.state, result.reason, result.exit_code) == (TrialState.FAILED, "exit code 3", 3)
    assert reports == [Report(step=0, metrics={"x": 1.0})]


def test_trial_killed_by_a_signal(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher()
    handle = launcher.launch(request(tmp_path, py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")))
    result, _ = run_to_end(launcher, handle)
    assert result.state is TrialState.FAILED
    assert result.reason == "killed by signal 9 (SIGKILL)"


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=2.0)
    command = 'sleep 60 & echo $! > "$PREFECT_HPO_WORKDIR/bg.pid"; sleep 60'
    handle = launcher.launch(request(tmp_path, command, timeout_s=1.0))
    bg_file = Path(handle["workdir"]) / "bg.pid"
    wait_for(lambda: bg_file.exists() and bg_file.read_text().endswith("\n"))
    grandchild = int(bg_file.read_text())
    t0 = time.monotonic()
    result, _ = run_to_end(launcher, handle)
    assert result.state is TrialState.FAILED and result.reason == "timed out after 1 s"
    assert time.monotonic() - t0 < 5.0
    assert gone(handle["pid"]) and gone(grandchild)
    assert group_alive(handle["pgid"]) == []


def test_kill_escalates_to_sigkill_and_frees_gpus(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(gpus=["0", "1", "2"], kill_grace_s=0.5)  # fake GPU ids
    # The trial ignores SIGTERM (and so does its child), so only SIGKILL stops it.
    command = "trap '' TERM; touch \"$PREFECT_HPO_WORKDIR/ready\"; sleep 60 & sleep 60"
    handle = launcher.launch(request(tmp_path, command, gpus_per_trial=2))
    wait_for((Path(handle["workdir"]) / "ready").exists)
    assert launcher.pool.free == 1 and launcher.free_slots(2) == 0
    assert len(handle["gpus"]) == 2
    t0 = time.monotonic()
    launcher.kill(handle, reason="early stopped")
    assert time.monotonic() - t0 >= 0.5
    assert group_alive(handle["pgid"]) == []
    assert launcher.pool.free == 3 and launcher.free_slots(2) == 1
    launcher.kill(handle)  # idempotent
    assert launcher.pool.free == 3
    result = launcher.poll(handle)
    assert (result.state, result.reason) == (TrialState.FAILED, "early stopped")


def test_gpu_slots_never_overlap_and_are_reused(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(gpus=["0", "1", "2"], kill_grace_s=0.5)  # fake GPU ids
    code = (
        'echo "$CUDA_VISIBLE_DEVICES" > "$PREFECT_HPO_WORKDIR/cvd"; '
        'while [ ! -e "$PREFECT_HPO_WORKDIR/go" ]; do sleep 0.02; done'
    )

    def cvd(h: dict) -> str:
        path = Path(h["workdir"]) / "cvd"
        wait_for(path.exists)
        wait_for(lambda: path.read_text().endswith("\n"))
        return path.read_text().strip()

    # two GPUs per trial out of three: only one trial fits
    assert launcher.free_slots(2) == 1
    first = launcher.launch(request(tmp_path, code, index=0, gpus_per_trial=2))
    assert launcher.free_slots(2) == 0
    with pytest.raises(TrialError, match="free"):
        launcher.launch(request(tmp_path, code, index=1, gpus_per_trial=2))
    assert sorted(cvd(first).split(",")) == sorted(first["gpus"])
    (Path(first["workdir"]) / "go").touch()
    assert run_to_end(launcher, first)[0].state is TrialState.SUCCEEDED
    assert launcher.free_slots(2) == 1

    # one GPU per trial: three run at once, on distinct devices; a freed one is reused
    running = [launcher.launch(request(tmp_path, code, index=i, gpus_per_trial=1)) for i in range(2, 5)]
    seen = [cvd(h) for h in running]
    assert sorted(seen) == ["0", "1", "2"]
    assert launcher.free_slots(1) == 0
    (Path(running[1]["workdir"]) / "go").touch()
    assert run_to_end(launcher, running[1])[0].state is TrialState.SUCCEEDED
    assert launcher.free_slots(1) == 1
    reused = launcher.launch(request(tmp_path, code, index=5, gpus_per_trial=1))
    assert cvd(reused) == seen[1]
    for h in [running[0], running[2], reused]:
        launcher.kill(h)
    assert launcher.pool.free == 3

    with pytest.raises(SpecError, match="gpus_per_trial: 4 GPU"):
        launcher.launch(request(tmp_path, code, index=6, gpus_per_trial=4))
    with pytest.raises(SpecError):
        launcher.free_slots(4)


def test_reattach_to_a_running_trial(tmp_path: Path) -> None:
    launcher_a = LocalProcessLauncher(gpus=["0", "1"])  # fake GPU ids
    code = """
        import os, pathlib, time
        from prefect_hpo.trial import report
        report(step=0, loss=3.0)
        report(step=1, loss=2.0)
        go = pathlib.Path(os.environ["PREFECT_HPO_WORKDIR"]) / "go"
        while not go.exists():
            time.sleep(0.02)
        report(step=2, loss=1.0)
    """
    handle = launcher_a.launch(request(tmp_path, py(code), gpus_per_trial=1))
    got: list[Report] = []
    wait_for(lambda: got.extend(launcher_a.poll(handle).reports) or len(got) == 2)

    # the flow restarts: a new launcher knows only the checkpointed JSON handle
    saved = json.loads(json.dumps(handle))
    launcher_b = LocalProcessLauncher(gpus=["0", "1"])
    assert launcher_b.reattach(saved) is True
    assert launcher_b.pool.free == 1  # its GPU is claimed again
    assert launcher_b.reattach(saved) is True  # twice is fine
    first = launcher_b.poll(saved)
    assert first.state is TrialState.RUNNING
    assert [r.step for r in first.reports] == [0, 1]  # everything from the start
    (Path(saved["workdir"]) / "go").touch()
    result, reports = run_to_end(launcher_b, saved)
    assert result.state is TrialState.SUCCEEDED and result.exit_code == 0
    assert [r.step for r in reports] == [2]
    assert launcher_b.pool.free == 2


def test_trial_survives_the_flow_being_sigkilled(tmp_path: Path) -> None:
    # A real flow process launches the trial, prints the handle, and is SIGKILLed.
    (tmp_path / "trial.py").write_text(textwrap.dedent("""
        import os, pathlib, time
        from prefect_hpo.trial import report
        report(step=0, x=1.0)
        go = pathlib.Path(os.environ["PREFECT_HPO_WORKDIR"]) / "go"
        while not go.exists():
            time.sleep(0.02)
        report(step=1, x=2.0)
    """))
    command = f"{PY} {shlex.quote(str(tmp_path / 'trial.py'))}"
    flow = f"""
        import json, pathlib, time
        from prefect_hpo.launchers.base import LaunchRequest
        from prefect_hpo.launchers.local import LocalProcessLauncher
        req = LaunchRequest("exp", 0, 1, {command!r}, {{}}, {{}}, pathlib.Path({str(tmp_path / "t")!r}))
        print(json.dumps(LocalProcessLauncher().launch(req)), flush=True)
        time.sleep(60)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(flow)], stdout=subprocess.PIPE, text=True)
    try:
        handle = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    try:
        launcher = LocalProcessLauncher()
        assert launcher.reattach(handle) is True
        wait_for(lambda: "PREFECT_HPO_REPORT" in launcher.log_path(handle).read_text())
        (Path(handle["workdir"]) / "go").touch()
        result, reports = run_to_end(launcher, handle)
        assert result.state is TrialState.SUCCEEDED
        assert [r.step for r in reports] == [0, 1]
    finally:  # a failed check must not leave the trial waiting for its "go" forever
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle["pgid"], signal.SIGKILL)


def test_processes_left_behind_by_a_finished_trial_are_stopped(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=2.0)
    handle = launcher.launch(request(tmp_path, 'sleep 60 & echo $! > "$PREFECT_HPO_WORKDIR/bg.pid"; exit 0'))
    result, _ = run_to_end(launcher, handle)
    assert result.state is TrialState.SUCCEEDED
    bg = int((Path(handle["workdir"]) / "bg.pid").read_text())
    wait_for(lambda: gone(bg), limit_s=3.0)
    assert group_alive(handle["pgid"]) == []


@pytest.mark.parametrize(
    ("code", "state", "reason"), [(0, TrialState.SUCCEEDED, None), (5, TrialState.FAILED, "exit code 5")]
)
def test_trial_that_finished_while_nobody_watched(
    tmp_path: Path, code: int, state: TrialState, reason: str | None
) -> None:
    launcher_a = LocalProcessLauncher()
    command = f"echo 'PREFECT_HPO_REPORT {{\"step\": null, \"metrics\": {{\"acc\": 0.9}}}}'; exit {code}"
    handle = launcher_a.launch(request(tmp_path, command))
    wait_for((Path(handle["status_dir"]) / "exit_code").exists)
    launcher_b = LocalProcessLauncher()
    assert launcher_b.reattach(handle) is False
    result = launcher_b.poll(handle)
    assert (result.state, result.reason, result.exit_code) == (state, reason, code)
    assert result.reports == [Report(step=None, metrics={"acc": 0.9})]


def test_vanished_process(tmp_path: Path) -> None:
    launcher_a = LocalProcessLauncher()
    handle = launcher_a.launch(request(tmp_path, "sleep 60"))
    wait_for(lambda: len(group_alive(handle["pgid"])) >= 2)
    os.killpg(handle["pgid"], signal.SIGKILL)  # nobody is left to write the exit status
    wait_for(lambda: gone(handle["pid"]))
    launcher_b = LocalProcessLauncher()
    assert launcher_b.reattach(handle) is False
    result = launcher_b.poll(handle)
    assert result.state is TrialState.FAILED and "vanished" in result.reason
    # the original parent still knows the wrapper's own status
    assert run_to_end(launcher_a, handle)[0].reason == "killed by signal 9 (SIGKILL)"


def test_malformed_report_line_fails_and_kills(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=2.0)
    command = (
        "echo 'PREFECT_HPO_REPORT {\"step\": 0, \"metrics\": {\"x\": 1}}'; "
        "echo 'PREFECT_HPO_REPORT {oops'; sleep 60"
    )
    handle = launcher.launch(request(tmp_path, command))
    result, reports = run_to_end(launcher, handle)
    assert result.state is TrialState.FAILED and result.reason.startswith("malformed report line:")
    assert "oops" in result.reason
    assert reports == [Report(step=0, metrics={"x": 1.0})]
    assert group_alive(handle["pgid"]) == []


def test_log_with_binary_junk_and_a_last_line_without_newline(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher()
    command = r"""printf '\377\376 not utf-8\n'; printf 'PREFECT_HPO_REPORT {"step": 1, "metrics": {"y": 2}}'"""
    handle = launcher.launch(request(tmp_path, command))
    result, reports = run_to_end(launcher, handle)
    assert result.state is TrialState.SUCCEEDED
    assert reports == [Report(step=1, metrics={"y": 2.0})]


def test_relaunch_in_the_same_workdir_reads_only_its_own_output(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher()
    line = "echo 'PREFECT_HPO_REPORT {\"step\": %d, \"metrics\": {\"x\": 1}}'; exit %d"
    first = launcher.launch(request(tmp_path, line % (1, 4)))
    assert run_to_end(launcher, first)[0].reason == "exit code 4"
    second = launcher.launch(request(tmp_path, line % (2, 0), attempt=2))
    result = run_to_end(LocalProcessLauncher(), second)
    assert result[0].state is TrialState.SUCCEEDED
    assert [r.step for r in result[1]] == [2]


def test_bad_cwd_is_a_trial_error_and_frees_gpus(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(gpus=["0"])  # a fake GPU id
    with pytest.raises(TrialError, match="cannot start"):
        launcher.launch(request(tmp_path, "true", cwd=tmp_path / "missing", gpus_per_trial=1))
    assert launcher.pool.free == 1
    with pytest.raises(TrialError, match="not a local-process handle"):
        launcher.poll({"launcher": "work-pool"})


def test_wait_any_returns_when_a_process_exits_or_writes(tmp_path: Path) -> None:
    launcher = LocalProcessLauncher(kill_grace_s=1.0)
    quick = launcher.launch(request(tmp_path, "sleep 0.3", index=0))
    slow = launcher.launch(request(tmp_path, "sleep 60", index=1))
    t0 = time.monotonic()
    launcher.wait_any([slow, quick], 20.0)
    assert time.monotonic() - t0 < 10.0
    assert launcher.poll(quick).state is TrialState.SUCCEEDED

    chatty = launcher.launch(request(tmp_path, "sleep 0.3; echo hi; sleep 60", index=2))
    t0 = time.monotonic()
    launcher.wait_any([slow, chatty], 20.0)
    assert time.monotonic() - t0 < 10.0
    for h in (slow, chatty):
        launcher.kill(h)

    t0 = time.monotonic()
    launcher.wait_any([], 0.1)
    assert time.monotonic() - t0 >= 0.1


# -- the callable runner ----------------------------------------------------------------------

MODULE = """
    from prefect_hpo.trial import report

    def number(params):
        return params["x"] * 2

    def mapping(params):
        return {"loss": params["x"], "acc": 0.5}

    def reports_itself(params):
        report(step=0, loss=9.0)

    def boom(params):
        raise RuntimeError("trial blew up")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "mytrial.py").write_text(textwrap.dedent(MODULE))
    return proj


def run_callable(tmp_path: Path, project: Path, target: str, name: str) -> tuple[PollResult, list[Report], str]:
    launcher = LocalProcessLauncher()
    command = f"{PY} -m prefect_hpo.launchers.run_callable {target}"
    req = request(
        tmp_path,
        command,
        params={"x": 1.5},
        env={"PREFECT_HPO_OBJECTIVES": '["loss"]'},
        cwd=project,
        workdir=tmp_path / name,
    )
    handle = launcher.launch(req)
    result, reports = run_to_end(launcher, handle)
    return result, reports, launcher.log_path(handle).read_text()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("mytrial:number", [Report(step=None, metrics={"loss": 3.0})]),
        ("mytrial:mapping", [Report(step=None, metrics={"loss": 1.5, "acc": 0.5})]),
        ("mytrial:reports_itself", [Report(step=0, metrics={"loss": 9.0})]),
    ],
)
def test_callable_results_become_reports(tmp_path: Path, project: Path, target: str, expected: list[Report]) -> None:
    result, reports, _ = run_callable(tmp_path, project, target, "ok")
    assert result.state is TrialState.SUCCEEDED
    assert reports == expected


def test_callable_exception_is_exit_1_with_traceback(tmp_path: Path, project: Path) -> None:
    result, _, log = run_callable(tmp_path, project, "mytrial:boom", "boom")
    assert (result.state, result.exit_code) == (TrialState.FAILED, 1)
    assert "Traceback" in log and "RuntimeError: trial blew up" in log


@pytest.mark.parametrize(
    ("target", "message"), [("nosuchmodule:fn", "cannot import 'nosuchmodule'"), ("mytrial:missing", "no attribute")]
)
def test_callable_unimportable_target_is_exit_2_in_one_line(
    tmp_path: Path, project: Path, target: str, message: str
) -> None:
    result, _, log = run_callable(tmp_path, project, target, "bad")
    assert (result.state, result.exit_code) == (TrialState.FAILED, 2)
    assert message in log and "Traceback" not in log
    assert len(log.strip().splitlines()) == 1


def test_callable_runner_stays_cheap_to_import() -> None:
    code = "import sys, prefect_hpo.launchers.run_callable; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
