"""GPU detection and the GPU slot pool.

No GPU is needed: lists of fake device ids such as ["0", "1", "2"] stand in for real GPUs (the
pool only hands out ids; it never talks to a device), and a tiny fake ``nvidia-smi`` script on
PATH stands in for the real binary.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from prefect_hpo.errors import SpecError, TrialError
from prefect_hpo.launchers.gpus import GpuPool, detect_gpus


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,2", ["0", "2"]),
        (" 1 , 3 ", ["1", "3"]),
        ("", []),
        ("-1", []),
        ("0,-1,2", ["0"]),  # CUDA ignores everything after an invalid entry
        ("GPU-aaa,GPU-bbb", ["GPU-aaa", "GPU-bbb"]),
    ],
)
def test_detect_uses_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert detect_gpus() == expected
    assert GpuPool().devices == tuple(expected)


def _fake_smi(tmp_path: Path, body: str) -> Path:
    """A stand-in nvidia-smi (this machine has no GPU): a shell script on its own PATH dir."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + body)
    smi.chmod(0o755)
    return bindir


def test_detect_without_env_asks_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    bindir = _fake_smi(tmp_path, 'echo "0"; echo "1"; echo\n')
    monkeypatch.setenv("PATH", str(bindir))
    assert detect_gpus() == ["0", "1"]


def test_detect_failing_nvidia_smi_means_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(_fake_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")))
    with caplog.at_level(logging.WARNING, logger="prefect_hpo.launchers.gpus"):
        assert detect_gpus() == []
    assert "nvidia-smi exited with 9" in caplog.text


def test_detect_without_nvidia_smi_means_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == []


def test_acquire_release_claim() -> None:
    pool = GpuPool(["0", "1", "2"])
    assert (pool.total, pool.free) == (3, 3)
    assert pool.acquire(0) == []
    first = pool.acquire(2)
    assert first == ["0", "1"] and pool.free == 1
    assert pool.acquire(2) is None  # not enough: nothing taken
    assert pool.free == 1
    pool.release(first)
    pool.release(first)  # releasing twice is harmless (kill and poll may both do it)
    assert pool.free == 3
    pool.claim(["2"])
    with pytest.raises(TrialError, match="already held"):
        pool.claim(["1", "2"])
    assert pool.free == 2  # all or nothing: "1" was not taken by the failed claim
    with pytest.raises(TrialError, match="not in this pool"):
        pool.claim(["7"])
    assert pool.acquire(2) == ["0", "1"]


def test_bad_device_lists_are_refused() -> None:
    with pytest.raises(SpecError, match="unique"):
        GpuPool(["0", "0"])
    with pytest.raises(SpecError, match="non-empty"):
        GpuPool(["0", ""])
    with pytest.raises(SpecError):
        GpuPool(["0"]).acquire(-1)


def test_no_device_is_given_to_two_holders_across_threads() -> None:
    pool = GpuPool([str(i) for i in range(5)])
    in_use: set[str] = set()
    guard = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        for _ in range(300):
            got = pool.acquire(2)
            if got is None:
                continue
            with guard:
                if in_use & set(got):
                    errors.append(f"{got} handed out twice")
                in_use.update(got)
            with guard:
                in_use.difference_update(got)
            pool.release(got)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pool.free == 5
