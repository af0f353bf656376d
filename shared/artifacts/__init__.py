"""Content-addressed artifact store: `open_store(url)` and the manifest-based tree transfer.

`file:///path` opens a `FilesystemStore`, `s3://bucket/prefix` an `S3Store` (endpoint from
the argument, else `CONVEYOR_S3_ENDPOINT_URL`, else AWS). See docs/artifacts.md.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.artifacts.base import (
    ArtifactError,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PathError,
    TransferCounters,
    object_key,
)
from shared.artifacts.manifest import (
    Manifest,
    ManifestEntry,
    build_manifest,
    download_tree,
    upload_tree,
)

__all__ = [
    "ArtifactError", "IntegrityError", "Manifest", "ManifestEntry", "ObjectInfo", "ObjectNotFound",
    "ObjectStore", "PathError", "TransferCounters", "build_manifest", "download_tree", "object_key",
    "open_store", "upload_tree",
]


def open_store(url: str, endpoint_url: str | None = None, **options) -> ObjectStore:
    """Open the store at `url` (`file:///abs/path` or `s3://bucket[/prefix]`).

    `options` go to the backend: `retries`, `backoff` for both, `part_size`, `client` for S3.
    boto3 is imported only for s3:// URLs.
    """
    scheme = urlsplit(url).scheme
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URL with a host is not supported: {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file:// URL needs an absolute path: {url!r}")
        from shared.artifacts.filesystem import FilesystemStore

        return FilesystemStore(Path(path), **options)
    if scheme == "s3":
        from shared.artifacts.s3 import S3Store, endpoint_from_env, split_s3_url

        bucket, prefix = split_s3_url(url)
        return S3Store(bucket, prefix, endpoint_url=endpoint_url or endpoint_from_env(), **options)
    raise ValueError(f"unsupported artifact store URL {url!r}: use file:///path or s3://bucket/prefix")
