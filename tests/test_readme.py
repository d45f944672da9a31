"""The README's examples run: its Python blocks execute, its YAML blocks are specs (or fragments of
one) that pass the check ``prefect-hpo run`` makes, and its command lines name commands and flags
the CLI has (issue 11: the ``gp`` options example failed with an unexpected keyword)."""

from __future__ import annotations

import copy
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import pytest

from prefect_hpo.cli import _parser
from prefect_hpo.optim.space import load_document
from prefect_hpo.spec import check_runnable, load_spec

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>\w+)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)

#: What a fragment is merged into: the smallest spec a fragment's fields make sense in.
BASE: dict[str, Any] = {
    "name": "readme",
    "parameters": [{"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True}],
    "objectives": {"val_loss": "minimize"},
    "budget": {"trials": 4},
    "trial": {"command": "python train.py --lr {lr}"},
}
SPEC_FIELDS = {"name", "parameters", "objectives", "budget", "trial"}


def _blocks(lang: str) -> list[tuple[int, str]]:
    text = README.read_text()
    found = []
    for m in _FENCE.finditer(text):
        if m.group("lang") == lang:
            body = "\n".join(line[len(m.group("indent")):] for line in m.group("body").splitlines())
            found.append((text[: m.start()].count("\n") + 1, textwrap.dedent(body)))
    return found


def _merged(fragment: dict[str, Any]) -> dict[str, Any]:
    """The fragment over BASE; ``trial`` and ``budget`` merge key by key, other fields replace."""
    spec = copy.deepcopy(BASE)
    for key, value in fragment.items():
        spec[key] = {**spec[key], **value} if key in ("trial", "budget") else value
    return spec


def test_the_readme_has_examples_of_each_kind() -> None:
    assert len(_blocks("python")) >= 1 and len(_blocks("yaml")) >= 5 and len(_blocks("bash")) >= 2


@pytest.mark.parametrize(("line", "block"), _blocks("python"), ids=lambda v: f"line-{v}" if isinstance(v, int) else "")
def test_python_blocks_run(line: int, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    exec(compile(block, f"README.md:{line}", "exec"), {"__name__": "readme_example"})  # noqa: S102 - our own README


@pytest.mark.parametrize(("line", "block"), _blocks("yaml"), ids=lambda v: f"line-{v}" if isinstance(v, int) else "")
def test_yaml_blocks_are_specs_or_fragments_that_would_run(
    line: int, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a fragment asking for local GPUs would be refused: none here
    path = tmp_path / "block.yaml"
    path.write_text(block)
    doc = load_document(path)  # the loader `run` uses: duplicate keys and aliases refused
    assert isinstance(doc, dict), f"README.md:{line}: not a mapping"
    spec = doc if SPEC_FIELDS <= set(doc) else _merged(doc)
    check_runnable(load_spec(spec))


def _cli_lines() -> list[tuple[int, str]]:
    return [(line, cmd.split("#", 1)[0].strip()) for line, block in _blocks("bash") for cmd in block.splitlines()
            if cmd.strip().startswith("prefect-hpo ")]


@pytest.mark.parametrize(("line", "command"), _cli_lines(), ids=lambda v: v if isinstance(v, str) else "")
def test_command_lines_name_commands_and_flags_the_cli_has(line: int, command: str) -> None:
    parser = _parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices  # noqa: SLF001
    words = shlex.split(command.replace("[", " ").replace("]", " "))
    assert words[1] in commands, f"README.md:{line}: no command {words[1]!r}"
    flags = {w for w in words[2:] if w.startswith("--")}
    unknown = flags - set(commands[words[1]]._option_string_actions)  # noqa: SLF001
    assert not unknown, f"README.md:{line}: `{words[1]}` has no {sorted(unknown)}"
