"""Artifact store benchmarks: Conveyor's stores against raw boto3, `cp` and tar, same endpoint, same run.

    python bench/artifacts_bench.py [--size-mb 200] [--files 2000] [--rss-mb 1024] [--repeat 3] [--quick]
                                    [--only big,reupload,small,rss,profile] [--tmp-dir DIR]

    big       one SIZE file up + down: S3Store.put_file + get_file vs boto3 upload_file +
              download_file; FilesystemStore vs `cp` there and back   target ratio >= 0.8
              (and, without a target, vs `cp` + fsync + sha256: the store's guarantees)
    reupload  the same tree (the big file + FILES small ones) published twice the way a job does
              (build_manifest + publish_manifest with a SQLite index): first vs second
                                                   target >= 10x faster, 0 bytes uploaded
    small     FILES files of 1-8 KB: upload_tree + download_tree vs one tar through boto3
    rss       peak RSS growth of a child process moving an RSS_MB file up and down
                                                                   target < 100 MB growth
    profile   where the time of `big` goes: per S3 operation, hashing, fsync, moto itself

Ratio = baseline time / Conveyor time (> 1: Conveyor is faster); every time is the median
of `--repeat` runs, Conveyor and baseline interleaved. The script starts its own
`moto_server` on a free port (tests/services.py's, as the tests start it) with its spool in
a temporary directory on disk, and removes both when it ends, also on Ctrl-C or SIGTERM.
Exit status 1 when a target is missed. Timers and /proc readers: bench/measure.py.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import MB, host_line, patched, run_sections, timed, verdict, vm_hwm  # noqa: E402
from tests.services import start_moto  # noqa: E402

BUCKET = "conveyor-bench"
SMALL_SIZES = (1024, 8192)  # bytes, inclusive
SMALL_DIRS = 20
RATIO_TARGET = 0.8
REUPLOAD_TARGET = 10.0
RSS_TARGET_MB = 100.0
REQUEST_SAMPLES = 50  # tiny requests timed one by one in `profile`
# Dummy credentials for moto; set before boto3 is imported anywhere, children inherit them.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# -- small helpers --------------------------------------------------------------------------

def seconds(value: float) -> str:
    return f"{value:7.2f} s"


def rate(size: int, elapsed: float) -> str:
    return f"{size / MB / elapsed:6.0f} MB/s" if elapsed > 0 else "     - MB/s"


def median(values: list[float]) -> float:
    return statistics.median(values)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (longest mount-point prefix in /proc/mounts)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _dev, point, fstype, *_ = line.split()
            point = point.replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, fstype
    return kind


def write_random(path: Path, size: int) -> None:
    """A file of `size` random (incompressible, not sparse) bytes, written 1 MiB at a time."""
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = min(MB, left)
            out.write(os.urandom(chunk))
            left -= chunk


def write_small_files(root: Path, count: int, seed: int = 1) -> int:
    """`count` files of 1-8 KB random content under `root/dNN/`; returns their total size."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        folder = root / f"d{i % SMALL_DIRS:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(*SMALL_SIZES)
        (folder / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def round_trip(store: Any, source: Path, dest: Path) -> tuple[float, float, str]:
    """`put_file(source)` (it hashes first) then a verified `get_file` to `dest`: (up s, down s, digest)."""
    start = time.perf_counter()
    info = store.put_file(source)
    middle = time.perf_counter()
    store.get_file(info.digest, dest, info.size)
    return middle - start, time.perf_counter() - middle, info.digest


def interleaved(repeat: int, conveyor: Callable[[int], Any], baseline: Callable[[int], Any]) -> tuple[list, list]:
    """Run both sides `repeat` times, alternating which goes first, so drift hits both alike."""
    ours, theirs = [], []
    for i in range(repeat):
        if i % 2 == 0:
            ours.append(conveyor(i))
            theirs.append(baseline(i))
        else:
            theirs.append(baseline(i))
            ours.append(conveyor(i))
    return ours, theirs


# -- moto_server --------------------------------------------------------------------------------

@contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """The tests' throwaway `moto_server` (tests/services.py) on a free port; yields its URL.

    Its spool (moto keeps objects over ~5 MB in temp files) goes to `workdir`, so the
    bench's temporary directory holds everything it wrote.
    """
    spool = workdir / "moto-spool"
    spool.mkdir()
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(spool)  # start_moto passes this process's environment on
    try:
        proc, port = start_moto(workdir)
    finally:
        if previous is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = previous
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def raw_client(endpoint: str) -> Any:
    """The baseline: a plain boto3 client (defaults, path-style addressing as moto needs)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


class OperationTimer:
    """Wall time per S3 operation of one boto3 client, from its before-call/after-call events.

    after-call fires once the response headers are parsed, so a GetObject's time is the
    time to its first byte; the body streams afterwards.
    """

    def __init__(self, stack: ExitStack, client: Any) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        events = client.meta.events
        events.register("before-call.s3", self._before)
        events.register("after-call.s3", self._after)
        stack.callback(events.unregister, "before-call.s3", self._before)
        stack.callback(events.unregister, "after-call.s3", self._after)

    # `context` is one dict per request, shared by both events: it pairs them across threads.
    def _before(self, context: dict, **_: Any) -> None:
        self._started[id(context)] = time.perf_counter()

    def _after(self, model: Any, context: dict, **_: Any) -> None:
        elapsed = time.perf_counter() - self._started.pop(id(context))
        with self._lock:
            self.seconds[model.name].append(elapsed)

    def total(self, name: str) -> float:
        return sum(self.seconds.get(name, []))

    def count(self, name: str) -> int:
        return len(self.seconds.get(name, []))


# -- the bench ----------------------------------------------------------------------------------

@dataclass
class Bench:
    """Everything the sections share: sizes, the temp dir, the moto endpoint and its clients."""

    args: argparse.Namespace
    tmp: Path
    endpoint: str
    client: Any  # shared by every Conveyor S3 store (as a worker would share one)
    raw: Any  # the baseline's own plain client
    tree: Path = field(init=False)
    big: Path = field(init=False)
    small_bytes: int = 0

    def __post_init__(self) -> None:
        self.tree = self.tmp / "tree"
        self.big = self.tree / "big.bin"

    @property
    def size(self) -> int:
        return self.args.size_mb * MB

    def s3_store(self, prefix: str):
        from shared.artifacts import open_store

        return open_store(f"s3://{BUCKET}/{prefix}", client=self.client)

    def fs_store(self, name: str):
        from shared.artifacts import open_store

        return open_store((self.tmp / name).as_uri())


def bench_big(b: Bench) -> bool:
    from shared.artifacts.base import hash_file

    size, repeat = b.size, b.args.repeat
    print(f"== big: one {b.args.size_mb} MB file up + down, median of {repeat} "
          f"(Conveyor hashes before upload and verifies the download)")
    dest = b.tmp / "big.out"

    def check(path: Path) -> None:
        if path.stat().st_size != size:
            raise RuntimeError(f"{path} has {path.stat().st_size} bytes, expected {size}")

    def conveyor_s3(i: int) -> tuple[float, float]:
        store = b.s3_store(f"big-{i}")
        up_s, down_s, digest = round_trip(store, b.big, dest)
        check(dest)
        dest.unlink()
        store.delete(digest)  # the next round must upload again, and moto's memory stays flat
        return up_s, down_s

    def boto3_s3(i: int) -> tuple[float, float]:
        key = f"raw/big-{i}"
        up_s = timed(lambda: b.raw.upload_file(str(b.big), BUCKET, key))
        down_s = timed(lambda: b.raw.download_file(BUCKET, key, str(dest)))
        check(dest)
        dest.unlink()
        b.raw.delete_object(Bucket=BUCKET, Key=key)
        return up_s, down_s

    def conveyor_fs(i: int) -> tuple[float, float]:
        store = b.fs_store(f"fs-big-{i}")
        up_s, down_s, _ = round_trip(store, b.big, dest)
        check(dest)
        dest.unlink()
        remove(store.root)
        return up_s, down_s

    def cp(i: int) -> tuple[float, float]:
        there = b.tmp / f"cp-{i}"
        there.mkdir()
        up_s = timed(lambda: subprocess.run(["cp", str(b.big), str(there / "big.bin")], check=True))
        down_s = timed(lambda: subprocess.run(["cp", str(there / "big.bin"), str(dest)], check=True))
        check(dest)
        dest.unlink()
        remove(there)
        return up_s, down_s

    def cp_checked(i: int) -> tuple[float, float]:
        """`cp` given the store's guarantees: the copy made durable and both copies hashed."""
        there = b.tmp / f"cp-{i}"
        there.mkdir()

        def up() -> None:
            subprocess.run(["cp", str(b.big), str(there / "big.bin")], check=True)
            fsync_path(there / "big.bin")
            hash_file(there / "big.bin")

        def down() -> None:
            subprocess.run(["cp", str(there / "big.bin"), str(dest)], check=True)
            hash_file(dest)

        up_s, down_s = timed(up), timed(down)
        check(dest)
        dest.unlink()
        remove(there)
        return up_s, down_s

    print(f"{'':36}{'up':>10}{'down':>10}{'total':>10}{'MB/s':>7}{'ratio':>8}  target")
    ok = True
    for label, ours, base_label, theirs, held in (
        ("S3Store put_file + get_file", conveyor_s3, "boto3 upload_file + download_file", boto3_s3, True),
        ("FilesystemStore put_file + get_file", conveyor_fs, "cp there + cp back", cp, True),
        ("FilesystemStore (again)", conveyor_fs, "cp + fsync + sha256 each way", cp_checked, False),
    ):
        mine, base = interleaved(repeat, ours, theirs)
        mine_total = median([u + d for u, d in mine])
        base_total = median([u + d for u, d in base])
        ratio = base_total / mine_total
        met = ratio >= RATIO_TARGET
        ok = ok and (met or not held)
        for name, runs, total in ((label, mine, mine_total), (base_label, base, base_total)):
            up_s, down_s = median([u for u, _ in runs]), median([d for _, d in runs])
            tail = ""
            if runs is mine:
                tail = f"{ratio:7.2f}x  " + (f">= {RATIO_TARGET} {verdict(met)}" if held else "(same guarantees)")
            print(f"{name:36}{seconds(up_s)}  {seconds(down_s)}  {seconds(total)}{2 * size / MB / total:6.0f} {tail}")
        up_ratio = median([u for u, _ in base]) / median([u for u, _ in mine])
        down_ratio = median([d for _, d in base]) / median([d for _, d in mine])
        print(f"{'':36}ratio up alone {up_ratio:.2f}x, down alone {down_ratio:.2f}x")
    return ok


def publish(store: Any, index: Any, root: Path, globs: list[str], run_id: str) -> None:
    """What a job does after it succeeds: build the manifest, reserve, upload what is new, record."""
    import time as clock

    from shared.artifacts import build_manifest
    from shared.artifacts.index import ArtifactRecord
    from shared.artifacts.publish import publish_manifest

    now = clock.time()
    publish_manifest(store, index, root, build_manifest(root, globs), ArtifactRecord(
        run_id=run_id, job="build", kind="artifact", name="bench", manifest="", size=0, files=0,
        pipeline="bench", created_at=now, expire_at=None, last_access=now))


def bench_reupload(b: Bench) -> bool:
    repeat, files = b.args.repeat, b.args.files
    print(f"== reupload: a job publishing the same tree twice ({b.args.size_mb} MB file + {files} small files, "
          f"{(b.size + b.small_bytes) / MB:.0f} MB), median of {repeat}")
    from shared.artifacts.index import open_index

    globs = ["big.bin", "small"]
    second_run = "2nd run: bytes / objects uploaded, dedup hits"
    print(f"{'backend':12}{'first':>10}{'second':>10}{'speed-up':>10}  {second_run:46}target")
    ok = True
    for backend in ("s3", "filesystem"):
        firsts, seconds_, second_counters = [], [], []
        requests: dict[str, dict[str, int]] = {}
        for i in range(repeat):
            store = b.s3_store(f"tree-{i}") if backend == "s3" else b.fs_store(f"fs-tree-{i}")
            index = open_index(f"sqlite:///{b.tmp / f'index-{backend}-{i}.db'}")
            with ExitStack() as stack:
                ops = OperationTimer(stack, b.client) if backend == "s3" else None
                first = timed(lambda: publish(store, index, b.tree, globs, f"run-{i}-a"))
                if ops:
                    requests["first"] = {name: len(v) for name, v in ops.seconds.items()}
                    ops.seconds.clear()
                store.counters.reset()
                second = timed(lambda: publish(store, index, b.tree, globs, f"run-{i}-b"))
                if ops:
                    requests["second"] = {name: len(v) for name, v in ops.seconds.items()}
            index.close()
            firsts.append(first)
            seconds_.append(second)
            second_counters.append(store.counters.snapshot())
            if backend == "s3":
                for info in list(store.iter_objects()):
                    if info.size > SMALL_SIZES[1]:
                        store.delete(info.digest)  # keep moto's memory flat; small objects cost little
            else:
                remove(store.root)
        speedup = median(firsts) / median(seconds_)
        uploaded = max(c["bytes_uploaded"] for c in second_counters)
        objects = max(c["objects_uploaded"] for c in second_counters)
        hits = min(c["dedup_hits"] for c in second_counters)
        met = speedup >= REUPLOAD_TARGET and uploaded == 0
        ok = ok and met
        counters = f"{uploaded} B / {objects}, {hits} hits"
        print(f"{backend:12}{seconds(median(firsts))}  {seconds(median(seconds_))}{speedup:9.1f}x  {counters:46}"
              f">= {REUPLOAD_TARGET:.0f}x, 0 B {verdict(met)}")
        for run, counts in requests.items():
            listed = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))
            print(f"{'':12}S3 requests, {run} run: {listed or 'none'}")
    return ok


def bench_small(b: Bench) -> bool:
    repeat, files = b.args.repeat, b.args.files
    print(f"== small: {files} files of 1-8 KB ({b.small_bytes / MB:.1f} MB), up + down, median of {repeat}")
    from shared.artifacts import download_tree, upload_tree

    source = b.tree / "small"

    def conveyor(i: int) -> tuple[float, float]:
        store = b.s3_store(f"small-{i}")
        out = b.tmp / f"small-out-{i}"
        digest = None

        def up() -> None:
            nonlocal digest
            digest, _ = upload_tree(store, b.tree, ["small"])

        up_s = timed(up)
        down_s = timed(lambda: download_tree(store, digest, out))
        if count_files(out / "small") != files:
            raise RuntimeError(f"download_tree produced {count_files(out)} files, expected {files}")
        remove(out)
        return up_s, down_s

    def tar(i: int) -> tuple[float, float]:
        key = f"raw/small-{i}.tar"
        out = b.tmp / f"tar-out-{i}"

        def up() -> None:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                archive.add(source, arcname="small")
            buffer.seek(0)
            b.raw.upload_fileobj(buffer, BUCKET, key)

        def down() -> None:
            buffer = io.BytesIO()
            b.raw.download_fileobj(BUCKET, key, buffer)
            buffer.seek(0)
            with tarfile.open(fileobj=buffer, mode="r") as archive:
                archive.extractall(out, filter="data")

        up_s, down_s = timed(up), timed(down)
        if count_files(out / "small") != files:
            raise RuntimeError(f"tar extraction produced {count_files(out)} files, expected {files}")
        remove(out)
        b.raw.delete_object(Bucket=BUCKET, Key=key)
        return up_s, down_s

    mine, base = interleaved(repeat, conveyor, tar)
    print(f"{'':40}{'up':>10}{'down':>10}{'total':>10}{'files/s':>9}{'ratio':>8}")
    ratio = median([u + d for u, d in base]) / median([u + d for u, d in mine])
    for name, runs in (("upload_tree + download_tree (8 threads)", mine),
                       ("tar + boto3 upload/download + extract", base)):
        up_s, down_s = median([u for u, _ in runs]), median([d for _, d in runs])
        total = median([u + d for u, d in runs])
        tail = f"{ratio:7.2f}x  (no target: one object per file vs one archive)" if runs is mine else ""
        print(f"{name:40}{seconds(up_s)}  {seconds(down_s)}  {seconds(total)}{2 * files / total:8.0f} {tail}")
    return True


def bench_rss(b: Bench) -> bool:
    size = b.args.rss_mb * MB
    print(f"== rss: a child process moves a {b.args.rss_mb} MB file up and down through S3Store "
          "(peak RSS, /proc/self/status VmHWM)")
    path = b.tmp / "rss.bin"
    write_random(path, size)
    try:
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_rss", b.endpoint, str(path)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"rss child failed ({result.returncode}):\n{result.stderr[-3000:]}")
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        remove(path)
    growth = (figures["peak_after"] - figures["peak_before"]) / MB
    met = growth < RSS_TARGET_MB
    print(f"peak RSS after imports, client and a warm-up round trip: {figures['peak_before'] / MB:7.1f} MB")
    print(f"peak RSS after put_file + get_file of {b.args.rss_mb} MB:        {figures['peak_after'] / MB:7.1f} MB"
          f"  (up {figures['up_s']:.1f} s, down {figures['down_s']:.1f} s)")
    print(f"growth: {growth:.1f} MB for {b.args.rss_mb} MB moved each way   target < {RSS_TARGET_MB:.0f} MB "
          f"{verdict(met)}")
    return met


def rss_child(endpoint: str, path: str) -> None:
    """The hidden `_rss` sub-command: measure VmHWM around one put_file + get_file of `path`."""
    from shared.artifacts import open_store
    from shared.artifacts.s3 import DEFAULT_PART_SIZE

    store = open_store(f"s3://{BUCKET}/rss", endpoint_url=endpoint)
    source = Path(path)
    # Warm up every code path (multipart included) so what follows measures transfer, not imports.
    warm = source.with_name("rss-warm.bin")
    write_random(warm, DEFAULT_PART_SIZE + MB)
    info = store.put_file(warm)
    store.get_file(info.digest, warm.with_suffix(".out"), info.size)
    for leftover in (warm, warm.with_suffix(".out")):
        leftover.unlink()
    store.delete(info.digest)
    before = vm_hwm()
    out = source.with_suffix(".out")
    up_s, down_s, digest = round_trip(store, source, out)
    after = vm_hwm()
    out.unlink()
    store.delete(digest)
    print(json.dumps({"peak_before": before, "peak_after": after, "up_s": up_s, "down_s": down_s}))


def bench_profile(b: Bench) -> bool:
    """One traced run of each `big` transfer, split into its parts; moto measured on its own."""
    import shared.artifacts.base as base
    from boto3.s3.transfer import TransferConfig
    from shared.artifacts.base import hash_file
    from shared.artifacts.s3 import make_client

    size = b.size
    print(f"== profile: where a {b.args.size_mb} MB round trip spends its time (one traced run each)")
    dest = b.tmp / "profile.out"

    def line(label: str, elapsed: float, note: str = "") -> None:
        print(f"  {label:46}{seconds(elapsed)}  {note}")

    hash_s = timed(lambda: hash_file(b.big))
    line("sha256 of the file alone (hash_file)", hash_s, rate(size, hash_s))

    with ExitStack() as stack:
        client = make_client(b.endpoint)
        ops = OperationTimer(stack, client)
        from shared.artifacts import open_store

        store = open_store(f"s3://{BUCKET}/profile", client=client)
        hashes: list[float] = []
        with patched(base, "hash_file", hashes):
            total = timed(lambda: store.put_file(b.big))
        parts = ops.count("UploadPart")
        print(f"-- S3Store.put_file: {seconds(total)} ({parts} parts of {store.part_size // MB} MiB, one at a time)")
        line("hash_file (dedup check needs the digest)", sum(hashes))
        line("HeadObject (has?)", ops.total("HeadObject"))
        line(f"UploadPart x {parts}", ops.total("UploadPart"), rate(size, ops.total("UploadPart")))
        line("CompleteMultipartUpload (moto joins the parts)", ops.total("CompleteMultipartUpload"))
        rest = total - sum(hashes) - sum(sum(v) for v in ops.seconds.values())
        line("the rest: read parts, sha256 while sending", rest)
        digest = hash_file(b.big).digest
        ops.seconds.clear()
        total = timed(lambda: store.get_file(digest, dest, size))
        print(f"-- S3Store.get_file: {seconds(total)} (one GET streamed in 1 MiB chunks)")
        line("GetObject to first byte (moto reads the object)", ops.total("GetObject"))
        line("stream + sha256 + write to a temp file", total - ops.total("GetObject"), f"(sha256 alone {hash_s:.2f} s)")
        dest.unlink()
        store.delete(digest)

    with ExitStack() as stack:
        raw = raw_client(b.endpoint)
        ops = OperationTimer(stack, raw)
        one_thread = TransferConfig(max_concurrency=1)  # so operation times add up to wall time
        total = timed(lambda: raw.upload_file(str(b.big), BUCKET, "raw/profile", Config=one_thread))
        print(f"-- boto3 upload_file, 1 thread: {seconds(total)} (default config, 10 threads: see `big`)")
        line(f"UploadPart x {ops.count('UploadPart')}", ops.total("UploadPart"), rate(size, ops.total("UploadPart")))
        line("CompleteMultipartUpload (ChecksumAlgorithm=CRC32)", ops.total("CompleteMultipartUpload"))
        ops.seconds.clear()
        total = timed(lambda: raw.download_file(BUCKET, "raw/profile", str(dest)))
        gets = ops.count("GetObject")
        print(f"-- boto3 download_file: {seconds(total)} ({gets} ranged GETs, 10 threads)")
        line("ranged GetObject to first byte, summed", ops.total("GetObject"),
             "(moto copies the whole object for every range)")
        dest.unlink()
        raw.delete_object(Bucket=BUCKET, Key="raw/profile")

        print("-- moto on its own (raw boto3, same 8 MiB parts, one at a time)")
        for algorithm in (None, "CRC32"):
            ops.seconds.clear()
            total = timed(lambda: manual_multipart(raw, b.big, "raw/manual", 8 * MB, algorithm))
            line(f"multipart, ChecksumAlgorithm={algorithm}", total,
                 f"parts {ops.total('UploadPart'):.2f} s, complete {ops.total('CompleteMultipartUpload'):.2f} s")
            raw.delete_object(Bucket=BUCKET, Key="raw/manual")
        for threads, part_mb in ((1, 8), (10, 8), (10, 32)):
            config = TransferConfig(max_concurrency=threads, multipart_chunksize=part_mb * MB)
            total = timed(lambda: raw.upload_file(str(b.big), BUCKET, "raw/config", Config=config))
            line(f"boto3 upload_file, {threads} thread(s), {part_mb} MiB parts", total, rate(size, total))
            raw.delete_object(Bucket=BUCKET, Key="raw/config")
        raw.upload_file(str(b.big), BUCKET, "raw/stream")

        def stream() -> None:
            body = raw.get_object(Bucket=BUCKET, Key="raw/stream")["Body"]
            for _ in body.iter_chunks(MB):
                pass

        total = timed(stream)
        line("one GetObject streamed, nothing written", total, rate(size, total))
        raw.delete_object(Bucket=BUCKET, Key="raw/stream")

        # Small-object work (reupload, small) is bound by moto's cost per request, not by bytes.
        latencies = {"PutObject 4 KB": [], "HeadObject": [], "GetObject 4 KB": []}
        payload = os.urandom(4096)
        for i in range(REQUEST_SAMPLES):
            key = f"raw/tiny-{i}"
            latencies["PutObject 4 KB"].append(timed(lambda: raw.put_object(Bucket=BUCKET, Key=key, Body=payload)))
            latencies["HeadObject"].append(timed(lambda: raw.head_object(Bucket=BUCKET, Key=key)))
            latencies["GetObject 4 KB"].append(
                timed(lambda: raw.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
        with ThreadPoolExecutor(8) as pool:
            heads = 8 * REQUEST_SAMPLES
            total = timed(lambda: list(pool.map(
                lambda i: raw.head_object(Bucket=BUCKET, Key=f"raw/tiny-{i % REQUEST_SAMPLES}"), range(heads))))
        print(f"-- moto per request, one at a time (median of {REQUEST_SAMPLES}): " + ", ".join(
            f"{name} {median(values) * 1000:.1f} ms" for name, values in latencies.items())
            + f"; HeadObject on 8 threads: {heads / total:.0f} requests/s")
        for i in range(REQUEST_SAMPLES):
            raw.delete_object(Bucket=BUCKET, Key=f"raw/tiny-{i}")

    store = b.fs_store("fs-profile")
    hashes, fsyncs = [], []
    with patched(base, "hash_file", hashes), patched(os, "fsync", fsyncs):
        total = timed(lambda: store.put_file(b.big))
    print(f"-- FilesystemStore.put_file: {seconds(total)}")
    line("hash_file (dedup check needs the digest)", sum(hashes))
    line("fsync of the new object", sum(fsyncs))
    line("copy into tmp/ + sha256 while copying, link", total - sum(hashes) - sum(fsyncs))
    total = timed(lambda: store.get_file(digest, dest, size))
    print(f"-- FilesystemStore.get_file: {seconds(total)} (read + sha256 + write, 1 MiB chunks; "
          f"sha256 alone {hash_s:.2f} s)")
    dest.unlink()
    remove(store.root)
    cp_s = timed(lambda: subprocess.run(["cp", str(b.big), str(dest)], check=True))
    fsync_s = timed(lambda: fsync_path(dest))
    print(f"-- cp: {seconds(cp_s)}, then fsync of the copy {seconds(fsync_s)} (cp itself does not fsync)")
    dest.unlink()
    return True


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manual_multipart(client: Any, path: Path, key: str, part_size: int, algorithm: str | None) -> None:
    """S3Store's upload loop (parts read and sent one at a time) with an optional ChecksumAlgorithm."""
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key, **extra)["UploadId"]
    parts = []
    with open(path, "rb") as fh:
        number = 1
        while chunk := fh.read(part_size):
            response = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=chunk, **extra)
            part = {"PartNumber": number, "ETag": response["ETag"]}
            if algorithm:
                part[f"Checksum{algorithm}"] = response[f"Checksum{algorithm}"]
            parts.append(part)
            number += 1
    client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


# -- command line ---------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Bench], bool]] = {
    "big": bench_big,
    "reupload": bench_reupload,
    "small": bench_small,
    "rss": bench_rss,
    "profile": bench_profile,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=None, help="big file size (default 200; --quick 20)")
    parser.add_argument("--files", type=int, default=None, help="small files (default 2000; --quick 200)")
    parser.add_argument("--rss-mb", type=int, default=None, help="file moved by `rss` (default 1024; --quick 100)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per measurement, median reported (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="20 MB, 200 files, 100 MB, 1 run each: a smoke run")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the files and moto's spool go; must be on disk, not tmpfs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.size_mb = args.size_mb or (20 if quick else 200)
    args.files = args.files or (200 if quick else 2000)
    args.rss_mb = args.rss_mb or (100 if quick else 1024)
    args.repeat = args.repeat or (1 if quick else 3)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if filesystem_type(args.tmp_dir) in ("tmpfs", "ramfs"):
        parser.error(f"{args.tmp_dir} is in memory ({filesystem_type(args.tmp_dir)}): pass --tmp-dir on a disk")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.update({k: os.environ.get(k, v) for k, v in AWS_ENV.items()})
    if argv[:1] == ["_rss"]:  # _rss ENDPOINT PATH: the child process of `rss`, not for users
        rss_child(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the ExitStack stops moto and removes the files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import boto3
    import moto

    print(f"{host_line()}; moto {moto.__version__}, boto3 {boto3.__version__}; files in {args.tmp_dir} "
          f"({filesystem_type(args.tmp_dir)})\n")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-abench-", dir=args.tmp_dir)))
        endpoint = stack.enter_context(moto_server(tmp))
        from shared.artifacts.s3 import make_client

        b = Bench(args, tmp, endpoint, make_client(endpoint), raw_client(endpoint))
        b.client.create_bucket(Bucket=BUCKET)
        start = time.perf_counter()
        b.tree.mkdir()
        write_random(b.big, b.size)
        b.small_bytes = write_small_files(b.tree / "small", args.files)
        print(f"(test data: {args.size_mb} MB file + {args.files} small files written in "
              f"{time.perf_counter() - start:.1f} s)\n")
        return run_sections({name: (lambda section=SECTIONS[name]: section(b)) for name in args.only})


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the ExitStack has stopped moto_server and removed the files
        print("\ninterrupted; moto_server and the temporary files are gone", file=sys.stderr)
        sys.exit(130)
