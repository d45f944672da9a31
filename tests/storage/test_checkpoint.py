"""Conformance tests for the checkpoint stores: a local folder and S3 through a real moto server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prefect_hpo.errors import (
    CorruptCheckpointError,
    LeaseHeldError,
    LeaseLostError,
    SpecError,
    StorageError,
)
from prefect_hpo.storage import checkpoint as ckpt
from prefect_hpo.storage.checkpoint import (
    CheckpointStore,
    LocalFolderStore,
    S3Store,
    StoreURIError,
    open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> CheckpointStore:
    if request.param == "local":
        return open_store(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_uri"))


def _doc(**extra) -> str:
    return json.dumps({"version": 1, "trials": [], **extra})


def _plant_lease(store: CheckpointStore, name: str, doc: dict) -> None:
    """Write a lease document as another driver would have left it."""
    data = json.dumps(doc).encode()
    if isinstance(store, LocalFolderStore):
        path = store.root / name / "lease.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        store._client.put_object(Bucket=store.bucket, Key=store._key(name, "lease.json"), Body=data)


def _foreign_lease(**overrides) -> dict:
    now = time.time()
    doc = {"owner": "f" * 32, "host": "other-host.example", "pid": 4242, "pid_start": 1,
           "acquired_at": now - 100, "renewed_at": now - 1, "expires_at": now + 60}
    doc.update(overrides)
    return doc


# ---------------------------------------------------------------------------------- documents


def test_read_missing_is_none(store):
    assert store.read("exp") is None
    assert not store.exists("exp")
    assert store.list_names() == []
    assert store.read_lease("exp") is None


def test_round_trip_overwrite_and_list(store):
    store.write("b-exp", _doc(n=1))
    store.write("a-exp", _doc(n=2))
    assert json.loads(store.read("b-exp"))["n"] == 1
    assert store.exists("b-exp")
    store.write("b-exp", _doc(n=3))
    assert json.loads(store.read("b-exp"))["n"] == 3
    assert store.list_names() == ["a-exp", "b-exp"]
    # A lease alone does not make a checkpoint.
    with store.acquire_lease("c-exp"):
        assert store.list_names() == ["a-exp", "b-exp"]
    assert "b-exp" in store.location("b-exp")
    assert store.location("b-exp").endswith("experiment.json")


def test_large_and_unicode_documents(store):
    text = _doc(note="héllo ✓ 日本語 🚀", blob="x" * (2 * 1024 * 1024))
    store.write("big", text)
    assert store.read("big") == text


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", " x", "x\n"])
def test_bad_names_are_rejected(store, bad):
    with pytest.raises(SpecError):
        store.write(bad, "{}")


def test_store_uri_round_trips(store):
    again = open_store(store.uri)
    assert type(again) is type(store)
    store.write("exp", _doc())
    assert again.read("exp") == _doc()


# ---------------------------------------------------------------------------------- atomicity


def test_local_failed_write_keeps_old_file_and_no_temp_files(tmp_path, monkeypatch):
    store = LocalFolderStore(tmp_path)
    store.write("exp", _doc(n=1))

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)  # fault injection: the disk fills up
    with pytest.raises(StorageError, match="No space left"):
        store.write("exp", _doc(n=2, pad="y" * 10000))
    monkeypatch.undo()
    with pytest.raises(UnicodeEncodeError):  # not encodable: nothing is touched
        store.write("exp", "\ud800")
    assert json.loads(store.read("exp"))["n"] == 1
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["experiment.json"]


def test_local_unwritable_root_is_a_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = LocalFolderStore(blocker)
    with pytest.raises(StorageError, match=str(blocker)):
        store.write("exp", "{}")


def test_corrupt_checkpoint_is_reported(tmp_path):
    store = LocalFolderStore(tmp_path)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(CorruptCheckpointError, match="experiment.json"):
        store.read("exp")


def test_concurrent_readers_never_see_partial_documents(store):
    n_writes = 40 if isinstance(store, LocalFolderStore) else 15
    store.write("exp", _doc(i=-1, pad="a" * 200_000))
    stop = threading.Event()
    seen: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def reader(mine: list[int]) -> None:
        while not stop.is_set():
            try:
                mine.append(json.loads(store.read("exp"))["i"])
            except BaseException as e:  # noqa: BLE001 -- any failure is reported by the test
                errors.append(e)
                return

    threads = [threading.Thread(target=reader, args=(mine,)) for mine in seen]
    for t in threads:
        t.start()
    try:
        for i in range(n_writes):
            store.write("exp", _doc(i=i, pad=chr(ord("a") + i % 26) * (200_000 + 7919 * i)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    for mine in seen:
        assert mine and mine == sorted(mine)  # a reader never goes back in time
    assert json.loads(store.read("exp"))["i"] == n_writes - 1
    if isinstance(store, LocalFolderStore):
        assert sorted(p.name for p in (store.root / "exp").iterdir()) == ["experiment.json"]


# ---------------------------------------------------------------------------------- leases


def test_lease_is_exclusive_and_released(store):
    lease = store.acquire_lease("exp", ttl_s=30)
    assert len(lease.owner) == 32 and lease.name == "exp" and not lease.lost
    doc = store.read_lease("exp")
    assert doc["owner"] == lease.owner
    assert doc["host"] == socket.gethostname() and doc["pid"] == os.getpid()
    assert doc["expires_at"] == pytest.approx(time.time() + 30, abs=5)
    with pytest.raises(LeaseHeldError) as info:
        store.acquire_lease("exp")
    message = str(info.value)
    assert socket.gethostname() in message and str(os.getpid()) in message
    assert "expires at" in message and "since" in message
    lease.release()
    lease.release()  # idempotent
    assert store.read_lease("exp") is None
    with store.acquire_lease("exp") as again:
        assert store.read_lease("exp")["owner"] == again.owner
    assert store.read_lease("exp") is None


def test_foreign_live_lease_is_respected(store):
    _plant_lease(store, "exp", _foreign_lease())
    with pytest.raises(LeaseHeldError, match="other-host.example.*pid 4242"):
        store.acquire_lease("exp")


def test_expired_lease_is_taken_over_and_old_owner_loses(store):
    old = store.acquire_lease("exp", ttl_s=0.3)
    time.sleep(0.4)
    new = store.acquire_lease("exp", ttl_s=30)
    assert store.read_lease("exp")["owner"] == new.owner
    with pytest.raises(LeaseLostError, match="now held by host"):
        old.renew()
    assert old.lost
    with pytest.raises(LeaseLostError):
        old.check()
    old.release()  # must not delete the new owner's lease
    assert store.read_lease("exp")["owner"] == new.owner
    new.renew()
    new.release()


def test_lease_of_dead_process_on_this_host_is_taken_over_at_once(store):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(child.stdout)
    _plant_lease(store, "exp", _foreign_lease(host=socket.gethostname(), pid=dead_pid,
                                              pid_start=None, expires_at=time.time() + 3600))
    started = time.monotonic()
    lease = store.acquire_lease("exp")
    assert time.monotonic() - started < 2
    assert store.read_lease("exp")["owner"] == lease.owner
    lease.release()


def test_lease_of_reused_pid_is_taken_over(store):
    # Our own pid, but with another start time: the original holder is gone and the pid reused.
    _plant_lease(store, "exp", _foreign_lease(host=socket.gethostname(), pid=os.getpid(),
                                              pid_start=1, expires_at=time.time() + 3600))
    with store.acquire_lease("exp") as lease:
        assert store.read_lease("exp")["owner"] == lease.owner


def test_wait_for_release_by_another_thread(store):
    holder = store.acquire_lease("exp")
    timer = threading.Timer(0.6, holder.release)
    timer.start()
    started = time.monotonic()
    try:
        with store.acquire_lease("exp", wait_s=5) as lease:
            waited = time.monotonic() - started
            assert store.read_lease("exp")["owner"] == lease.owner
    finally:
        timer.join()
    assert 0.5 <= waited < 3


def test_wait_gives_up_with_lease_held_error(store):
    with store.acquire_lease("exp"):
        started = time.monotonic()
        with pytest.raises(LeaseHeldError, match="waited"):
            store.acquire_lease("exp", wait_s=0.6)
        assert 0.5 <= time.monotonic() - started < 2


def test_heartbeat_extends_expiry(store):
    with store.acquire_lease("exp", ttl_s=1.5) as lease:
        first = store.read_lease("exp")["expires_at"]
        lease.start_heartbeat(interval_s=0.2)
        time.sleep(0.7)
        assert store.read_lease("exp")["expires_at"] > first
        time.sleep(1.2)  # longer than the ttl: still ours thanks to the heartbeat
        with pytest.raises(LeaseHeldError):
            store.acquire_lease("exp")
        lease.stop_heartbeat()
        assert not lease.lost and lease.heartbeat_error is None


def test_heartbeat_notices_takeover(store):
    lease = store.acquire_lease("exp", ttl_s=0.3)
    lease.start_heartbeat(interval_s=5)  # far too slow: the lease expires in between
    time.sleep(0.4)
    thief = store.acquire_lease("exp", ttl_s=30)
    lease.stop_heartbeat()
    with pytest.raises(LeaseLostError):
        lease.renew()
    assert lease.lost
    lease.release()
    assert store.read_lease("exp")["owner"] == thief.owner
    thief.release()


def test_concurrent_acquirers_get_exactly_one_lease(store):
    results: list[object] = []
    barrier = threading.Barrier(4)

    def contender() -> None:
        barrier.wait()
        try:
            results.append(store.acquire_lease("exp"))
        except LeaseHeldError as e:
            results.append(e)

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, ckpt.Lease)]
    assert len(winners) == 1 and len(results) == 4
    assert store.read_lease("exp")["owner"] == winners[0].owner


def test_local_lease_files(tmp_path):
    store = LocalFolderStore(tmp_path)
    with store.acquire_lease("exp"):
        assert (tmp_path / "exp" / "lease.json").is_file()
        assert (tmp_path / "exp" / "lease.lock").is_file()
    assert not (tmp_path / "exp" / "lease.json").exists()
    assert not [p for p in (tmp_path / "exp").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------- S3 errors


def test_missing_bucket_is_a_storage_error_naming_it(s3_server):
    store = open_store("s3://no-such-bucket-xyz/hpo")
    for call in (lambda: store.read("exp"), lambda: store.write("exp", "{}"),
                 lambda: store.exists("exp"), store.list_names,
                 lambda: store.acquire_lease("exp")):
        with pytest.raises(StorageError, match="no-such-bucket-xyz.*does not exist"):
            call()


def test_unreachable_endpoint_is_a_storage_error(s3_server):
    import boto3
    from botocore.config import Config

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                          config=Config(connect_timeout=0.5, read_timeout=0.5,
                                        retries={"max_attempts": 1, "mode": "standard"}))
    store = S3Store("bucket", "hpo", client=client)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        store.read("exp")
    with pytest.raises(StorageError, match="cannot reach"):
        store.write("exp", "{}")
    assert time.monotonic() - started < 5


def test_default_client_uses_aws_endpoint_url(s3_server, s3_uri):
    store = open_store(s3_uri)
    assert store.endpoint.rstrip("/") == s3_server.endpoint
    store.write("exp", "{}")
    assert store.read("exp") == "{}"


# ---------------------------------------------------------------------------------- open_store


def test_open_store_local_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    abs_store = open_store(f"file://{tmp_path}/a")
    assert isinstance(abs_store, LocalFolderStore) and abs_store.root == tmp_path / "a"
    assert abs_store.uri == f"file://{tmp_path}/a"
    rel = open_store("file://rel/store")
    assert rel.root == tmp_path / "rel" / "store" and rel.root.is_absolute()
    assert rel.uri.startswith("file:///")
    assert open_store(".prefect-hpo").root == tmp_path / ".prefect-hpo"
    assert open_store(str(tmp_path / "plain")).root == tmp_path / "plain"
    assert open_store(tmp_path / "pathlike").root == tmp_path / "pathlike"
    spaced = open_store(tmp_path / "with space")
    assert open_store(spaced.uri).root == spaced.root
    # The relative root was fixed when opened, so a chdir does not move it.
    monkeypatch.chdir("/")
    rel.write("exp", "{}")
    assert (tmp_path / "rel" / "store" / "exp" / "experiment.json").is_file()


def test_open_store_s3_forms(s3_server):
    top = open_store("s3://bucket")
    assert isinstance(top, S3Store) and (top.bucket, top.prefix) == ("bucket", "")
    assert top.uri == "s3://bucket"
    assert top.location("e") == "s3://bucket/e/experiment.json"
    deep = open_store("s3://bucket/deep/prefix/")
    assert (deep.bucket, deep.prefix) == ("bucket", "deep/prefix")
    assert deep.uri == "s3://bucket/deep/prefix"
    assert deep.location("e") == "s3://bucket/deep/prefix/e/experiment.json"


@pytest.mark.parametrize("bad", ["", "   ", "s3://", "s3:///prefix", "s3:bucket", "gs://b/p",
                                 "http://host/x", "file://"])
def test_open_store_rejects_bad_uris(bad):
    with pytest.raises(StoreURIError) as info:
        open_store(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, StorageError)
    assert "URI" in str(info.value)


def test_s3_deep_prefix_lists_only_its_own_experiments(s3_server):
    bucket = s3_server.bucket()
    a, b = open_store(f"s3://{bucket}/team/a"), open_store(f"s3://{bucket}/team")
    a.write("one", "{}")
    b.write("two", "{}")
    assert a.list_names() == ["one"]
    assert b.list_names() == ["two"]  # team/a/one/experiment.json is not an experiment of "team"


def test_lease_message_for_unreadable_lease_is_taken_over(tmp_path):
    store = LocalFolderStore(tmp_path)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "lease.json").write_text("{not json")
    assert "error" in store.read_lease("exp")
    with store.acquire_lease("exp") as lease:
        assert store.read_lease("exp")["owner"] == lease.owner


def test_lease_files_are_written_atomically_enough_for_status(store):
    with store.acquire_lease("exp", ttl_s=5) as lease:
        for _ in range(5):
            lease.renew()
            doc = store.read_lease("exp")
            assert set(doc) >= {"owner", "host", "pid", "pid_start", "acquired_at", "renewed_at",
                                "expires_at"}
            assert doc["renewed_at"] >= doc["acquired_at"]


_HOLDER = """
import sys, time
from prefect_hpo.storage.checkpoint import open_store
lease = open_store(sys.argv[1]).acquire_lease("exp", ttl_s=3600)
print("ready", flush=True)
time.sleep(60)
"""


def test_lease_of_sigkilled_driver_is_taken_over_at_once(store):
    """The resume scenario: a driver in another process is SIGKILLed while holding a long lease."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, store.uri], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(LeaseHeldError, match=f"pid {child.pid}"):
            store.acquire_lease("exp")
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    started = time.monotonic()
    with store.acquire_lease("exp") as lease:
        assert store.read_lease("exp")["owner"] == lease.owner
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------------------------- lease times


def test_lease_times_read_as_utc_and_distance_from_now():
    from prefect_hpo.storage.lease import describe_time

    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert describe_time(now + 42, now) == "2027-01-15T08:00:42Z (in 42 s)"
    assert describe_time(now - 300, now) == "2027-01-15T07:55:00Z (5 min ago)"
    assert describe_time(None, now) == describe_time("soon", now) == describe_time(True, now) == "an unknown time"
    assert describe_time(float("nan"), now) == "an unknown time"


def test_lease_held_message_has_no_raw_epoch(store):
    doc = _foreign_lease()
    _plant_lease(store, "exp", doc)
    with pytest.raises(LeaseHeldError) as info:
        store.acquire_lease("exp")
    message = str(info.value)
    assert str(int(doc["expires_at"])) not in message
    assert re.search(r"expires at 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (59|60) s\)", message), message
    assert re.search(r"since \S+Z \(10[0-9] s ago\)", message), message  # acquired 100 s ago


def test_held_message_for_an_unreadable_lease_says_so_not_host_question_mark():
    from prefect_hpo.storage.lease import _held_message

    message = _held_message("exp", {"error": "unreadable lease document: not JSON"}, "s3://b/exp/lease.json", 0)
    assert "unreadable" in message and "s3://b/exp/lease.json" in message
    assert "host ?" not in message and "pid ?" not in message
