"""The checkpoint document: the spec, the experiment and where its MLflow runs are, in one JSON.

Keeping the spec inside the checkpoint is what makes ``prefect-hpo resume NAME`` need nothing
but a name; keeping the parent run id there is what keeps a resumed flow from opening a second
MLflow parent run. Trial-level bookkeeping (launcher handles, attempts, metric histories, child
run ids) lives in each trial's ``metadata``, so the experiment document stays the one truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect_hpo.errors import CorruptCheckpointError, SerializationError, SpecError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.spec import ExperimentSpec
from prefect_hpo.storage.state_checks import check_document

__all__ = ["CHECKPOINT_FORMAT", "ExperimentState", "json_safe_metrics"]

CHECKPOINT_FORMAT = "prefect-hpo/checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class ExperimentState:
    """What a driver needs to continue an experiment."""

    spec: ExperimentSpec
    experiment: Experiment
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    #: The stopping policy's memory (``{"policy": its describe() line, "state": state_dict()}``):
    #: ASHA must remember who reached a rung first to judge the same way after a resume.
    stopping: dict[str, Any] | None = None
    #: Seconds the experiment's drivers have run, summed over every flow run up to the last
    #: checkpoint: ``budget.wall_time_s`` is the experiment's time, not one flow run's, or a
    #: resume (or a nightly re-run) would start the clock again.
    wall_time_s: float = 0.0
    #: How many flow runs have driven it (each open of the experiment counts one).
    driver_runs: int = 0
    #: The Prefect flow run that drives (or last drove) it: a resume marks that run crashed when
    #: its process died without saying so (kill -9), instead of leaving it RUNNING forever.
    flow_run_id: str | None = None

    def to_json(self) -> str:
        doc = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "updated_at": datetime.now(timezone.utc).isoformat(),
            "spec": self.spec.to_dict(),
            "mlflow": {"tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id},
            "experiment": self.experiment.to_dict(),
            "stopping": self.stopping,
            "clock": {"wall_time_s": self.wall_time_s, "driver_runs": self.driver_runs},
            "prefect": {"flow_run_id": self.flow_run_id},
        }
        return json.dumps(doc, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, location: str) -> ExperimentState:
        """Read a checkpoint; anything unreadable raises :class:`CorruptCheckpointError` naming it."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptCheckpointError(f"checkpoint {location}: not valid JSON ({exc}); it was left untouched") from None
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise CorruptCheckpointError(f"checkpoint {location}: not a prefect-hpo checkpoint; it was left untouched")
        if doc.get("version") != CHECKPOINT_VERSION:
            raise CorruptCheckpointError(
                f"checkpoint {location}: version {doc.get('version')!r}, this prefect-hpo reads {CHECKPOINT_VERSION}"
            )
        check_document(doc, location)  # field types; a NaN value makes its trial failed, never best
        try:
            spec = ExperimentSpec.parse(doc["spec"])
            experiment = Experiment.from_dict(doc["experiment"])
            mlflow = doc.get("mlflow") or {}
        except KeyError as exc:
            raise CorruptCheckpointError(f"checkpoint {location}: missing {exc.args[0]!r}; it was left untouched") from None
        except (SerializationError, SpecError) as exc:
            raise CorruptCheckpointError(f"checkpoint {location}: {exc}; it was left untouched") from None
        stopping = doc.get("stopping")
        if stopping is not None and not isinstance(stopping, dict):
            raise CorruptCheckpointError(f"checkpoint {location}: 'stopping' is not an object; it was left untouched")
        clock = doc.get("clock") or {}  # absent in checkpoints written before it was kept
        try:
            wall_time_s, driver_runs = float(clock.get("wall_time_s", 0.0)), int(clock.get("driver_runs", 0))
        except (AttributeError, TypeError, ValueError):
            raise CorruptCheckpointError(f"checkpoint {location}: 'clock' is not readable; it was left untouched") from None
        if not (math.isfinite(wall_time_s) and wall_time_s >= 0 and driver_runs >= 0):
            raise CorruptCheckpointError(f"checkpoint {location}: 'clock' holds {clock!r}; it was left untouched")
        flow_run_id = (doc.get("prefect") or {}).get("flow_run_id")
        if flow_run_id is not None and not isinstance(flow_run_id, str):
            raise CorruptCheckpointError(f"checkpoint {location}: 'prefect.flow_run_id' is not a string; it was left untouched")
        return cls(spec, experiment, mlflow.get("parent_run_id"), mlflow.get("tracking_uri"), stopping,
                   wall_time_s, driver_runs, flow_run_id)


def json_safe_metrics(metrics: dict[str, float]) -> dict[str, float | str]:
    """Non-finite numbers as the strings JSON lacks ("NaN", "Infinity"), so a diverged run can be stored."""
    out: dict[str, float | str] = {}
    for k, v in metrics.items():
        if math.isfinite(v):
            out[k] = v
        else:
            out[k] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return out


def metrics_from_json(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}
