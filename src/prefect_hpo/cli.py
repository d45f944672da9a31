"""The ``prefect-hpo`` command line: run, resume, status, best, validate, algorithms.

Every refusal prints one line naming the problem and exits 2, so the command is usable from
scripts and CI. ``run`` and ``resume`` execute the flow in this process, on Prefect's temporary
local server unless ``PREFECT_API_URL`` points at a real one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from prefect_hpo import __version__
from prefect_hpo.errors import ExperimentNotFoundError, PrefectHPOError
from prefect_hpo.spec import DEFAULT_STORAGE, ExperimentSpec, check_runnable
from prefect_hpo.tenancy import caller_tenant, check_owner, mlflow_experiment_name, resolve_tenant, scoped_storage

# Offline and quiet by default (no telemetry, no "View run" lines); explicit settings win.
_QUIET = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program killed by SIGPIPE (128 + 13)

#: Longest error line printed; a message may quote a value of any size (a huge spec, a log).
MAX_ERROR_CHARS = 2000


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # here, so a reader that went away (`| head`) is handled below
        return code
    except BrokenPipeError:
        # the reader closed the pipe (`prefect-hpo status NAME | head`): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not complain either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except PrefectHPOError as exc:
        print(f"prefect-hpo: error: {error_line(exc)}", file=sys.stderr)
        if not getattr(args, "verbose", False):
            # the line above is the last word: Prefect's shutdown (its events worker draining)
            # would otherwise log warnings after it
            logging.disable(logging.CRITICAL)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "prefect-hpo: interrupted; running trials were left running and the checkpoint is saved: "
            "continue with `prefect-hpo resume NAME`",
            file=sys.stderr,
        )
        return 130


def error_line(exc: BaseException) -> str:
    """The error as one line of sane length: newlines folded, the middle of a long one cut."""
    text = " ".join(str(exc).split("\n"))
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return f"{text[:MAX_ERROR_CHARS - 200]} ... [{len(text) - MAX_ERROR_CHARS + 100} characters cut] ... {text[-100:]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefect-hpo", description="Hyperparameter optimization on Prefect.")
    parser.add_argument("--version", action="version", version=f"prefect-hpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment from a spec file (continues it if it exists)")
    run.add_argument("spec", type=Path)
    _flow_options(run)
    run.set_defaults(handler=_run)

    resume = sub.add_parser("resume", help="resume an experiment from its checkpoint (or from MLflow)")
    resume.add_argument("name")
    _flow_options(resume)
    resume.set_defaults(handler=_resume)

    status = sub.add_parser("status", help="show an experiment's trials")
    status.add_argument("name")
    status.add_argument("--storage", default=DEFAULT_STORAGE, help=f"checkpoint store (default {DEFAULT_STORAGE})")
    status.add_argument("--json", action="store_true", help="print a JSON object with a 'trials' list")
    _tenant_option(status)
    status.set_defaults(handler=_status)

    best = sub.add_parser("best", help="print an experiment's best trial")
    best.add_argument("name")
    best.add_argument("--storage", default=DEFAULT_STORAGE)
    best.add_argument("--json", action="store_true")
    _tenant_option(best)
    best.set_defaults(handler=_best)

    validate = sub.add_parser("validate", help="check a spec, or a bare search space, in a YAML/JSON file")
    validate.add_argument("file", type=Path)
    validate.add_argument("--json", action="store_true", help="print the normalized space as JSON")
    validate.set_defaults(handler=_validate)

    algorithms = sub.add_parser("algorithms", help="list the available search algorithms")
    algorithms.set_defaults(handler=_algorithms)
    return parser


def _flow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None, help="checkpoint store: a folder, file://PATH or s3://bucket/prefix")
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for another driver's lease")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--verbose", action="store_true", help="show Prefect's own INFO logs")
    _tenant_option(p)


def _tenant_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", default=None, help="the calling tenant (default $PREFECT_HPO_TENANT); see the README")


# ---- run / resume ------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    spec = ExperimentSpec.from_file(args.spec)
    check_runnable(spec)  # what `validate` refuses, refused here before anything is written
    return _run_flow(args, spec=spec.to_dict(), name=None, resume=False)


def _resume(args: argparse.Namespace) -> int:
    return _run_flow(args, spec=None, name=args.name, resume=True)


def _run_flow(args: argparse.Namespace, *, spec: dict[str, Any] | None, name: str | None, resume: bool) -> int:
    for key, value in _QUIET.items():  # before Prefect is imported: it reads them once
        os.environ.setdefault(key, value)
    if not args.verbose:
        # The terminal shows warnings only, while the flow run's INFO lines (one per trial event)
        # still reach Prefect's API and its Logs tab: the console handler is quieted, not the
        # loggers (PREFECT_LOGGING_LEVEL=WARNING would silence what goes to the API as well).
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial MLflow database tables..."
        # the temporary server prints cancellation tracebacks when it stops; they are noise
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    from prefect_hpo.flows.driver import check_access
    from prefect_hpo.flows.hpo import hpo_flow
    from prefect_hpo.flows.progress import add_listener, remove_listener
    from prefect_hpo.flows.temporary_server import temporary_server

    check_access(spec, name=name, storage=args.storage, tenant=args.tenant)

    display = _ProgressDisplay(sys.stderr)
    if not args.quiet:
        add_listener(display)
    try:
        # started here, and stopped when this process ends however it ends (kill -9 included)
        with temporary_server(), _engine_tracebacks_hidden(not args.verbose):
            best = hpo_flow(spec=spec, resume=resume, name=name, storage=args.storage, lease_wait_s=args.wait, tenant=args.tenant)
    finally:
        remove_listener(display)
        display.close()
    exp_name = spec["name"] if spec else name
    storage = args.storage or (spec or {}).get("storage") or DEFAULT_STORAGE
    tenant = resolve_tenant((spec or {}).get("tenant"), caller_tenant(args.tenant))
    _print_outcome(exp_name, storage, best, tenant)
    return EXIT_OK


class _HideRefusals(logging.Filter):
    """Drops, from the terminal only, what Prefect's engine logs about a run that failed on a
    prefect-hpo error: the error's traceback (once per failed task and once for the flow) and the
    "Finished in state Failed" lines, and its workers' "Still processing items" while they send
    what they hold at the end. The CLI prints the error itself, in one line; a bug (any other
    exception) keeps its traceback, and Prefect's API log handler still gets everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PrefectHPOError):
            return False
        message = record.getMessage()
        if message.startswith("Still processing items"):
            return False
        return not (record.levelno >= logging.ERROR and message.startswith("Finished in state Failed"))


@contextmanager
def _engine_tracebacks_hidden(hide: bool) -> Iterator[None]:
    """Hide :class:`_HideRefusals`'s records on the console handlers of Prefect's loggers.

    On the way out it also sends what Prefect's log and event workers still hold, while the API
    is up: entered inside ``temporary_server()``, it runs before that server stops, and a
    worker draining at exit would otherwise print "--- Error logging to API ---" after the
    one line of a failed run."""
    with _hidden(hide):
        try:
            yield
        finally:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)


@contextmanager
def _hidden(hide: bool) -> Iterator[None]:
    if not hide:
        yield
        return
    from prefect.logging.handlers import APILogHandler

    handlers = {
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger) and (logger.name == "root" or logger.name.startswith("prefect"))
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, APILogHandler)
    }
    hiding = _HideRefusals()
    for handler in handlers:
        handler.addFilter(hiding)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hiding)


class _ProgressDisplay:
    """One live line on a terminal; one line per finished trial otherwise (logs, CI)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.dirty = False

    def __call__(self, p: Any) -> None:
        best = "-"
        if p.best_values:
            best = ", ".join(f"{k}={v:.6g}" for k, v in p.best_values.items()) + f" (trial {p.best_index})"
        stopped = f", {p.stopped} stopped early" if p.stopped else ""
        line = f"[{p.name}] {p.completed + p.stopped + p.failed}/{p.budget} done ({p.failed} failed{stopped}), {p.running} running, best {best}"
        if self.live:
            self.stream.write("\r\033[K" + line)
            self.dirty = True
        else:
            self.stream.write(f"{line} | {p.event}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.dirty:
            self.stream.write("\n")
            self.stream.flush()


def _print_outcome(name: str | None, storage: str, best: dict[str, Any] | None, tenant: str | None) -> None:
    from prefect_hpo.flows.driver import trials_dir_for
    from prefect_hpo.storage.checkpoint import open_store

    store = open_store(scoped_storage(storage, tenant))
    if best is None:
        print(f"{name}: no trial completed")
    elif "pareto_front" in best:
        print(f"{name}: Pareto front of {len(best['pareto_front'])} trial(s), hypervolume {best['hypervolume']:.6g}")
        _print_front(best, indent="  ")
    else:
        values = ", ".join(f"{k}={v:.6g}" for k, v in best["values"].items())
        print(f"{name}: best trial {best['index']}: {values}")
        print("  params: " + ", ".join(f"{k}={v}" for k, v in best["params"].items()))
    print(f"  checkpoint: {store.location(str(name))}")
    print(f"  trial logs: {trials_dir_for(scoped_storage(storage, tenant), str(name), tenant)}")
    state = _read_state(str(name), storage, tenant)
    uri = state.tracking_uri or "(MLFLOW_TRACKING_URI)"
    mlflow_name = mlflow_experiment_name(str(name), tenant)
    print(f"  MLflow:     mlflow ui --backend-store-uri {uri}   (experiment {mlflow_name!r}, parent run {state.parent_run_id})")
    print(
        f"  status:     prefect-hpo status {name}"
        + (f" --storage {storage}" if storage != DEFAULT_STORAGE else "")
        + (f" --tenant {tenant}" if tenant is not None else "")  # pasted in another shell, it must find it
    )


# ---- status / best -----------------------------------------------------------------------------
def _read_state(name: str, storage: str, tenant: str | None) -> Any:
    """The checkpoint of ``name`` in the caller's tenant's part of ``storage``; another tenant's
    experiment is refused even when ``storage`` points straight at it."""
    from prefect_hpo.storage.checkpoint import open_store
    from prefect_hpo.storage.state import ExperimentState

    store = open_store(scoped_storage(storage, tenant))
    text = store.read(name)
    if text is None:
        where = f" of tenant {tenant!r}" if tenant is not None else ""
        raise ExperimentNotFoundError(
            f"experiment {name!r}{where}: no checkpoint at {store.location(name)}"
            + ("" if storage != DEFAULT_STORAGE else " (pass --storage if it lives elsewhere)")
        )
    state = ExperimentState.from_json(text, store.location(name))
    check_owner(name, state.spec.tenant, tenant)
    return state


def _status(args: argparse.Namespace) -> int:
    from prefect_hpo.storage.checkpoint import open_store
    from prefect_hpo.storage.trial_run import run_of

    tenant = caller_tenant(args.tenant)
    state = _read_state(args.name, args.storage, tenant)
    exp = state.experiment
    front = {t.index for t in exp.pareto_front()} if exp.is_multi_objective else None
    trials = [
        {
            "index": t.index,
            "status": t.status.value,
            "params": t.params,
            "values": t.values,
            "failure_reason": t.failure_reason,
            "stopped_by": run_of(t).stopped_by,
            "feasible": t.feasible,
            "on_pareto_front": t.index in front if front is not None else None,
            "last_step": _last_step(t),
            "attempt": run_of(t).attempt,
            "suggester": t.suggester,
            "started_at": t.started_at.isoformat() if t.started_at else None,
            "finished_at": t.finished_at.isoformat() if t.finished_at else None,
            "mlflow_run_id": run_of(t).run_id,
        }
        for t in exp.trials
    ]
    counts: dict[str, int] = {}
    for t in exp.trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    best = _best_dict(exp)
    lease = open_store(scoped_storage(args.storage, tenant)).read_lease(args.name)
    stopping_rule = state.spec.stopping.build().describe()
    if args.json:
        doc = {
            "name": exp.name,
            "objectives": exp.objectives,
            "budget": state.spec.budget.model_dump(),
            "clock": {"wall_time_s": round(state.wall_time_s, 3), "driver_runs": state.driver_runs},
            "stopping": {**state.spec.stopping.model_dump(), "rule": stopping_rule},
            "counts": counts,
            "best": best,
            "mlflow": {"tracking_uri": state.tracking_uri, "parent_run_id": state.parent_run_id},
            "lease": lease,
            "trials": trials,
        }
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    done = sum(v for k, v in counts.items() if k not in ("pending", "running"))
    print(f"{exp.name}: {done}/{state.spec.budget.trials} trials done " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(f"  {_clock_line(state)}")
    if state.spec.stopping.policy != "none":
        metric, minimize = state.spec.stopping_metric
        print(f"  stopping: {stopping_rule} on {metric} ({'minimize' if minimize else 'maximize'})")
    if lease:
        from prefect_hpo.storage.lease import describe_time  # an epoch number said nothing to people

        print(f"  driven by pid {lease.get('pid')} on {lease.get('host')} (lease until {describe_time(lease.get('expires_at'))})")
    names = exp.space.names
    objectives = list(exp.metric_names)  # the objectives, then metrics under outcome constraints
    flags = exp.outcome_constraints or front is not None
    header = ["#", "status", "step", *names, *objectives, *(["note"] if flags else []), "reason"]
    rows = [
        [str(t["index"]), t["status"], _cell(t["last_step"]), *[_cell(t["params"].get(n)) for n in names],
         *[_cell((t["values"] or {}).get(o)) for o in objectives], *([_note(t)] if flags else []),
         _shorten(t["failure_reason"] or "", 100)]
        for t in trials
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if best and "pareto_front" in best:
        print(f"  Pareto front: trials {', '.join(str(t['index']) for t in best['pareto_front'])} "
              f"(hypervolume {best['hypervolume']:.6g})")
    elif best:
        print(f"  best: trial {best['index']}")
    return EXIT_OK


def _clock_line(state: Any) -> str:
    """The experiment's driving time over all its flow runs, against ``budget.wall_time_s``."""
    runs = f"{state.driver_runs} flow run{'s' if state.driver_runs != 1 else ''}"
    limit = state.spec.budget.wall_time_s
    of = f" of the {limit:g} s budget.wall_time_s" if limit is not None else ""
    return f"wall time: {state.wall_time_s:.0f} s{of}, over {runs} (the clock is the experiment's, not one run's)"


def _best(args: argparse.Namespace) -> int:
    """The best trial; for several objectives the Pareto front (``--json``: the same as a dict)."""
    state = _read_state(args.name, args.storage, caller_tenant(args.tenant))
    best = _best_dict(state.experiment)
    if best is None:
        print(f"prefect-hpo: error: experiment {args.name!r} has no completed (feasible) trial yet", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(best, indent=2))
    elif "pareto_front" in best:
        reference = ", ".join(f"{k}={v:.6g}" for k, v in best["reference_point"].items())
        print(f"Pareto front: {len(best['pareto_front'])} trial(s), hypervolume {best['hypervolume']:.6g} "
              f"(reference point {reference})")
        _print_front(best, indent="")
    else:
        print(f"trial {best['index']}: " + ", ".join(f"{k}={v:.6g}" for k, v in best["values"].items()))
        for k, v in best["params"].items():
            print(f"  {k} = {v}")
    return EXIT_OK


def _print_front(outcome: dict[str, Any], indent: str) -> None:
    for t in outcome["pareto_front"]:
        values = ", ".join(f"{k}={v:.6g}" for k, v in t["values"].items())
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        print(f"{indent}trial {t['index']}: {values}  ({params})")


def _best_dict(exp: Any) -> dict[str, Any] | None:
    from prefect_hpo.optim.outcome import experiment_outcome

    return experiment_outcome(exp)


def _note(row: dict[str, Any]) -> str:
    """'pareto' for a trial on the front, 'infeasible' for one that broke an outcome constraint."""
    if row["feasible"] is False:
        return "infeasible"
    return "pareto" if row["on_pareto_front"] else "-"


def _last_step(trial: Any) -> int | None:
    """The last step the trial reported (how far it trained), None if it reported no step."""
    from prefect_hpo.storage.trial_run import run_of

    steps = [r.get("step") for r in run_of(trial).history if r.get("step") is not None]
    return max(steps) if steps else None


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


# ---- validate / algorithms ---------------------------------------------------------------------
def _validate(args: argparse.Namespace) -> int:
    from prefect_hpo.optim import SearchSpace, SpaceEncoder
    from prefect_hpo.optim.space import load_document

    data = load_document(args.file)
    is_spec = isinstance(data, dict) and bool({"objectives", "budget", "trial"} & set(data))
    if is_spec:
        spec = ExperimentSpec.parse(data)
        space = check_runnable(spec).space  # the check `run` makes
    else:
        space = SearchSpace.parse(_space_document(data))
    if args.json:
        doc = {"parameters": space.to_list(), "parameter_constraints": [c.expression for c in space.constraints]}
        if is_spec:
            doc = {**spec.to_dict(), **doc}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    encoder = SpaceEncoder(space)
    size = encoder.n_configurations
    kind = "spec" if is_spec else "search space"
    print(
        f"{args.file}: ok: {kind}, {len(space.parameters)} parameters ({encoder.dim} searched), "
        f"{len(space.constraints)} constraints, "
        f"{'continuous' if size is None else f'{size} configurations'}"
    )
    return EXIT_OK


def _space_document(data: Any) -> Any:
    """A bare space (list or NNI dict) or a partial spec holding one under ``parameters``."""
    if isinstance(data, dict) and "parameters" in data:
        return {k: data[k] for k in ("parameters", "parameter_constraints") if k in data}
    return data


def _algorithms(args: argparse.Namespace) -> int:
    """One line per algorithm: its name, then the ``algorithm_options`` it takes."""
    from prefect_hpo.optim.suggesters import available_suggesters, option_names

    names = available_suggesters()
    width = max(map(len, names), default=0)
    for name in names:
        options = option_names(name)
        print(f"{name.ljust(width)}  options: {'any' if options is None else ', '.join(options) or 'none'}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
