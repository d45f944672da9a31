"""What a trial program imports: ``get_params()`` and ``report(step=..., **metrics)``.

A trial may be written in any language, so the contract is plain text, and this module is only
the Python convenience on top of it:

* **Parameters in**: the launcher puts the trial's parameters, as a JSON object, in the
  environment variable ``PREFECT_HPO_PARAMS`` (they are also templated into the command line).
* **Metrics out**: one line per report on standard output::

      PREFECT_HPO_REPORT {"step": 3, "metrics": {"val_loss": 0.42, "accuracy": 0.91}}

  ``step`` is a non-negative integer (or ``null`` for a final value with no step); ``metrics``
  maps names to numbers (``NaN`` and ``Infinity`` are allowed; on an objective they mark the
  trial failed). Any program can print this line, e.g. from a shell script:
  ``echo 'PREFECT_HPO_REPORT {"step": 1, "metrics": {"loss": 0.5}}'``. Lines without the prefix
  are ordinary log output.

The last report of an objective is the trial's final value; earlier ones are the learning curve
that early-stopping policies watch.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

from prefect_hpo.errors import TrialError

__all__ = ["PARAMS_ENV", "REPORT_PREFIX", "Report", "TrialStopped", "get_params", "parse_report_line", "report"]

PARAMS_ENV = "PREFECT_HPO_PARAMS"

# Set by the in-process launcher on the trial's thread: where report() delivers.
_IN_PROCESS_PARAMS: ContextVar[dict[str, Any] | None] = ContextVar("prefect_hpo_params", default=None)
_IN_PROCESS_SINK: ContextVar[Callable[[Report], None] | None] = ContextVar("prefect_hpo_report_sink", default=None)
REPORT_PREFIX = "PREFECT_HPO_REPORT "


class TrialStopped(Exception):
    """Raised by :func:`report` inside an in-process trial that was stopped (by a stopping policy
    or its timeout): a thread cannot be killed, so its next report unwinds it instead.

    Let it propagate; a process trial never sees it (its process group is killed).
    """


@dataclass(frozen=True)
class Report:
    """One line of the protocol: the metrics a trial reported at ``step``."""

    step: int | None
    metrics: dict[str, float]


def get_params() -> dict[str, Any]:
    """The parameters of the running trial, read from ``PREFECT_HPO_PARAMS``."""
    in_process = _IN_PROCESS_PARAMS.get()
    if in_process is not None:
        return dict(in_process)
    raw = os.environ.get(PARAMS_ENV)
    if raw is None:
        raise TrialError(f"{PARAMS_ENV} is not set: this program is not running as a prefect-hpo trial")
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TrialError(f"{PARAMS_ENV}: not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise TrialError(f"{PARAMS_ENV}: expected a JSON object, got {type(params).__name__}")
    return params


def report(step: int | None = None, *, stream: TextIO | None = None, **metrics: float) -> Report:
    """Report metrics of the running trial: one protocol line, flushed at once.

    Inside an in-process trial (a callable object run on a thread of the flow) the report goes
    straight to that trial's collector instead, since threads share one stdout; there it raises
    :class:`TrialStopped` once the trial has been stopped.
    """
    checked = Report(step=_check_step(step), metrics=_check_metrics(metrics))
    sink = _IN_PROCESS_SINK.get()
    if sink is not None and stream is None:
        sink(checked)
        return checked
    out = stream if stream is not None else sys.stdout
    out.write(REPORT_PREFIX + json.dumps({"step": checked.step, "metrics": checked.metrics}) + "\n")
    out.flush()
    return checked


def parse_report_line(line: str) -> Report | None:
    """The report in a line of trial output, or None for an ordinary log line.

    A line that starts with the prefix but is malformed raises :class:`TrialError`, so a typo in
    a trial's reporting is surfaced instead of being read as silence.
    """
    if not line.startswith(REPORT_PREFIX):
        return None
    body = line[len(REPORT_PREFIX):].strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise TrialError(f"report line {line.strip()!r}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or set(data) - {"step", "metrics"} or not isinstance(data.get("metrics"), dict):
        raise TrialError(f'report line {line.strip()!r}: expected {{"step": int|null, "metrics": {{name: number}}}}')
    return Report(step=_check_step(data.get("step")), metrics=_check_metrics(data["metrics"]))


def _check_step(step: Any) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise TrialError(f"report: step must be a non-negative int or None, got {step!r}")
    return step


def _check_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    if not metrics:
        raise TrialError("report: give at least one metric, e.g. report(step=1, val_loss=0.42)")
    checked: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise TrialError(f"report: metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or isinstance(value, str):
            raise TrialError(f"report: metric {name!r} must be a number, got {value!r}")
        try:  # plain numbers, and numpy or torch scalars
            checked[name] = float(value)
        except (TypeError, ValueError):
            raise TrialError(f"report: metric {name!r} must be a number, got {value!r}") from None
    return checked
