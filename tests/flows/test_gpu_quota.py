"""hold_gpu_slots against a real Prefect server (the session's test harness): who waits, who fails."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from prefect_hpo.launchers.gpu_quota import ConcurrencySlotAcquisitionError, hold_gpu_slots


def _limit(limit: int, **kwargs: float) -> str:
    name = f"gpu-quota-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit, **kwargs))
    return name


def _active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_a_missing_limit_fails_at_once_with_its_name(prefect_api: str) -> None:
    with pytest.raises(ConcurrencySlotAcquisitionError, match="no-such-gpu-limit"):
        with hold_gpu_slots("no-such-gpu-limit", 1):
            pytest.fail("ran without a quota")


def test_slots_are_held_for_the_body_and_given_back(prefect_api: str) -> None:
    name = _limit(4)
    with hold_gpu_slots(name, 3) as waited:
        assert _active_slots(name) == 3
        assert waited >= 0
    assert _active_slots(name) == 0


def test_a_waiting_trial_takes_the_slot_soon_after_it_frees_not_when_the_server_says(
    prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit decays slowly, so the server tells a denied client to come back in about 100 s
    (Prefect's own ``concurrency()`` would sleep that long). The second holder asks again every
    0.5 s instead and gets the slot once the first lets go."""
    name = _limit(1, slot_decay_per_second=0.01)
    events: list[tuple[str, float]] = []
    first_holds = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        with hold_gpu_slots(name, 1):
            events.append(("first acquired", time.time()))
            first_holds.set()
            time.sleep(2.0)
            events.append(("first releases", time.time()))

    def second() -> None:
        try:
            first_holds.wait(30)
            with hold_gpu_slots(name, 1, retry_s=0.5) as waited:
                events.append(("second acquired", time.time()))
                events.append(("second waited", waited))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    caplog.set_level(logging.DEBUG, logger="prefect_hpo.launchers.gpu_quota")
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    at = dict(events)
    assert at["first acquired"] <= at["first releases"] <= at["second acquired"]
    server_waits = [r.server_wait for r in caplog.records if hasattr(r, "server_wait")]
    assert server_waits, "the second holder was never denied"
    # it was told to come back much later than it did: the bounded retry, not the server's
    assert at["second waited"] < min(server_waits)
    assert _active_slots(name) == 0
