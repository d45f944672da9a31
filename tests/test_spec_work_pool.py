"""The spec's ``trial.work_pool`` section: what a work-pool experiment says, and its errors
naming the field. No Prefect needed (the launcher itself is tested on a real worker in
tests/flows/test_work_pool.py)."""

from __future__ import annotations

import pytest

from prefect_hpo.errors import SpecError
from prefect_hpo.spec import load_spec

BASE = {
    "name": "wp",
    "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
    "objectives": {"loss": "minimize"},
    "budget": {"trials": 4},
}


def trial(**work_pool: object) -> dict:
    return {**BASE, "trial": {"command": "python train.py --x {x}", "gpus_per_trial": 1, "work_pool": work_pool}}


def test_a_work_pool_trial_loads_with_its_defaults() -> None:
    spec = load_spec(trial(deployment="prefect-hpo-trial/k8s-gpu", job_variables={"image": "acme/trainer:1"}))
    pool = spec.trial.work_pool
    assert pool is not None
    assert (pool.deployment, pool.gpu_variable, pool.concurrency_limit) == ("prefect-hpo-trial/k8s-gpu", "gpus", None)
    assert load_spec(spec.to_dict()).trial.work_pool == pool  # travels inside the checkpoint


@pytest.mark.parametrize("deployment", ["prefect-hpo-trial", "/process", "a/b/c", ""])
def test_a_deployment_must_be_flow_slash_name(deployment: str) -> None:
    with pytest.raises(SpecError, match=r"trial\.work_pool\.deployment.*flow-name/deployment-name"):
        load_spec(trial(deployment=deployment))


def test_unknown_work_pool_settings_are_refused() -> None:
    with pytest.raises(SpecError, match=r"trial\.work_pool\.gpu"):
        load_spec(trial(deployment="prefect-hpo-trial/process", gpu=1))


def test_a_function_object_cannot_travel_to_a_work_pool() -> None:
    def local_function(params: dict) -> float:  # not importable by name: it would run in-process
        return params["x"]

    spec = {**BASE, "trial": {"callable": local_function, "work_pool": {"deployment": "prefect-hpo-trial/process"}}}
    with pytest.raises(SpecError, match="work_pool.*package.module:function"):
        load_spec(spec)


def dask_trial(**dask: object) -> dict:
    return {**BASE, "trial": {"command": "python train.py --x {x}", "gpus_per_trial": 1, "dask": dask}}


def test_a_local_dask_cluster_without_the_gpus_its_trials_ask_for_is_refused() -> None:
    """Dask would keep such trials pending forever without a word; the spec says why instead."""
    with pytest.raises(SpecError, match=r"dask\.worker_resources.*1 'GPU'.*none"):
        load_spec(dask_trial(n_workers=2))
    with pytest.raises(SpecError, match=r"dask\.worker_resources.*\{'GPU': 1\}"):
        load_spec(dask_trial(worker_resources={"gpu": 1}))


def test_dask_gpu_trials_load_when_workers_declare_them_or_the_resource_is_off() -> None:
    spec = load_spec(dask_trial(worker_resources={"GPU": 1}, concurrency_limit="gpu"))
    assert spec.trial.dask is not None and spec.trial.dask.concurrency_limit == "gpu"
    assert load_spec(spec.to_dict()).trial.dask == spec.trial.dask
    assert load_spec(dask_trial(gpu_resource=None)).trial.dask.gpu_resource is None
    assert load_spec(dask_trial(address="tcp://10.0.0.5:8786")).trial.dask.address  # its workers are not known here
