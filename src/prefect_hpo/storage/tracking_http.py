"""Talking to an MLflow tracking *server* without stalling: bounded retries and a quick probe.

MLflow's HTTP client retries a failed request 7 times with exponential backoff (about 4 minutes
per call) and waits up to 120 s for each answer. That suits a notebook riding out rate limits;
in an HPO flow every tracking call is a view of the checkpoint, and four minutes per call with
the tracking server down stalled the whole experiment. So our process bounds those retries
(``MLFLOW_HTTP_REQUEST_*`` below, only where the user has not set them) and trials get MLflow's
own defaults back (:func:`trial_env`), and a flow checks that the server answers at all before
it starts (:func:`probe_tracking_server`), failing in seconds instead of after 259 s.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

from prefect_hpo.errors import StorageError

__all__ = ["BOUNDED_HTTP_SETTINGS", "bound_http_retries", "is_http_uri", "probe_tracking_server", "trial_env"]

#: What our process uses when the user set nothing: 3 tries about a second apart, 10 s per answer
#: (a read timeout between bytes, so a large upload is not cut off). A failed call then costs
#: ~2 s with the server down, instead of ~4 minutes.
BOUNDED_HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: MLflow 3's defaults (mlflow/environment_variables.py), restored for trial processes, which
#: inherit our environment: a trial's own MLflow calls keep the patience MLflow gives them.
_MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
}
_PROBE_TIMEOUT_S = 3.0

_lock = threading.Lock()
_ours: set[str] = set()  # the variables this process set (never one the user set)


def is_http_uri(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def bound_http_retries() -> None:
    """Set the bounded settings in this process's environment where the user has not.

    MLflow reads these variables on every request and has no per-client setting, so the
    environment is the only handle; a value the user exported is left exactly as it is.
    """
    with _lock:
        for name, value in BOUNDED_HTTP_SETTINGS.items():
            current = os.environ.get(name)
            if current is None:
                os.environ[name] = value
                _ours.add(name)
            elif current != value:  # the user's (set before us, or changed since)
                _ours.discard(name)


def trial_env() -> dict[str, str]:
    """Variables that give a trial process MLflow's own HTTP defaults back where we bounded them."""
    with _lock:
        return {
            name: _MLFLOW_DEFAULTS[name] for name in sorted(_ours) if os.environ.get(name) == BOUNDED_HTTP_SETTINGS[name]
        }


def probe_tracking_server(uri: str, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    """One GET of ``<uri>/health``: StorageError naming the URI when nothing answers in time.

    Any HTTP answer counts as reachable (a proxy in front of MLflow may 404 on /health or ask for
    credentials); only a refused, reset or silent connection is an unreachable server.
    """
    import requests  # MLflow's own HTTP dependency

    url = uri.rstrip("/") + "/health"
    try:
        requests.get(url, timeout=timeout_s, allow_redirects=False)
    except requests.exceptions.SSLError:
        return  # it answered; MLflow's own calls apply its TLS settings (MLFLOW_TRACKING_INSECURE_TLS...)
    except requests.RequestException as exc:
        raise StorageError(
            f"MLflow at {uri}: the tracking server does not answer ({type(exc).__name__} on GET {url} "
            f"within {timeout_s:g} s); start it or fix MLFLOW_TRACKING_URI / the spec's tracking_uri"
        ) from exc
