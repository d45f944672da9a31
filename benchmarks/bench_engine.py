"""Sample-efficiency benchmark: prefect-hpo versus Optuna on problems with known optima.

For every problem x method x seed it runs one sequential optimisation with the
problem's trial budget and records the final simple regret and how long each
suggestion (ask) took. Runs are strictly sequential in one process so that the
timings are not disturbed by parallel work. See benchmarks/README.md.

Example:
    .venv/bin/python benchmarks/bench_engine.py --seeds 10 --json results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))  # so that `problems` imports however the script is run

from problems import DEFAULT_PROBLEMS, Problem, get_problem, validate_params  # noqa: E402
from provenance import git_revision, package_version  # noqa: E402

OPTUNA_METHODS: tuple[str, ...] = ("optuna-tpe", "optuna-gp")
DEFAULT_METHODS: tuple[str, ...] = ("auto", "sobol", "random")
#: Methods that are an algorithm with options: the name in the table -> (algorithm, options).
#: ``gp-init10`` is plain GP BO after the same 10 Sobol points SAASBO starts from.
METHOD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"gp-init10": ("gp", {"min_observations": 10})}
# Suggester labels that are not model-based; anything else prefect-hpo reports counts as a model.
NON_MODEL_SUGGESTERS = frozenset({"sobol", "random"})
OBJECTIVE = "y"


@dataclass
class RunResult:
    """Raw outcome of one (problem, method, seed) optimisation run."""

    problem: str
    method: str
    seed: int
    trials: int
    regret: float = math.nan
    best_observed: float = math.nan
    best_true: float = math.nan
    ask_s: list[float] = field(default_factory=list)
    tell_s: list[float] = field(default_factory=list)
    suggesters: list[str] = field(default_factory=list)
    model_based: list[bool] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    true_values: list[float] = field(default_factory=list)
    wall_s: float = math.nan
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def record(
        self, ask_s: float, tell_s: float, suggester: str, model_based: bool,
        observed: float, true_value: float,
    ) -> None:
        """Append one trial's timings and values."""
        self.ask_s.append(ask_s)
        self.tell_s.append(tell_s)
        self.suggesters.append(suggester)
        self.model_based.append(model_based)
        self.observed.append(observed)
        self.true_values.append(true_value)

    def finish(self, optimum: float, wall_s: float) -> None:
        """Regret uses the noise-free value of the best-*observed* trial.

        On noisy problems this is what a user would deploy: the trial that looked
        best, not the one that was secretly best.
        """
        self.wall_s = wall_s
        if not self.observed:
            return
        best = int(np.argmin(self.observed))
        self.best_observed = self.observed[best]
        self.best_true = self.true_values[best]
        self.regret = self.best_true - optimum


# --------------------------------------------------------------------------- runners


def import_experiment() -> type:
    """Import prefect_hpo.Experiment, preferring this checkout's src/ over an install."""
    src = REPO_ROOT / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from prefect_hpo import Experiment

    return Experiment


def run_prefect(
    experiment_cls: type, problem: Problem, algorithm: str, seed: int, n_trials: int
) -> RunResult:
    """One prefect-hpo run; the ask is timed alone, evaluation is excluded."""
    result = RunResult(problem.name, algorithm, seed, n_trials)
    noise_rng = np.random.default_rng(seed)
    start = time.perf_counter()
    name, options = METHOD_VARIANTS.get(algorithm, (algorithm, None))
    exp = experiment_cls(
        # A copy, so an engine that normalises its input in place cannot alter the problem.
        name=problem.name, parameters=copy.deepcopy(problem.parameters),
        objectives={OBJECTIVE: "minimize"}, algorithm=name, seed=seed, algorithm_options=options,
    )
    for _ in range(n_trials):
        t0 = time.perf_counter()
        trial = exp.ask()
        ask_s = time.perf_counter() - t0
        params = dict(trial.params)
        validate_params(problem.parameters, params)
        observed = problem.observe(params, noise_rng)
        t0 = time.perf_counter()
        exp.tell(trial.index, {OBJECTIVE: observed})
        tell_s = time.perf_counter() - t0
        suggester = _suggester_label(trial)
        result.record(ask_s, tell_s, suggester, suggester not in NON_MODEL_SUGGESTERS,
                      observed, problem.evaluate(params))
    result.finish(problem.optimum, time.perf_counter() - start)
    _check_best_trial(exp, result)
    return result


def _suggester_label(trial: Any) -> str:
    """trial.suggester as a plain lowercase string (tolerates an Enum)."""
    raw = getattr(trial, "suggester", "unknown")
    return str(getattr(raw, "value", raw)).lower()


def _check_best_trial(exp: Any, result: RunResult) -> None:
    """Note (not fail) when the engine's best_trial disagrees with the best observation."""
    try:
        engine_best = float(exp.best_trial.values[OBJECTIVE])
    except Exception as exc:  # noqa: BLE001 - a reporting bug must not discard the run
        result.notes.append(f"best_trial unusable: {type(exc).__name__}: {exc}")
        return
    if not math.isclose(engine_best, result.best_observed, rel_tol=1e-12, abs_tol=1e-12):
        result.notes.append(
            f"best_trial.values[{OBJECTIVE!r}]={engine_best!r} but best observed "
            f"value was {result.best_observed!r}"
        )


def _optuna_suggest(trial: Any, spec: dict[str, Any]) -> Any:
    """Translate one Ax-style parameter into the matching Optuna suggest_* call."""
    name = spec["name"]
    if spec["type"] == "choice":
        return trial.suggest_categorical(name, list(spec["values"]))
    low, high = spec["bounds"]
    log = bool(spec.get("log_scale", False))
    if spec.get("value_type") == "int":
        return trial.suggest_int(name, int(low), int(high), log=log)
    return trial.suggest_float(name, float(low), float(high), log=log)


def _optuna_sampler(method: str, seed: int) -> Any:
    """Default-configured Optuna samplers (GPSampler starts after 10 random trials)."""
    import optuna

    if method == "optuna-tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if method == "optuna-gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown Optuna method {method!r}")


def run_optuna(problem: Problem, method: str, seed: int, n_trials: int) -> RunResult:
    """One Optuna ask/tell run.

    Optuna samples relative (model-based) parameters lazily at the first
    suggest_* call, so the timed "ask" spans study.ask() through the last suggest.
    """
    import optuna

    result = RunResult(problem.name, method, seed, n_trials)
    noise_rng = np.random.default_rng(seed)
    start = time.perf_counter()
    sampler = _optuna_sampler(method, seed)
    n_startup = int(getattr(sampler, "_n_startup_trials", 10))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for _ in range(n_trials):
        t0 = time.perf_counter()
        trial = study.ask()
        params = {spec["name"]: _optuna_suggest(trial, spec) for spec in problem.parameters}
        ask_s = time.perf_counter() - t0
        observed = problem.observe(params, noise_rng)
        t0 = time.perf_counter()
        study.tell(trial, observed)
        tell_s = time.perf_counter() - t0
        model_based = trial.number >= n_startup
        result.record(ask_s, tell_s, "model" if model_based else "startup", model_based,
                      observed, problem.evaluate(params))
    result.finish(problem.optimum, time.perf_counter() - start)
    return result


# --------------------------------------------------------------------------- reporting


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def summarise(method: str, runs: Sequence[RunResult]) -> list[str]:
    """One table row: medians over seeds (regret) or over all pooled asks (times)."""
    ok = [r for r in runs if r.error is None]
    regrets = [r.regret for r in ok]
    q25, q75 = np.percentile(regrets, [25, 75]) if regrets else (math.nan, math.nan)
    all_asks = [t for r in ok for t in r.ask_s]
    model_asks = [t for r in ok for t, m in zip(r.ask_s, r.model_based) if m]
    return [
        method,
        f"{len(ok)}/{len(runs)}",
        _fmt(_median(regrets), ".3g"),
        f"[{_fmt(q25, '.3g')}, {_fmt(q75, '.3g')}]",
        _fmt(1e3 * _median(all_asks), ".3g"),
        _fmt(1e3 * _median(model_asks), ".3g"),
        _fmt(_median([sum(r.model_based) for r in ok]), ".0f"),
        _fmt(1e3 * _median([r.ask_s[-1] for r in ok if r.ask_s]), ".3g"),
        _fmt(1e3 * _median([t for r in ok for t in r.tell_s]), ".3g"),
        _fmt(sum(r.wall_s for r in runs if not math.isnan(r.wall_s)), ".1f"),
    ]


TABLE_HEADER = [
    "method", "runs", "median regret", "IQR (25%-75%)", "ask ms (all)", "ask ms (model)",
    "model asks/run", "last ask ms", "tell ms", "total wall s",
]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """Render rows as a column-aligned markdown table."""
    table = [TABLE_HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(TABLE_HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Versions and thread settings that the timings depend on."""
    try:
        import torch

        threads: int | str = torch.get_num_threads()
    except ImportError:
        threads = "n/a"
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": package_version("torch"),
        "torch_threads": threads,
        "botorch": package_version("botorch"),
        "optuna": package_version("optuna"),
        "numpy": package_version("numpy"),
        "git": git_revision(),
    }


def print_header(env: dict[str, Any]) -> None:
    print(f"command: {env['command']}")
    print(
        f"python {env['python']} | torch {env['torch']} (threads={env['torch_threads']}) | "
        f"botorch {env['botorch']} | optuna {env['optuna']} | numpy {env['numpy']} | "
        f"cpus {env['cpu_count']} | git {env['git']}"
    )
    print("Optuna samplers use defaults: TPE and GP both start model-based sampling "
          "after 10 random startup trials.")


# --------------------------------------------------------------------------- driver


def _json_safe(value: Any) -> Any:
    """Replace NaN (failed runs) with null so the dump is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS),
                        help="comma-separated problem names (see problems.py)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per method")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="prefect-hpo algorithms and/or optuna-tpe, optuna-gp")
    parser.add_argument("--no-optuna", action="store_true",
                        help="do not add the Optuna baselines automatically")
    parser.add_argument("--trials", type=int, default=None,
                        help="override every problem's trial budget")
    parser.add_argument("--json", type=Path, default=None, help="dump raw per-seed results")
    parser.add_argument("--scale", action="store_true",
                        help="instead: one suggestion's cost at n random Hartmann6 observations (engine_scale.py)")
    parser.add_argument("--scale-sizes", default="100,300,600,1000", help="the n of --scale (default 100,300,600,1000)")
    parser.add_argument("--scale-asks", type=int, default=5, help="warm suggestions timed per n (default 5)")
    return parser.parse_args(argv)


def resolve_methods(spec: str, no_optuna: bool) -> list[str]:
    """Requested methods, plus the Optuna baselines when importable and not disabled."""
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    if no_optuna:
        return [m for m in methods if m not in OPTUNA_METHODS]
    try:
        import optuna  # noqa: F401
    except ImportError:
        return [m for m in methods if m not in OPTUNA_METHODS]
    return methods + [m for m in OPTUNA_METHODS if m not in methods]


def make_runner(method: str) -> Callable[[Problem, int, int], RunResult]:
    """Bind a method name to a runner(problem, seed, n_trials)."""
    if method in OPTUNA_METHODS:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return lambda problem, seed, n: run_optuna(problem, method, seed, n)
    experiment_cls = import_experiment()
    return lambda problem, seed, n: run_prefect(experiment_cls, problem, method, seed, n)


def run_one(runner: Callable[[Problem, int, int], RunResult], problem: Problem,
            method: str, seed: int, n_trials: int) -> RunResult:
    """Run one seed; a crash is recorded (and counted in the table) instead of aborting."""
    try:
        result = runner(problem, seed, n_trials)
    except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others
        traceback.print_exc(file=sys.stderr)
        result = RunResult(problem.name, method, seed, n_trials,
                           error=f"{type(exc).__name__}: {exc}")
    status = result.error or f"regret={result.regret:.4g} wall={result.wall_s:.1f}s"
    print(f"  {problem.name} {method} seed={seed}: {status}", file=sys.stderr, flush=True)
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scale:
        return main_scale(args)
    problems = [get_problem(name.strip()) for name in args.problems.split(",") if name.strip()]
    methods = resolve_methods(args.methods, args.no_optuna)
    try:
        runners = {method: make_runner(method) for method in methods}
    except Exception as exc:  # noqa: BLE001 - the engine may be mid-edit; say so clearly
        print(f"error: cannot import prefect_hpo ({type(exc).__name__}: {exc}); "
              "try --methods optuna-tpe,optuna-gp", file=sys.stderr)
        return 2
    env = environment()
    print_header(env)
    results: list[RunResult] = []
    for problem in problems:
        n_trials = args.trials or problem.trials
        rows = []
        for method in methods:
            runs = [run_one(runners[method], problem, method, seed, n_trials)
                    for seed in range(args.seeds)]
            results.extend(runs)
            rows.append(summarise(method, runs))
        print(f"\n## {problem.name} (optimum {problem.optimum:.12g}, {n_trials} trials, "
              f"{args.seeds} seeds, noise sd {problem.noise_sd:g})\n")
        print(markdown_table(rows), flush=True)
    if args.json:
        payload = {"environment": env, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False))
    return 1 if any(r.error for r in results) else 0


def main_scale(args: argparse.Namespace) -> int:
    """``--scale``: the cost of one suggestion as the experiment grows (see engine_scale.py)."""
    from engine_scale import PROBLEM, scale_table

    with_optuna = not args.no_optuna and package_version("optuna") != "not installed"
    sizes = [int(n) for n in args.scale_sizes.split(",") if n.strip()]
    env = environment()
    print_header(env)
    print(f"\n## Scale: one suggestion at n {PROBLEM} observations (random points, seed 0, "
          f"{args.scale_asks} warm asks per n)\n", flush=True)
    print(scale_table(import_experiment(), sizes, args.scale_asks, seed=0, with_optuna=with_optuna))
    if not with_optuna:
        print("\n(Optuna is not installed: `pip install -e '.[bench]'` adds it beside prefect-hpo.)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
