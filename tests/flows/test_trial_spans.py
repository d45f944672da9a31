"""A trial's task run (its span) ends in the state the trial ended in, and a flow that stops
while trials still run closes their spans as detached instead of hanging on them."""

from __future__ import annotations

import time

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from prefect_hpo.flows.trial_spans import TrialSpans
from prefect_hpo.optim.trials import Trial, TrialStatus


@flow
def _three_trials() -> None:
    spans = TrialSpans()
    trials = tuple(Trial(index=i, params={"x": 0.5}, suggester="sobol") for i in range(3))
    for trial in trials:
        spans.begin(trial, f"trial {trial.index} launched")
    trials[0].status, trials[0].values = TrialStatus.COMPLETED, {"loss": 0.25}
    trials[1].status, trials[1].failure_reason = TrialStatus.EARLY_STOPPED, "asha on loss: rung 1"
    spans.settle(trials)
    spans.log(2, "trial 2: attempt 1 failed (exit code 1); it runs again")
    spans.close()  # trial 2 still runs when the flow ends


def test_spans_end_as_their_trials_did_and_the_rest_detach(prefect_api: str) -> None:
    state = _three_trials(return_state=True)
    assert state.is_completed()
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            if (len(runs) == 3 and all(r.state.is_final() for r in runs)) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    ends = {r.name: (r.state.type.value, r.state.name, r.state.message) for r in runs}
    assert ends == {
        "trial-0000": ("COMPLETED", "Completed", "loss=0.25"),
        "trial-0001": ("COMPLETED", "Stopped early", "asha on loss: rung 1"),
        "trial-0002": ("CANCELLED", "Detached", "the flow run ended while the trial ran; a resume re-attaches it"),
    }
