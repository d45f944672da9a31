"""The flow's typed per-trial record reads and writes the checkpointed ``trial.metadata`` dict."""

from __future__ import annotations

from prefect_hpo.optim.trials import Trial
from prefect_hpo.storage.trial_run import run_of


def test_a_trial_from_an_older_checkpoint_reads_with_defaults() -> None:
    trial = Trial(index=0, params={"x": 1.0}, suggester="manual")  # attach_trial: no bookkeeping yet
    run = run_of(trial)
    assert (run.attempt, run.next_attempt, run.handle, run.run_id, run.reruns, run.stopped_by) == (0, 1, None, None, 0, None)
    assert run.failed_attempts == [] and run.history == []


def test_attempts_failures_and_replays_land_in_the_metadata_dict() -> None:
    trial = Trial(index=3, params={"x": 1.0}, suggester="sobol")
    run = run_of(trial)
    run.reset()
    run.start_attempt(1, "run-a", {"pid": 10})
    run.history.append({"step": 0, "metrics": {"loss": 1.0}})
    run.record_failure(1, "exit code 1")
    run.reruns = 1
    run.start_attempt(2, "run-a")
    assert trial.metadata["attempt"] == 2 and trial.metadata["history"] == []  # a new attempt's curve starts empty
    assert trial.metadata["attempts"] == [{"attempt": 1, "reason": "exit code 1"}]
    assert run_of(Trial.from_dict(trial.to_dict())).reruns == 1  # checkpointed with the trial
    run.history.extend([{"step": 0, "metrics": {}}, {"step": 1, "metrics": {}}])
    run.expect_replay()
    assert run.take_replayed() == 2 and run.take_replayed() == 0  # forgotten once used
