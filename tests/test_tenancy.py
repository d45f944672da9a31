"""Tenant names, the caller's tenant, and the names a tenant's work-pool trials may use."""

from __future__ import annotations

import pytest

from prefect_hpo.errors import SpecError, TenantError
from prefect_hpo.spec import load_spec
from prefect_hpo.tenancy import (
    caller_tenant,
    check_owner,
    mlflow_experiment_name,
    resolve_tenant,
    scoped_storage,
    tenant_limit,
)

BASE = {
    "name": "t",
    "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
    "objectives": {"loss": "minimize"},
    "budget": {"trials": 2},
    "trial": {"command": "python train.py"},
}


@pytest.mark.parametrize("bad", ["Team-A", "team_a", "-team", "team-", "", "a" * 64])
def test_a_tenant_must_be_a_dns_label_and_the_error_names_the_field(bad: str) -> None:
    with pytest.raises(SpecError, match="tenant"):
        load_spec({**BASE, "tenant": bad})


def test_the_caller_is_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_HPO_TENANT", raising=False)
    assert caller_tenant() is None
    monkeypatch.setenv("PREFECT_HPO_TENANT", "team-a")
    assert caller_tenant() == "team-a"
    assert caller_tenant("team-b") == "team-b"
    monkeypatch.setenv("PREFECT_HPO_TENANT", "Bad Name")
    with pytest.raises(SpecError, match="PREFECT_HPO_TENANT"):
        caller_tenant()


def test_a_spec_runs_as_its_callers_tenant_and_only_its_own_tenant_runs_it() -> None:
    assert resolve_tenant(None, "team-a") == "team-a"
    assert resolve_tenant("team-a", "team-a") == "team-a"
    assert resolve_tenant(None, None) is None
    with pytest.raises(TenantError, match="tenant 'team-a' and this caller is tenant 'team-b'"):
        resolve_tenant("team-a", "team-b")
    # writing `tenant: team-a` into a spec does not make a caller team-a (issue 11)
    with pytest.raises(TenantError, match=r"tenant 'team-a' and this caller has no tenant.*--tenant team-a"):
        resolve_tenant("team-a", None)


def test_owners_only() -> None:
    check_owner("e", "team-a", "team-a")
    check_owner("e", None, None)
    with pytest.raises(TenantError, match="belongs to tenant 'team-a'; tenant 'team-b' cannot"):
        check_owner("e", "team-a", "team-b")
    with pytest.raises(TenantError, match="no tenant"):
        check_owner("e", "team-a", None)
    with pytest.raises(TenantError, match="belongs to no tenant"):
        check_owner("e", None, "team-a")


def test_where_a_tenants_things_live() -> None:
    assert scoped_storage("s3://bucket/hpo/", "team-a") == "s3://bucket/hpo/tenants/team-a"
    assert scoped_storage("file://.prefect-hpo", None) == "file://.prefect-hpo"
    assert scoped_storage("file://ckpt/tenants", "team-a") == "file://ckpt/tenants/tenants/team-a"  # a folder named so


@pytest.mark.parametrize("caller", [None, "team-a", "team-b"])
@pytest.mark.parametrize("storage", ["file://ckpt/tenants/team-a", "s3://bucket/hpo/tenants/team-a/", "/srv/tenants/team-a"])
def test_a_storage_inside_a_tenants_part_is_refused_for_every_caller(storage: str, caller: str | None) -> None:
    # else `--tenant team-b --storage <root>/tenants/team-a` put team-b's experiments inside team-a's folder
    with pytest.raises(TenantError, match=r"belongs to tenant 'team-a'.*give the store's root"):
        scoped_storage(storage, caller)


@pytest.mark.parametrize("name", ["team-a\n", "team-a\n\n"])
def test_a_tenant_name_with_a_trailing_newline_is_refused(name: str) -> None:
    with pytest.raises(SpecError, match="not a valid tenant"):
        load_spec({**BASE, "tenant": name})
    assert mlflow_experiment_name("e", "team-a") == "team-a/e" and mlflow_experiment_name("e", None) == "e"


@pytest.mark.parametrize(
    ("work_pool", "field"),
    [
        ({"work_queue": "team-b"}, "trial.work_pool.work_queue"),
        ({"concurrency_limit": "gpu-team-b"}, "trial.work_pool.concurrency_limit"),
    ],
)
def test_a_tenants_trials_cannot_use_another_tenants_queue_or_limit(work_pool: dict, field: str) -> None:
    trial = {"command": "python train.py", "work_pool": {"deployment": "prefect-hpo-trial/k8s", **work_pool}}
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load_spec({**BASE, "tenant": "team-a", "trial": trial})
    ok = {"command": "python train.py", "work_pool": {"deployment": "prefect-hpo-trial/k8s", "work_queue": "team-a-gpu",
                                                      "concurrency_limit": "a100-team-a"}}
    assert load_spec({**BASE, "tenant": "team-a", "trial": ok}).tenant == "team-a"


def test_a_tenants_dask_trials_hold_its_own_limit() -> None:
    trial = {"command": "python train.py", "dask": {"address": "tcp://dask:8786", "concurrency_limit": "gpu-team-b"}}
    with pytest.raises(SpecError, match=r"trial\.dask\.concurrency_limit.*'gpu-team-b' is not tenant 'team-a'"):
        load_spec({**BASE, "tenant": "team-a", "trial": trial})
    assert tenant_limit("team-a", None, "f") == "gpu-team-a"
    assert tenant_limit("team-a", "a100-team-a", "f") == "a100-team-a"
