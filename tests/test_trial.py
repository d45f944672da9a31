"""The trial-side protocol: parameters in through the environment, metrics out as stdout lines."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from prefect_hpo import TrialError
from prefect_hpo.trial import PARAMS_ENV, REPORT_PREFIX, Report, get_params, parse_report_line, report


def test_get_params_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PARAMS_ENV, json.dumps({"lr": 0.01, "opt": "adam", "layers": 3}))
    assert get_params() == {"lr": 0.01, "opt": "adam", "layers": 3}


@pytest.mark.parametrize(("value", "message"), [(None, "not set"), ("{lr: 1", "not valid JSON"), ("[1, 2]", "JSON object")])
def test_get_params_errors_say_what_is_wrong(monkeypatch: pytest.MonkeyPatch, value: str | None, message: str) -> None:
    if value is None:
        monkeypatch.delenv(PARAMS_ENV, raising=False)
    else:
        monkeypatch.setenv(PARAMS_ENV, value)
    with pytest.raises(TrialError, match=message):
        get_params()


def test_report_writes_one_parsable_line_per_call() -> None:
    out = io.StringIO()
    report(step=2, stream=out, val_loss=np.float32(0.5), accuracy=0.75)
    report(stream=out, val_loss=float("nan"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith(REPORT_PREFIX) for line in lines)
    first, second = (parse_report_line(line) for line in lines)
    assert first == Report(step=2, metrics={"val_loss": 0.5, "accuracy": 0.75})
    assert second is not None and second.step is None and math.isnan(second.metrics["val_loss"])


def test_a_shell_program_can_report_without_python() -> None:
    line = subprocess.run(
        ["sh", "-c", 'echo hello; echo \'PREFECT_HPO_REPORT {"step": 1, "metrics": {"loss": 0.5}}\''],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert parse_report_line(line[0]) is None
    assert parse_report_line(line[1]) == Report(step=1, metrics={"loss": 0.5})


def test_a_python_trial_process_round_trips_params_and_reports() -> None:
    code = "from prefect_hpo.trial import get_params, report\np = get_params()\nreport(step=0, loss=p['lr'] * 2)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], env={PARAMS_ENV: '{"lr": 0.25}', "PATH": ""}, capture_output=True, text=True, check=True
    ).stdout
    assert [parse_report_line(line) for line in out.splitlines()] == [Report(step=0, metrics={"loss": 0.5})]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"step": -1, "loss": 1.0}, "step"), ({"step": 1.5, "loss": 1.0}, "step"), ({"step": 1}, "at least one"),
     ({"loss": "low"}, "number"), ({"loss": True}, "number")],
)
def test_report_refuses_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(TrialError, match=message):
        report(stream=io.StringIO(), **kwargs)


@pytest.mark.parametrize(
    "line",
    [REPORT_PREFIX + "{not json", REPORT_PREFIX + '{"step": 1}', REPORT_PREFIX + '{"step": 1, "metrics": {}, "x": 2}',
     REPORT_PREFIX + '{"step": 1, "metrics": {"loss": "high"}}'],
)
def test_malformed_report_lines_are_errors_not_silence(line: str) -> None:
    with pytest.raises(TrialError):
        parse_report_line(line)
