"""Test helpers shared by the flow tests: a trial program, spec builder, event log reader."""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

TRIAL_PROGRAM = textwrap.dedent(
    """
    # A test trial: behaviour chosen by parameters, every start and end recorded in events.log.
    import math, os, sys, time
    from prefect_hpo.trial import get_params, report

    p = get_params()
    index, attempt = os.environ["PREFECT_HPO_TRIAL_INDEX"], os.environ["PREFECT_HPO_ATTEMPT"]
    events = os.path.join(os.environ["TRIAL_EVENTS_DIR"], "events.log")
    def event(kind):
        with open(events, "a") as f:
            f.write(f"{kind} {index} {attempt} {os.getpid()}\\n")
    event("start")
    mode = p.get("mode", "ok")
    if mode == "flaky" and attempt == "1":
        sys.exit(3)
    if mode == "crash":
        raise RuntimeError("boom")
    if mode == "hang":
        time.sleep(600)
    x, y = float(p.get("x", 0.5)), float(p.get("y", 0.5))
    loss = (x - 0.3) ** 2 + (y - 0.7) ** 2
    steps = int(os.environ.get("TRIAL_STEPS", "2"))
    for step in range(steps):
        time.sleep(float(os.environ.get("TRIAL_SLEEP", "0")))
        report(step=step, loss=loss + 1.0 / (step + 1), extra=step * 1.5)
    report(step=steps, loss=float("nan") if mode == "nan" else loss)
    event("end")
    """
)


def make_spec(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "parameters": [
            {"name": "x", "type": "range", "bounds": [0.0, 1.0]},
            {"name": "y", "type": "range", "bounds": [0.0, 1.0]},
        ],
        "objectives": {"loss": "minimize"},
        "algorithm": "sobol",
        "seed": 0,
        "budget": {"trials": 4, "max_parallel": 2},
        "trial": {"command": f"{shlex.quote(sys.executable)} trial.py", "timeout_s": 60, "poll_interval_s": 0.2},
        "storage": "file://ckpt",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def events(workspace: Path) -> list[tuple[str, int, int, int]]:
    path = workspace / "events.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, index, attempt, pid = line.split()
        out.append((kind, int(index), int(attempt), int(pid)))
    return out
