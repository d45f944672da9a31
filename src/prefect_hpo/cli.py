"""The ``prefect-hpo`` command line.

This release has the engine-level commands; ``run``, ``resume`` and ``status`` arrive with the
Prefect flow. Every failure prints one line naming the problem and exits non-zero, so the
command is usable from scripts and CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from prefect_hpo import __version__
from prefect_hpo.errors import PrefectHPOError
from prefect_hpo.optim import SearchSpace, SpaceEncoder, available_suggesters
from prefect_hpo.optim.space import load_document

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except PrefectHPOError as exc:
        print(f"prefect-hpo: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefect-hpo", description="Hyperparameter optimization on Prefect.")
    parser.add_argument("--version", action="version", version=f"prefect-hpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check a search space (or a spec's parameters) in a YAML/JSON file")
    validate.add_argument("file", type=Path)
    validate.add_argument("--json", action="store_true", help="print the normalized space as JSON")
    validate.set_defaults(handler=_validate)

    algorithms = sub.add_parser("algorithms", help="list the available search algorithms")
    algorithms.set_defaults(handler=_algorithms)
    return parser


def _validate(args: argparse.Namespace) -> int:
    space = SearchSpace.parse(_space_document(args.file))
    if args.json:
        doc = {"parameters": space.to_list(), "parameter_constraints": [c.expression for c in space.constraints]}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    encoder = SpaceEncoder(space)
    size = encoder.n_configurations
    print(
        f"{args.file}: ok: {len(space.parameters)} parameters ({encoder.dim} searched), "
        f"{len(space.constraints)} constraints, "
        f"{'continuous' if size is None else f'{size} configurations'}"
    )
    return EXIT_OK


def _space_document(path: Path) -> Any:
    """A bare space (list or NNI dict) or an experiment spec holding one under ``parameters``."""
    data = load_document(path)
    if isinstance(data, dict) and "parameters" in data:
        return {k: data[k] for k in ("parameters", "parameter_constraints") if k in data}
    return data


def _algorithms(args: argparse.Namespace) -> int:
    for name in available_suggesters():
        print(name)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
