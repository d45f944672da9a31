"""Learning-curve benchmark for early-stopping policies: epochs saved versus quality lost.

Early stopping is worth having only if it saves most of the training while still finding
(nearly) the configuration that full training would have found. This script measures exactly
that trade-off on real learning curves, not on synthetic ones: every trial trains a small
PyTorch MLP, here and now, on a classification problem generated locally from a fixed seed
(a random "teacher" network labels Gaussian inputs, with label noise; nothing is downloaded),
and reports its validation loss after every epoch.

For each seed, one set of configurations is drawn with ``Experiment(algorithm="random",
seed=seed)``; every policy sees the same configurations in the same order, and a given
configuration produces the same curve under every policy (its initialisation and data order
are seeded from ``(seed, trial index)``), so the policies differ only in which curves they cut.
A simulated asynchronous scheduler runs ``--parallel`` workers in rounds: every running trial
trains one more epoch and reports; then ``policy.decide`` sees every history; stopped trials
end, trials that reached their budget complete, and free workers start the next configuration.

Measured per (seed, policy): epochs actually trained (and as a fraction of no stopping), the
best final validation loss among trials that trained every epoch, its relative gap to the best
final validation loss that no stopping finds on the same configurations, how many trials were
stopped, scheduler rounds (the makespan with ``--parallel`` workers, in epochs), the time spent
in ``policy.decide`` and wall time (all simulated workers share one core, so wall time is the
compute cost, not the makespan).

The target, printed, never asserted: ASHA or Hyperband finds a configuration within 1% of the
best that full training finds while spending at most a third of the epochs (medians over
seeds). See benchmarks/README.md.

Example:
    .venv/bin/python benchmarks/bench_stopping.py --seeds 5 --json stopping.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Idle OpenMP threads spin by default; prefect_hpo sets the same before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
_SRC = REPO_ROOT / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # measure this checkout, not an installed copy

sys.path.insert(0, str(BENCH_DIR))
from provenance import git_revision  # noqa: E402

from prefect_hpo import Experiment  # noqa: E402
from prefect_hpo.optim.stopping import (  # noqa: E402
    MetricHistory,
    StoppingPolicy,
    available_policies,
    make_policy,
)

DEFAULT_POLICIES: tuple[str, ...] = ("none", "median", "asha", "hyperband")
REFERENCE = "none"
RUNG_POLICIES = frozenset({"asha", "hyperband"})
TARGET_GAP = 0.01  # within 1% of the best final validation loss of full training
TARGET_FRACTION = 1.0 / 3.0  # at most a third of the epochs of full training
METRIC = "val_loss"

# ---- the problem ----------------------------------------------------------------------------
DATA_SEED = 0
N_TRAIN = 4000
N_VAL = 1000
INPUT_DIM = 8
N_CLASSES = 5
TEACHER_HIDDEN = 8
TEACHER_SCALE = 1.0
LABEL_NOISE = 0.10

SEARCH_SPACE: list[dict[str, Any]] = [
    {"name": "lr", "type": "range", "bounds": [1e-4, 1.0], "log_scale": True},
    {"name": "hidden", "type": "range", "bounds": [8, 128], "value_type": "int", "log_scale": True},
    {"name": "weight_decay", "type": "range", "bounds": [1e-6, 1e-2], "log_scale": True},
    {"name": "batch_size", "type": "choice", "values": [32, 64, 128, 256], "is_ordered": True},
    {"name": "optimizer", "type": "choice", "values": ["sgd", "adam"]},
]


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def make_dataset(seed: int = DATA_SEED, n_train: int = N_TRAIN, n_val: int = N_VAL) -> Dataset:
    """Gaussian inputs labelled by a random one-hidden-layer tanh teacher, with label noise.

    The teacher is smooth enough to be learnable from 4000 rows, and curved enough that a
    student keeps improving for many epochs; the label noise puts a floor under the loss and
    makes large, unregularised students overfit (their validation loss turns back up).
    """
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    x = torch.randn(n, INPUT_DIM, generator=g)
    w1 = torch.randn(INPUT_DIM, TEACHER_HIDDEN, generator=g) * TEACHER_SCALE / math.sqrt(INPUT_DIM)
    b1 = 0.5 * torch.randn(TEACHER_HIDDEN, generator=g)
    w2 = torch.randn(TEACHER_HIDDEN, N_CLASSES, generator=g) * 3.0 / math.sqrt(TEACHER_HIDDEN)
    y = (torch.tanh(x @ w1 + b1) @ w2).argmax(dim=1)
    flip = torch.rand(n, generator=g) < LABEL_NOISE
    y = torch.where(flip, torch.randint(0, N_CLASSES, (n,), generator=g), y)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


# ---- one trial: a student MLP trained one epoch at a time ----------------------------------


class TrialRun:
    """A configuration being trained; :meth:`train_epoch` trains one epoch and returns the val loss.

    Initialisation and the data order depend only on ``trial_seed``, so the curve is identical
    whichever policy runs it and however trials interleave.
    """

    def __init__(self, config: Mapping[str, Any], data: Dataset, trial_seed: int) -> None:
        self.config = dict(config)
        self.data = data
        hidden = int(config["hidden"])
        init = torch.Generator().manual_seed(trial_seed)
        self.model = nn.Sequential(
            nn.Linear(INPUT_DIM, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, N_CLASSES),
        )
        with torch.no_grad():  # explicit generator: no dependence on the global RNG
            for layer in self.model:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=init)
                    layer.bias.uniform_(-bound, bound, generator=init)
        self.optimizer = make_optimizer(self.model, config)
        self.shuffle = torch.Generator().manual_seed(trial_seed + 1)
        self.epochs = 0

    def train_epoch(self) -> float:
        x, y, batch = self.data.x_train, self.data.y_train, int(self.config["batch_size"])
        self.model.train()
        order = torch.randperm(len(x), generator=self.shuffle)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.epochs += 1
        self.model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(self.model(self.data.x_val), self.data.y_val))


def make_optimizer(model: nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    lr, wd = float(config["lr"]), float(config["weight_decay"])
    if config["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)


def trial_seed(seed: int, index: int) -> int:
    return 1_000_003 * (seed + 1) + 7919 * index


def draw_configs(seed: int, n: int) -> list[dict[str, Any]]:
    """The configurations of one seed, drawn as the product draws them (random suggester)."""
    exp = Experiment(
        name=f"bench-stopping-{seed}", parameters=SEARCH_SPACE,
        objectives={METRIC: "minimize"}, algorithm="random", seed=seed,
    )
    return [dict(exp.ask().params) for _ in range(n)]


# ---- the simulated asynchronous scheduler --------------------------------------------------


def policy_settings(name: str, epochs: int) -> dict[str, Any]:
    """The settings the benchmark gives each policy (min_steps=1, reduction_factor=3)."""
    if name == "none":
        return {"max_steps": epochs}
    if name == "median":
        return {"min_steps": 1, "max_steps": epochs}
    if name in RUNG_POLICIES:
        return {"min_steps": 1, "reduction_factor": 3, "max_steps": epochs}
    raise SystemExit(f"bench_stopping: no benchmark settings for policy {name!r}")


@dataclass
class RunResult:
    """Raw outcome of one (seed, policy) run."""

    seed: int
    policy: str
    describe: str = ""
    epochs_total: int = 0
    rounds: int = 0
    completed: list[int] = field(default_factory=list)  # trained every epoch
    short_completed: list[int] = field(default_factory=list)  # ended at a smaller resource_for
    stopped: dict[int, str] = field(default_factory=dict)  # index -> policy's reason
    stopped_at: dict[int, int] = field(default_factory=dict)  # index -> epochs trained
    curves: dict[int, list[float]] = field(default_factory=dict)
    best_index: int | None = None
    best_final: float = math.nan
    wall_s: float = math.nan
    decide_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    # filled in against the reference run (no stopping) of the same seed
    epoch_fraction: float = math.nan
    gap: float = math.nan
    reference_best_kept: bool | None = None
    curve_mismatches: int = 0


def _histories(curves: Mapping[int, list[float]], running: set[int]) -> list[MetricHistory]:
    return [
        MetricHistory(index=i, values={step + 1: v for step, v in enumerate(c)}, running=i in running)
        for i, c in sorted(curves.items())
    ]


def _apply_decisions(
    decisions: Sequence[Any], running: set[int], result: RunResult, trials: dict[int, TrialRun]
) -> None:
    for d in decisions:
        if d.index not in running:
            result.notes.append(f"round {result.rounds}: asked to stop trial {d.index}, which is not running")
            continue
        running.discard(d.index)
        result.stopped[d.index] = d.reason
        result.stopped_at[d.index] = trials[d.index].epochs
        del trials[d.index]  # free the model


def simulate(
    policy_name: str, configs: Sequence[Mapping[str, Any]], data: Dataset,
    seed: int, epochs: int, parallel: int,
) -> RunResult:
    """Run every configuration under one policy with ``parallel`` simulated workers."""
    policy: StoppingPolicy = make_policy(policy_name, **policy_settings(policy_name, epochs))
    result = RunResult(seed=seed, policy=policy_name, describe=policy.describe())
    trials: dict[int, TrialRun] = {}
    running: set[int] = set()
    budget: dict[int, int] = {}
    next_config = 0
    start = time.perf_counter()
    while True:
        while len(running) < parallel and next_config < len(configs):
            i = next_config
            next_config += 1
            trials[i] = TrialRun(configs[i], data, trial_seed(seed, i))
            budget[i] = min(epochs, policy.resource_for(i) or epochs)
            result.curves[i] = []
            running.add(i)
        if not running:
            break
        result.rounds += 1
        for i in sorted(running):
            result.curves[i].append(trials[i].train_epoch())
            result.epochs_total += 1
        for i in sorted(running):
            if trials[i].epochs >= budget[i]:
                running.discard(i)
                (result.completed if budget[i] == epochs else result.short_completed).append(i)
                del trials[i]
        histories = _histories(result.curves, running)
        t0 = time.perf_counter()
        decisions = policy.decide(histories, minimize=True)
        result.decide_s += time.perf_counter() - t0
        _apply_decisions(decisions, running, result, trials)
    result.wall_s = time.perf_counter() - start
    _pick_best(result)
    return result


def _pick_best(result: RunResult) -> None:
    """The best final validation loss among trials that trained every epoch (NaN: diverged)."""
    finals = {i: result.curves[i][-1] for i in result.completed if math.isfinite(result.curves[i][-1])}
    if finals:
        result.best_index = min(finals, key=lambda i: finals[i])
        result.best_final = finals[result.best_index]


def compare_to_reference(result: RunResult, reference: RunResult) -> None:
    """Epoch fraction and gap against no stopping; check the curves are the reference's prefixes."""
    result.epoch_fraction = result.epochs_total / reference.epochs_total
    if math.isfinite(result.best_final) and math.isfinite(reference.best_final):
        result.gap = (result.best_final - reference.best_final) / abs(reference.best_final)
    elif math.isfinite(reference.best_final):
        result.gap = math.inf  # nothing trained to the end
    result.reference_best_kept = reference.best_index in result.completed
    for i, curve in result.curves.items():
        full = reference.curves.get(i, [])
        if not np.array_equal(np.asarray(curve), np.asarray(full[:len(curve)]), equal_nan=True):
            result.curve_mismatches += 1
    if result.curve_mismatches:
        result.notes.append(
            f"{result.curve_mismatches} curve(s) differ from the no-stopping run: training is not deterministic"
        )


# ---- reporting ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _pct(value: float) -> str:
    return _fmt(100.0 * value if math.isfinite(value) else value, ".2f") + ("%" if math.isfinite(value) else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


SEED_HEADER = [
    "seed", "policy", "epochs", "fraction", "best final loss", "best trial", "gap",
    "ref best kept", "stopped", "rounds", "wall s",
]


def seed_row(r: RunResult) -> list[str]:
    return [
        str(r.seed), r.policy, str(r.epochs_total), _fmt(r.epoch_fraction, ".3f"),
        _fmt(r.best_final, ".4f"), "-" if r.best_index is None else str(r.best_index), _pct(r.gap),
        "-" if r.reference_best_kept is None else ("yes" if r.reference_best_kept else "no"),
        str(len(r.stopped)), str(r.rounds), _fmt(r.wall_s, ".1f"),
    ]


SUMMARY_HEADER = [
    "policy", "seeds", "median epochs", "median fraction", "mean fraction", "median gap",
    "mean gap", "max gap", "ref best kept", "median stopped", "median rounds", "decide ms/round",
    "median wall s", "total wall s",
]


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def summary_row(policy: str, runs: Sequence[RunResult]) -> list[str]:
    gaps = [r.gap for r in runs]
    kept = [r.reference_best_kept for r in runs if r.reference_best_kept is not None]
    return [
        policy, str(len(runs)),
        _fmt(_median([r.epochs_total for r in runs]), ".0f"),
        _fmt(_median([r.epoch_fraction for r in runs]), ".3f"),
        _fmt(_mean([r.epoch_fraction for r in runs]), ".3f"),
        _pct(_median(gaps)), _pct(_mean(gaps)), _pct(max(gaps) if gaps else math.nan),
        f"{sum(kept)}/{len(kept)}" if kept else "-",
        _fmt(_median([len(r.stopped) for r in runs]), ".0f"),
        _fmt(_median([r.rounds for r in runs]), ".0f"),
        _fmt(1e3 * sum(r.decide_s for r in runs) / max(1, sum(r.rounds for r in runs)), ".3f"),
        _fmt(_median([r.wall_s for r in runs]), ".1f"),
        _fmt(sum(r.wall_s for r in runs), ".1f"),
    ]


def target_verdict(policy: str, runs: Sequence[RunResult]) -> tuple[bool, str]:
    """Median gap <= 1% and median epoch fraction <= 1/3 over seeds, with the per-seed count."""
    gap = _median([r.gap for r in runs])
    frac = _median([r.epoch_fraction for r in runs])
    seeds_ok = sum(1 for r in runs if r.gap <= TARGET_GAP and r.epoch_fraction <= TARGET_FRACTION)
    met = gap <= TARGET_GAP and frac <= TARGET_FRACTION
    misses = []
    if not gap <= TARGET_GAP:
        misses.append(f"median gap {_pct(gap)} > {TARGET_GAP:.0%}")
    if not frac <= TARGET_FRACTION:
        misses.append(f"median epoch fraction {frac:.3f} > 1/3")
    verdict = "MET" if met else "MISSED (" + "; ".join(misses) + ")"
    return met, (
        f"{policy}: {verdict}: median gap {_pct(gap)}, median epoch fraction {frac:.3f}; "
        f"{seeds_ok}/{len(runs)} seeds meet both on their own"
    )


def print_target(by_policy: Mapping[str, Sequence[RunResult]]) -> None:
    print("\nTarget: ASHA or Hyperband finds a configuration within 1% of the best that full "
          "training finds while spending at most a third of the epochs (medians over seeds).")
    rung = [p for p in by_policy if p in RUNG_POLICIES]
    if REFERENCE not in by_policy or not rung:
        print("  not evaluated: needs 'none' and at least one of asha, hyperband in --policies")
        return
    winners = []
    for policy in rung:
        met, line = target_verdict(policy, by_policy[policy])
        if met:
            winners.append(policy)
        print("  " + line)
    print("  => TARGET " + (f"MET (by {', '.join(winners)})" if winners else f"MISSED (neither of {', '.join(rung)} meets it)"))


def print_notes(results: Sequence[RunResult]) -> None:
    notes = [(r, n) for r in results for n in r.notes]
    if notes:
        print("\nNotes:")
        for r, n in notes:
            print(f"  seed {r.seed} {r.policy}: {n}")


# ---- environment and driver -----------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "policies_available": available_policies(),
    }


def print_header(env: Mapping[str, Any], args: argparse.Namespace, data: Dataset) -> None:
    print(f"command: {env['command']}")
    print(f"git {env['git']} | {env['date']} | python {env['python']} | torch {env['torch']} "
          f"(threads={env['torch_threads']}) | cpus {env['cpu_count']}")
    print(f"problem: {len(data.x_train)} train / {len(data.x_val)} val rows, {INPUT_DIM} inputs, "
          f"{N_CLASSES} classes, {LABEL_NOISE:.0%} label noise (data seed {args.data_seed}); "
          f"2-hidden-layer MLP, metric: validation cross-entropy after each epoch")
    print(f"{args.configs} configs/seed, {args.epochs} epochs, {args.parallel} simulated workers; "
          f"policies get min_steps=1, reduction_factor=3, max_steps={args.epochs}")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--configs", type=int, default=30, help="configurations per seed")
    parser.add_argument("--epochs", type=int, default=27, help="epochs of a full trial (max_steps)")
    parser.add_argument("--parallel", type=int, default=4, help="simulated workers")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                        help="comma-separated registered policy names")
    parser.add_argument("--data-seed", type=int, default=DATA_SEED, help="seed of the generated data")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    args = parser.parse_args(argv)
    for flag in ("seeds", "configs", "epochs", "parallel"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    return args


def resolve_policies(spec: str, epochs: int) -> list[str]:
    """Requested policies, the reference first; any that cannot be built ends the run before it starts."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    missing = [p for p in names if p not in available_policies()]
    if missing or not names:
        raise SystemExit(
            f"bench_stopping: policies {missing or names} are not registered (available: {available_policies()})"
        )
    for name in names:
        make_policy(name, **policy_settings(name, epochs))  # SpecError or SystemExit now, not after an hour
    return sorted(dict.fromkeys(names), key=lambda p: p != REFERENCE)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    policies = resolve_policies(args.policies, args.epochs)
    env = environment()
    data = make_dataset(args.data_seed)
    print_header(env, args, data)
    results: list[RunResult] = []
    configs_by_seed: dict[int, list[dict[str, Any]]] = {}
    for seed in range(args.seeds):
        configs = configs_by_seed[seed] = draw_configs(seed, args.configs)
        seed_runs: list[RunResult] = []
        for policy in policies:
            run = simulate(policy, configs, data, seed, args.epochs, args.parallel)
            reference = seed_runs[0] if seed_runs and seed_runs[0].policy == REFERENCE else None
            if reference is not None or policy == REFERENCE:
                compare_to_reference(run, reference or run)
            seed_runs.append(run)
            print(f"  seed {seed} {policy:<10} {run.epochs_total:>5} epochs  {run.wall_s:6.1f} s",
                  file=sys.stderr, flush=True)
        print(f"\nSeed {seed}\n" + markdown_table(SEED_HEADER, [seed_row(r) for r in seed_runs]))
        results.extend(seed_runs)
    by_policy = {p: [r for r in results if r.policy == p] for p in policies}
    print(f"\nSummary over {args.seeds} seeds (gap: relative to the best final val loss of 'none'; "
          "fraction: epochs / epochs of 'none')\n"
          + markdown_table(SUMMARY_HEADER, [summary_row(p, rs) for p, rs in by_policy.items()]))
    print_target(by_policy)
    print_notes(results)
    if args.json:
        payload = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                   "configs": configs_by_seed, "runs": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(_json_safe(payload), indent=1))
        print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
