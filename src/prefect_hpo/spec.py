"""The experiment spec: one YAML/JSON document that says what to optimize, how, and where.

The spec is the unit users version, review and hand to a deployment, so it is validated up
front and every error names the field (``budget.max_parallel: ...``). It travels inside the
checkpoint, which is why ``prefect-hpo resume NAME`` needs nothing but the name.
"""

from __future__ import annotations

import importlib
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from prefect_hpo.errors import SearchSpaceError, SpecError
from prefect_hpo.optim.space import SearchSpace, load_document
from prefect_hpo.tenancy import check_tenant_name, check_work_pool_names, tenant_limit

if TYPE_CHECKING:
    from prefect_hpo.optim.experiment import Experiment
    from prefect_hpo.optim.stopping import StoppingPolicy

__all__ = ["BudgetSpec", "ExperimentSpec", "ObjectiveSpec", "StoppingSpec", "TrialSpec", "check_runnable", "load_spec"]

DEFAULT_STORAGE = "file://.prefect-hpo"
# \Z, not $: "$" also matches before a final newline, so "name\n" would pass
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")
#: Tracking-store schemes MLflow itself understands; plugins add theirs as entry points.
_MLFLOW_SCHEMES = frozenset({"file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc"})
#: Longest rendering of a refused value in an error message (a value may be megabytes).
_MAX_SHOWN = 80
IN_PROCESS = "in-process:"  # how a function object is named in a checkpoint (it cannot be stored)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """YAML's ``true`` is a bool, which pydantic would read as 1 (``trials: true`` ran one trial)."""
        if isinstance(v, bool) and info.field_name is not None and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {v!r}")
        return v


class BudgetSpec(_Strict):
    """How much to spend: trials in total, trials at once, and optionally wall-clock time."""

    trials: int = Field(gt=0, description="completed-or-failed trials to run in total")
    max_parallel: int = Field(default=1, gt=0, description="trials running at the same time")
    wall_time_s: float | None = Field(default=None, gt=0, description="stop launching after this many seconds")


class _GpuQuota(_Strict):
    """The cross-experiment GPU quota of trials that run elsewhere (a work pool, Dask)."""

    concurrency_limit: str | None = Field(
        default=None,
        description="Prefect global concurrency limit of which each trial holds gpus_per_trial slots while it runs",
    )
    slot_retry_s: float = Field(
        default=2.0, gt=0, le=60,
        description="longest wait between two tries for slots of concurrency_limit: a freed GPU's hand-off time",
    )


class WorkPoolSpec(_GpuQuota):
    """Run each trial as a flow run of a trial deployment on a Prefect work pool.

    The deployment runs the package's trial flow (``prefect_hpo.flows.trial:trial_flow``, see
    ``deployments/prefect.yaml``); the work pool decides where: a worker's process, a Docker
    container, a Kubernetes pod. ``gpus_per_trial`` reaches the pool as the job variable named by
    ``gpu_variable`` (the shipped Kubernetes template turns it into an ``nvidia.com/gpu`` request).
    """

    deployment: str = Field(description="'flow-name/deployment-name' of the trial deployment, e.g. 'prefect-hpo-trial/process'")
    job_variables: dict[str, Any] = Field(default_factory=dict, description="per-run overrides of the pool's job template")
    gpu_variable: str | None = Field(
        default="gpus", description="job variable that receives gpus_per_trial (only when > 0); null: pass none"
    )
    kill_wait_s: float = Field(default=30.0, ge=0, description="how long a stop waits for the flow run to end")
    work_queue: str | None = Field(default=None, description="the pool's work queue; with a tenant, default the tenant's")

    @field_validator("deployment")
    @classmethod
    def _flow_and_name(cls, v: str) -> str:
        flow_name, _, name = v.partition("/")
        if not flow_name or not name or "/" in name:
            raise ValueError(f"expected 'flow-name/deployment-name', got {v!r}")
        return v


class DaskSpec(_GpuQuota):
    """Run each trial as a Prefect task on Dask workers (prefect-dask's DaskTaskRunner).

    GPUs are Dask worker resources: a GPU trial asks the scheduler for ``gpus_per_trial`` units
    of ``gpu_resource``, so it only lands on a worker that declared them (``dask worker
    --resources GPU=1``, one worker per device with its ``CUDA_VISIBLE_DEVICES``, which the trial
    keeps). ``concurrency_limit`` adds the cross-experiment quota, as on a work pool.
    """

    address: str | None = Field(default=None, description="a Dask scheduler, e.g. tcp://10.0.0.5:8786; default: a local cluster")
    n_workers: int = Field(default=2, ge=1, description="local cluster: worker processes")
    threads_per_worker: int = Field(default=1, ge=1, description="local cluster: trials at once per worker")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="local cluster: resources each worker declares, e.g. {'GPU': 1}"
    )
    gpu_resource: str | None = Field(
        default="GPU", description="worker resource a GPU trial asks gpus_per_trial of; null: schedule GPU trials anywhere"
    )
    kill_wait_s: float = Field(default=15.0, ge=0, description="how long a stop waits for the task to end")


class TrialSpec(_Strict):
    """What one trial runs and how it is treated (timeouts, retries, GPUs)."""

    command: str | None = Field(default=None, description="shell command; {param} placeholders are filled in")
    callable: str | Callable[..., Any] | None = Field(
        default=None, description="'package.module:function' (or, from Python, a function object), called with the params dict"
    )
    timeout_s: float | None = Field(default=None, gt=0, description="kill the trial's process group after this")
    retries: int = Field(default=0, ge=0, description="re-runs of a failed trial (same parameters)")
    gpus_per_trial: int = Field(default=0, ge=0)
    gpus: list[str] | None = Field(default=None, description="GPU ids to hand out; default: the visible GPUs")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables for the trial")
    cwd: str | None = Field(default=None, description="working directory of the trial (default: the current one)")
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, description="longest wait between two polls")
    work_pool: WorkPoolSpec | None = Field(default=None, description="run trials as flow runs of a deployment on a work pool")
    dask: DaskSpec | None = Field(default=None, description="run trials as Prefect tasks on Dask workers")

    @model_validator(mode="after")
    def _one_entry_point(self) -> TrialSpec:
        if (self.command is None) == (self.callable is None):
            raise ValueError("give exactly one of 'command' or 'callable'")
        if self.work_pool is not None and self.dask is not None:
            raise ValueError("give at most one of 'work_pool' and 'dask'")
        dask = self.dask
        if (
            dask is not None and dask.address is None and dask.gpu_resource and self.gpus_per_trial > 0
            and dask.worker_resources.get(dask.gpu_resource, 0) < self.gpus_per_trial
        ):
            raise ValueError(
                f"dask.worker_resources: each trial asks for {self.gpus_per_trial} {dask.gpu_resource!r} but the local "
                f"cluster's workers declare {dask.worker_resources or 'none'}, so no trial could ever start; give e.g. "
                f"{{{dask.gpu_resource!r}: {self.gpus_per_trial}}}, or gpu_resource: null"
            )
        if (self.work_pool is not None or self.dask is not None) and self.in_process:
            raise ValueError("work_pool/dask: a Python function object cannot travel to another process; "
                             "give it as 'package.module:function'")
        if self.command is not None and not self.command.strip():
            raise ValueError("command: must not be empty")
        if isinstance(self.callable, str) and not (_CALLABLE.match(self.callable) or self.callable.startswith(IN_PROCESS)):
            raise ValueError(f"callable: expected 'package.module:function', got {self.callable!r}")
        return self

    @field_validator("command", "cwd")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        """A NUL byte cannot reach a process (argv and paths are C strings): refuse it here
        rather than have every trial fail to start."""
        if v is not None and "\0" in v:
            raise ValueError(f"must not contain a NUL byte, got {v!r}")
        return v

    @field_validator("env")
    @classmethod
    def _valid_environment(cls, v: dict[str, str]) -> dict[str, str]:
        """Names and values the OS can put into a process's environment."""
        for name, value in v.items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"{name!r} is not a valid variable name (empty, or holds '=' or a NUL byte)")
            if "\0" in value:
                raise ValueError(f"{name}: the value must not contain a NUL byte, got {value!r}")
        return v

    @field_validator("callable", mode="before")
    @classmethod
    def _importable_by_name(cls, v: Any) -> Any:
        """A function object that a fresh process can import becomes ``module:qualname`` and runs
        as a process (killable, with its own GPUs); anything else runs in-process."""
        if v is None or isinstance(v, str):
            return v
        if not callable(v):
            raise ValueError(f"callable: expected 'package.module:function' or a function, got {v!r}")
        target = _import_name(v)
        return target if target is not None else v

    @field_serializer("callable")
    def _callable_name(self, v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v
        return f"{IN_PROCESS}{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', type(v).__name__)}"

    @property
    def in_process(self) -> bool:
        """True when the trial is a Python object run on a thread of the flow (not a process)."""
        return self.callable is not None and not isinstance(self.callable, str)


class ObjectiveSpec(_Strict):
    """An objective with a threshold: the worst value still worth having (accuracy >= 0.9),
    which is also its coordinate of the reference point hypervolumes are measured from."""

    direction: Literal["minimize", "maximize"]
    threshold: float | None = Field(default=None, allow_inf_nan=False)


class StoppingSpec(_Strict):
    """Which early-stopping policy watches the learning curves, and its settings.

    The settings are handed to the policy only when given, so each policy keeps its own
    defaults and refuses settings it does not use (``threshold`` means nothing to ``asha``).
    """

    policy: str = Field(default="none", description="none | median | percentile | threshold | asha | hyperband")
    metric: str | None = Field(default=None, description="the reported metric the policy watches; default: the first objective")
    mode: Literal["minimize", "maximize"] | None = Field(
        default=None, description="which way the metric is better; default: its objective's direction"
    )
    min_steps: int | None = Field(default=None, ge=1, description="warm-up steps (asha/hyperband: the first rung)")
    max_steps: int | None = Field(default=None, ge=1, description="the most steps a trial trains")
    reduction_factor: int | None = Field(default=None, ge=2, description="asha/hyperband: keep the best 1/eta at each rung")
    percentile: float | None = Field(default=None, gt=0, le=100, description="percentile: keep trials within the best p%")
    threshold: float | None = Field(default=None, description="threshold: stop a trial whose metric is worse than this")
    min_trials: int | None = Field(default=None, ge=1, description="median/percentile: other trials needed before acting")
    resource: str | None = Field(
        default=None, description="name of the parameter that hands the trial its step budget (max_steps), e.g. epochs"
    )

    def settings(self) -> dict[str, Any]:
        names = ("min_steps", "max_steps", "reduction_factor", "percentile", "threshold", "min_trials")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def build(self) -> StoppingPolicy:
        """A fresh policy object (policies may keep state, so each driver builds its own)."""
        from prefect_hpo.optim.stopping import make_policy

        return make_policy(self.policy, **self.settings())


class ExperimentSpec(_Strict):
    """A whole experiment; see ``examples/quickstart.yaml`` for the contract example."""

    name: str
    parameters: Any
    parameter_constraints: list[str] = Field(default_factory=list)
    objectives: dict[str, Literal["minimize", "maximize"] | ObjectiveSpec] = Field(
        min_length=1, description="name: minimize | maximize, or {direction, threshold}; two or more: multi-objective"
    )
    outcome_constraints: list[str] = Field(
        default_factory=list, description="bounds on other reported metrics, e.g. 'latency_ms <= 20'"
    )
    algorithm: str = "auto"
    algorithm_options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(default=None, ge=0)
    budget: BudgetSpec
    trial: TrialSpec
    stopping: StoppingSpec = Field(default_factory=StoppingSpec)
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    tenant: str | None = Field(
        default=None, description="the team the experiment belongs to (see prefect_hpo.tenancy); default $PREFECT_HPO_TENANT"
    )

    @model_validator(mode="before")
    @classmethod
    def _finite_thresholds(cls, data: Any) -> Any:
        """Said here, in one line: as a field error it would come once per member of the union
        ``minimize | {direction, threshold}``."""
        objectives = data.get("objectives") if isinstance(data, Mapping) else None
        for name, value in (objectives.items() if isinstance(objectives, Mapping) else ()):
            threshold = value.get("threshold") if isinstance(value, Mapping) else None
            if isinstance(threshold, bool) or (isinstance(threshold, (float, str)) and not _finite(threshold)):
                raise ValueError(f"objectives.{name}.threshold: must be a finite number, got {_shown(threshold)}")
        return data

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_tenant_name(v)
            except SpecError as exc:
                raise ValueError(str(exc).removeprefix("tenant: ")) from None
        return v

    @model_validator(mode="after")
    def _check_tenant_names(self) -> ExperimentSpec:
        pool, dask = self.trial.work_pool, self.trial.dask
        if self.tenant is not None and pool is not None:
            check_work_pool_names(self.tenant, pool.work_queue, pool.concurrency_limit)
        if self.tenant is not None and dask is not None:
            tenant_limit(self.tenant, dask.concurrency_limit, "trial.dask.concurrency_limit")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"{_shown(v)} is not a valid experiment name: use letters, digits, '_', '.', '-' "
                "(it becomes a folder, an S3 prefix and an MLflow experiment name)"
            )
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _check_tracking_uri(cls, v: str | None) -> str | None:
        """Refuse what MLflow cannot open now, not after the run has started and written things."""
        if v is None or not v.strip():
            return v
        uri = v.strip()
        if uri in ("databricks", "databricks-uc", "uc"):
            return v
        match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
        if match is None:
            if ":" in uri.split("/", 1)[0]:
                raise ValueError(f"{_shown(v)} is neither a URI (scheme://...) nor a path")
            return v  # a plain path: MLflow's file store
        scheme = match.group(1).lower().split("+", 1)[0]
        known = _MLFLOW_SCHEMES | {ep.name for ep in entry_points(group="mlflow.tracking_store")}
        if scheme not in known or (scheme != "file" and not uri[match.end():].startswith("//")):
            raise ValueError(
                f"{_shown(v)} is not a tracking URI MLflow can open: expected e.g. sqlite:///PATH, "
                "http(s)://HOST:PORT, postgresql://..., file:PATH or a plain path"
            )
        return v

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, v: str) -> str:
        if v.startswith("s3://"):
            if not v[len("s3://"):].split("/", 1)[0]:
                raise ValueError(f"{v!r}: an s3:// storage needs a bucket, e.g. s3://my-bucket/hpo")
        elif "://" in v and not v.startswith("file://"):
            raise ValueError(f"{v!r}: expected file://PATH, a plain path, or s3://bucket/prefix")
        return v

    @model_validator(mode="after")
    def _check_space(self) -> ExperimentSpec:
        try:
            space = SearchSpace.parse(self.parameters, self.parameter_constraints or None)
        except SearchSpaceError as exc:
            raise SpecError(f"parameters: {exc}") from None
        self._check_stopping(space)
        self._check_outcomes()
        placeholders = set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.trial.command or ""))
        unknown = sorted(placeholders - set(space.names) - {self.stopping.resource})
        if unknown:
            raise SpecError(
                f"trial.command: placeholder(s) {', '.join('{' + u + '}' for u in unknown)} name no parameter "
                f"(parameters: {', '.join(space.names)})"
            )
        return self

    def _check_outcomes(self) -> None:
        from prefect_hpo.optim.outcome_constraints import parse_outcome_constraints

        try:
            parse_outcome_constraints(self.outcome_constraints or None, self.directions)
        except SpecError as exc:
            message = str(exc)
            raise SpecError(message if message.startswith("outcome_constraints") else f"outcome_constraints: {message}") from None

    def _check_stopping(self, space: SearchSpace) -> None:
        stopping = self.stopping
        if stopping.metric is not None and stopping.metric not in self.directions and stopping.mode is None:
            raise SpecError(
                f"stopping.mode: required when stopping.metric ({stopping.metric!r}) is not an objective "
                f"(objectives: {', '.join(self.objectives)})"
            )
        policy = stopping.build()  # the policy validates its own settings, naming them
        if stopping.resource is not None:
            if policy.max_steps is None:
                raise SpecError(f"stopping.resource: {stopping.resource!r} needs stopping.max_steps (the value it hands the trial)")
            param = space[stopping.resource] if stopping.resource in space.names else None
            if param is not None and param.type != "fixed":
                raise SpecError(
                    f"stopping.resource: {stopping.resource!r} is a searched parameter; the policy sets the resource, "
                    "so name a parameter that is not searched (or a fixed one)"
                )

    @property
    def directions(self) -> dict[str, str]:
        """``{objective: "minimize" | "maximize"}``, thresholds left out."""
        return {k: v if isinstance(v, str) else v.direction for k, v in self.objectives.items()}

    @property
    def stopping_metric(self) -> tuple[str, bool]:
        """The metric the stopping policy watches and whether smaller is better."""
        metric = self.stopping.metric or next(iter(self.objectives))
        mode = self.stopping.mode or self.directions[metric]
        return metric, mode == "minimize"

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def parse(cls, data: Any) -> ExperimentSpec:
        """Validate a spec given as a dict (or return an ExperimentSpec unchanged)."""
        if isinstance(data, ExperimentSpec):
            return data
        if not isinstance(data, Mapping):
            raise SpecError(f"spec: expected a mapping with name, parameters, objectives, budget, trial; got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except SpecError:
            raise
        except ValidationError as exc:
            raise SpecError(_explain(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> ExperimentSpec:
        return cls.parse(load_document(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form stored in checkpoints and in the MLflow parent run."""
        return self.model_dump(mode="json", exclude_none=False)

    def build_experiment(self) -> Experiment:
        from prefect_hpo.optim.experiment import Experiment

        return Experiment(
            name=self.name,
            parameters=self.parameters,
            objectives={k: v if isinstance(v, str) else v.model_dump(exclude_none=True) for k, v in self.objectives.items()},
            outcome_constraints=self.outcome_constraints or None,
            algorithm=self.algorithm,
            seed=self.seed,
            parameter_constraints=self.parameter_constraints or None,
            algorithm_options=self.algorithm_options or None,
        )


def _import_name(fn: Any) -> str | None:
    """``module:qualname`` if importing that gives back this very object, else None."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is fn else None


def load_spec(source: str | Path | Mapping[str, Any] | ExperimentSpec) -> ExperimentSpec:
    """A spec from a file path, a dict or an ExperimentSpec."""
    if isinstance(source, (str, Path)):
        return ExperimentSpec.from_file(source)
    return ExperimentSpec.parse(source)


def check_runnable(spec: ExperimentSpec) -> Experiment:
    """Everything that would make a run of ``spec`` fail after it started, checked before anything
    is written (no lease, no MLflow database, no folder): the one check ``prefect-hpo validate``,
    ``prefect-hpo run`` and :func:`~prefect_hpo.flows.driver.open_runtime` share.

    Beyond the field checks of loading, it builds the experiment (so the engine refuses an
    unknown algorithm, bad ``algorithm_options`` or thresholds here) and, for trials run as local
    processes, compares ``gpus_per_trial`` with the GPUs this machine can hand out. Returns the
    experiment, for callers that want its space.
    """
    experiment = spec.build_experiment()
    trial = spec.trial
    if trial.gpus_per_trial > 0 and trial.work_pool is None and trial.dask is None and not trial.in_process:
        from prefect_hpo.launchers.gpus import GpuPool  # the local launcher's own discovery

        devices = GpuPool(trial.gpus).devices
        if trial.gpus_per_trial > len(devices):
            raise SpecError(
                f"trial.gpus_per_trial: {trial.gpus_per_trial} GPU(s) per trial but only {len(devices)} visible "
                f"({list(devices) or 'none'}); lower gpus_per_trial, or list more in trial.gpus or CUDA_VISIBLE_DEVICES"
            )
    return experiment


def _is_number(annotation: Any) -> bool:
    """Whether a field holds an int or a float (alone or with None)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


def _finite(value: float | str) -> bool:
    """Whether a number (or a string pydantic would read as one) is finite; other strings are
    left for the field's own error."""
    try:
        return math.isfinite(float(value))
    except ValueError:
        return True


def _shown(value: Any) -> str:
    """``repr(value)``, cut to a length that keeps an error message on one readable line."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN - 3]}... ({len(text)} characters)"


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        elif err["type"] == "missing":
            parts.append(f"{where}: missing required field")
        elif err["type"] == "value_error":
            parts.append(f"{where}: {msg}" if where else msg)
        else:
            parts.append(f"{where}: {msg} (got {_shown(err.get('input'))})" if where else msg)
    return "spec: " + "; ".join(parts)
