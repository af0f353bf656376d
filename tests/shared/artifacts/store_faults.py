"""Faults injected into a store behind its back, for the store and manifest tests."""
from __future__ import annotations

from shared.artifacts.filesystem import FilesystemStore


def corrupt(store, digest: str) -> None:
    """Flip one byte of a stored object behind the store's back (bit rot, a bad disk, a bad copy)."""
    if isinstance(store, FilesystemStore):
        path = store.root / "cas" / digest[:2] / digest[2:4] / digest
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        key = store._key(digest)
        data = bytearray(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(data))


def leftovers(store) -> list[str]:
    """What an interrupted or rejected upload left behind: temp files, or open multipart uploads."""
    if isinstance(store, FilesystemStore):
        return sorted(p.name for p in (store.root / "tmp").iterdir())
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)
