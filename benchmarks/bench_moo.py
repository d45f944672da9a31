"""Multi-objective benchmark: hypervolume after a fixed budget, as a fraction of the best possible.

For every problem x method x seed it runs one sequential optimisation (ask one trial, evaluate,
tell) and records the hypervolume of the observed Pareto front, measured from the problem's
fixed reference point, divided by the problem's maximum hypervolume; and how long each
model-based suggestion took. Runs are sequential in one process so timings are not disturbed.

Problems come from BoTorch (``botorch.test_functions.multi_objective``), which also gives their
reference points and maximum hypervolumes; both are minimised.

* ``branincurrin``: 2 parameters, 2 objectives, reference (18, 6), max HV 59.36; 40 trials.
* ``dtlz2``: DTLZ2 with 6 parameters and 3 objectives (the Pareto front is the positive
  octant of the unit sphere), reference (1.1, 1.1, 1.1), max HV 0.8076; 60 trials (10 per
  parameter, the same per-dimension budget as hartmann6 in bench_engine.py).

Methods: ``auto`` is given the problem's reference point as objective thresholds (a user who
knows which values matter says so); ``auto-inferred`` gets bare directions, so its reference
point is inferred from the observed front at every suggestion (the hypervolume reported is
still measured from the problem's fixed point); ``sobol`` and ``random`` are the baselines.

Example:
    .venv/bin/python benchmarks/bench_moo.py --seeds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))  # measure this checkout, not an installed copy
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # for provenance
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from botorch.test_functions.multi_objective import DTLZ2, BraninCurrin  # noqa: E402

from prefect_hpo import Experiment  # noqa: E402
from provenance import git_revision, package_version  # noqa: E402

NON_MODEL_SUGGESTERS = frozenset({"sobol", "random", "manual"})
DEFAULT_METHODS = ("auto", "auto-inferred", "sobol", "random")


@dataclass(frozen=True)
class MOProblem:
    """A minimised multi-objective test problem with a known maximum hypervolume."""

    name: str
    function: Any  # a BoTorch MultiObjectiveTestProblem
    trials: int

    @property
    def dim(self) -> int:
        return int(self.function.dim)

    @property
    def objectives(self) -> list[str]:
        return [f"f{i}" for i in range(self.function.num_objectives)]

    @property
    def reference(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(self.objectives, self.function.ref_point.tolist())}

    @property
    def max_hv(self) -> float:
        return float(self.function.max_hv)

    def parameters(self) -> list[dict[str, Any]]:
        return [
            {"name": f"x{i}", "type": "range", "bounds": [float(lo), float(hi)]}
            for i, (lo, hi) in enumerate(self.function.bounds.T.tolist())
        ]

    def evaluate(self, params: dict[str, Any]) -> dict[str, float]:
        x = torch.tensor([[params[f"x{i}"] for i in range(self.dim)]], dtype=torch.float64)
        y = self.function(x)[0]
        return {k: float(v) for k, v in zip(self.objectives, y)}


def make_problems() -> dict[str, MOProblem]:
    # negate=False: BoTorch's problems are minimised, like the experiment's objectives here
    return {
        "branincurrin": MOProblem("branincurrin", BraninCurrin(), trials=40),
        "dtlz2": MOProblem("dtlz2", DTLZ2(dim=6, num_objectives=3), trials=60),
    }


@dataclass
class RunResult:
    problem: str
    method: str
    seed: int
    hv_fraction: float = math.nan
    model_ask_s: list[float] = field(default_factory=list)
    wall_s: float = math.nan
    error: str | None = None


def run(problem: MOProblem, method: str, seed: int, trials: int) -> RunResult:
    result = RunResult(problem.name, method, seed)
    start = time.perf_counter()
    try:
        if method == "auto":
            objectives: dict[str, Any] = {
                k: {"direction": "minimize", "threshold": v} for k, v in problem.reference.items()
            }
        else:
            objectives = {k: "minimize" for k in problem.objectives}
        algorithm = "auto" if method.startswith("auto") else method
        exp = Experiment(problem.name, problem.parameters(), objectives=objectives, algorithm=algorithm, seed=seed)
        for _ in range(trials):
            t0 = time.perf_counter()
            trial = exp.ask()
            ask_s = time.perf_counter() - t0
            if trial.suggester not in NON_MODEL_SUGGESTERS:
                result.model_ask_s.append(ask_s)
            exp.tell(trial.index, problem.evaluate(trial.params))
        result.hv_fraction = exp.hypervolume(reference_point=problem.reference) / problem.max_hv
    except Exception:  # noqa: BLE001 - report and go on with the other runs
        result.error = traceback.format_exc()
        print(result.error, file=sys.stderr)
    result.wall_s = time.perf_counter() - start
    return result


def _fmt(value: float, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def summarise(runs: Sequence[RunResult]) -> list[str]:
    ok = [r for r in runs if r.error is None]
    fractions = np.array([r.hv_fraction for r in ok])
    asks = [s for r in ok for s in r.model_ask_s]
    return [
        runs[0].method,
        f"{len(ok)}/{len(runs)}",
        _fmt(float(np.median(fractions))) if len(ok) else "-",
        _fmt(float(fractions.min())) if len(ok) else "-",
        _fmt(float(fractions.max())) if len(ok) else "-",
        " ".join(f"{f:.3f}" for f in fractions),
        _fmt(1000 * float(np.median(asks)), ".0f") if asks else "-",
        _fmt(sum(r.wall_s for r in runs), ".0f"),
    ]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    header = ["method", "runs", "median HV / max", "min", "max", "per seed", "model ask ms (median)", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--problems", default="branincurrin,dtlz2", help="comma-separated: branincurrin, dtlz2")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated from {', '.join(DEFAULT_METHODS)}")
    parser.add_argument("--trials", type=int, default=None, help="override every problem's budget")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problems = make_problems()
    names = [p.strip() for p in args.problems.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [n for n in names if n not in problems] + [m for m in methods if m not in DEFAULT_METHODS]
    if unknown:
        print(f"error: unknown problem(s)/method(s) {unknown}", file=sys.stderr)
        return 2
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} | git {git_revision()} | "
          f"python {platform.python_version()} | torch {package_version('torch')} (threads {torch.get_num_threads()}; "
          f"the GP runs on PREFECT_HPO_TORCH_THREADS={os.environ.get('PREFECT_HPO_TORCH_THREADS', '1')}) | "
          f"botorch {package_version('botorch')} | cpus {os.cpu_count()}")
    failed = False
    for name in names:
        problem = problems[name]
        trials = args.trials or problem.trials
        rows = []
        for method in methods:
            runs = [run(problem, method, seed, trials) for seed in range(args.seeds)]
            failed |= any(r.error for r in runs)
            rows.append(summarise(runs))
        ref = ", ".join(f"{v:g}" for v in problem.reference.values())
        print(f"\n## {name} ({problem.dim} parameters, {len(problem.objectives)} objectives, {trials} trials, "
              f"{args.seeds} seeds; reference ({ref}), max HV {problem.max_hv:.4f})\n")
        print(markdown_table(rows), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
