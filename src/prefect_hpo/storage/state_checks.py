"""Type checks of a checkpoint document before anything acts on it.

A checkpoint is JSON that people (and other programs) can edit, and S3 or a disk can damage.
Unchecked, a wrong type surfaced far from the cause (an ``AttributeError`` on ``mlflow.get``,
a ``KeyError`` inside a launcher re-attaching to a handle) or silently did harm: a NaN value
(``NaN`` is valid to Python's JSON reader) made a completed trial the best one, because every
comparison with NaN is false. Here each field the driver relies on is checked where it is read,
and a failure names the field (:class:`CorruptCheckpointError`; the file is left untouched).

Non-finite objective values are not refused: they are what :meth:`Experiment.tell` turns into
a failed trial (a diverged run is a result), so a completed trial holding one is loaded as
failed with that reason, and an early-stopped one keeps no values. Such a trial is never best.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from prefect_hpo.errors import CorruptCheckpointError

__all__ = ["check_document"]

logger = logging.getLogger(__name__)

_NON_FINITE_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

#: The fields of each launcher's handles (see prefect_hpo.launchers) and their types, checked where
#: present; the first one names the attempt, so a handle without it cannot be watched at all.
_HANDLE_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "local": {"pid": int, "pgid": int, "log": str, "workdir": str, "status_dir": str},
    "inprocess": {"key": str, "log": str},
    "work_pool": {"flow_run_id": str},
    "dask": {"task_run_id": str},
}


def check_document(doc: dict[str, Any], location: str) -> None:
    """Check the fields of a checkpoint document in place; neutralize non-finite values."""
    where = f"checkpoint {location}"
    _expect(doc.get("spec"), dict, f"{where}: 'spec'")
    mlflow = doc.get("mlflow")
    if mlflow is not None:
        _expect(mlflow, dict, f"{where}: 'mlflow'")
        for key in ("tracking_uri", "parent_run_id"):
            _expect(mlflow.get(key), (str, type(None)), f"{where}: 'mlflow.{key}'")
    experiment = _expect(doc.get("experiment"), dict, f"{where}: 'experiment'")
    trials = _expect(experiment.get("trials"), list, f"{where}: 'experiment.trials'")
    for position, trial in enumerate(trials):
        field = f"{where}: 'experiment.trials[{position}]"
        _expect(trial, dict, field + "'")
        _check_values(trial, field)
        metadata = trial.get("metadata")
        if metadata is not None:
            _check_metadata(_expect(metadata, dict, field + ".metadata'"), field + ".metadata")


def _expect(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    # bool is an int to isinstance; no field here means a flag where it wants a number
    if isinstance(value, bool) and kind is not bool and (kind is int or (isinstance(kind, tuple) and bool not in kind)):
        ok = False
    else:
        ok = isinstance(value, kind)
    if not ok:
        names = " or ".join(_type_name(k) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise CorruptCheckpointError(f"{field} must be {names}, got {_shown(value)}; it was left untouched")
    return value


def _type_name(kind: type) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            type(None): "null"}.get(kind, kind.__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _check_values(trial: dict[str, Any], field: str) -> None:
    values = trial.get("values")
    if values is None:
        return
    _expect(values, dict, field + ".values'")
    bad: list[str] = []
    for name, value in values.items():
        number = _NON_FINITE_WORDS.get(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise CorruptCheckpointError(
                f"{field}.values.{name}' must be a number, got {_shown(value)}; it was left untouched")
        if not math.isfinite(number):
            bad.append(f"{name!r} is {float(number)}")
    if not bad:
        return
    reason = f"the checkpoint holds a non-finite value ({'; '.join(bad)})"
    index = trial.get("index")
    if trial.get("status") == "completed":
        logger.warning("trial %s: %s: loaded as failed", index, reason)
        trial.update(status="failed", failure_reason=reason, feasible=None)
    else:
        logger.warning("trial %s: %s: its values are dropped", index, reason)
    trial["values"] = None


def _check_metadata(metadata: dict[str, Any], field: str) -> None:
    _expect(metadata.get("run_id"), (str, type(None)), f"{field}.run_id'")
    if "attempt" in metadata:
        attempt = _expect(metadata["attempt"], int, f"{field}.attempt'")
        if attempt < 0:
            raise CorruptCheckpointError(f"{field}.attempt' must not be negative, got {attempt}; it was left untouched")
    for key in ("history", "attempts"):
        if metadata.get(key) is not None:
            _expect(metadata[key], list, f"{field}.{key}'")
    handle = metadata.get("handle")
    if handle is None:
        return
    _expect(handle, dict, f"{field}.handle'")
    kind = str(handle.get("kind") or handle.get("launcher") or "local")  # as launchers.base.handle_kind
    for position, (key, kind_of_value) in enumerate(_HANDLE_FIELDS.get(kind, {}).items()):
        if position == 0 or key in handle:
            _expect(handle.get(key), kind_of_value, f"{field}.handle.{key}' ({kind} launcher)")
