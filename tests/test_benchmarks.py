"""Every benchmark script runs, on a budget small enough for the test suite.

A benchmark nothing runs goes stale (bench_flow.py instrumented a driver function that had been
renamed and crashed at once): each script is run here as a user would, in a subprocess, with the
smallest arguments it takes, and must exit 0 and print its table (the ones that start Prefect
servers are in the e2e run). Numbers are not asserted:
tiny budgets measure nothing; the point is that the script still works. New scripts must be
added to SMOKE (the last test fails otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: script -> (arguments for a smoke run, text its output must contain, marks)
SMOKE: dict[str, tuple[list[str], str, list]] = {
    "bench_engine.py": (["--seeds", "1", "--trials", "6", "--problems", "branin", "--methods", "auto,random", "--no-optuna"],
                        "| auto ", []),
    "bench_moo.py": (["--seeds", "1", "--trials", "4", "--problems", "branincurrin", "--methods", "sobol,auto"], "| sobol ", []),
    "bench_stopping.py": (["--seeds", "1", "--configs", "4", "--epochs", "3", "--parallel", "2"], "asha", []),
    "bench_threads.py": (["--reps", "1", "--observations", "8", "--idle-only"], "| 1 | PASSIVE | idle", []),
    "bench_stop_latency.py": (["--trials", "2", "--parallel", "1", "--poll", "0.2", "--steps", "3"], "poll", [pytest.mark.slow, pytest.mark.e2e]),
    "bench_flow.py": (["--trials", "2", "--parallel", "1", "--reps", "1", "--fixed-reps", "1", "--resume-reps", "1",
                       "--writes", "2", "--skip-s3", "--no-breakdown"], "## 3. Resume", [pytest.mark.slow, pytest.mark.e2e]),
    "bench_work_pool.py": (["--scale", "0.3"], "launch -> trial command starts", [pytest.mark.slow, pytest.mark.e2e]),
    "bench_live_uis.py": (["--trials", "2", "--epochs", "2", "--epoch-s", "0.2"], "task runs per trial", [pytest.mark.slow, pytest.mark.e2e]),
}
#: modules the scripts import, not scripts themselves
HELPERS = {"problems.py", "provenance.py", "engine_scale.py"}


@pytest.mark.parametrize(
    "script", [pytest.param(name, marks=[*marks, pytest.mark.timeout(600)]) for name, (_, _, marks) in SMOKE.items()]
)
def test_the_benchmark_runs_on_a_tiny_budget(script: str, tmp_path: Path) -> None:
    args, expected, _ = SMOKE[script]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=580, check=False)
    assert out.returncode == 0, f"{script} {' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    assert expected in out.stdout, out.stdout[-3000:]


def test_the_engine_scale_curve_runs_on_a_tiny_size(tmp_path: Path) -> None:
    """``bench_engine.py --scale`` (engine_scale.py): fresh, warm and resumed columns at one small n."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_engine.py"), "--scale", "--scale-sizes", "12",
                          "--scale-asks", "2", "--no-optuna"], cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-5000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| 12 | prefect-hpo gp |"))
    fresh, warm_mean, warm_max, resumed = (float(cell) for cell in row.split("|")[3:7])
    assert 0 < fresh and 0 < warm_mean <= warm_max and 0 < resumed


def test_every_benchmark_script_has_a_smoke_run() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - HELPERS
    assert scripts == set(SMOKE), f"add {sorted(scripts - set(SMOKE))} to SMOKE (or drop {sorted(set(SMOKE) - scripts)})"
