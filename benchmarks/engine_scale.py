"""The scale curve of ``bench_engine.py --scale``: what one suggestion costs at n observations.

For each n, the same n uniformly random Hartmann6 points (seeded) are given to a fresh
prefect-hpo experiment (``algorithm: gp``) and to a fresh Optuna study (``GPSampler``), and then:

* ``fresh``: the first suggestion (no fitted hyperparameters yet: a cold fit);
* ``warm``: the mean and the largest of the next ``--scale-asks`` suggestions, each told its
  result first, as a running experiment makes them (periodic cold refits included);
* ``resumed`` (prefect-hpo only): the experiment restored from its JSON, as a resumed flow does
  it, then one suggestion: its fitted hyperparameters come back from the checkpoint, nothing else.

All in one process, one after the other, torch on one thread (the engine's default), so the
columns compare on the same machine at the same moment. Timings are printed, never asserted.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from problems import get_problem

PROBLEM = "hartmann6"


@dataclass
class ScaleRow:
    n: int
    engine: str
    fresh_s: float
    warm_mean_s: float
    warm_max_s: float
    resumed_s: float | None


def _random_points(problem: Any, n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n):
        points.append({p["name"]: float(rng.uniform(*p["bounds"])) for p in problem.parameters})
    return points


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def scale_prefect(experiment_cls: type, n: int, asks: int, seed: int) -> ScaleRow:
    problem = get_problem(PROBLEM)
    exp = experiment_cls(name="scale", parameters=copy.deepcopy(problem.parameters), objectives={"y": "minimize"},
                         algorithm="gp", seed=seed)
    for params in _random_points(problem, n, seed):
        trial = exp.attach_trial(params)
        exp.tell(trial.index, {"y": problem.evaluate(params)})
    fresh, trial = _timed(exp.ask)
    warm = []
    for _ in range(asks):
        exp.tell(trial.index, {"y": problem.evaluate(dict(trial.params))})
        seconds, trial = _timed(exp.ask)
        warm.append(seconds)
    exp.tell(trial.index, {"y": problem.evaluate(dict(trial.params))})
    restored = experiment_cls.from_json(exp.to_json())
    resumed, _ = _timed(restored.ask)
    return ScaleRow(n, "prefect-hpo gp", fresh, float(np.mean(warm)), max(warm), resumed)


def scale_optuna(n: int, asks: int, seed: int) -> ScaleRow:
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = get_problem(PROBLEM)
    distributions = {p["name"]: FloatDistribution(*map(float, p["bounds"])) for p in problem.parameters}
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.GPSampler(seed=seed))
    study.add_trials([
        optuna.trial.create_trial(params=params, distributions=distributions, value=problem.evaluate(params))
        for params in _random_points(problem, n, seed)
    ])

    def ask() -> Any:
        trial = study.ask()
        for name, dist in distributions.items():
            trial.suggest_float(name, dist.low, dist.high)
        return trial

    fresh, trial = _timed(ask)
    warm = []
    for _ in range(asks):
        study.tell(trial, problem.evaluate(trial.params))
        seconds, trial = _timed(ask)
        warm.append(seconds)
    return ScaleRow(n, "Optuna GPSampler", fresh, float(np.mean(warm)), max(warm), None)


def scale_table(experiment_cls: type, sizes: Sequence[int], asks: int, seed: int, with_optuna: bool) -> str:
    """Run the curve (one engine after the other at each n) and return it as a Markdown table."""
    rows: list[ScaleRow] = []
    for n in sizes:
        ours = scale_prefect(experiment_cls, n, asks, seed)
        rows.append(ours)
        theirs = scale_optuna(n, asks, seed) if with_optuna else None
        if theirs is not None:
            rows.append(theirs)
        print(f"  n = {n}: " + "; ".join(f"{r.engine} fresh {r.fresh_s:.2f} s, warm {r.warm_mean_s:.2f} s"
                                        for r in (ours, theirs) if r is not None), flush=True)
    lines = [
        "| observations | engine | fresh s | warm s (mean) | warm s (max) | resumed s | warm vs Optuna |",
        "|---|---|---|---|---|---|---|",
    ]
    optuna_warm = {r.n: r.warm_mean_s for r in rows if r.engine.startswith("Optuna")}
    for r in rows:
        ratio = (f"{r.warm_mean_s / optuna_warm[r.n]:.2f}x" if r.n in optuna_warm and not r.engine.startswith("Optuna")
                 else "")
        resumed = f"{r.resumed_s:.2f}" if r.resumed_s is not None else ""
        lines.append(f"| {r.n} | {r.engine} | {r.fresh_s:.2f} | {r.warm_mean_s:.2f} | {r.warm_max_s:.2f} | {resumed} | {ratio} |")
    return "\n".join(lines)
