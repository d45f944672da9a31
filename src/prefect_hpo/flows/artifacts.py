"""The Prefect artifacts of an HPO flow run: a table of trials (best first) and a summary."""

from __future__ import annotations

import math
import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.trials import Trial, TrialStatus

__all__ = ["publish_artifacts", "trial_rows"]


def trial_rows(exp: Experiment) -> list[dict[str, Any]]:
    """One row per trial, completed ones first ordered by the (first) objective, best on top."""
    name, direction = next(iter(exp.objectives.items()))
    sign = 1.0 if direction == "minimize" else -1.0

    def key(t: Trial) -> tuple[int, float, int]:
        if t.status is TrialStatus.COMPLETED and t.values:
            return (0, sign * t.values[name], t.index)
        return (1, 0.0, t.index)

    rows = []
    for t in sorted(exp.trials, key=key):
        row: dict[str, Any] = {"trial": t.index, "status": t.status.value}
        row.update({k: _fmt(v) for k, v in t.params.items()})
        row.update({k: _fmt((t.values or {}).get(k)) for k in exp.metric_names})
        if t.feasible is not None:
            row["feasible"] = t.feasible
        row["attempts"] = t.metadata.get("attempt", 0)
        row["reason"] = t.failure_reason or ""
        rows.append(row)
    return rows


def publish_artifacts(exp: Experiment, best: dict[str, Any] | None, mlflow_uri: str, parent_run_id: str | None) -> None:
    key = re.sub(r"[^a-z0-9-]+", "-", exp.name.lower()).strip("-") or "experiment"
    create_table_artifact(table=trial_rows(exp), key=f"{key}-trials", description=f"Trials of {exp.name}, best first")
    counts: dict[str, int] = {}
    for t in exp.trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    lines = [f"# HPO experiment `{exp.name}`", "", f"- algorithm: `{exp.algorithm}`, seed {exp.seed}"]
    lines.append("- trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if best is not None and "pareto_front" in best:
        lines.append(f"- Pareto front ({len(best['pareto_front'])} trials), hypervolume {_fmt(best['hypervolume'])} "
                     f"from reference point {', '.join(f'{k} = {_fmt(v)}' for k, v in best['reference_point'].items())}:")
        for t in best["pareto_front"]:
            values = ", ".join(f"{k} = {_fmt(v)}" for k, v in t["values"].items())
            lines.append(f"  - trial {t['index']}: {values}")
    elif best is not None:
        values = ", ".join(f"{k} = {_fmt(v)}" for k, v in best["values"].items())
        params = ", ".join(f"`{k}` = {_fmt(v)}" for k, v in best["params"].items())
        lines += [f"- best: trial {best['index']}: {values}", f"- best parameters: {params}"]
    else:
        lines.append("- no trial completed")
    lines.append(f"- MLflow: `{mlflow_uri}`, parent run `{parent_run_id}`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary", description=f"Summary of {exp.name}")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return "" if v is None else v
