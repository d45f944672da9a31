"""The Pareto plot of a multi-objective experiment, as a PNG for its MLflow parent run.

A trade-off is read from a picture, not a table: every completed trial as a point, the
non-dominated ones joined as a staircase, the reference point the hypervolume is measured from,
infeasible trials (outcome constraints broken) crossed out, and trials that miss an objective's
threshold drawn hollow beside the threshold lines (they are not on the front). With three or more objectives
the first two are plotted and the title says so; the Pareto front itself is computed over all of
them. matplotlib is used headless (the Agg backend), so no display is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect_hpo.errors import NoCompletedTrialsError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.trials import TrialStatus

__all__ = ["render_pareto_png"]

logger = logging.getLogger(__name__)


def render_pareto_png(exp: Experiment, path: Path) -> Path | None:
    """Draw the experiment's trials and Pareto front into ``path``; None if there is nothing to draw."""
    if not exp.is_multi_objective:
        return None
    done = [t for t in exp.trials if t.status is TrialStatus.COMPLETED and t.values]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x_name, y_name = list(exp.objectives)[:2]
    front = exp.pareto_front()
    on_front = {t.index for t in front}
    outside = {t.index for t in exp.outside_thresholds()}
    feasible = [t for t in done if getattr(t, "feasible", None) is not False and t.index not in outside]
    infeasible = [t for t in done if getattr(t, "feasible", None) is False]
    missed = [t for t in done if t.index in outside]

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    others = [t for t in feasible if t.index not in on_front]
    if missed:
        ax.scatter([t.values[x_name] for t in missed], [t.values[y_name] for t in missed],  # type: ignore[index]
                   s=22, facecolors="none", edgecolors="#9aa5b1", label=f"outside thresholds ({len(missed)})")
    for name, draw in ((x_name, ax.axvline), (y_name, ax.axhline)):
        if name in exp.objective_thresholds:
            draw(exp.objective_thresholds[name], color="#e3a008", linestyle="--", linewidth=0.9,
                 label=f"{name} threshold {exp.objective_thresholds[name]:g}")
    ax.scatter([t.values[x_name] for t in others], [t.values[y_name] for t in others],  # type: ignore[index]
               s=22, color="#9aa5b1", label=f"trials ({len(others)})")
    if infeasible:
        ax.scatter([t.values[x_name] for t in infeasible], [t.values[y_name] for t in infeasible],  # type: ignore[index]
                   marker="x", s=30, color="#c0392b", label=f"infeasible ({len(infeasible)})")
    front_sorted = sorted(front, key=lambda t: t.values[x_name])  # type: ignore[index]
    fx = [t.values[x_name] for t in front_sorted]  # type: ignore[index]
    fy = [t.values[y_name] for t in front_sorted]  # type: ignore[index]
    ax.step(fx, fy, where="post", color="#1f6feb", linewidth=1.2, alpha=0.7)
    ax.scatter(fx, fy, s=40, color="#1f6feb", label=f"Pareto front ({len(front)})", zorder=3)
    for t in front_sorted:
        ax.annotate(str(t.index), (t.values[x_name], t.values[y_name]), textcoords="offset points",  # type: ignore[index]
                    xytext=(4, 4), fontsize=7, color="#1f6feb")
    title = f"{exp.name}: {len(done)} completed trials"
    try:
        ref = exp.reference_point
        ax.scatter([ref[x_name]], [ref[y_name]], marker="*", s=90, color="#e3a008", label="reference point", zorder=3)
        title += f", hypervolume {exp.hypervolume():.4g}"
    except NoCompletedTrialsError:
        logger.debug("no reference point yet for %s", exp.name)
    if len(exp.objectives) > 2:
        title += f" (first 2 of {len(exp.objectives)} objectives)"
    for name, set_scale in ((x_name, ax.set_xscale), (y_name, ax.set_yscale)):
        if _spans_decades([t.values[name] for t in done]):  # type: ignore[index]
            set_scale("log")  # model sizes, latencies: the interesting end is otherwise a flat line
    ax.set_xlabel(f"{x_name} ({exp.objectives[x_name]})")
    ax.set_ylabel(f"{y_name} ({exp.objectives[y_name]})")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _spans_decades(values: list[float]) -> bool:
    """Positive values over more than two orders of magnitude read better on a log axis."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and max(positive) / min(positive) > 100
