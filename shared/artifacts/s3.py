"""The S3 backend: objects under `s3://bucket/<prefix>/cas/ab/cd/<hash>`, any S3-compatible endpoint.

S3 has no rename, so atomicity comes from the protocol itself: a small object is one PUT
sent only after its hash is known; a large one is a multipart upload whose parts stream
from disk and which is completed only when the streamed bytes hash to the expected digest
(aborted otherwise), so a partial or wrong object is never visible under a CAS key.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.artifacts.base import (
    CHUNK_SIZE,
    BaseStore,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    check_digest,
    object_key,
)

# AWS refuses parts under 5 MiB (except the last); 8 MiB is boto3's own default.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def make_client(endpoint_url: str | None = None, max_connections: int = 32) -> Any:
    """A boto3 S3 client: path-style addressing (MinIO, moto), credentials as boto3 finds them."""
    config = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=max_connections,
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


class S3Store(BaseStore):
    """A content-addressed store in an S3 bucket under an optional key prefix."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: Any = None, part_size: int = DEFAULT_PART_SIZE, **options) -> None:
        super().__init__(**options)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.blind_write_max = part_size  # one PUT with If-None-Match: *
        self.client = client if client is not None else make_client(endpoint_url)

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _key(self, digest: str) -> str:
        key = object_key(digest)
        return f"{self.prefix}/{key}" if self.prefix else key

    def has(self, digest: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(digest))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return False
            raise
        return True

    def delete(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(digest))

    def iter_objects(self) -> Iterator[ObjectInfo]:
        cas_prefix = f"{self.prefix}/cas/" if self.prefix else "cas/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=cas_prefix):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                try:
                    check_digest(name)
                except ValueError:
                    continue
                yield ObjectInfo(name, item["Size"])

    def _read_chunks(self, digest: str) -> Iterator[bytes]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(digest))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise ObjectNotFound(digest) from None
            raise
        body = response["Body"]
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        finally:
            body.close()

    def _write_bytes(self, info: ObjectInfo, data: bytes) -> None:
        self._put_object(info, data)

    def _put_object(self, info: ObjectInfo, data: bytes) -> None:
        try:
            # If-None-Match makes "never overwritten" hold even against a concurrent writer.
            self.client.put_object(Bucket=self.bucket, Key=self._key(info.digest), Body=data,
                                   IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                raise
            # Someone else stored the same digest first; its bytes are ours by definition.

    def _write_verified(self, path: Path, expected: ObjectInfo) -> None:
        if expected.size <= self.part_size:
            # Small enough to hold: read it all, check it, then one PUT.
            with open(path, "rb") as fh:
                data = fh.read(self.part_size + 1)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected.digest or len(data) != expected.size:
                raise IntegrityError(str(path), expected.digest, actual, expected.size, len(data))
            self._put_object(expected, data)
            return
        self._multipart(path, expected)

    def _multipart(self, path: Path, expected: ObjectInfo) -> None:
        key = self._key(expected.digest)
        # A CRC32 per part: the endpoint checks each part on arrival, and it can assemble
        # the object from the part checksums instead of re-reading it (moto re-reads 200 MB).
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                        ChecksumAlgorithm="CRC32")["UploadId"]
        try:
            sha = hashlib.sha256()
            size = 0
            parts = []
            with open(path, "rb") as fh:
                number = 1
                while chunk := fh.read(self.part_size):
                    sha.update(chunk)
                    size += len(chunk)
                    response = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                       PartNumber=number, Body=chunk, ChecksumAlgorithm="CRC32")
                    part = {"PartNumber": number, "ETag": response["ETag"]}
                    if response.get("ChecksumCRC32"):
                        part["ChecksumCRC32"] = response["ChecksumCRC32"]
                    parts.append(part)
                    number += 1
                    del chunk  # let the part go before reading the next one
            actual = sha.hexdigest()
            if actual != expected.digest or size != expected.size:
                raise IntegrityError(str(path), expected.digest, actual, expected.size, size)
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            # Never leave a half-finished upload: it costs storage and could be completed later.
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError:
                pass
            raise


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix.strip("/")


def endpoint_from_env() -> str | None:
    return os.environ.get("CONVEYOR_S3_ENDPOINT_URL") or None
