"""Deployment records in Redis, next to the run state (same server, `conveyor:dep:` keys).

    conveyor:dep:{RUN}:rec:{J}    hash    v (version), data (record JSON)
    conveyor:dep:{RUN}:cmd:{J}    list    commands (JSON), append-only
    conveyor:dep:{RUN}:lock:{J}   string  tick lock owner, PX ttl
    conveyor:dep:{RUN}:gates      hash    gate name -> answer JSON (HSETNX: first answer wins)
    conveyor:dep:{RUN}:jobs       set     jobs with a record
    conveyor:dep:active           zset    "RUN\\nJOB" scored by the next tick's due time (epoch ms)
    conveyor:dep:env:{KEY}        hash    v, data (live slots, stable version, owner)

Per-run keys share the `{RUN}` hash tag like the state store's; `{J}` is the job-name
digest the state store uses. Compare-and-set is a small Lua script.
"""
from __future__ import annotations

import json
import redis as redis_py

from deploy.record import Command, EnvRecord, GateAnswer, Record
from deploy.store.base import RETENTION_S, is_active
from shared.state.redis import job_digest

PREFIX = "conveyor:dep:"
ACTIVE_KEY = PREFIX + "active"

_CAS = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'data', ARGV[2])
return v + 1
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_OVERDUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(items) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return items
"""


def _key(run_id: str, part: str, job: str | None = None) -> str:
    suffix = f":{job_digest(job)}" if job is not None else ""
    return f"{PREFIX}{{{run_id}}}:{part}{suffix}"


class RedisDeployStore:
    """The deployment store on the state store's Redis."""

    def __init__(self, url: str | None = None, *, client: redis_py.Redis | None = None) -> None:
        # A client lent by the state store stays open when this store closes.
        self._owns_client = client is None
        self.client: redis_py.Redis = client if client is not None else redis_py.Redis.from_url(
            url or "", decode_responses=True, socket_timeout=5.0)
        self._cas = self.client.register_script(_CAS)
        self._unlock = self.client.register_script(_UNLOCK)
        self._refresh = self.client.register_script(_REFRESH)
        self._overdue = self.client.register_script(_OVERDUE)

    # -- records ---------------------------------------------------------------------------

    def create(self, record: Record) -> bool:
        run_id, job = record["run_id"], record["job"]
        created = int(self._cas(keys=[_key(run_id, "rec", job)], args=[0, json.dumps(record)])) == 1
        if created:
            pipe = self.client.pipeline()
            pipe.sadd(_key(run_id, "jobs"), job)
            pipe.zadd(ACTIVE_KEY, {f"{run_id}\n{job}": record["next_tick_at"]})
            pipe.execute()
        return created

    def load(self, run_id: str, job: str) -> tuple[Record, int] | None:
        version, data = self.client.hmget(_key(run_id, "rec", job), "v", "data")
        if data is None:
            return None
        return json.loads(data), int(version)

    def save(self, record: Record, version: int) -> bool:
        run_id, job = record["run_id"], record["job"]
        if int(self._cas(keys=[_key(run_id, "rec", job)], args=[version, json.dumps(record)])) == 0:
            return False
        member = f"{run_id}\n{job}"
        if is_active(record):
            self.client.zadd(ACTIVE_KEY, {member: record["next_tick_at"]})
        else:
            self.client.zrem(ACTIVE_KEY, member)
            ttl = RETENTION_S * 1000
            for key in (_key(run_id, "rec", job), _key(run_id, "cmd", job), _key(run_id, "gates"),
                        _key(run_id, "jobs")):
                self.client.pexpire(key, ttl)
        return True

    def jobs(self, run_id: str) -> list[str]:
        return sorted(self.client.smembers(_key(run_id, "jobs")))

    # -- locks -----------------------------------------------------------------------------

    def lock(self, run_id: str, job: str, owner: str, ttl_ms: int) -> bool:
        return bool(self.client.set(_key(run_id, "lock", job), owner, nx=True, px=ttl_ms))

    def refresh_lock(self, run_id: str, job: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._refresh(keys=[_key(run_id, "lock", job)], args=[owner, ttl_ms]))

    def unlock(self, run_id: str, job: str, owner: str) -> None:
        self._unlock(keys=[_key(run_id, "lock", job)], args=[owner])

    # -- commands and gates ------------------------------------------------------------------

    def add_command(self, run_id: str, job: str, command: Command) -> None:
        self.client.rpush(_key(run_id, "cmd", job), json.dumps(command))

    def commands(self, run_id: str, job: str, after: int) -> list[Command]:
        return [json.loads(item) for item in self.client.lrange(_key(run_id, "cmd", job), after, -1)]

    def answer_gate(self, run_id: str, gate: str, answer: GateAnswer) -> GateAnswer:
        key = _key(run_id, "gates")
        self.client.hsetnx(key, gate, json.dumps(answer))
        return json.loads(self.client.hget(key, gate) or "{}")

    def gate_answers(self, run_id: str) -> dict[str, GateAnswer]:
        return {gate: json.loads(data) for gate, data in self.client.hgetall(_key(run_id, "gates")).items()}

    # -- watchdog --------------------------------------------------------------------------

    def overdue(self, now_ms: int, grace_ms: int, bump_ms: int) -> list[tuple[str, str]]:
        members = self._overdue(keys=[ACTIVE_KEY], args=[now_ms - grace_ms, now_ms + bump_ms])
        out = []
        for member in members:
            run_id, _, job = member.partition("\n")
            out.append((run_id, job))
        return out

    # -- environments ----------------------------------------------------------------------

    def load_env(self, key: str) -> tuple[EnvRecord, int] | None:
        version, data = self.client.hmget(PREFIX + "env:" + key, "v", "data")
        if data is None:
            return None
        return json.loads(data), int(version)

    def save_env(self, key: str, data: EnvRecord, version: int) -> bool:
        return int(self._cas(keys=[PREFIX + "env:" + key], args=[version, json.dumps(data)])) != 0

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
