"""Shared test settings and helpers.

The environment defaults must be in place before torch is first imported (prefect_hpo sets
OMP_WAIT_POLICY itself, but only if it is imported before torch), so they come first here.
"""

import math
import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_HPO_TORCH_THREADS", "1")

# Prefect and MLflow offline and quiet, with their state in a throwaway folder (never ~/.prefect).
_SCRATCH = tempfile.mkdtemp(prefix="prefect-hpo-tests-")
for _key, _value in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "PREFECT_HOME": os.path.join(_SCRATCH, "prefect-home"),
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402


def branin_value(x1: float, x2: float) -> float:
    """The Branin-Hoo function on [-5, 10] x [0, 15]; global minimum 0.397887 at three points."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


@pytest.fixture
def branin():
    """``branin(params)`` evaluates Branin at a ``{"x1": ..., "x2": ...}`` dict."""
    return lambda params: branin_value(params["x1"], params["x2"])


# --------------------------------------------------------------------------------------------
# S3 through a real (moto) server on localhost
# --------------------------------------------------------------------------------------------


class S3TestServer:
    """Handle on the moto S3 server: its endpoint and a factory of fresh, uniquely named buckets."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def bucket(self, name: str | None = None) -> str:
        """Create a new bucket (a unique name unless one is given) and return its name."""
        import uuid

        name = name or f"hpo-test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with AWS_* variables pointing boto3 at it for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(key, raising=False)
        try:
            yield S3TestServer(endpoint)
        finally:
            server.stop()


@pytest.fixture
def s3_uri(s3_server) -> str:
    """``s3://<fresh bucket>/hpo``."""
    return f"s3://{s3_server.bucket()}/hpo"
