"""The ``prefect-hpo`` command line, run as a real subprocess through its console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_hpo.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("name", ["quickstart_space.yaml", "nni_space.json"])
def test_validate_accepts_the_examples(name: str) -> None:
    result = run_cli("validate", str(EXAMPLES / name))
    assert result.returncode == 0, result.stderr
    assert "ok: " in result.stdout


def test_validate_json_prints_the_normalized_space(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: demo\nparameters:\n  - {name: x, type: range, bounds: [0.0, 1.0]}\n"
        "  - {name: y, type: range, bounds: [0.0, 1.0]}\nparameter_constraints: ['x + y <= 1']\n"
    )
    result = run_cli("validate", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [p["name"] for p in doc["parameters"]] == ["x", "y"]
    assert doc["parameter_constraints"] == ["x + y <= 1"]


def test_validate_reports_a_bad_space_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "lr", "type": "range", "bounds": [0.1, 0.0001], "log_scale": true}]')
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'lr'" in result.stderr and "reversed" in result.stderr


def test_validate_reports_a_missing_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot be read" in result.stderr


def test_algorithms_lists_the_registered_suggesters() -> None:
    result = run_cli("algorithms")
    assert result.returncode == 0
    assert {"auto", "gp", "grid", "random", "sobol"} <= set(result.stdout.split())


def test_validate_reads_yaml_exponents_as_numbers(tmp_path: Path) -> None:
    """PyYAML's default loader reads ``1e-4`` as a string; the CLI shares the space's loader."""
    space = tmp_path / "nni.yaml"
    space.write_text("lr: {_type: loguniform, _value: [1e-4, 1e-1]}\n")
    result = run_cli("validate", str(space), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"][0]["bounds"] == [1e-4, 1e-1]
