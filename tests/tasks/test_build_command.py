"""Parameter values reach a trial as data, whatever quoting the command template puts around them.

Each hostile value would run ``touch`` if it were spliced into the shell text; the trials run
through the real local launcher (a real ``/bin/sh``), and a Python program records the argv it got.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest

from prefect_hpo.launchers.base import LaunchRequest, TrialState
from prefect_hpo.launchers.local import LocalProcessLauncher
from prefect_hpo.spec import TrialSpec
from prefect_hpo.tasks.launch import build_command

pytestmark = pytest.mark.timeout(60)

ARGV_PROGRAM = "import json, sys; print(json.dumps(sys.argv[1:]))"


def hostile_values(marker_dir: Path) -> list[str]:
    """12 values that each create a file in ``marker_dir`` if a shell ever parses them as code."""
    f = lambda i: shlex.quote(str(marker_dir / f"pwned-{i}"))  # noqa: E731
    return [
        f"$(touch {f(0)})",
        f"`touch {f(1)}`",
        f'a"; touch {f(2)}; echo "',
        f"'; touch {f(3)}; '",
        f"\"; touch {f(4)}; #",
        f"'$(touch {f(5)})'",
        f'"$(touch {f(6)})"',
        f"\\\"; touch {f(7)}; \\\"",
        f"x\ntouch {f(8)}",
        f"; touch {f(9)}",
        f"&& touch {f(10)} ||",
        f"| touch {f(11)}",
    ]


ODD_VALUES = ["", "a b  c", "*", "~", "$HOME", "${HOME}", "\\", "{s0}", "-n", "it's", 'say "hi"', "0.5"]


def run(tmp_path: Path, command: str) -> list[str]:
    """Run ``command`` as a trial; returns the argv its Python program printed."""
    launcher = LocalProcessLauncher()
    req = LaunchRequest("exp", 0, 1, command, {}, {}, tmp_path / "attempt", cwd=tmp_path)
    handle = launcher.launch(req)
    deadline = time.monotonic() + 20
    while (result := launcher.poll(handle)).state is TrialState.RUNNING:
        assert time.monotonic() < deadline
        launcher.wait_any([handle], 0.5)
    log = Path(handle["log"]).read_text()
    assert result.state is TrialState.SUCCEEDED, (result.reason, log)
    return json.loads(log.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("style", "around"),
    [("bare", "{%s}"), ("double-quoted", '"{%s}"'), ("single-quoted", "'{%s}'"), ("embedded", "--v={%s}")],
)
def test_hostile_values_are_one_argument_each_and_never_run(tmp_path: Path, style: str, around: str) -> None:
    values = hostile_values(tmp_path) + ODD_VALUES
    params = {f"s{i}": v for i, v in enumerate(values)}
    template = " ".join([shlex.quote(sys.executable), "-c", shlex.quote(ARGV_PROGRAM), *(around % name for name in params)])
    argv = run(tmp_path, build_command(TrialSpec(command=template), params))
    expected = [("--v=" + v if style == "embedded" else v) for v in values]
    assert argv == expected
    assert sorted(p.name for p in tmp_path.glob("pwned-*")) == []


def test_shell_syntax_of_the_template_still_works(tmp_path: Path) -> None:
    """Pipes, ``&&``, ``export``, ``VAR=x cmd``, ``$VAR`` and braces that name no parameter are the user's."""
    (tmp_path / "argv.py").write_text(ARGV_PROGRAM)
    template = (
        "cd . && export GREETING=hi && LANG=C python argv.py {x} \"$GREETING-{x}\" '{x}'\"{x}\" ${HOME:+home} {unknown} "
        "| cat"
    )
    value = "$(touch pwned) a'b\"c"
    command = build_command(TrialSpec(command=template), {"x": value})
    argv = run(tmp_path, command)
    assert argv == [value, f"hi-{value}", value + value, "home", "{unknown}"]
    assert not (tmp_path / "pwned").exists()


def test_python_in_a_command_is_this_interpreter(tmp_path: Path) -> None:
    """``python`` resolves through PATH, which launch_trial prefixes with the flow's interpreter."""
    import os

    here = os.path.dirname(sys.executable)
    template = "python -c 'import sys; print(__import__(\"json\").dumps([sys.executable, sys.argv[1]]))' {x}"
    launcher = LocalProcessLauncher()
    env = {"PATH": os.pathsep.join([here, os.environ.get("PATH", "")])}
    handle = launcher.launch(LaunchRequest("exp", 0, 1, build_command(TrialSpec(command=template), {"x": 1}), {}, env,
                                           tmp_path / "a"))
    deadline = time.monotonic() + 20
    while launcher.poll(handle).state is TrialState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    exe, arg = json.loads(Path(handle["log"]).read_text().strip().splitlines()[-1])
    assert os.path.dirname(exe) == here and arg == "1"


def test_commands_without_placeholders_and_callables_are_unchanged() -> None:
    assert build_command(TrialSpec(command="sh train.sh | tee out"), {"x": 1}) == "sh train.sh | tee out"
    callable_cmd = build_command(TrialSpec(callable="pkg.mod:fn"), {})
    assert shlex.split(callable_cmd)[1:] == ["-m", "prefect_hpo.launchers.run_callable", "pkg.mod:fn"]
