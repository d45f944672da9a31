"""GPU slots for local trials: which device ids are free, handed to one trial at a time.

Trials see their devices through ``CUDA_VISIBLE_DEVICES``; the pool only guarantees that two
running trials are never given the same id. Ids are kept as strings because
``CUDA_VISIBLE_DEVICES`` may hold indices or ``GPU-<uuid>`` names, and both pass through.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence

from prefect_hpo.errors import SpecError, TrialError

__all__ = ["GpuPool", "detect_gpus"]

logger = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_S = 10.0


def detect_gpus() -> list[str]:
    """The GPU ids this process may use: ``$CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi``.

    A set ``CUDA_VISIBLE_DEVICES`` wins because the operator (or a scheduler such as Slurm)
    already chose the devices; ``""`` or ``"-1"`` mean none. Without it, ``nvidia-smi`` lists
    the machine's GPUs; if it is missing or fails, there are none (logged, not raised, so a
    CPU-only study still runs).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return _parse_visible(visible)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("nvidia-smi failed (%s); assuming no GPUs", exc)
        return []
    if out.returncode != 0:
        logger.warning("nvidia-smi exited with %d (%s); assuming no GPUs", out.returncode, out.stderr.strip())
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _parse_visible(value: str) -> list[str]:
    """Ids from a CUDA_VISIBLE_DEVICES value; like CUDA, stop at the first negative entry."""
    ids: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("-"):
            break
        ids.append(item)
    return ids


class GpuPool:
    """A thread-safe set of device ids, each held by at most one trial at a time."""

    def __init__(self, devices: Sequence[str] | None = None) -> None:
        ids = detect_gpus() if devices is None else [str(d).strip() for d in devices]
        if any(not d for d in ids):
            raise SpecError(f"GPU ids must be non-empty strings, got {list(ids)!r}")
        if len(set(ids)) != len(ids):
            raise SpecError(f"GPU ids must be unique, got {list(ids)!r}")
        self._devices: tuple[str, ...] = tuple(ids)
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    @property
    def devices(self) -> tuple[str, ...]:
        """All ids in the pool, in their order."""
        return self._devices

    @property
    def total(self) -> int:
        """How many devices the pool has."""
        return len(self._devices)

    @property
    def free(self) -> int:
        """How many devices nobody holds right now."""
        with self._lock:
            return len(self._devices) - len(self._busy)

    def acquire(self, n: int) -> list[str] | None:
        """Take ``n`` free devices (lowest first), or None when fewer than ``n`` are free."""
        if n < 0:
            raise SpecError(f"cannot acquire a negative number of GPUs ({n})")
        if n == 0:
            return []
        with self._lock:
            free = [d for d in self._devices if d not in self._busy]
            if len(free) < n:
                return None
            taken = free[:n]
            self._busy.update(taken)
        logger.debug("acquired GPUs %s", taken)
        return taken

    def release(self, ids: Iterable[str]) -> None:
        """Give devices back; releasing a free one is a no-op (kill and poll may both release)."""
        ids = list(ids)
        self._check_known(ids)
        with self._lock:
            self._busy.difference_update(ids)
        logger.debug("released GPUs %s", ids)

    def claim(self, ids: Iterable[str]) -> None:
        """Mark given devices busy (a re-attached trial still holds them); all or nothing.

        Raises :class:`TrialError` if one is unknown or already held, since handing a device to
        two trials is exactly what the pool exists to prevent.
        """
        ids = list(ids)
        self._check_known(ids)
        with self._lock:
            taken = [d for d in ids if d in self._busy]
            if taken or len(set(ids)) != len(ids):
                raise TrialError(f"GPU(s) {taken or ids} already held by another trial")
            self._busy.update(ids)

    def _check_known(self, ids: list[str]) -> None:
        unknown = [d for d in ids if d not in self._devices]
        if unknown:
            raise TrialError(f"GPU(s) {unknown} are not in this pool {list(self._devices)}")

    def __repr__(self) -> str:
        return f"GpuPool(devices={list(self._devices)!r}, free={self.free})"
