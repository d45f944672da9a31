"""Run a Python function as a trial: ``python -m prefect_hpo.launchers.run_callable pkg.mod:fn``.

The function gets the trial's parameters (from ``PREFECT_HPO_PARAMS``) as a dict. What it
returns becomes the trial's final report:

* a number: reported under the first objective named in ``PREFECT_HPO_OBJECTIVES`` (a JSON
  list the flow sets);
* a dict of numbers: reported as is;
* None: nothing (the function reported by itself with :func:`prefect_hpo.trial.report`).

Exit codes: 0 done; 1 the function raised (traceback on stderr) or returned something
unreportable; 2 the target could not be imported or found (one line on stderr). This module
must stay cheap to import: it starts every trial, so it imports nothing heavy.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect_hpo.errors import TrialError
from prefect_hpo.trial import get_params, report

__all__ = ["OBJECTIVES_ENV", "main"]

OBJECTIVES_ENV = "PREFECT_HPO_OBJECTIVES"
_PROG = "prefect_hpo.launchers.run_callable"


class _TargetError(Exception):
    """The target cannot be loaded; reported as one line and exit code 2."""


def _load(target: str) -> Callable[[dict[str, Any]], Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise _TargetError(f"target {target!r} must look like 'package.module:function'")
    cwd = os.getcwd()
    if cwd not in sys.path:  # like `python -c`: the trial's working directory is importable
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _TargetError(f"cannot import {module_name!r} (cwd {cwd}): {type(exc).__name__}: {exc}") from None
    except SyntaxError as exc:
        raise _TargetError(f"cannot import {module_name!r}: SyntaxError: {exc}") from None
    fn: Any = module
    for part in attr.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise _TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise _TargetError(f"{target!r} is not callable (it is a {type(fn).__name__})")
    return fn


def _objective_name() -> str:
    raw = os.environ.get(OBJECTIVES_ENV)
    if raw is None:
        raise TrialError(
            f"the function returned a number but {OBJECTIVES_ENV} is not set, so its name is "
            "unknown; return a dict {name: value} instead"
        )
    try:
        names = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TrialError(f"{OBJECTIVES_ENV}: not valid JSON ({exc.msg})") from None
    first = names[0] if isinstance(names, list) and names else None
    if isinstance(first, Mapping):
        first = first.get("name")
    if not isinstance(first, str) or not first:
        raise TrialError(f"{OBJECTIVES_ENV}: expected a JSON list of objective names, got {raw!r}")
    return first


def _report_result(result: Any) -> None:
    """Turn the function's return value into the final report line."""
    if result is None:
        return
    if isinstance(result, Mapping):
        if not all(isinstance(name, str) for name in result):
            raise TrialError(f"metric names must be strings, got {list(result)!r}")
        reserved = {"step", "stream"} & set(result)
        if reserved:
            raise TrialError(f"metric names {sorted(reserved)} are reserved; rename them")
        report(None, **result)
        return
    if isinstance(result, (bool, str, bytes)) or not hasattr(result, "__float__"):
        raise TrialError(
            f"the function returned {type(result).__name__}; return a number, a dict of numbers, "
            "or None (after reporting with prefect_hpo.trial.report)"
        )
    report(None, **{_objective_name(): result})


FAILURE_REASON_FILE = "failure_reason"


def write_failure_reason(reason: str) -> None:
    """Leave the reason where the launcher adds it to "exit code N" (see launchers/local.py)."""
    workdir = os.environ.get("PREFECT_HPO_WORKDIR")
    if workdir:
        try:
            (Path(workdir) / FAILURE_REASON_FILE).write_text(reason[:2000])
        except OSError:  # the reason is a courtesy; the exit code still says it failed
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Load the target, call it with the trial's parameters, report what it returns."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python -m {_PROG} package.module:function", file=sys.stderr)
        return 2
    try:
        fn = _load(args[0])
        params = get_params()
    except (_TargetError, TrialError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        write_failure_reason(str(exc))
        return 2
    try:
        result = fn(params)
    except Exception as exc:  # noqa: BLE001 - any error of the trial's code is the trial's failure
        traceback.print_exc()
        write_failure_reason(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return 1
    try:
        _report_result(result)
    except TrialError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
