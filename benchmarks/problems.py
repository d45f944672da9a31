"""Benchmark problems for the prefect-hpo sample-efficiency benchmark.

Every problem is a minimisation problem with a known optimum, so the benchmark
can report *simple regret* (best value found minus the optimum) and results are
comparable across problems, methods and library versions.

Parameters use the Ax-style dict format that ``prefect_hpo.Experiment`` accepts,
so the same definition drives both prefect-hpo and the Optuna baselines.

Run ``python benchmarks/problems.py`` to verify every optimum numerically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Params = Mapping[str, Any]

BRANIN_OPTIMUM = 0.397887357729738
HARTMANN6_OPTIMUM = -3.32236801141551
STYBLINSKI_TANG_OPTIMUM_PER_DIM = -39.16616570377142
STYBLINSKI_TANG_ARGMIN = -2.903534027771177

# Hartmann6 constants (Surjanovic & Bingham, "Virtual Library of Simulation Experiments").
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H6_ARGMIN = (0.20168952, 0.15001069, 0.47687398, 0.27533243, 0.31165162, 0.65730054)

# Per-choice optimum location of log10(lr) and additive offset in the ``mixed`` problem.
_MIXED_LR_CENTRE = {"a": -3.0, "b": -2.0, "c": -1.5}
_MIXED_OFFSET = {"a": 0.3, "b": 0.0, "c": 0.6}


@dataclass(frozen=True)
class Problem:
    """A benchmark problem: search space, noise-free objective and known optimum.

    ``evaluate`` is the noise-free objective; regret is always computed on it.
    ``observe`` is what an optimiser is shown: ``evaluate`` plus Gaussian noise
    with standard deviation ``noise_sd`` (zero for deterministic problems).
    ``argmin`` is a known minimiser, used only by the self-check.
    """

    name: str
    parameters: list[dict[str, Any]]
    evaluate: Callable[[Params], float]
    optimum: float
    trials: int
    argmin: dict[str, Any] = field(default_factory=dict)
    noise_sd: float = 0.0

    def observe(self, params: Params, rng: np.random.Generator) -> float:
        """Return the (possibly noisy) value the optimiser gets to see."""
        value = self.evaluate(params)
        if self.noise_sd > 0.0:
            value += float(rng.normal(0.0, self.noise_sd))
        return value


# --------------------------------------------------------------------------- objectives


def branin(x1: float, x2: float) -> float:
    """Standard Branin-Hoo function; three global minima with value 0.397887."""
    b = 5.1 / (4.0 * math.pi**2)
    c = 5.0 / math.pi
    t = 1.0 / (8.0 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6.0) ** 2 + 10.0 * (1.0 - t) * math.cos(x1) + 10.0


def hartmann6(x: Sequence[float]) -> float:
    """Negative Hartmann6 on [0, 1]^6 (so that it is minimised); min -3.32237."""
    z = np.asarray(x, dtype=float)
    inner = np.sum(_H6_A * (z - _H6_P) ** 2, axis=1)
    return float(-np.sum(_H6_ALPHA * np.exp(-inner)))


def ackley(x: Sequence[float]) -> float:
    """Ackley function (a=20, b=0.2, c=2*pi); global minimum 0 at the origin."""
    z = np.asarray(x, dtype=float)
    d = z.size
    term1 = -20.0 * math.exp(-0.2 * math.sqrt(float(np.sum(z**2)) / d))
    term2 = -math.exp(float(np.sum(np.cos(2.0 * math.pi * z))) / d)
    # max(0, .) removes a ~1e-16 negative rounding residue at the origin.
    return max(0.0, term1 + term2 + 20.0 + math.e)


def rosenbrock(x: Sequence[float]) -> float:
    """Rosenbrock function; global minimum 0 at (1, ..., 1)."""
    z = np.asarray(x, dtype=float)
    return float(np.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2))


def styblinski_tang(x: Sequence[float]) -> float:
    """Styblinski-Tang; minimum -39.16616570377142 * d at x_i = -2.903534."""
    z = np.asarray(x, dtype=float)
    return float(0.5 * np.sum(z**4 - 16.0 * z**2 + 5.0 * z))


def mixed(params: Params) -> float:
    """Branin plus penalties on a log-scaled float, an int and a categorical.

    Each choice of ``opt`` moves the best learning rate and adds an offset, so an
    optimiser must learn the interaction between the categorical and ``lr``.
    """
    opt = str(params["opt"])
    log_lr = math.log10(float(params["lr"]))
    return (
        branin(float(params["x1"]), float(params["x2"]))
        + 2.0 * (log_lr - _MIXED_LR_CENTRE[opt]) ** 2
        + 0.5 * (float(params["layers"]) - 5.0) ** 2
        + _MIXED_OFFSET[opt]
    )


# --------------------------------------------------------------------------- helpers


def float_params(prefix: str, dim: int, low: float, high: float) -> list[dict[str, Any]]:
    """Ax-style float range parameters named ``{prefix}0 .. {prefix}{dim-1}``."""
    return [
        {"name": f"{prefix}{i}", "type": "range", "bounds": [low, high]} for i in range(dim)
    ]


def _vector(params: Params, prefix: str, dim: int) -> list[float]:
    return [float(params[f"{prefix}{i}"]) for i in range(dim)]


def _vector_problem(
    name: str,
    fn: Callable[[Sequence[float]], float],
    dim: int,
    bounds: tuple[float, float],
    optimum: float,
    trials: int,
    argmin: Sequence[float],
    noise_sd: float = 0.0,
) -> Problem:
    """Build a problem over ``dim`` identically bounded floats ``x0..x{dim-1}``."""
    return Problem(
        name=name,
        parameters=float_params("x", dim, *bounds),
        evaluate=lambda p: fn(_vector(p, "x", dim)),
        optimum=optimum,
        trials=trials,
        argmin={f"x{i}": float(v) for i, v in enumerate(argmin)},
        noise_sd=noise_sd,
    )


def validate_params(parameters: Sequence[Mapping[str, Any]], params: Params) -> None:
    """Raise ValueError if a suggestion violates the search space.

    The benchmark checks every suggestion, so an optimiser that leaves the
    bounds or returns a non-integral int cannot score well by accident.
    """
    missing = {p["name"] for p in parameters} - set(params)
    if missing:
        raise ValueError(f"suggestion lacks parameters {sorted(missing)}")
    for spec in parameters:
        value = params[spec["name"]]
        if spec["type"] == "choice":
            if value not in spec["values"]:
                raise ValueError(f"{spec['name']}={value!r} not in {spec['values']}")
            continue
        low, high = spec["bounds"]
        if not low <= float(value) <= high:
            raise ValueError(f"{spec['name']}={value!r} outside [{low}, {high}]")
        if spec.get("value_type") == "int" and float(value) != int(float(value)):
            raise ValueError(f"{spec['name']}={value!r} is not an integer")


# --------------------------------------------------------------------------- registry


def _build_problems() -> dict[str, Problem]:
    branin_problem = Problem(
        name="branin",
        parameters=[
            {"name": "x1", "type": "range", "bounds": [-5.0, 10.0]},
            {"name": "x2", "type": "range", "bounds": [0.0, 15.0]},
        ],
        evaluate=lambda p: branin(float(p["x1"]), float(p["x2"])),
        optimum=BRANIN_OPTIMUM,
        trials=30,
        argmin={"x1": math.pi, "x2": 2.275},
    )
    mixed_problem = Problem(
        name="mixed",
        parameters=[
            {"name": "x1", "type": "range", "bounds": [-5.0, 10.0]},
            {"name": "x2", "type": "range", "bounds": [0.0, 15.0]},
            {"name": "lr", "type": "range", "bounds": [1e-4, 1.0], "log_scale": True},
            {"name": "layers", "type": "range", "bounds": [1, 8], "value_type": "int"},
            {"name": "opt", "type": "choice", "values": ["a", "b", "c"]},
        ],
        evaluate=mixed,
        optimum=BRANIN_OPTIMUM,
        trials=50,
        argmin={"x1": math.pi, "x2": 2.275, "lr": 1e-2, "layers": 5, "opt": "b"},
    )
    st_dim = 8
    # Branin hidden in 30 unit-interval parameters: only x3 and x17 matter (SAASBO's setting; the
    # indices are arbitrary but fixed, so no method can profit from the active ones coming first).
    embedded_dim, active = 30, (3, 17)
    branin30_argmin = {f"x{i}": 0.5 for i in range(embedded_dim)}
    branin30_argmin.update({f"x{active[0]}": (math.pi + 5.0) / 15.0, f"x{active[1]}": 2.275 / 15.0})
    branin30 = Problem(
        name="branin30",
        parameters=float_params("x", embedded_dim, 0.0, 1.0),
        evaluate=lambda p: branin(15.0 * float(p[f"x{active[0]}"]) - 5.0, 15.0 * float(p[f"x{active[1]}"])),
        optimum=BRANIN_OPTIMUM,
        trials=50,
        argmin=branin30_argmin,
    )
    problems = [
        branin30,
        branin_problem,
        _vector_problem("hartmann6", hartmann6, 6, (0.0, 1.0), HARTMANN6_OPTIMUM, 60, _H6_ARGMIN),
        mixed_problem,
        _vector_problem("ackley5", ackley, 5, (-5.0, 10.0), 0.0, 60, [0.0] * 5),
        _vector_problem("rosenbrock4", rosenbrock, 4, (-2.0, 2.0), 0.0, 60, [1.0] * 4),
        _vector_problem(
            "hartmann6_noisy", hartmann6, 6, (0.0, 1.0), HARTMANN6_OPTIMUM, 60, _H6_ARGMIN,
            noise_sd=0.05,
        ),
        _vector_problem(
            "styblinski_tang8", styblinski_tang, st_dim, (-5.0, 5.0),
            STYBLINSKI_TANG_OPTIMUM_PER_DIM * st_dim, 80, [STYBLINSKI_TANG_ARGMIN] * st_dim,
        ),
    ]
    return {p.name: p for p in problems}


PROBLEMS: dict[str, Problem] = _build_problems()
DEFAULT_PROBLEMS: tuple[str, ...] = ("branin", "hartmann6", "mixed")


def get_problem(name: str) -> Problem:
    """Look a problem up by name with an error that lists the valid names."""
    try:
        return PROBLEMS[name]
    except KeyError:
        raise KeyError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}") from None


# --------------------------------------------------------------------------- self-check


def _random_params(problem: Problem, rng: np.random.Generator) -> dict[str, Any]:
    """One uniformly random point (log-uniform for log-scaled floats)."""
    params: dict[str, Any] = {}
    for spec in problem.parameters:
        if spec["type"] == "choice":
            params[spec["name"]] = spec["values"][rng.integers(len(spec["values"]))]
        elif spec.get("value_type") == "int":
            params[spec["name"]] = int(rng.integers(spec["bounds"][0], spec["bounds"][1] + 1))
        elif spec.get("log_scale"):
            lo, hi = np.log10(spec["bounds"])
            params[spec["name"]] = float(10 ** rng.uniform(lo, hi))
        else:
            params[spec["name"]] = float(rng.uniform(*spec["bounds"]))
    return params


def _polished_minimum(problem: Problem) -> float:
    """Local L-BFGS-B minimum started at ``argmin`` (all-float problems only).

    If the stated optimum were only approximate, polishing would find a lower value.
    """
    from scipy.optimize import minimize

    names = [s["name"] for s in problem.parameters]
    bounds = [tuple(s["bounds"]) for s in problem.parameters]
    x0 = np.array([problem.argmin[n] for n in names])
    res = minimize(
        lambda x: problem.evaluate(dict(zip(names, x))), x0, method="L-BFGS-B",
        bounds=bounds, options={"ftol": 1e-15, "gtol": 1e-12},
    )
    return float(res.fun)


def self_check(n_random: int = 20_000, seed: int = 0) -> list[str]:
    """Verify every problem's optimum; return a list of failure messages."""
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    for problem in PROBLEMS.values():
        validate_params(problem.parameters, problem.argmin)
        at_argmin = problem.evaluate(problem.argmin)
        lowest_random = min(
            problem.evaluate(_random_params(problem, rng)) for _ in range(n_random)
        )
        all_float = all(
            s["type"] == "range" and s.get("value_type") != "int" and not s.get("log_scale")
            for s in problem.parameters
        )
        polished = _polished_minimum(problem) if all_float else at_argmin
        print(
            f"{problem.name:18s} optimum={problem.optimum:+.12f} f(argmin)={at_argmin:+.12f} "
            f"polished={polished:+.12f} best-of-{n_random}-random={lowest_random:+.6f}"
        )
        tol = 1e-6 * max(1.0, abs(problem.optimum))
        if abs(at_argmin - problem.optimum) > tol:
            failures.append(f"{problem.name}: f(argmin)={at_argmin!r} != {problem.optimum!r}")
        if polished < problem.optimum - 1e-9 * max(1.0, abs(problem.optimum)):
            failures.append(f"{problem.name}: polishing found {polished!r} < optimum")
        if lowest_random < problem.optimum:
            failures.append(f"{problem.name}: random point {lowest_random!r} < optimum")
    return failures


if __name__ == "__main__":
    problems_failed = self_check()
    for message in problems_failed:
        print("FAIL:", message)
    raise SystemExit(1 if problems_failed else 0)
