"""Which ``python`` a trial's command runs: the interpreter that runs prefect-hpo where the trial runs."""

from __future__ import annotations

import os
import sys

__all__ = ["path_with_interpreter"]


def path_with_interpreter(path: str) -> str:
    """``path`` with this interpreter's folder first, so ``python`` in a command is the one that
    has prefect-hpo (and, in the usual virtualenv, torch and the trial's packages), as if that
    environment were activated; unchanged when it already comes first."""
    here = os.path.dirname(sys.executable)
    return path if path.split(os.pathsep)[0] == here else os.pathsep.join([here, path])
