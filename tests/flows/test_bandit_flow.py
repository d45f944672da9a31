"""The bandit through the flow: candidate configurations allocated by a task of its own.

Real Prefect (the session's test-harness server), real trial processes, MLflow on SQLite.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from flowkit import make_spec
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = pytest.mark.timeout(180)

CANDIDATES = [{"x": 0.3, "y": 0.7}, {"x": 0.9, "y": 0.1}, {"x": 0.5, "y": 0.5}]


async def _task_names(flow_run_id, expected: int, timeout_s: float = 30.0) -> list[str]:
    """Task run names of a flow run, once at least ``expected`` are on record (the server
    records them a moment after the flow ends)."""
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            names = sorted(r.name for r in runs)
            if len(names) >= expected or time.monotonic() > deadline:
                return names
            await asyncio.sleep(0.5)


def test_bandit_allocates_among_spec_candidates_as_its_own_step(workspace: Path) -> None:
    spec = make_spec(
        "bandit-flow",
        algorithm="bandit",
        algorithm_options={"candidates": CANDIDATES},
        budget={"trials": 6, "max_parallel": 2},
    )
    state = hpo_flow(spec=spec, return_state=True)
    best = state.result()
    assert best is not None and best["params"] == CANDIDATES[0]  # the candidate with loss 0

    store = open_store("file://ckpt")
    exp = ExperimentState.from_json(store.read("bandit-flow"), "ckpt").experiment
    assert len(exp.trials) == 6 and all(t.status.value == "completed" for t in exp.trials)
    assert all(t.params in CANDIDATES and t.suggester == "bandit" for t in exp.trials)
    first_three = [CANDIDATES.index(t.params) for t in exp.trials[:3]]
    assert sorted(first_three) == [0, 1, 2], "each candidate is tried once before any repeat"

    # at least: 6 launches, 6 polls that settled a trial, a checkpoint each, one allocation
    names = asyncio.run(_task_names(state.state_details.flow_run_id, expected=6 * 3 + 1))
    allocations = [n for n in names if n.startswith("allocate_arms-")]
    assert allocations, f"no allocate_arms step among the flow's tasks: {names}"
    assert not [n for n in names if n.startswith("suggest-")], "the bandit's step is named for what it does"
