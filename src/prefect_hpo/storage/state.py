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

    def to_json(self) -> str:
        doc = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "updated_at": datetime.now(timezone.utc).isoformat(),
            "spec": self.spec.to_dict(),
            "mlflow": {"tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id},
            "experiment": self.experiment.to_dict(),
            "stopping": self.stopping,
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
        return cls(spec, experiment, mlflow.get("parent_run_id"), mlflow.get("tracking_uri"), stopping)


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
