"""The dependency direction of DESIGN.md, checked on the source: flows -> tasks -> (optim,
storage, launchers); optim imports nothing of the others (and no Prefect or I/O libraries);
launchers and storage never import flows or tasks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prefect_hpo"

#: package -> the prefect_hpo packages (and third-party roots) it must not import
FORBIDDEN = {
    "optim": {"prefect_hpo.flows", "prefect_hpo.tasks", "prefect_hpo.storage", "prefect_hpo.launchers",
              "prefect_hpo.cli", "prefect", "mlflow", "boto3"},
    "launchers": {"prefect_hpo.flows", "prefect_hpo.tasks", "prefect_hpo.cli"},
    "storage": {"prefect_hpo.flows", "prefect_hpo.tasks", "prefect_hpo.launchers", "prefect_hpo.cli"},
    "tasks": {"prefect_hpo.flows", "prefect_hpo.cli"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in _imports(path):
            for forbidden in FORBIDDEN[package]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    assert _violations(package) == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from prefect_hpo.flows.trial import run_attempt\nimport prefect_hpo.tasks.launch\n")
    assert _imports(source) == {"prefect_hpo.flows.trial", "prefect_hpo.tasks.launch"}
