"""The artifact index on Redis: every write is one Lua script (lua/*.lua), so it is atomic.

Key layout. Every key carries the `{idx}` hash tag: one script must update a record, the
refcounts of all its objects and their tombstones together, so in a Redis Cluster the whole
index lives in one slot (it is small: one short key per object).

    conveyor:art:{idx}:rec:{RUN}:{J}:{KIND}   hash    the ArtifactRecord's fields (times as
                                                      epoch seconds, holders as JSON, complete 0/1)
    conveyor:art:{idx}:dig:{RUN}:{J}:{KIND}   set     the digests the record references
    conveyor:art:{idx}:records                set     every record key, for records() (SSCAN)
    conveyor:art:{idx}:run:{RUN}              set     the run's record keys, for get()
    conveyor:art:{idx}:ref:{DIGEST}           string  refcount; deleted when it reaches zero
    conveyor:art:{idx}:tomb:{DIGEST}          string  tombstone, PX = its TTL
    conveyor:art:{idx}:has:{DIGEST}           string  present: a complete record confirmed it stored
    conveyor:art:{idx}:lock:{NAME}            string  the owner, PX = the lease

`{J}` is a digest of the job name, never the name: matrix job names carry environment
values, and key names show up in monitoring tools. Names are stored as hash values only.
Times of tombstones and locks are Redis's (PX), so machines with skewed clocks agree.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Callable, Collection, Iterator, Sequence

import redis as redis_py

from shared.artifacts.base import check_digest
from shared.artifacts.index import UnknownRecord, check_key, check_lock_name, check_seconds, reserved_digests
from shared.artifacts.index.base import TOMBSTONE_TTL_S, ArtifactRecord
from shared.state.base import check_run_id
from shared.state.redis import ERR_KEYS, REPLY_ERR, REPLY_OK, SOCKET_TIMEOUT_S, job_digest, lua_locals

PREFIX = "conveyor:art:{idx}:"
RECORDS_KEY = PREFIX + "records"
# SSCAN hint and pipeline size of records(): bounds one round trip, not the total.
PAGE_SIZE = 500
# A record's digest set changing between our read and the script is rare (two writers of
# the same key); more retries than this means something is rewriting it in a loop.
_MAX_ATTEMPTS = 10
_SCRIPTS = ("reserve", "delete", "complete", "touch", "begin_delete", "acquire_lock", "release_lock")
_WITH_PRELUDE = {"reserve", "delete"}


def lua_names() -> dict[str, str]:
    """The reply tags the index scripts share with this module (the state store's), by the
    Lua local they are generated as: Lua never spells one itself."""
    return {"REPLY_OK": REPLY_OK, "REPLY_ERR": REPLY_ERR, "ERR_KEYS": ERR_KEYS}


def record_key(run_id: str, job: str, kind: str) -> str:
    """The hash holding one record."""
    return f"{PREFIX}rec:{run_id}:{job_digest(job)}:{kind}"


def digests_key(run_id: str, job: str, kind: str) -> str:
    """The set of digests one record references."""
    return f"{PREFIX}dig:{run_id}:{job_digest(job)}:{kind}"


def run_records_key(run_id: str) -> str:
    """The set of a run's record keys."""
    return f"{PREFIX}run:{run_id}"


def ref_key(digest: str) -> str:
    """The refcount of one object."""
    return f"{PREFIX}ref:{digest}"


def tomb_key(digest: str) -> str:
    """The tombstone of one object being deleted."""
    return f"{PREFIX}tomb:{digest}"


def present_key(digest: str) -> str:
    """The mark that an object is stored (set by complete, cleared by begin_delete)."""
    return f"{PREFIX}has:{digest}"


def lock_key(name: str) -> str:
    """A named lock."""
    return f"{PREFIX}lock:{name}"


def script_text(name: str) -> str:
    """The full text Redis runs for lua/`name`.lua: generated names, the prelude if it uses it,
    the script."""
    lua = resources.files("shared.artifacts.index").joinpath("lua")
    text = lua.joinpath(name + ".lua").read_text(encoding="utf-8")
    if name in _WITH_PRELUDE:
        text = lua.joinpath("_prelude.lua").read_text(encoding="utf-8") + "\n" + text
    return lua_locals(lua_names()) + text


def _ms(seconds: float) -> int:
    # PX 0 is an error in Redis; a non-positive TTL means "expire at once".
    return max(1, int(seconds * 1000))


class RedisArtifactIndex:
    """The artifact index on Redis (or a Redis-compatible server); safe to share across threads."""

    def __init__(self, url: str) -> None:
        # The URL may override socket_timeout; query options win over these keyword defaults.
        self.client: redis_py.Redis = redis_py.Redis.from_url(
            url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S
        )
        self._scripts = {name: self.client.register_script(script_text(name)) for name in _SCRIPTS}

    def _record_keys(self, run_id: str, job: str, kind: str) -> list[str]:
        return [record_key(run_id, job, kind), digests_key(run_id, job, kind), RECORDS_KEY,
                run_records_key(run_id)]

    def _releasing(self, script: str, run_id: str, job: str, kind: str,
                   extra_keys: list[str], args: Callable[[list[str]], list[Any]]) -> list[str]:
        """Call a script that releases the record's current digests, whose refcount keys it
        must declare: read the digest set, declare its keys, let the script check the set is
        unchanged, and read again if a concurrent writer of the same key got in between.
        `args(old_digests)` builds the script's ARGV."""
        base = self._record_keys(run_id, job, kind)
        for _ in range(_MAX_ATTEMPTS):
            old = sorted(self.client.smembers(base[1]))
            keys = base + [ref_key(d) for d in old] + extra_keys
            result = self._scripts[script](keys=keys, args=args(old))
            if result[0] == REPLY_OK:
                return list(result[1:])
        raise RuntimeError(f"the digests of {kind} record {run_id}/{job} keep changing")  # pragma: no cover

    # -- records -----------------------------------------------------------------------

    def reserve(self, record: ArtifactRecord, digests: Collection[str]) -> set[str]:
        wanted = reserved_digests(record, digests)
        pairs = [item for field in _encode(record).items() for item in field]
        new_keys = [ref_key(d) for d in wanted] + [tomb_key(d) for d in wanted]
        return set(self._releasing("reserve", *record.key, new_keys,
                                   lambda old: [len(old), len(wanted), *old, *wanted, *pairs]))

    def complete(self, run_id: str, job: str, kind: str) -> None:
        check_key(run_id, job, kind)
        marks = [present_key(d) for d in sorted(self.digests(run_id, job, kind))]
        if not self._scripts["complete"](keys=[record_key(run_id, job, kind), *marks]):
            raise UnknownRecord(run_id, job, kind)

    def forget(self, digest: str) -> None:
        self.client.delete(present_key(check_digest(digest)))

    def present(self, digests: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        if not wanted:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(wanted), PAGE_SIZE):
            pipe.mget([present_key(d) for d in wanted[start:start + PAGE_SIZE]])
        values = [v for page in pipe.execute() for v in page]
        return {d for d, v in zip(wanted, values) if v is not None}

    def get(self, run_id: str, job: str | None = None, kind: str | None = None) -> list[ArtifactRecord]:
        check_run_id(run_id)
        if job is not None and kind is not None:
            keys = [record_key(run_id, job, kind)]
        else:
            keys = sorted(self.client.smembers(run_records_key(run_id)))
        found = [r for r in self._load(keys) if r.complete]
        found = [r for r in found if (job is None or r.job == job) and (kind is None or r.kind == kind)]
        return sorted(found, key=lambda r: (r.job, r.kind))

    def touch(self, run_id: str, job: str, kind: str, at: float) -> None:
        check_key(run_id, job, kind)
        check_seconds("at", at)
        self._scripts["touch"](keys=[record_key(run_id, job, kind)], args=[repr(float(at))])

    def records(self) -> Iterator[ArtifactRecord]:
        cursor, seen = 0, set()
        while True:
            cursor, keys = self.client.sscan(RECORDS_KEY, cursor, count=PAGE_SIZE)
            # SSCAN may return a member twice (the set can be rehashed between calls): the
            # collector must not decide on, or count, one record twice.
            fresh = sorted(set(keys) - seen)
            seen.update(fresh)
            yield from self._load(fresh)  # a record deleted meanwhile is skipped
            if cursor == 0:
                return

    def _load(self, keys: Sequence[str]) -> list[ArtifactRecord]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [_decode(fields) for fields in pipe.execute() if fields]

    def digests(self, run_id: str, job: str, kind: str) -> set[str]:
        """The digests a record references (empty when unknown); for a dry-run collection."""
        check_key(run_id, job, kind)
        return set(self.client.smembers(digests_key(run_id, job, kind)))

    def delete(self, run_id: str, job: str, kind: str) -> list[str]:
        check_key(run_id, job, kind)
        return sorted(self._releasing("delete", run_id, job, kind, [], lambda old: old))

    # -- refcounts and tombstones ------------------------------------------------------

    def refcounts(self, digests: Sequence[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        if not wanted:
            return {}
        values = self.client.mget([ref_key(d) for d in wanted])
        return {d: int(v) if v is not None else 0 for d, v in zip(wanted, values)}

    def begin_delete(self, digest: str, ttl_s: float = TOMBSTONE_TTL_S) -> bool:
        check_digest(digest)
        check_seconds("ttl_s", ttl_s)
        return bool(self._scripts["begin_delete"](keys=[ref_key(digest), tomb_key(digest), present_key(digest)],
                                                  args=[_ms(ttl_s)]))

    def end_delete(self, digest: str) -> None:
        self.client.delete(tomb_key(check_digest(digest)))

    def tombstoned(self, digests: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        if not wanted:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for digest in wanted:
            pipe.exists(tomb_key(digest))
        return {d for d, present in zip(wanted, pipe.execute()) if present}

    # -- the collector lock ------------------------------------------------------------

    def acquire_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        check_lock_name(name)
        check_seconds("ttl_s", ttl_s)
        return bool(self._scripts["acquire_lock"](keys=[lock_key(name)], args=[owner, _ms(ttl_s)]))

    def release_lock(self, name: str, owner: str) -> None:
        check_lock_name(name)
        self._scripts["release_lock"](keys=[lock_key(name)], args=[owner])

    def close(self) -> None:
        self.client.close()


def _encode(record: ArtifactRecord) -> dict[str, str]:
    # repr() of a float round-trips exactly; the scripts store these strings untouched.
    return {
        "run_id": record.run_id,
        "job": record.job,
        "kind": record.kind,
        "name": record.name,
        "manifest": record.manifest,
        "size": str(int(record.size)),
        "files": str(int(record.files)),
        "pipeline": record.pipeline,
        "created_at": repr(float(record.created_at)),
        "expire_at": "" if record.expire_at is None else repr(float(record.expire_at)),
        "last_access": repr(float(record.last_access)),
        "holders": json.dumps(sorted(record.holders)),
        "complete": "0",
    }


def _decode(fields: dict[str, str]) -> ArtifactRecord:
    return ArtifactRecord(
        run_id=fields["run_id"],
        job=fields["job"],
        kind=fields["kind"],
        name=fields["name"],
        manifest=fields["manifest"],
        size=int(fields["size"]),
        files=int(fields["files"]),
        pipeline=fields["pipeline"],
        created_at=float(fields["created_at"]),
        expire_at=float(fields["expire_at"]) if fields["expire_at"] else None,
        last_access=float(fields["last_access"]),
        holders=frozenset(json.loads(fields["holders"])),
        complete=fields["complete"] == "1",
    )
