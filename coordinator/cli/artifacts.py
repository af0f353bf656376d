"""`conveyor artifacts`: list, fetch, verify and collect what jobs stored."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import click

from coordinator.cli.options import api_client, api_failure, run_id_argument
from coordinator.terminal import clean
from shared.artifacts.base import BaseStore  # the standard library only: cheap to load

PROGRESS_MIN_BYTES = 4 * 1024 * 1024  # smaller transfers finish before a bar would help


def _open(settings):
    from shared.artifacts import open_store
    from shared.artifacts.index import open_index

    return (open_store(settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url),
            open_index(settings.effective_state_url))


@click.group()
def artifacts() -> None:
    """The artifact store (CONVEYOR_ARTIFACTS_URL: file:///path or s3://bucket/prefix)."""


@artifacts.command("ls")
@run_id_argument
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list the source snapshot and archived logs.")
def list_artifacts(run_id: str, fmt: str, show_all: bool) -> None:
    """What a run stored: one line per job artifact (and, with --all, source and logs)."""
    from coordinator.artifact_view import record_json
    from coordinator.cli.options import open_run_store
    from coordinator.status_view import text_table
    from shared.units import human_size

    client = api_client()
    if client is not None:
        items = _api_records(client, run_id, show_all)
        for item in items:
            item.pop("members", None)  # the same objects as `record_json` gives
    else:
        settings, _ = open_run_store(run_id)
        _, index = _open(settings)
        items = [record_json(r) for r in index.get(run_id) if show_all or r.kind == "artifact"]
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"run {run_id} stored no artifacts")
        return
    # text_table cleans every cell: job and artifact names come from the pipeline.
    rows = [[i["job"] or "-", i["kind"], i["name"], str(i["files"]), human_size(i["size"]),
             i["expire_at"] or "never", i["manifest"][:12]] for i in items]
    click.echo(text_table(["JOB", "KIND", "NAME", "FILES", "SIZE", "EXPIRES", "MANIFEST"], rows))


@artifacts.command()
@run_id_argument
@click.argument("job")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Directory to write into [default: ./JOB].")
@click.option("--log", "want_log", is_flag=True, help="Fetch the job's archived full log instead.")
def get(run_id: str, job: str, output: str | None, want_log: bool) -> None:
    """Download a job's artifacts (verified, paths checked) into a directory."""
    from coordinator.cli.options import open_run_store
    from shared.artifacts.base import ArtifactError, PathError
    from shared.artifacts.publish import fetch_record
    from worker.workspace import workspace_path

    client = api_client()
    if client is not None:
        _get_via_api(client, run_id, job, output, want_log)
        return
    settings, _ = open_run_store(run_id)
    store, index = _open(settings)
    records = index.get(run_id, job, "log" if want_log else "artifact")
    if not records:
        what = "an archived log" if want_log else "artifacts"
        click.echo(f"error: job '{clean(job)}' of run {run_id} has no {what}", err=True)
        sys.exit(1)
    dest = Path(output) if output else Path(workspace_path(Path("."), run_id, job).name)
    record = records[0]
    started = time.monotonic()
    try:
        with _progress(store, record.size, clean(f"{job}: {record.files} file(s)")):
            if want_log:
                dest.mkdir(parents=True, exist_ok=True)
                # The record's name is the stored log's file name, read from the index: only
                # its last part is used, so it cannot point outside DIR.
                name = Path(record.name).name
                store.get_file(record.manifest, dest / (name if name not in ("", ".", "..") else "job.log"),
                               record.size)
                index.touch(run_id, job, "log", time.time())
            else:
                fetch_record(store, index, record, dest)
    except (ArtifactError, PathError) as exc:
        # A refused member path or a corrupt object: one line, with the manifest's
        # (untrusted) paths cleaned, instead of a traceback.
        click.echo(clean(f"error: {job}: {exc}"), err=True)
        sys.exit(1)
    click.echo(clean(f"{record.files} file(s), {record.size} bytes of {job} -> {dest}/ "
                     f"in {time.monotonic() - started:.1f}s (sha256-verified)"))


def _api_records(client, run_id: str, all_kinds: bool) -> list[dict]:
    from coordinator.api_client import ApiClientError

    try:
        return client.artifacts(run_id, all_kinds)
    except ApiClientError as exc:
        api_failure(exc, run_id)


def _get_via_api(client, run_id: str, job: str, output: str | None, want_log: bool) -> None:
    """`artifacts get` through the server: the same checks and the same tree, each file
    verified twice (the server cuts a stream whose bytes do not match; this side hashes
    what arrived before it becomes visible) and the listing checked against the record's
    manifest digest."""
    from coordinator.api_client import ApiClientError
    from shared.artifacts.base import ArtifactError, PathError
    from shared.artifacts.manifest import Manifest, ManifestEntry, download_tree
    from worker.workspace import workspace_path

    kind = "log" if want_log else "artifact"
    records = [r for r in _api_records(client, run_id, want_log) if r.get("job") == job and r.get("kind") == kind]
    if not records:
        what = "an archived log" if want_log else "artifacts"
        click.echo(f"error: job '{clean(job)}' of run {run_id} has no {what}", err=True)
        sys.exit(1)
    dest = Path(output) if output else Path(workspace_path(Path("."), run_id, job).name)
    record = records[0]
    objects = _ApiObjects(client, run_id, job, kind)
    started = time.monotonic()
    try:
        with _progress(objects, record["size"], clean(f"{job}: {record['files']} file(s)")):
            if want_log:
                dest.mkdir(parents=True, exist_ok=True)
                name = Path(record["name"]).name  # its last part only: it cannot point outside DIR
                objects.paths[record["manifest"]] = name
                objects.get_file(record["manifest"], dest / (name if name not in ("", ".", "..") else "job.log"),
                                 record["size"])
            else:
                # The listing rebuilt into a manifest: its canonical bytes must hash to the
                # record's manifest digest (get_bytes checks), so no member was altered.
                manifest = Manifest(tuple(ManifestEntry(m.get("path"), m.get("digest"), m.get("size"), m.get("mode"),
                                                        m.get("link_target"))
                                          for m in record.get("members") or []))
                objects.blobs[record["manifest"]] = manifest.to_bytes()
                for entry in manifest.files:
                    objects.paths.setdefault(entry.sha256, entry.path)  # type: ignore[arg-type]
                download_tree(objects, record["manifest"], dest)
    except ApiClientError as exc:
        if exc.status in (401, 403):
            api_failure(exc, run_id)
        click.echo(clean(f"error: {job}: {exc.message}"), err=True)
        sys.exit(1)
    except (ArtifactError, PathError) as exc:
        click.echo(clean(f"error: {job}: {exc}"), err=True)
        sys.exit(1)
    click.echo(clean(f"{record['files']} file(s), {record['size']} bytes of {job} -> {dest}/ "
                     f"in {time.monotonic() - started:.1f}s (sha256-verified)"))


class _ApiObjects(BaseStore):
    """The artifact store as the server serves it, for `download_tree`: an object is read
    as the first member (path) holding that digest; the manifest is the rebuilt listing.
    `BaseStore` hashes every object as it arrives and keeps it only if it matches."""

    def __init__(self, client, run_id: str, job: str, kind: str) -> None:
        super().__init__(retries=0)
        self.client, self.run_id, self.job, self.kind = client, run_id, job, kind
        self.paths: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}

    def delete(self, digest: str) -> None:
        raise NotImplementedError("the API only reads artifacts")

    def iter_objects(self):
        raise NotImplementedError("the API lists artifacts by run, not objects")

    def _read_chunks(self, digest: str):
        from shared.artifacts.base import ObjectNotFound

        if digest in self.blobs:
            yield self.blobs[digest]
            return
        if digest not in self.paths:
            raise ObjectNotFound(digest)
        stream = self.client.artifact_chunks(self.run_id, self.job, self.paths[digest], self.kind)
        try:
            yield from stream
        finally:
            stream.close()


class _progress:
    """A rich progress bar fed by the store's byte counter, for transfers worth watching."""

    def __init__(self, store, total: int, label: str):
        self.store, self.total, self.label = store, total, label
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "_progress":
        if self.total >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
            self.thread = threading.Thread(target=self._show, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=2)

    def _show(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        start = self.store.counters.snapshot()["bytes_streamed"]
        with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      transient=True) as bar:
            task = bar.add_task(self.label, total=self.total)
            while not self.stop.wait(0.1):
                bar.update(task, completed=self.store.counters.snapshot()["bytes_streamed"] - start)


@artifacts.command()
@click.option("--retries", type=click.IntRange(0, 10), default=1, show_default=True,
              help="Re-reads of an object before it is reported corrupt (a read can fail in transit).")
@click.option("--delete-corrupt", is_flag=True,
              help="Delete corrupt objects and forget missing ones, so the next upload of that content "
                   "stores it afresh.")
def verify(retries: int, delete_corrupt: bool) -> None:
    """Re-hash every stored object and check every recorded one is there; exit 1 on corrupt or missing."""
    from coordinator.cli.options import cli_settings
    from shared.artifacts import open_store
    from shared.artifacts.index import open_index

    settings = cli_settings()
    store = open_store(settings.effective_artifacts_url, settings.s3_endpoint_url, retries=retries)
    index = open_index(settings.effective_state_url)
    checked = size = 0
    stored: set[str] = set()
    corrupt: list[str] = []
    for info in store.iter_objects():
        checked += 1
        size += info.size
        stored.add(info.digest)
        if not store.verify(info.digest):
            corrupt.append(info.digest)
            click.echo(f"corrupt: {info.digest} ({info.size} bytes): its content no longer hashes to its name", err=True)
            if delete_corrupt:
                store.delete(info.digest)
                index.forget(info.digest)
                click.echo(f"deleted: {info.digest}", err=True)
    # Objects the index says a record holds but the store does not have (deleted out of band,
    # a bucket restored from an older copy): downloads of them would fail.
    missing: dict[str, str] = {}
    for record in index.records():
        if not record.complete:
            continue
        for digest in sorted(index.digests(*record.key)):
            if digest not in stored and digest not in missing:
                missing[digest] = f"{record.run_id}/{record.job or '-'}/{record.kind}"
                click.echo(clean(f"missing: {digest}, recorded for {missing[digest]}"), err=True)
                if delete_corrupt:
                    index.forget(digest)
    click.echo(f"verified {checked} object(s), {size} bytes in {settings.effective_artifacts_url}: "
               f"{len(corrupt)} corrupt, {len(missing)} missing")
    sys.exit(1 if corrupt or missing else 0)


@artifacts.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Print every decision, not only deletions.")
def gc(dry_run: bool, verbose: bool) -> None:
    """Delete expired artifact records and the objects no record references.

    Records held by jobs that have not finished (they will download them) are never deleted.
    Policies come from `[[retention]]` in conveyor.toml; see docs/artifacts.md.
    """
    from coordinator.cli.options import cli_settings, open_cli_store
    from shared.artifacts.gc import collect, held_by_pending_jobs
    from shared.artifacts.retention import parse_policies

    settings = cli_settings()
    try:
        policies = parse_policies(list(settings.retention), "conveyor.toml")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    store, index = _open(settings)
    report = collect(store, index, policies, held_by_pending_jobs(open_cli_store(settings)), dry_run=dry_run)
    if report.skipped:
        click.echo("another collection is running (lock artifacts-gc held); nothing done", err=True)
        return
    for line in report.decisions:  # they name runs and jobs
        if verbose or not line.startswith("keep"):
            click.echo(clean(line))
    click.echo(clean(report.summary()))
