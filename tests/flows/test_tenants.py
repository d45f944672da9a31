"""Tenants on real components: an experiment run as tenant team-a lives under team-a's part of
the store and in MLflow as team-a/<name>; team-b (and a caller with no tenant) can neither find
it, nor read, resume or drive it even when pointed straight at its checkpoint. The CLI runs as a
subprocess; the flow runs on the session's Prefect test server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flowkit import make_spec
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import TenantError
from prefect_hpo.flows.hpo import hpo_flow

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # a minute of flows and CLI runs


def cli(workspace: Path, prefect_api: str, tenant: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    env.pop("PREFECT_HPO_TENANT", None)
    if tenant is not None:
        env["PREFECT_HPO_TENANT"] = tenant
    return subprocess.run([sys.executable, "-m", "prefect_hpo.cli", *args], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=180)


def test_one_tenant_cannot_find_read_resume_or_drive_anothers_experiment(
    workspace: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HPO_TENANT", "team-a")
    spec = make_spec("shared-name", budget={"trials": 2, "max_parallel": 2})
    best = hpo_flow(spec=spec)
    assert best is not None

    checkpoint = workspace / "ckpt" / "tenants" / "team-a" / "shared-name" / "experiment.json"
    assert checkpoint.is_file()
    assert not (workspace / "ckpt" / "shared-name").exists()
    assert json.loads(checkpoint.read_text())["spec"]["tenant"] == "team-a"  # run by team-a: it is team-a's
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_experiment_by_name("team-a/shared-name") is not None
    assert client.get_experiment_by_name("shared-name") is None
    before = checkpoint.read_bytes()

    mine = cli(workspace, prefect_api, "team-a", "status", "shared-name", "--storage", "file://ckpt", "--json")
    assert mine.returncode == 0, mine.stderr
    assert [t["status"] for t in json.loads(mine.stdout)["trials"]] == ["completed", "completed"]

    # team-b looks in its own part of the store: nothing there
    theirs = cli(workspace, prefect_api, "team-b", "status", "shared-name", "--storage", "file://ckpt")
    assert theirs.returncode == 2
    assert "tenant 'team-b'" in theirs.stderr and "no checkpoint" in theirs.stderr
    # A caller with no tenant pointed straight at team-a's part of the store, and team-b finding
    # team-a's checkpoint inside its own part (copied there by mistake, or by a rogue script):
    # refused by the experiment's recorded owner, for reading and for driving.
    stray = workspace / "ckpt" / "tenants" / "team-b" / "shared-name"
    shutil.copytree(checkpoint.parent, stray)
    for tenant, storage in ((None, "file://ckpt/tenants/team-a"), ("team-b", "file://ckpt")):
        for command in (["status", "shared-name"], ["best", "shared-name"], ["resume", "shared-name", "--quiet"]):
            out = cli(workspace, prefect_api, tenant, *command, "--storage", storage)
            assert out.returncode == 2, (tenant, command, out.stdout, out.stderr)
            assert out.stderr.count("\n") == 1 and "belongs to tenant 'team-a'" in out.stderr, out.stderr
    assert (stray / "experiment.json").read_bytes() == before
    shutil.rmtree(stray)
    assert checkpoint.read_bytes() == before  # nothing was written by the refused calls

    # A caller with no tenant cannot drive team-a's experiment by writing `tenant: team-a` into
    # its spec (issue 11: the budget was raised and trials ran, while its status/resume were
    # refused): the run makes the same owner check as status and resume, before anything starts.
    raised = {**spec, "tenant": "team-a", "budget": {"trials": 4, "max_parallel": 2}}
    (workspace / "raised.json").write_text(json.dumps(raised))
    run = cli(workspace, prefect_api, None, "run", "raised.json", "--quiet")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "belongs to tenant 'team-a' and this caller has no tenant" in run.stderr, run.stderr
    monkeypatch.delenv("PREFECT_HPO_TENANT")
    with pytest.raises(TenantError, match="this caller has no tenant"):
        hpo_flow(spec=raised)
    assert checkpoint.read_bytes() == before
    # team-b pointed at team-a's part of the store is refused, instead of creating its
    # experiment in there (<store>/tenants/team-a/tenants/team-b/...)
    inside = cli(workspace, prefect_api, None, "run", "raised.json", "--tenant", "team-b", "--quiet",
                 "--storage", "file://ckpt/tenants/team-a")
    assert inside.returncode == 2 and inside.stderr.count("\n") == 1, inside.stderr
    (workspace / "b.json").write_text(json.dumps(spec))
    inside = cli(workspace, prefect_api, "team-b", "run", "b.json", "--quiet", "--storage", "file://ckpt/tenants/team-a")
    assert inside.returncode == 2 and inside.stderr.count("\n") == 1, inside.stderr
    assert "storage 'file://ckpt/tenants/team-a' belongs to tenant 'team-a'" in inside.stderr, inside.stderr
    assert sorted(p.name for p in checkpoint.parent.parent.iterdir()) == ["shared-name"]
    assert checkpoint.read_bytes() == before

    # a spec of team-a run by team-b is refused before anything starts
    monkeypatch.setenv("PREFECT_HPO_TENANT", "team-b")
    with pytest.raises(TenantError, match="belongs to tenant 'team-a' and this caller is tenant 'team-b'"):
        hpo_flow(spec={**spec, "tenant": "team-a"})
    # team-b may have its own experiment of the same name, apart from team-a's
    assert hpo_flow(spec=spec) is not None
    assert (workspace / "ckpt" / "tenants" / "team-b" / "shared-name" / "experiment.json").is_file()
    assert checkpoint.read_bytes() == before
