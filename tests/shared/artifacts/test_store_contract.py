"""The ObjectStore contract, run against the filesystem and the S3 (moto) backends."""
from __future__ import annotations

import hashlib
import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.artifacts import IntegrityError, ObjectInfo, ObjectNotFound, ObjectStore, object_key, open_store
from shared.artifacts.filesystem import FilesystemStore
from shared.artifacts.s3 import S3Store
from tests.services import TEST_PART_SIZE
from tests.shared.artifacts.store_faults import corrupt, leftovers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_store_satisfies_the_protocol(store):
    assert isinstance(store, ObjectStore)


def test_bytes_round_trip_under_a_fan_out_key(store):
    info = store.put_bytes(b"hello artifacts")
    assert info == ObjectInfo(sha(b"hello artifacts"), 15)
    assert store.has(info.digest)
    assert store.get_bytes(info.digest) == b"hello artifacts"
    assert list(store.iter_objects()) == [info]
    key = object_key(info.digest)
    assert key == f"cas/{info.digest[:2]}/{info.digest[2:4]}/{info.digest}"
    if isinstance(store, FilesystemStore):
        assert (store.root / key).read_bytes() == b"hello artifacts"
    else:
        assert store.client.head_object(Bucket=store.bucket, Key=f"artifacts/{key}")["ContentLength"] == 15


def test_file_round_trip_hashes_while_streaming(store, tmp_path):
    data = os.urandom(3 * TEST_PART_SIZE + 17)  # multipart on S3
    info = store.put_file(write(tmp_path / "src.bin", data))
    assert info == ObjectInfo(sha(data), len(data))
    store.get_file(info.digest, tmp_path / "out.bin", size=len(data))
    assert (tmp_path / "out.bin").read_bytes() == data
    assert store.verify(info.digest)
    assert store.counters.snapshot() == {"bytes_uploaded": len(data), "objects_uploaded": 1, "dedup_hits": 0,
                                         "bytes_downloaded": len(data), "objects_downloaded": 1,
                                             "bytes_streamed": len(data)}


def test_empty_object(store, tmp_path):
    info = store.put_file(write(tmp_path / "empty", b""))
    assert info.digest == sha(b"")
    store.get_file(info.digest, tmp_path / "out", size=0)
    assert (tmp_path / "out").read_bytes() == b""


def test_existing_object_is_not_uploaded_again(store, tmp_path):
    src = write(tmp_path / "a", b"same bytes")
    store.put_file(src)
    store.counters.reset()
    assert store.put_file(src).digest == sha(b"same bytes")
    assert store.put_file(src, sha(b"same bytes")).size == 10
    store.put_bytes(b"same bytes")
    assert store.counters.snapshot()["bytes_uploaded"] == 0
    assert store.counters.dedup_hits == 3


def test_concurrent_writers_of_the_same_content_store_one_object(store, tmp_path):
    src = write(tmp_path / "a", os.urandom(1000))
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: store.put_file(src), range(16)))
    assert len({i.digest for i in infos}) == 1
    assert [o.digest for o in store.iter_objects()] == [infos[0].digest]
    assert store.verify(infos[0].digest)


def test_missing_object(store, tmp_path):
    missing = sha(b"never stored")
    assert not store.has(missing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ObjectNotFound):
        store.get_file(missing, out / "file")
    with pytest.raises(ObjectNotFound):
        store.get_bytes(missing)
    assert list(out.iterdir()) == []  # no file, no temp


def test_invalid_digest_is_refused(store, tmp_path):
    with pytest.raises(ValueError):
        store.has("../../etc/passwd")
    with pytest.raises(ValueError):
        store.get_file("ABC", tmp_path / "out")


def test_flipped_byte_is_detected_on_download_and_by_verify(store, tmp_path):
    data = os.urandom(2 * TEST_PART_SIZE)
    digest = store.put_file(write(tmp_path / "src", data)).digest
    corrupt(store, digest)
    assert store.verify(digest) is False
    dest = tmp_path / "out" / "app.whl"
    dest.parent.mkdir()
    with pytest.raises(IntegrityError) as excinfo:
        store.get_file(digest, dest, size=len(data))
    err = excinfo.value
    assert err.expected == digest and err.actual != digest
    assert str(dest) in str(err) and digest in str(err) and err.actual in str(err)
    assert list(dest.parent.iterdir()) == []  # neither the file nor its temp
    with pytest.raises(IntegrityError):
        store.get_bytes(digest)


def test_wrong_size_is_an_integrity_error(store, tmp_path):
    digest = store.put_bytes(b"12345").digest
    with pytest.raises(IntegrityError, match="expected 6 bytes, got 5"):
        store.get_file(digest, tmp_path / "out", size=6)
    assert not (tmp_path / "out").exists()


def test_file_changed_after_hashing_never_becomes_visible(store, tmp_path):
    src = write(tmp_path / "src", b"a" * (2 * TEST_PART_SIZE))
    stale = sha(src.read_bytes())
    src.write_bytes(b"b" * (2 * TEST_PART_SIZE + 1))
    with pytest.raises(IntegrityError) as excinfo:
        store.put_file(src, stale)
    assert excinfo.value.expected == stale and str(src) in str(excinfo.value)
    assert not store.has(stale)
    assert list(store.iter_objects()) == []
    assert leftovers(store) == []


def test_a_mismatch_is_retried_before_failing(store, tmp_path, monkeypatch):
    digest = store.put_bytes(b"flaky").digest
    real = store._read_chunks
    calls = []

    def flaky(d):
        calls.append(d)
        return iter([b"flakY"]) if len(calls) == 1 else real(d)

    monkeypatch.setattr(store, "_read_chunks", flaky)
    store.get_file(digest, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"flaky"
    assert len(calls) == 2


def test_delete(store):
    digest = store.put_bytes(b"bye").digest
    store.delete(digest)
    assert not store.has(digest)
    store.delete(digest)  # idempotent
    assert list(store.iter_objects()) == []


def test_aborted_filesystem_upload_leaves_nothing(fs_store, tmp_path, monkeypatch):
    import shared.artifacts.filesystem as fs

    def dying(fh, size):
        yield fh.read(10)
        raise OSError("disk went away")

    monkeypatch.setattr(fs, "read_chunks", dying)
    src = write(tmp_path / "src", b"x" * 100)
    with pytest.raises(OSError, match="disk went away"):
        fs_store.put_file(src)
    assert not fs_store.has(sha(b"x" * 100))
    assert leftovers(fs_store) == []


def test_aborted_multipart_upload_leaves_nothing(s3_store, tmp_path, monkeypatch):
    data = os.urandom(3 * TEST_PART_SIZE)
    real = s3_store.client.upload_part

    def dying(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionError("network went away")
        return real(**kwargs)

    monkeypatch.setattr(s3_store.client, "upload_part", dying)
    with pytest.raises(ConnectionError):
        s3_store.put_file(write(tmp_path / "src", data))
    assert not s3_store.has(sha(data))
    assert leftovers(s3_store) == []


def test_source_growing_mid_multipart_upload_is_aborted(s3_store, tmp_path, monkeypatch):
    src = write(tmp_path / "src", os.urandom(3 * TEST_PART_SIZE))
    digest = sha(src.read_bytes())
    real = s3_store.client.upload_part

    def upload_then_append(**kwargs):
        response = real(**kwargs)
        if kwargs["PartNumber"] == 1:
            with open(src, "ab") as fh:  # a still-running process appends to its output
                fh.write(b"more")
        return response

    monkeypatch.setattr(s3_store.client, "upload_part", upload_then_append)
    with pytest.raises(IntegrityError) as excinfo:
        s3_store.put_file(src, digest)
    assert excinfo.value.expected == digest
    assert not s3_store.has(digest)
    assert leftovers(s3_store) == []


FIFTY_MB = 50 * 1024 * 1024


def test_large_file_streams_with_bounded_memory(store, tmp_path):
    src = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with open(src, "wb") as fh:
        for _ in range(FIFTY_MB // len(block)):
            fh.write(block)
    tracemalloc.start()
    try:
        info = store.put_file(src)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        store.get_file(info.digest, tmp_path / "out.bin", size=FIFTY_MB)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == FIFTY_MB
    assert os.path.getsize(tmp_path / "out.bin") == FIFTY_MB
    assert upload_peak < 10 * 1024 * 1024, upload_peak
    assert download_peak < 10 * 1024 * 1024, download_peak
    if isinstance(store, S3Store):
        head = store.client.head_object(Bucket=store.bucket, Key=store._key(info.digest))
        assert "-" in head["ETag"]  # a multipart ETag: it really went up in parts


def test_open_store_urls(tmp_path):
    fs = open_store(f"file://{tmp_path}/store")
    assert isinstance(fs, FilesystemStore) and fs.root == tmp_path / "store"
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:1"
    for bad in ("ftp://x/y", "file://relative/path", "s3:///prefix", "/plain/path"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_open_store_reads_the_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVEYOR_S3_ENDPOINT_URL", "http://minio.example:9000")
    assert open_store("s3://bucket").client.meta.endpoint_url == "http://minio.example:9000"
