"""The Redis state store: every write is one Lua script, so it is atomic and uses Redis's clock.

Key layout (all keys of a run share the `{RUN}` hash tag, so a cluster keeps a run on
one shard and every script touches a single slot):

    conveyor:{RUN}:run          hash    pipeline, status, created_at, finished_at (epoch ms),
                                        cancel_requested, meta (JSON), open/failed/cancelled
                                        job counters, retention_ms
    conveyor:{RUN}:plan         string  the plan, JSON
    conveyor:{RUN}:jobs         hash    job name -> job JSON (status, attempts, token, ...)
    conveyor:{RUN}:events       stream  job, from, to, at, attempt, reason
    conveyor:{RUN}:lease:{J}    string  the current attempt's fencing token, PX = lease
    conveyor:{RUN}:logs:{J}     stream  stream (stdout/stderr), text
    conveyor:runs               zset    run id scored by created_at, for list_runs
    conveyor:token              string  global fencing token counter (INCR)

`{J}` is a digest of the job name, never the name: matrix job names carry environment
values, and key names show up in monitoring tools and `redis-cli --bigkeys`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import OrderedDict
from importlib import resources
from typing import Any, Mapping, Sequence

import redis as redis_py

from shared.state.base import (
    DEFAULT_RETENTION_S,
    HEARTBEAT_RESULTS,
    JOB_STATUSES,
    JOB_TRANSITIONS,
    PENDING,
    REASONS,
    REFUSALS,
    TERMINAL,
    AttemptRecord,
    Claim,
    Event,
    HeartbeatResult,
    JobMeta,
    JobRecord,
    LogEntry,
    Refusal,
    RunExists,
    RunRecord,
    UnknownJob,
    UnknownRun,
    check_count,
    check_create_args,
    check_lease_ms,
    check_run_id,
    check_skip_reason,
    finish_args,
    iso_ms,
    run_counters,
    run_outcome,
)

PREFIX = "conveyor:"
RUNS_KEY = PREFIX + "runs"
TOKEN_KEY = PREFIX + "token"
# Bounds one script call so a chatty job cannot block Redis for long.
LOG_BATCH = 500
SOCKET_TIMEOUT_S = 5.0
_CACHE_RUNS = 1024

# What a script's reply starts with, and why it failed: the protocol between this module
# and lua/*.lua, generated into the scripts like every name in `lua_names`.
REPLY_OK = "ok"
REPLY_ERR = "err"
REPLY_CLAIMED = "claimed"
REPLY_REFUSED = "refused"
REPLY_RETRY = "retry"  # claim: a newer token reached the job first; draw another
ERR_NO_RUN = "no_run"
ERR_NO_JOB = "no_job"
ERR_KEYS = "keys"  # the caller's cached job list is stale; refresh and call again
# The run hash's job counters (docs/state.md, key layout); two are named after the statuses
# they count, so they come from here too rather than being spelled in Lua.
FIELD_OPEN = "open"
FIELD_FAILED = "failed"
FIELD_CANCELLED = "cancelled"

# Names a generated Lua local may carry: a value goes between single quotes unescaped.
_LUA_NAME = re.compile(r"[A-Za-z0-9_]+")


def run_key(run_id: str, part: str) -> str:
    """The key of one part (`run`, `jobs`, `plan`, `events`) of a run."""
    return f"{PREFIX}{{{run_id}}}:{part}"


def job_digest(job: str) -> str:
    """A stable, name-free identifier of a job inside key names."""
    return hashlib.sha1(job.encode("utf-8")).hexdigest()[:16]


def lease_key(run_id: str, job: str) -> str:
    """The key holding the job's current lease (the token, with a PX expiry)."""
    return run_key(run_id, "lease:" + job_digest(job))


def log_key(run_id: str, job: str) -> str:
    """The stream holding the job's log entries."""
    return run_key(run_id, "logs:" + job_digest(job))


def _lua_source(name: str) -> str:
    return resources.files("shared.state").joinpath("lua", name).read_text(encoding="utf-8")


def lua_locals(names: Mapping[str, str]) -> str:
    """`local NAME = 'value'` per entry: how a script gets a name Python owns without spelling it.

    A misspelt local in a script reads an undeclared global, which Redis refuses at run time;
    tests/shared/state/test_lua_names.py also checks every use statically.
    """
    lines = []
    for local, value in sorted(names.items()):
        if not (_LUA_NAME.fullmatch(local) and _LUA_NAME.fullmatch(value)):
            raise ValueError(f"cannot generate Lua local {local!r} = {value!r}")
        lines.append(f"local {local} = '{value}'\n")
    return "".join(lines)


def lua_names() -> dict[str, str]:
    """Every status, reason, refusal, heartbeat answer, reply tag and counter field the state
    scripts use, by the local name they use it under. Lua never spells one of these itself."""
    groups = {
        "STATUS": JOB_STATUSES,
        "REASON": REASONS,
        "REFUSED": REFUSALS,
        "HEARTBEAT": HEARTBEAT_RESULTS,
        "REPLY": (REPLY_OK, REPLY_ERR, REPLY_CLAIMED, REPLY_REFUSED, REPLY_RETRY),
        "ERR": (ERR_NO_RUN, ERR_NO_JOB, ERR_KEYS),
        "FIELD": (FIELD_OPEN, FIELD_FAILED, FIELD_CANCELLED),
    }
    return {f"{group}_{value.upper()}": value for group, values in groups.items() for value in values}


def _machine_header() -> str:
    """The state machine as Lua tables, generated from base.py so both agree by construction.

    Also the names (`lua_names`) and the run-end rules: `RUN_COUNTS[status][allow_failure]`
    is `run_counters` for every terminal status, `RUN_OUTCOME[f .. c .. r]` is `run_outcome`
    with '1'/'0' for failed > 0, cancelled > 0 and cancel_requested (it only compares the
    counters with zero; tests/shared/state/test_lua_names.py checks that it still does).
    """
    machine = {src: {dst: True for dst in sorted(dsts)} for src, dsts in JOB_TRANSITIONS.items()}
    terminal = {s: True for s in sorted(TERMINAL)}
    counts = {
        status: {json.dumps(allow): list(run_counters(status, allow)) for allow in (False, True)}
        for status in sorted(TERMINAL)
    }
    outcome = {
        f"{int(failed)}{int(cancelled)}{int(requested)}": run_outcome(int(failed), int(cancelled), requested)
        for failed, cancelled, requested in itertools.product((False, True), repeat=3)
    }
    return (
        f"local MACHINE = cjson.decode([==[{json.dumps(machine)}]==])\n"
        f"local TERMINAL = cjson.decode([==[{json.dumps(terminal)}]==])\n"
        f"local RUN_COUNTS = cjson.decode([==[{json.dumps(counts)}]==])\n"
        f"local RUN_OUTCOME = cjson.decode([==[{json.dumps(outcome)}]==])\n"
        + lua_locals(lua_names())
    )


def script_text(name: str) -> str:
    """The full text Redis runs for lua/`name`: generated header, prelude, the script."""
    return _machine_header() + _lua_source("_prelude.lua") + "\n" + _lua_source(name)


def _opt(value: Any) -> str:
    """Lua scripts receive '' for None."""
    return "" if value is None else str(value)


def _stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class RedisState:
    """The state store on Redis (or a Redis-compatible server); safe to share across threads."""

    def __init__(self, url: str, *, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.retention_ms = int(retention_s * 1000)
        # The URL may override socket_timeout; query options win over these keyword defaults.
        self.client: redis_py.Redis = redis_py.Redis.from_url(
            url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S
        )
        timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        # A blocking XREAD longer than the socket timeout would raise; long waits are sliced.
        self._block_slice_ms = 1000 if timeout is None else max(1, min(1000, int(timeout * 500)))
        self._scripts = {
            name: self.client.register_script(script_text(name + ".lua"))
            for name in ("create_run", "claim", "heartbeat", "finish", "skip", "cancel", "append_logs")
        }
        # A run's job set never changes after creation, so its log keys can be cached.
        self._log_keys: OrderedDict[str, list[str]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------

    def _run_log_keys(self, run_id: str, refresh: bool = False) -> list[str]:
        with self._cache_lock:
            if not refresh and run_id in self._log_keys:
                self._log_keys.move_to_end(run_id)
                return self._log_keys[run_id]
        names = self.client.hkeys(run_key(run_id, "jobs"))
        if not names:
            raise UnknownRun(run_id)
        keys = [log_key(run_id, name) for name in names]
        with self._cache_lock:
            self._log_keys[run_id] = keys
            while len(self._log_keys) > _CACHE_RUNS:
                self._log_keys.popitem(last=False)
        return keys

    def _base_keys(self, run_id: str) -> list[str]:
        return [run_key(run_id, p) for p in ("run", "jobs", "events", "plan")]

    def _run_ending(self, script: str, run_id: str, lease: list[str], args: list[Any]) -> Any:
        """Call a script that may end the run, declaring every key the run-end EXPIRE touches."""
        for refresh in (False, True):
            keys = self._base_keys(run_id) + lease + self._run_log_keys(run_id, refresh)
            result = self._scripts[script](keys=keys, args=args)
            if isinstance(result, list) and result[:2] == [REPLY_ERR, ERR_KEYS]:
                continue
            return result
        raise RuntimeError(f"job list of run {run_id} keeps changing")  # pragma: no cover

    @staticmethod
    def _raise_err(result: Any, run_id: str, job: str | None = None) -> None:
        if isinstance(result, list) and result and result[0] == REPLY_ERR:
            if result[1] == ERR_NO_RUN:
                raise UnknownRun(run_id)
            if result[1] == ERR_NO_JOB:
                raise UnknownJob(f"{run_id}: {job}")
            raise RuntimeError(f"state script error: {result[1]}")

    # -- runs --------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        pipeline: str,
        jobs: Mapping[str, JobMeta],
        plan: dict,
        meta: dict,
    ) -> None:
        check_create_args(run_id, pipeline, jobs)
        if len({job_digest(name) for name in jobs}) != len(jobs):  # pragma: no cover
            raise ValueError("two job names share a key digest")
        args: list[Any] = [pipeline, json.dumps(meta), json.dumps(plan), self.retention_ms]
        for position, (name, job_meta) in enumerate(jobs.items()):
            record = {
                "position": position,
                "status": PENDING,
                "attempt": 0,
                "worker": None,
                "started_at": None,
                "finished_at": None,
                "exit_code": None,
                "reason": None,
                "allow_failure": job_meta.allow_failure,
                "token": 0,
                "lost": 0,
                "attempts": [],
            }
            args += [name, json.dumps(record)]
        created = self._scripts["create_run"](keys=self._base_keys(run_id), args=args)
        if not created:
            raise RunExists(run_id)
        # Outside the script: the index is not in the run's slot. list_runs tolerates the gap.
        self.client.zadd(RUNS_KEY, {run_id: created})

    def get_run(self, run_id: str) -> RunRecord | None:
        check_run_id(run_id)
        return self._get_runs([run_id])[0]

    def _get_runs(self, run_ids: list[str]) -> list[RunRecord | None]:
        fields = ("pipeline", "status", "created_at", "finished_at", "cancel_requested", "meta")
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(run_key(run_id, "run"), fields)
        records: list[RunRecord | None] = []
        for run_id, values in zip(run_ids, pipe.execute()):
            pipeline, status, created, finished, cancel, meta = values
            if status is None:
                records.append(None)
                continue
            records.append(
                RunRecord(
                    run_id=run_id,
                    pipeline=pipeline,
                    status=status,
                    created_at=iso_ms(int(created)),
                    finished_at=iso_ms(int(finished)) if finished else None,
                    cancel_requested=cancel == "1",
                    meta=json.loads(meta),
                )
            )
        return records

    def get_plan(self, run_id: str) -> dict:
        check_run_id(run_id)
        raw = self.client.get(run_key(run_id, "plan"))
        if raw is None:
            raise UnknownRun(run_id)
        return json.loads(raw)

    def get_jobs(self, run_id: str, names: Sequence[str] | None = None) -> dict[str, JobRecord]:
        check_run_id(run_id)
        if names is not None:
            # Only the jobs asked for: a job start reads its ancestors, not the whole run.
            wanted = list(dict.fromkeys(names))
            if not wanted:
                # No job asked for is still a question about the run: an unknown one raises.
                if not self.client.exists(run_key(run_id, "jobs")):
                    raise UnknownRun(run_id)
                return {}
            values = self.client.hmget(run_key(run_id, "jobs"), wanted)
            if wanted and all(v is None for v in values) and not self.client.exists(run_key(run_id, "jobs")):
                raise UnknownRun(run_id)
            missing = [name for name, v in zip(wanted, values) if v is None]
            if missing:
                raise UnknownJob(f"{run_id}: {missing[0]}")
            decoded = sorted(((n, json.loads(v)) for n, v in zip(wanted, values)), key=lambda p: p[1]["position"])
            return {name: _job_record(name, data) for name, data in decoded}
        raw = self.client.hgetall(run_key(run_id, "jobs"))
        if not raw:
            raise UnknownRun(run_id)
        decoded = sorted(((name, json.loads(v)) for name, v in raw.items()), key=lambda p: p[1]["position"])
        return {name: _job_record(name, data) for name, data in decoded}

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        runs: list[RunRecord] = []
        start = 0
        while len(runs) < limit:
            ids = self.client.zrevrange(RUNS_KEY, start, start + limit - 1)
            if not ids:
                break
            start += len(ids)
            records = self._get_runs(ids)
            gone = [rid for rid, rec in zip(ids, records) if rec is None]
            if gone:
                # The run's keys expired (retention); drop it from the index lazily.
                self.client.zrem(RUNS_KEY, *gone)
                start -= len(gone)
            runs += [rec for rec in records if rec is not None]
        return runs[:limit]

    # -- jobs --------------------------------------------------------------------------

    def claim(
        self, run_id: str, job: str, worker: str, lease_ms: int, max_lost: int = 1
    ) -> Claim | Refusal:
        check_run_id(run_id)
        lease_ms = check_lease_ms(lease_ms)
        while True:
            token = self.client.incr(TOKEN_KEY)
            result = self._run_ending(
                "claim", run_id, [lease_key(run_id, job)], [job, worker, lease_ms, int(max_lost), token]
            )
            self._raise_err(result, run_id, job)
            if result[0] == REPLY_CLAIMED:
                return Claim(token=int(result[1]), attempt=int(result[2]))
            if result[0] == REPLY_REFUSED:
                return Refusal(result[1])
            # REPLY_RETRY: a newer token reached this job first; draw another.

    def heartbeat(self, run_id: str, job: str, token: int, lease_ms: int) -> HeartbeatResult:
        check_run_id(run_id)
        lease_ms = check_lease_ms(lease_ms)
        keys = [run_key(run_id, "run"), run_key(run_id, "jobs"), lease_key(run_id, job)]
        return self._scripts["heartbeat"](keys=keys, args=[job, int(token), lease_ms])

    def finish(
        self,
        run_id: str,
        job: str,
        token: int,
        status: str,
        exit_code: int | None = None,
        reason: str | None = None,
        retry_delay: float | None = None,
    ) -> bool:
        check_run_id(run_id)
        reason, retry_delay = finish_args(status, exit_code, reason, retry_delay)
        # repr() of a float round-trips exactly; the script stores the string as it is, since
        # cjson would round a number to 14 significant digits (SQLite keeps all 17).
        delay = "" if retry_delay is None else repr(retry_delay)
        try:
            result = self._run_ending(
                "finish",
                run_id,
                [lease_key(run_id, job)],
                [job, int(token), status, _opt(exit_code), _opt(reason), delay],
            )
        except UnknownRun:
            return False  # expired run: nothing to write, as for a stale token
        self._raise_err(result, run_id, job)
        return result == 1

    def skip(self, run_id: str, job: str, reason: str) -> bool:
        check_run_id(run_id)
        check_skip_reason(reason)
        result = self._run_ending("skip", run_id, [], [job, reason])
        self._raise_err(result, run_id, job)
        return result == 1

    def request_cancel(self, run_id: str) -> list[str]:
        check_run_id(run_id)
        result = self._run_ending("cancel", run_id, [], [])
        self._raise_err(result, run_id)
        return list(result[1:])

    # -- logs and events ---------------------------------------------------------------

    def append_logs(self, run_id: str, job: str, entries: Sequence[tuple[str, str]]) -> None:
        check_run_id(run_id)
        keys = [run_key(run_id, "run"), run_key(run_id, "jobs"), log_key(run_id, job)]
        # At least one call, so that no entries still checks the run and job exist.
        for start in range(0, max(len(entries), 1), LOG_BATCH):
            args: list[str] = [job]
            for stream, text in entries[start : start + LOG_BATCH]:
                args += [stream, text]
            self._raise_err(self._scripts["append_logs"](keys=keys, args=args), run_id, job)

    def read_logs(
        self,
        run_id: str,
        job: str,
        after: str | None = None,
        count: int = 1000,
        block_ms: int = 0,
    ) -> tuple[list[LogEntry], str]:
        check_run_id(run_id)
        check_count(count)
        items, cursor = self._read_stream(log_key(run_id, job), after, count, block_ms)
        return [LogEntry(f["stream"], f["text"], iso_ms(_stream_ms(i))) for i, f in items], cursor

    def events(
        self, run_id: str, after: str | None = None, block_ms: int = 0
    ) -> tuple[list[Event], str]:
        check_run_id(run_id)
        items, cursor = self._read_stream(run_key(run_id, "events"), after, 1000, block_ms)
        return [_event(f) for _, f in items], cursor

    def _read_stream(
        self, key: str, after: str | None, count: int, block_ms: int
    ) -> tuple[list[tuple[str, dict[str, str]]], str]:
        cursor = after or "0"
        deadline = time.monotonic() + block_ms / 1000
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            block = min(remaining_ms, self._block_slice_ms) if block_ms > 0 and remaining_ms > 0 else None
            reply = self.client.xread({key: cursor}, count=count, block=block)
            items = reply[0][1] if reply else []
            if items:
                return items, items[-1][0]
            if block is None:
                return [], cursor

    def close(self) -> None:
        self.client.close()


def _job_record(name: str, data: dict[str, Any]) -> JobRecord:
    # cjson encodes an empty Lua table as {}: a job never claimed has attempts == {}.
    attempts = [
        AttemptRecord(
            number=a["number"],
            worker=a["worker"],
            started_at=iso_ms(a["started_at"]),
            finished_at=iso_ms(a["finished_at"]),
            status=a["status"],
            exit_code=a["exit_code"],
            reason=a["reason"],
            retry_delay=_seconds(a["retry_delay"]),
        )
        for a in (data["attempts"] or [])
    ]
    return JobRecord(
        name=name,
        status=data["status"],
        attempt=data["attempt"],
        worker=data["worker"],
        started_at=iso_ms(data["started_at"]),
        finished_at=iso_ms(data["finished_at"]),
        exit_code=data["exit_code"],
        reason=data["reason"],
        allow_failure=data["allow_failure"],
        attempts=attempts,
    )


def _seconds(value: str | float | None) -> float | None:
    """A retry delay as stored: the repr of a float (or a number, as older versions wrote it)."""
    return None if value is None else float(value)


def _event(fields: dict[str, str]) -> Event:
    return Event(
        job=fields["job"] or None,
        from_status=fields["from"],
        to_status=fields["to"],
        at=iso_ms(int(fields["at"])),
        attempt=int(fields["attempt"]) if fields["attempt"] else None,
        reason=fields["reason"] or None,
    )
