"""What only the Redis backend promises: key layout, script loading, expiry, URLs."""
from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest
import redis

from shared.state import Claim, open_state
from shared.state.redis import RUNS_KEY, TOKEN_KEY, RedisState
from tests.services import start_redis
from tests.shared.state.runs import new_run

pytestmark = pytest.mark.services  # its own redis-servers

RETENTION_S = 3600


@pytest.fixture
def state(redis_client: redis.Redis, redis_url: str) -> Iterator[RedisState]:
    store = open_state(redis_url, retention_s=RETENTION_S)
    assert isinstance(store, RedisState)
    yield store
    store.close()


def run_keys(client: redis.Redis, run_id: str) -> list[str]:
    return sorted(client.scan_iter(match=f"conveyor:{{{run_id}}}:*"))


def finish_all(state: RedisState, run_id: str) -> None:
    for job in state.get_jobs(run_id):
        claim = state.claim(run_id, job, "w1", 5000)
        state.append_logs(run_id, job, [("stdout", "done\n")])
        state.finish(run_id, job, claim.token, "success", exit_code=0)


def test_key_names_carry_no_job_names_log_text_or_env_values(state: RedisState, redis_client: redis.Redis) -> None:
    secret_job = "deploy[ENV=prod-hunter2,REGION=eu]"
    run_id = new_run(state, secret_job, "build", meta={"env": {"TOKEN": "s3cr3t-value"}})
    claim = state.claim(run_id, secret_job, "w1", 5000)
    state.append_logs(run_id, secret_job, [("stdout", "password=swordfish\n")])
    state.finish(run_id, secret_job, claim.token, "success", exit_code=0)
    keys = list(redis_client.scan_iter(match="*"))
    assert keys  # the run is stored
    for key in keys:
        for needle in ("hunter2", "prod", "deploy", "build", "swordfish", "s3cr3t", "ENV"):
            assert needle not in key, key
        # Every per-run key carries the run id as its cluster hash tag.
        assert key in (RUNS_KEY, TOKEN_KEY) or key.startswith(f"conveyor:{{{run_id}}}:"), key
    # The data itself is all there.
    assert state.read_logs(run_id, secret_job)[0][0].text == "password=swordfish\n"


def test_ttl_is_set_on_every_key_when_the_run_ends(state: RedisState, redis_client: redis.Redis) -> None:
    run_id = new_run(state, "build", "test")
    finish_all_but_last = list(state.get_jobs(run_id))[:-1]
    for job in finish_all_but_last:
        claim = state.claim(run_id, job, "w1", 5000)
        state.append_logs(run_id, job, [("stdout", "x")])
        state.finish(run_id, job, claim.token, "success", exit_code=0)
    keys = run_keys(redis_client, run_id)
    assert len(keys) >= 4
    assert all(redis_client.ttl(k) == -1 for k in keys), "no TTL while the run is running"

    claim = state.claim(run_id, "test", "w1", 5000)
    state.append_logs(run_id, "test", [("stdout", "y")])
    state.finish(run_id, "test", claim.token, "success", exit_code=0)
    keys = run_keys(redis_client, run_id)
    # run, jobs, plan, events, and both log streams; the lease is gone.
    assert len(keys) == 6
    for key in keys:
        assert RETENTION_S - 5 <= redis_client.ttl(key) <= RETENTION_S, key


def test_logs_written_after_the_run_ended_expire_with_it(state: RedisState, redis_client: redis.Redis) -> None:
    run_id = new_run(state, "build", "quiet")
    assert state.request_cancel(run_id) == []
    assert state.get_run(run_id).status == "cancelled"
    state.append_logs(run_id, "quiet", [("stderr", "late output\n")])
    keys = run_keys(redis_client, run_id)
    assert all(0 < redis_client.ttl(k) <= RETENTION_S for k in keys)


def test_expired_runs_vanish_from_list_runs(redis_client: redis.Redis, redis_url: str) -> None:
    short = open_state(redis_url, retention_s=0.2)
    keep = new_run(short)
    gone = new_run(short)
    finish_all(short, gone)
    time.sleep(0.4)
    assert short.get_run(gone) is None
    assert [r.run_id for r in short.list_runs(10)] == [keep]
    assert redis_client.zscore(RUNS_KEY, gone) is None  # pruned from the index
    short.close()


def test_scripts_are_loaded_once_and_reloaded_after_a_flush(state: RedisState, redis_client: redis.Redis) -> None:
    run_id = new_run(state, "a", "b")
    claim = state.claim(run_id, "a", "w1", 5000)
    shas = [state._scripts[name].sha for name in ("create_run", "claim")]
    assert redis_client.script_exists(*shas) == [True, True]
    before = redis_client.info("commandstats")
    state.finish(run_id, "a", claim.token, "success", exit_code=0)
    after = redis_client.info("commandstats")
    # The script travels by SHA, not as source, on every call after the first.
    assert after["cmdstat_evalsha"]["calls"] > before["cmdstat_evalsha"]["calls"]
    assert after.get("cmdstat_eval", {}).get("calls", 0) == before.get("cmdstat_eval", {}).get("calls", 0)
    redis_client.script_flush()
    assert isinstance(state.claim(run_id, "b", "w1", 5000), Claim)


def test_scripts_are_atomic_under_concurrent_claims_heartbeats_and_cancel(
    state: RedisState, redis_client: redis.Redis, redis_url: str
) -> None:
    jobs = [f"j{i}" for i in range(24)]
    run_id = new_run(state, *jobs)
    barrier = threading.Barrier(9)
    cancelled_at: list[list[str]] = []

    def worker(n: int) -> None:
        mine = open_state(redis_url)
        barrier.wait()
        for job in jobs[n * 3 :] + jobs[: n * 3]:
            claim = mine.claim(run_id, job, f"w{n}", 5000)
            if isinstance(claim, Claim):
                verdict = mine.heartbeat(run_id, job, claim.token, 5000)
                mine.finish(run_id, job, claim.token, "cancelled" if verdict == "cancel" else "success", exit_code=0)
        mine.close()

    def canceller() -> None:
        barrier.wait()
        time.sleep(0.005)
        cancelled_at.append(state.request_cancel(run_id))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=canceller))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    job_records = state.get_jobs(run_id)
    assert all(j.status in ("success", "cancelled") for j in job_records.values())
    assert all(len(j.attempts) <= 1 for j in job_records.values())
    run = redis_client.hgetall(f"conveyor:{{{run_id}}}:run")
    # The counters the scripts keep match the jobs, whatever the interleaving.
    assert int(run["open"]) == 0
    assert int(run["cancelled"]) == sum(j.status == "cancelled" for j in job_records.values())
    events, _ = state.events(run_id)
    assert len([e for e in events if e.job is None]) == 1
    expected = "cancelled" if any(j.status == "cancelled" for j in job_records.values()) else "success"
    assert state.get_run(run_id).status == expected


def test_blocking_read_longer_than_the_socket_timeout(redis_client: redis.Redis, redis_url: str) -> None:
    store = open_state(redis_url + "?socket_timeout=0.3")
    run_id = new_run(store)
    timer = threading.Timer(0.8, store.append_logs, args=(run_id, "build", [("stdout", "slow\n")]))
    timer.start()
    entries, _ = store.read_logs(run_id, "build", block_ms=3000)
    timer.join()
    assert [e.text for e in entries] == ["slow\n"]
    started = time.monotonic()
    assert store.events(run_id, after=store.events(run_id)[1], block_ms=700)[0] == []
    assert 0.6 < time.monotonic() - started < 2
    store.close()


def test_password_url_is_honoured(tmp_path) -> None:
    proc, port = start_redis(tmp_path, "--requirepass", "s3cret")
    try:
        good = open_state(f"redis://:s3cret@127.0.0.1:{port}/2")
        run_id = new_run(good)
        assert good.get_run(run_id).status == "running"
        good.close()
        bad = open_state(f"redis://:wrong@127.0.0.1:{port}/2")
        with pytest.raises(redis.AuthenticationError):
            bad.get_run(run_id)
        bad.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

