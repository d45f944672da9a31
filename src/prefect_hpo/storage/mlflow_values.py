"""How values are spelled in MLflow: JSON for tags, names MLflow accepts, infinities and NaN.

Separate from the tracker so the rules are one small, testable place; nothing here talks to MLflow.
"""

from __future__ import annotations

import functools
import json
import math
import posixpath
import re
import time
from typing import Any

__all__ = ["clean_name", "compact_json", "from_store", "json_default", "now_ms", "same_value", "truncate"]

_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


def json_default(obj: Any) -> Any:
    """numpy/torch scalars (anything with ``.item()``) become plain numbers; the rest a string."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(obj)


def compact_json(obj: Any) -> str:
    return json.dumps(obj, default=json_default, allow_nan=True, separators=(",", ":"))


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 15] + "...[truncated]"


@functools.lru_cache(maxsize=4096)
def clean_name(name: str) -> str:
    """A metric/param key MLflow accepts; a trial's odd metric name must not fail its whole batch."""
    cleaned = _BAD_NAME_CHARS.sub("_", str(name))[:250] or "_"
    norm = posixpath.normpath(cleaned)
    if norm != cleaned or norm == "." or norm.startswith(("..", "/")):  # MLflow's path_not_unique
        cleaned = cleaned.replace("/", "_").replace("..", "__")
        if cleaned == ".":
            cleaned = "_"
    return cleaned


def same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def from_store(value: float) -> float:
    """Undo SQL stores' spelling of infinity as the largest double (see ``log_reports``)."""
    if abs(value) >= _LARGEST_DOUBLE:
        return math.copysign(math.inf, value)
    return float(value)


_LARGEST_DOUBLE = 1.7976931348623157e308


def now_ms() -> int:
    return int(time.time() * 1000)
