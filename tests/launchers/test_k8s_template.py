"""The shipped Kubernetes job template (deployments/k8s-gpu-job-template.json) asks for the
trial's GPUs.

Nothing on this machine can run a Kubernetes cluster, so this test stops at the manifest: it is
rendered the way Prefect's workers render a base job template (the defaults of the template's
variables, overridden by the flow run's job variables, through Prefect's own `apply_values`),
from the job variables prefect-hpo's work-pool launcher sends for a spec, and the GPU request is
checked there. Submitting the manifest is the cluster's part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prefect.utilities.templating import apply_values

from prefect_hpo.launchers.work_pool import job_variables_for
from prefect_hpo.spec import WorkPoolSpec

TEMPLATE = json.loads((Path(__file__).resolve().parents[2] / "deployments" / "k8s-gpu-job-template.json").read_text())


def render(job_variables: dict[str, Any]) -> dict[str, Any]:
    schema = TEMPLATE["variables"]
    jsonschema.validate(job_variables, schema)  # what the server checks when the flow run is created
    values = {name: prop["default"] for name, prop in schema["properties"].items() if "default" in prop}
    values.update(job_variables)
    return apply_values(TEMPLATE["job_configuration"], values)


def container(config: dict[str, Any]) -> dict[str, Any]:
    return config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


def test_gpus_per_trial_becomes_the_pods_nvidia_gpu_request_and_limit() -> None:
    pool = WorkPoolSpec(deployment="prefect-hpo-trial/k8s-gpu", job_variables={"image": "acme/trainer:1", "memory": "16Gi", "cpu": "4"})
    spec = container(render(job_variables_for(pool, 2)))
    assert spec["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": 2}
    assert spec["resources"]["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 2}
    assert spec["image"] == "acme/trainer:1"


def test_a_cpu_trial_requests_no_gpu() -> None:
    pool = WorkPoolSpec(deployment="prefect-hpo-trial/k8s-gpu", job_variables={"image": "acme/trainer:1"})
    spec = container(render(job_variables_for(pool, 0)))
    assert "nvidia.com/gpu" not in spec["resources"]["limits"]
    assert "nvidia.com/gpu" not in spec["resources"]["requests"]
    assert spec["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}  # the template's defaults


def test_the_gpu_variable_can_be_renamed_or_turned_off() -> None:
    renamed = WorkPoolSpec(deployment="prefect-hpo-trial/k8s-gpu", gpu_variable="gpu_count")
    assert job_variables_for(renamed, 1) == {"gpu_count": 1}
    off = WorkPoolSpec(deployment="prefect-hpo-trial/process", gpu_variable=None)
    assert job_variables_for(off, 4) == {}


def test_a_bad_job_variable_is_refused_by_the_schema() -> None:
    with pytest.raises(jsonschema.ValidationError, match="-1"):
        render({"gpus": -1})
