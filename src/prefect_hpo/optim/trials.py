"""Trials and their life cycle.

A trial is born *pending* when the experiment suggests it, becomes *running* when something
launches it, and ends *completed*, *early_stopped* (a stopping policy ended it; it keeps the
last values it reported), *failed* or *abandoned*. Pending and running trials are both "in
flight": the optimizer treats them as pending points so parallel suggestions spread out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from prefect_hpo.optim.space import Value

__all__ = ["Trial", "TrialStatus", "utcnow"]


class TrialStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    FAILED = "failed"
    ABANDONED = "abandoned"

    @property
    def is_terminal(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.FAILED, TrialStatus.ABANDONED)

    @property
    def in_flight(self) -> bool:
        return self in (TrialStatus.PENDING, TrialStatus.RUNNING)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Trial:
    """One evaluation of the objective at ``params``.

    ``values`` holds one number per objective, and per metric an outcome constraint bounds, once
    the trial completed (for an early-stopped trial: the last values it reported), else None.
    ``feasible`` says whether those values satisfy every outcome constraint; it is None when the
    experiment has none (so old checkpoints and unconstrained experiments read the same) or when
    an early-stopped trial never reported a constrained metric. ``failure_reason`` says why a trial ended
    without completing: the error of a failed one, the policy's reason for an early-stopped one.
    ``suggester`` names the algorithm that proposed the point ("sobol", "gp", "manual", ...), so
    a benchmark or a user can tell the initial design from model-based suggestions.
    ``metadata`` is free-form JSON for the layers above (launcher handles, run ids).
    """

    index: int
    params: dict[str, Value]
    suggester: str
    status: TrialStatus = TrialStatus.PENDING
    values: dict[str, float] | None = None
    feasible: bool | None = None
    failure_reason: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "params": dict(self.params),
            "suggester": self.suggester,
            "status": self.status.value,
            "values": None if self.values is None else dict(self.values),
            "feasible": self.feasible,
            "failure_reason": self.failure_reason,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(
            index=int(data["index"]),
            params=dict(data["params"]),
            suggester=str(data["suggester"]),
            status=TrialStatus(data["status"]),
            values=None if data.get("values") is None else {k: float(v) for k, v in data["values"].items()},
            feasible=_parse_feasible(data.get("feasible")),
            failure_reason=data.get("failure_reason"),
            created_at=_parse(data["created_at"]) or utcnow(),
            started_at=_parse(data.get("started_at")),
            finished_at=_parse(data.get("finished_at")),
            metadata=dict(data.get("metadata") or {}),
        )

    def summary(self) -> dict[str, Any]:
        """A flat row for printing: index, status, params, values, feasibility, reason."""
        row: dict[str, Any] = {"index": self.index, "status": self.status.value}
        row.update(self.params)
        if self.values:
            row.update(self.values)
        if self.feasible is not None:
            row["feasible"] = self.feasible
        if self.failure_reason:
            row["reason"] = self.failure_reason
        return row


def _parse_feasible(value: Any) -> bool | None:
    # documents written before outcome constraints existed have no "feasible" field
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"trial field 'feasible' must be true, false or null, got {value!r}")


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
