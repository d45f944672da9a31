"""What the tests know about a process from /proc: whether it still runs.

A killed trial's process can linger as a zombie until its parent, or init for an orphan, reaps
it, and in a container init may reap late or never; a zombie holds no memory and no GPU, so the
tests count it as gone. ``os.kill(pid, 0)`` would call it alive (CI failed on exactly that).
"""

from __future__ import annotations

import os
from pathlib import Path


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def gone(pid: int) -> bool:
    """True if the process no longer runs: absent, or a zombie waiting to be reaped."""
    return _state(pid) in (None, "Z", "X")


def _stat_fields() -> list[tuple[int, list[str]]]:
    """(pid, the fields of /proc/<pid>/stat after the command name) of every process now."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out.append((int(entry), stat[stat.rindex(")") + 2 :].split()))
    return out


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    return [pid for pid, fields in _stat_fields() if int(fields[2]) == pgid and fields[0] not in ("Z", "X")]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (zombies included)."""
    return [child for child, fields in _stat_fields() if int(fields[1]) == pid]
