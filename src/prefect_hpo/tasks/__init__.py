"""The Prefect tasks of an HPO flow: suggest, launch, poll, report, decide_stop, checkpoint.

Each is a task of its own so it shows as its own step in the Prefect UI; the flow
(:mod:`prefect_hpo.flows.hpo`) only sequences them.
"""

from prefect_hpo.tasks.checkpoint import checkpoint
from prefect_hpo.tasks.launch import launch_trial
from prefect_hpo.tasks.poll import TrialUpdate, poll_trials
from prefect_hpo.tasks.report import report_trials
from prefect_hpo.tasks.runtime import HPORuntime
from prefect_hpo.tasks.stop import decide_stop
from prefect_hpo.tasks.suggest import suggest_trials

__all__ = [
    "HPORuntime",
    "TrialUpdate",
    "checkpoint",
    "decide_stop",
    "launch_trial",
    "poll_trials",
    "report_trials",
    "suggest_trials",
]
