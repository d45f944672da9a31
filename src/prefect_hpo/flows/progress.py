"""Progress events of a running HPO flow, for live displays (the CLI) and tests.

The flow cannot take a callback parameter (flow parameters must serialize), so in-process
listeners register here instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Progress", "add_listener", "notify", "remove_listener"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    name: str
    budget: int
    completed: int
    failed: int
    running: int
    best_index: int | None
    best_values: dict[str, float] | None
    event: str  # one line about what just happened
    stopped: int = 0  # ended early by the stopping policy


_listeners: list[Callable[[Progress], None]] = []


def add_listener(listener: Callable[[Progress], None]) -> None:
    _listeners.append(listener)


def remove_listener(listener: Callable[[Progress], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def notify(progress: Progress) -> None:
    for listener in list(_listeners):
        try:
            listener(progress)
        except Exception:  # a broken display must never stop an experiment
            logger.exception("progress listener %r failed", listener)
