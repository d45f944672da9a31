"""The ask/tell experiment: the single source of truth the flow, the CLI and notebooks drive.

It owns the search space, the trials and the suggester, and nothing else: no I/O, no Prefect.
Its whole state is a JSON document (:meth:`Experiment.to_json`) that restores exactly, down to
the next suggestion, which is what checkpoints and resume are built on.

Reproducibility without pickled RNG state: every ``ask`` draws from a generator seeded with
``(seed, ask number)``, so restoring ``seed`` and the ask counter (plus the suggester's own small
state) restores the random stream.

Several objectives have no single best trial: the answer is the Pareto front
(:meth:`Experiment.pareto_front`), and progress is measured by the hypervolume it dominates
(:meth:`Experiment.hypervolume`); the geometry lives in :mod:`prefect_hpo.optim.pareto`.
Outcome constraints (``"latency_ms <= 20"``, :mod:`prefect_hpo.optim.outcome_constraints`) make
a trial *infeasible* without making it failed: its values still teach the model where the
constraint breaks, but it can never be the answer.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np

from prefect_hpo.errors import (
    NoCompletedTrialsError,
    SearchSpaceError,
    SerializationError,
    SpecError,
    TrialError,
    UnknownTrialError,
)
from prefect_hpo.optim import pareto
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.outcome_constraints import OutcomeConstraint, parse_outcome_constraints
from prefect_hpo.optim.space import SearchSpace
from prefect_hpo.optim.suggesters import Observations, make_suggester
from prefect_hpo.optim.trials import Trial, TrialStatus, utcnow

__all__ = ["Experiment"]

logger = logging.getLogger(__name__)

FORMAT = "prefect-hpo/experiment"
FORMAT_VERSION = 1

Direction = Literal["minimize", "maximize"]


class Experiment:
    """An optimization experiment driven by ``ask()`` and ``tell()``.

    ``parameters`` is an Ax-style list of dicts, an NNI-style dict, or a :class:`SearchSpace`.
    ``objectives`` maps each objective name to ``"minimize"`` or ``"maximize"``, or to
    ``{"direction": "maximize", "threshold": 0.9}``: with several objectives the threshold is the
    worst value still worth having (accuracy >= 0.9, params <= 1e6), the objective's coordinate of
    the reference point that hypervolumes are measured from (see :attr:`reference_point`).
    ``outcome_constraints`` bound other reported metrics (``["latency_ms <= 20", "memory_gb >= 1"]``):
    ``tell`` then needs those metrics too, and a trial that breaks one is infeasible.
    ``algorithm`` names a registered suggester (``auto``, ``gp``, ``sobol``, ``random``, ``grid``).
    """

    def __init__(
        self,
        name: str,
        parameters: Any,
        objectives: Mapping[str, str] | None = None,
        algorithm: str = "auto",
        seed: int | None = None,
        parameter_constraints: Sequence[str] | None = None,
        algorithm_options: Mapping[str, Any] | None = None,
        outcome_constraints: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise SpecError("name: an experiment needs a non-empty name")
        self.name = name
        self.space = SearchSpace.parse(parameters, parameter_constraints)
        self.objectives: dict[str, Direction]
        self.objective_thresholds: dict[str, float]
        self.objectives, self.objective_thresholds = _check_objectives(objectives or {"objective": "minimize"})
        self.outcome_constraints: tuple[OutcomeConstraint, ...] = parse_outcome_constraints(
            outcome_constraints, self.objectives
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise SpecError(f"seed: must be a non-negative int, got {seed!r}")
        self.seed: int = secrets.randbelow(2**31) if seed is None else seed
        self.algorithm = algorithm
        if algorithm_options is not None and not isinstance(algorithm_options, Mapping):
            raise SpecError(f"algorithm_options: expected a dict of options, got {algorithm_options!r}")
        self.algorithm_options: dict[str, Any] = dict(algorithm_options or {})
        self.encoder = SpaceEncoder(self.space)
        self.suggester = make_suggester(algorithm, self.encoder, seed=self.seed, options=self.algorithm_options)
        if len(self.objectives) > 1 and not self.suggester.multi_objective:
            raise SpecError(
                f"algorithm {algorithm!r}: optimizes a single objective, got {list(self.objectives)}; "
                "use 'auto', 'gp', 'sobol' or 'random' for several objectives"
            )
        if self.outcome_constraints and not self.suggester.outcome_constraints:
            raise SpecError(
                f"algorithm {algorithm!r}: does not model outcome constraints "
                f"{[c.expression for c in self.outcome_constraints]}; use 'auto' or 'gp'"
            )
        self._trials: list[Trial] = []
        self._ask_calls = 0

    def __repr__(self) -> str:
        counts = {s.value: 0 for s in TrialStatus}
        for t in self._trials:
            counts[t.status.value] += 1
        done = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        return f"Experiment(name={self.name!r}, algorithm={self.algorithm!r}, trials={len(self._trials)}{', ' + done if done else ''})"

    # ---- asking ---------------------------------------------------------------------------
    @overload
    def ask(self) -> Trial: ...
    @overload
    def ask(self, n: int) -> list[Trial]: ...

    def ask(self, n: int | None = None) -> Trial | list[Trial]:
        """Suggest one trial, or ``n`` trials at once; they stay pending until told.

        Trials already in flight are passed to the suggester as pending points, so asking again
        before telling gives new, spread-out points (parallel trials).
        """
        count = 1 if n is None else n
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TrialError(f"ask(n): n must be a positive int, got {n!r}")
        observations = self.observations()
        rng = np.random.default_rng([self.seed, self._ask_calls])
        self._ask_calls += 1
        suggestions = self.suggester.suggest(observations, count, rng)
        if len(suggestions) != count:
            raise SpecError(f"algorithm {self.algorithm!r}: returned {len(suggestions)} point(s) when asked for {count}")
        # validate the whole batch before recording any of it: a bad point leaves no orphan trials
        checked = [
            (self.space.validate_params(s.params if s.params is not None else self.encoder.decode(s.x)), s.suggester)
            for s in suggestions
        ]
        trials = [self._record(params, suggester) for params, suggester in checked]
        return trials[0] if n is None else trials

    def attach_trial(self, params: Mapping[str, Any]) -> Trial:
        """Add a trial with parameters of your choosing (a known good config, a rerun)."""
        return self._record(self.space.validate_params(dict(params)), "manual")

    def _record(self, typed: dict[str, Any], suggester: str) -> Trial:
        trial = Trial(index=len(self._trials), params=typed, suggester=suggester)
        self._trials.append(trial)
        return trial

    # ---- telling --------------------------------------------------------------------------
    def mark_running(self, index: int) -> Trial:
        """Record that a pending trial has been launched."""
        trial = self.trial(index)
        if trial.status is not TrialStatus.PENDING:
            raise TrialError(f"trial {index}: is {trial.status.value}, only a pending trial can start running")
        trial.status = TrialStatus.RUNNING
        trial.started_at = utcnow()
        return trial

    def tell(
        self,
        index: int,
        values: Mapping[str, float] | float | None = None,
        *,
        failed: str | BaseException | None = None,
    ) -> Trial:
        """Report a trial's objective values (and constrained metrics), or that it failed.

        ``values`` needs every objective and every metric an outcome constraint names. A NaN or
        infinite value does not raise: the trial is marked failed with that reason and the value
        never reaches the model (a diverged training run is a result, not a bug). A trial that
        breaks an outcome constraint completes as usual, with ``feasible=False``.
        """
        trial = self.trial(index)
        if trial.status.is_terminal:
            raise TrialError(f"trial {index}: already {trial.status.value}; a trial is told only once")
        if failed is not None:
            if values is not None:
                raise TrialError(f"trial {index}: pass either values or failed, not both")
            if isinstance(failed, BaseException):
                reason = f"{type(failed).__name__}: {failed}" if str(failed) else type(failed).__name__
            elif isinstance(failed, str):
                reason = failed
            else:
                raise TrialError(f"trial {index}: failed must be a reason (str) or an exception, got {failed!r}")
            return self._finish(trial, TrialStatus.FAILED, reason=reason or "failed")
        if values is None:
            raise TrialError(f"trial {index}: tell() needs values (one per objective) or failed=reason")
        checked = self._check_values(index, values)
        bad = [k for k, v in checked.items() if not math.isfinite(v)]
        if bad:
            reason = "; ".join(f"{self._kind(k)} {k!r} is {checked[k]}" for k in bad)
            logger.warning("trial %d: marked failed: %s", index, reason)
            return self._finish(trial, TrialStatus.FAILED, reason=reason)
        trial.values = checked
        trial.feasible = self._feasibility(checked)
        return self._finish(trial, TrialStatus.COMPLETED)

    def stop_early(self, index: int, values: Mapping[str, float] | float | None, reason: str) -> Trial:
        """Record that a stopping policy ended a running trial, with the last values it reported.

        Like Ax, the optimizer learns from those values: a curve cut short reports a worse value
        than it would have reached, which steers the model away from that region, exactly where
        the policy judged it hopeless. They never make the trial the best one (:attr:`best_trial`
        only considers trials that ran to the end). Values that are missing or not finite (a
        curve that diverged) keep the trial out of the model, as for a failed one. Constrained
        metrics may be left out (a learning curve reports the objective, not the latency of the
        final model); the trial's feasibility is then unknown (None) and it stays out of the
        model too, since half a data point would tell the constraint model nothing.
        """
        trial = self.trial(index)
        if trial.status.is_terminal:
            raise TrialError(f"trial {index}: already {trial.status.value}; a trial is told only once")
        if not isinstance(reason, str) or not reason:
            raise TrialError(f"trial {index}: stop_early needs the reason it was stopped")
        checked = None if values is None else self._check_values(index, values, constraints_optional=True)
        if checked is not None and all(math.isfinite(v) for v in checked.values()):
            trial.values = checked
            trial.feasible = self._feasibility(checked)
        return self._finish(trial, TrialStatus.EARLY_STOPPED, reason=reason)

    def abandon(self, index: int, reason: str | None = None) -> Trial:
        """Give up on an in-flight trial (it will never report); it stops counting as pending."""
        trial = self.trial(index)
        if trial.status.is_terminal:
            raise TrialError(f"trial {index}: already {trial.status.value}; only an in-flight trial can be abandoned")
        return self._finish(trial, TrialStatus.ABANDONED, reason=reason or "abandoned")

    def _finish(self, trial: Trial, status: TrialStatus, reason: str | None = None) -> Trial:
        trial.status = status
        trial.failure_reason = reason
        trial.finished_at = utcnow()
        return trial

    def _check_values(
        self, index: int, values: Mapping[str, float] | float, *, constraints_optional: bool = False
    ) -> dict[str, float]:
        names = self.metric_names
        if not isinstance(values, Mapping):
            if len(names) != 1:
                raise TrialError(f"trial {index}: give a dict with a value for each of {list(names)}")
            values = {names[0]: values}
        required = list(self.objectives) if constraints_optional else list(names)
        missing = [k for k in required if k not in values]
        extra = [k for k in values if k not in names]
        if missing or extra:
            what = (
                f"exactly the objectives {list(self.objectives)}" if not self.constrained_metrics
                else f"the objectives {list(self.objectives)} and the constrained metrics {list(self.constrained_metrics)}"
            )
            raise TrialError(
                f"trial {index}: values must name {what}"
                f"{f'; missing {missing}' if missing else ''}{f'; unknown {extra}' if extra else ''}"
            )
        out = {}
        for k in names:  # in a fixed order, whatever order the caller used
            if k not in values:
                continue
            v = values[k]
            if isinstance(v, (bool, str, bytes)):  # "1.5" is a parsing bug upstream, not a number
                raise TrialError(f"trial {index}: {self._kind(k)} {k!r} must be a number, got {v!r}")
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                raise TrialError(f"trial {index}: {self._kind(k)} {k!r} must be a number, got {v!r}") from None
        return out

    def _kind(self, name: str) -> str:
        return "objective" if name in self.objectives else "metric"

    def _feasibility(self, values: Mapping[str, float]) -> bool | None:
        """Whether ``values`` satisfy every outcome constraint; None without constraints or data."""
        if not self.outcome_constraints or any(c.metric not in values for c in self.outcome_constraints):
            return None
        return all(c.is_satisfied(values[c.metric]) for c in self.outcome_constraints)

    # ---- reading --------------------------------------------------------------------------
    @property
    def trials(self) -> tuple[Trial, ...]:
        return tuple(self._trials)

    def trial(self, index: int) -> Trial:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self._trials):
            raise UnknownTrialError(f"trial {index!r}: no such trial (this experiment has {len(self._trials)})")
        return self._trials[int(index)]

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def constrained_metrics(self) -> tuple[str, ...]:
        """The metrics named by outcome constraints, each once, in the order first named."""
        return tuple(dict.fromkeys(c.metric for c in self.outcome_constraints))

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every value ``tell`` needs: the objectives, then the constrained metrics."""
        return (*self.objectives, *self.constrained_metrics)

    @property
    def best_trial(self) -> Trial:
        """The feasible completed trial with the best objective value (earliest wins a tie).

        Early-stopped trials are left out: their values are from a shorter training run. So are
        trials that break an outcome constraint: a faster model that misses the latency budget
        is not an answer, however good its loss.
        """
        if self.is_multi_objective:
            raise SpecError(
                f"experiment {self.name!r}: has {len(self.objectives)} objectives, so no single best trial; "
                "use pareto_front() for the trials no other trial beats on every objective"
            )
        done = [t for t in self._trials if t.status is TrialStatus.COMPLETED]
        if not done:
            raise NoCompletedTrialsError(f"experiment {self.name!r}: no completed trial yet")
        feasible = [t for t in done if t.feasible is not False]
        if not feasible:
            raise NoCompletedTrialsError(
                f"experiment {self.name!r}: none of the {len(done)} completed trial(s) is feasible "
                f"(outcome constraints {[c.expression for c in self.outcome_constraints]})"
            )
        (objective, direction), = self.objectives.items()
        sign = 1.0 if direction == "minimize" else -1.0
        return min(feasible, key=lambda t: (sign * t.values[objective], t.index))  # type: ignore[index]

    # ---- several objectives -----------------------------------------------------------------
    def _signs(self) -> np.ndarray:
        """+1 for maximized, -1 for minimized objectives: user units -> larger is better."""
        return np.array([1.0 if d == "maximize" else -1.0 for d in self.objectives.values()])

    def _front_candidates(self) -> list[Trial]:
        """Trials that may be on the Pareto front: completed (ran to the end) and feasible."""
        return [t for t in self._trials if t.status is TrialStatus.COMPLETED and t.feasible is not False]

    def _oriented(self, trials: Sequence[Trial]) -> np.ndarray:
        values = [[t.values[k] for k in self.objectives] for t in trials]  # type: ignore[index]
        return np.array(values, dtype=np.float64).reshape(len(trials), len(self.objectives)) * self._signs()

    def meets_thresholds(self, trial: Trial) -> bool:
        """Whether the trial's values are at least as good as every objective's ``threshold``
        (the worst value still worth having; objectives without one always pass)."""
        if not trial.values:
            return False
        for name, threshold in self.objective_thresholds.items():
            value = trial.values.get(name)
            if value is None:
                return False
            if (value < threshold) if self.objectives[name] == "maximize" else (value > threshold):
                return False
        return True

    def outside_thresholds(self) -> list[Trial]:
        """Completed, feasible trials that miss some objective's threshold: never on the Pareto
        front (a user who said 0.8 accuracy is the least worth having does not want a 0.3 model
        offered as a trade-off), listed apart so reports can show and mark them."""
        return [t for t in self._front_candidates() if not self.meets_thresholds(t)]

    def pareto_front(self) -> list[Trial]:
        """The completed, feasible trials within the objective thresholds that no other such
        trial dominates.

        A trial dominates another when it is at least as good on every objective and strictly
        better on one. Trials with identical values are all kept (either configuration is an
        answer). A trial worse than an objective's ``threshold`` is left out, as Ax leaves such
        points out of its Pareto frontier (they add no hypervolume either): see
        :meth:`outside_thresholds`. Sorted from best to worst on the first objective (then by
        trial index), which walks the front from one end to the other. With one objective this
        is the best trial and any ties. Early-stopped trials are left out, as for
        :attr:`best_trial`.
        """
        candidates = [t for t in self._front_candidates() if self.meets_thresholds(t)]
        mask = pareto.non_dominated(self._oriented(candidates))
        front = [t for t, keep in zip(candidates, mask) if keep]
        first, direction = next(iter(self.objectives.items()))
        sign = -1.0 if direction == "maximize" else 1.0
        return sorted(front, key=lambda t: (sign * t.values[first], t.index))  # type: ignore[index]

    def _thresholds_oriented(self) -> np.ndarray:
        raw = np.array([self.objective_thresholds.get(k, np.nan) for k in self.objectives], dtype=np.float64)
        return raw * self._signs()

    def _reference_oriented(self) -> np.ndarray | None:
        candidates = self._oriented(self._front_candidates())
        front = candidates[pareto.non_dominated(candidates)]
        return pareto.infer_reference_point(front, self._thresholds_oriented())

    def _required_reference(self) -> np.ndarray:
        reference = self._reference_oriented()
        if reference is None:
            missing = [k for k in self.objectives if k not in self.objective_thresholds]
            raise NoCompletedTrialsError(
                f"experiment {self.name!r}: no feasible completed trial to infer the reference point from "
                f"(objectives without a threshold: {missing})"
            )
        return reference

    @property
    def reference_point(self) -> dict[str, float]:
        """The point hypervolumes are measured from, per objective, in the objective's units.

        An objective's ``threshold`` is its coordinate when given. Any other coordinate is
        inferred from the Pareto front of the completed feasible trials, with BoTorch's
        ``infer_reference_point`` rule (the one Ax uses): the front's worst value in that
        objective moved 10% of the front's range further out (larger for a minimized
        objective, smaller for a maximized one), so that even the extreme points of the front
        count; with no spread (a single point) the margin is 10% of the value's magnitude.
        When thresholds are given, only the front's points that beat them are used, if any do.
        An inferred coordinate moves as the front grows, so hypervolumes taken at different times
        are comparable only with a fixed reference point (thresholds on every objective, or
        ``hypervolume(reference_point=...)``).

        Raises NoCompletedTrialsError when a coordinate has to be inferred and no feasible
        trial has completed.
        """
        reference = self._required_reference()
        return {k: float(v) for k, v in zip(self.objectives, reference * self._signs())}

    def hypervolume(self, reference_point: Mapping[str, float] | None = None) -> float:
        """The volume of objective space the Pareto front dominates, bounded by the reference point.

        In the objectives' own units and directions (minimizing two objectives with reference
        (18, 6), the volume of the set of points that are worse than a front point and better than
        (18, 6) in both). ``reference_point`` overrides :attr:`reference_point`, for comparing
        runs against a fixed point. Trials that do not beat the reference point on every
        objective add nothing; with none it is 0.0.
        """
        if reference_point is None:
            reference = self._required_reference()
        else:
            if not isinstance(reference_point, Mapping) or set(reference_point) != set(self.objectives):
                raise SpecError(
                    f"hypervolume(reference_point): give one value for each of {list(self.objectives)}, "
                    f"got {reference_point!r}"
                )
            reference = np.array([float(reference_point[k]) for k in self.objectives]) * self._signs()
        return pareto.hypervolume(self._oriented(self.pareto_front()), reference)

    def summary(self) -> list[dict[str, Any]]:
        """One flat dict per trial (index, status, params, values, reason): print or tabulate it."""
        return [t.summary() for t in self._trials]

    def observations(self) -> Observations:
        """The read-only view that suggesters see."""
        constrained = bool(self.outcome_constraints)
        by_status: dict[str, list[Trial]] = {"done": [], "flight": [], "failed": []}
        for t in self._trials:
            if t.status is TrialStatus.COMPLETED or (
                t.status is TrialStatus.EARLY_STOPPED and t.values and (not constrained or t.feasible is not None)
            ):
                key = "done"
            else:
                key = "flight" if t.status.in_flight else "failed"
            by_status[key].append(t)
        done = by_status["done"]
        signs = np.array([1.0 if d == "maximize" else -1.0 for d in self.objectives.values()])
        Y = np.array([[t.values[k] for k in self.objectives] for t in done], dtype=np.float64)  # type: ignore[index]
        C = np.array(
            [[c.slack(t.values[c.metric]) for c in self.outcome_constraints] for t in done],  # type: ignore[index]
            dtype=np.float64,
        ).reshape(len(done), len(self.outcome_constraints))
        reference = self._reference_oriented() if self.is_multi_objective else None
        return Observations(
            encoder=self.encoder,
            X=self.encoder.encode_many([t.params for t in done]),
            Y=(Y * signs) if len(done) else np.zeros((0, len(self.objectives))),
            X_pending=self.encoder.encode_many([t.params for t in by_status["flight"]]),
            X_failed=self.encoder.encode_many([t.params for t in by_status["failed"]]),
            n_trials=len(self._trials),
            objectives=tuple(self.objectives),
            C=C,
            outcome_constraints=tuple(c.expression for c in self.outcome_constraints),
            objective_thresholds=self._thresholds_oriented(),
            reference_point=reference,
        )

    # ---- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "parameters": self.space.to_list(),
            "parameter_constraints": [c.expression for c in self.space.constraints],
            "objectives": dict(self.objectives),
            # beside "objectives" rather than inside it, so "objectives" keeps its old shape
            "objective_thresholds": dict(self.objective_thresholds),
            "outcome_constraints": [c.expression for c in self.outcome_constraints],
            "algorithm": self.algorithm,
            "algorithm_options": self.algorithm_options,
            "seed": self.seed,
            "ask_calls": self._ask_calls,
            "suggester_state": self.suggester.state_dict(),
            "trials": [t.to_dict() for t in self._trials],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Experiment:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise SerializationError(f"not a prefect-hpo experiment document (format {data.get('format') if isinstance(data, Mapping) else None!r})")
        if data.get("version") != FORMAT_VERSION:
            raise SerializationError(f"experiment document version {data.get('version')!r}: this prefect-hpo reads version {FORMAT_VERSION}")
        try:
            exp = cls(
                name=data["name"],
                parameters=data["parameters"],
                objectives=_objectives_with_thresholds(data["objectives"], data.get("objective_thresholds")),
                algorithm=data["algorithm"],
                seed=data["seed"],
                parameter_constraints=data.get("parameter_constraints") or None,
                algorithm_options=data.get("algorithm_options") or None,
                outcome_constraints=data.get("outcome_constraints") or None,
            )
            exp._trials = [Trial.from_dict(t) for t in data["trials"]]
            exp._ask_calls = int(data["ask_calls"])
            exp.suggester.load_state_dict(data.get("suggester_state") or {})
        except KeyError as exc:
            raise SerializationError(f"experiment document: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:  # a bad status, timestamp, space, constraint...
            raise SerializationError(f"experiment document: invalid content ({type(exc).__name__}: {exc})") from exc
        for i, t in enumerate(exp._trials):
            if t.index != i:
                raise SerializationError(f"experiment document: trial at position {i} has index {t.index}")
            try:  # a hand-edited or damaged checkpoint must not feed impossible points to the model
                t.params = exp.space.validate_params(t.params)
            except SearchSpaceError as exc:
                raise SerializationError(f"experiment document: trial {i}: {exc}") from None
        return exp

    @classmethod
    def from_json(cls, text: str | bytes) -> Experiment:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SerializationError(f"experiment document: not valid JSON ({exc})") from None
        return cls.from_dict(data)


def _check_objectives(objectives: Mapping[str, Any]) -> tuple[dict[str, Direction], dict[str, float]]:
    """Directions and thresholds from ``{name: direction}`` or ``{name: {direction, threshold}}``."""
    if not isinstance(objectives, Mapping) or not objectives:
        raise SpecError("objectives: give at least one, as {name: 'minimize' | 'maximize'}")
    directions: dict[str, Direction] = {}
    thresholds: dict[str, float] = {}
    for name, spec in objectives.items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"objectives: names must be non-empty strings, got {name!r}")
        if isinstance(spec, Mapping):
            unknown = sorted(set(map(str, spec)) - {"direction", "threshold"})
            if unknown:
                raise SpecError(f"objectives.{name}: unknown field(s) {unknown}; expected 'direction' and optional 'threshold'")
            direction = spec.get("direction")
            if "threshold" in spec and spec["threshold"] is not None:
                threshold = spec["threshold"]
                if isinstance(threshold, (bool, str, bytes)) or not isinstance(threshold, (int, float, np.number)):
                    raise SpecError(f"objectives.{name}.threshold: must be a number, got {threshold!r}")
                if not math.isfinite(float(threshold)):
                    raise SpecError(f"objectives.{name}.threshold: must be finite, got {threshold!r}")
                thresholds[name] = float(threshold)
            where = f"objectives.{name}.direction"
        else:
            direction, where = spec, f"objectives: {name!r}"
        if direction not in ("minimize", "maximize"):
            raise SpecError(f"{where} must be 'minimize' or 'maximize', got {direction!r}")
        directions[name] = direction  # type: ignore[assignment]
    return directions, thresholds


def _objectives_with_thresholds(objectives: Any, thresholds: Any) -> Any:
    """Rebuild the constructor's form from a document (older ones have no thresholds)."""
    if not thresholds:
        return objectives
    if not isinstance(objectives, Mapping) or not isinstance(thresholds, Mapping):
        raise TypeError(f"objectives {objectives!r} / objective_thresholds {thresholds!r}: expected mappings")
    unknown = set(thresholds) - set(objectives)
    if unknown:
        raise ValueError(f"objective_thresholds: {sorted(unknown)} are not objectives")
    return {
        k: {"direction": d, "threshold": thresholds[k]} if k in thresholds else d for k, d in objectives.items()
    }
