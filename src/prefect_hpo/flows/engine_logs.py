"""Keep the Prefect task engine's "Finished in state ..." lines of the HPO flow's tasks out of the logs.

The engine logs one per task run (INFO when completed, ERROR otherwise). For an HPO flow they say
nothing a person needs: each trial's own task run logs how the trial ended in words
(:mod:`prefect_hpo.flows.trial_spans`), and a step that fails raises, which the engine logs
with its traceback on a line of its own that this filter keeps. Without it the Logs tab held
several such lines per trial, and a trial ending Failed or Detached (a result, not an error of
the flow) printed an ERROR line in the terminal that the CLI otherwise keeps quiet.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_engine_lines"]

FLOW_NAME = "prefect-hpo"
_LOGGER = "prefect.task_runs"


class _EngineLineFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_name", None) != FLOW_NAME:
            return True
        return not (isinstance(record.msg, str) and record.msg.startswith("Finished in state "))


_FILTER = _EngineLineFilter()


def quiet_engine_lines() -> None:
    """Install the filter on Prefect's task-run logger (once per process; idempotent)."""
    logger = logging.getLogger(_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
