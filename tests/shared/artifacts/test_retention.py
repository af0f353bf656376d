"""Retention policies: parsing conveyor.toml's [[retention]] tables and choosing what to delete."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.artifacts.index.base import STALE_RESERVATION_S, ArtifactRecord
from shared.artifacts.retention import (
    Decision,
    RetentionPolicy,
    format_duration,
    format_size,
    parse_policies,
    select_deletions,
)

NOW = 1_700_000_000.0
HOUR = 3600.0
DAY = 86400.0
MIB = 1024 ** 2


def rec(run_id: str = "run-1", job: str = "build", kind: str = "artifact", pipeline: str = "web", *,
        age: float = 0.0, idle: float | None = None, expire_in: float | None = None, size: int = 100,
        complete: bool = True, holders: frozenset[str] = frozenset()) -> ArtifactRecord:
    """A record created `age` seconds before NOW, last downloaded `idle` seconds before NOW."""
    return ArtifactRecord(
        run_id=run_id, job=job, kind=kind, name="dist", manifest="0" * 64, size=size, files=1,
        pipeline=pipeline, created_at=NOW - age, expire_at=None if expire_in is None else NOW - age + expire_in,
        last_access=NOW - (age if idle is None else idle), holders=holders, complete=complete,
    )


def never_held(record: ArtifactRecord) -> None:
    return None


def decide(records, policies=(), held=never_held) -> list[Decision]:
    return select_deletions(records, policies, NOW, held)


def actions(decisions: list[Decision]) -> list[str]:
    return [d.action for d in decisions]


# -- parsing -------------------------------------------------------------------------------

def test_parse_reads_every_field():
    raw = [{"pipeline": "web-*", "job": "build", "kind": "artifact", "priority": 10, "max_age": "30d",
            "unused_for": "12h", "keep_last": 5, "max_total_size": "10g"}, {}]
    assert parse_policies(raw, "conveyor.toml") == (
        RetentionPolicy(pipeline="web-*", job="build", kind="artifact", priority=10, max_age_s=30 * DAY,
                        unused_for_s=12 * HOUR, keep_last=5, max_total_bytes=10 * 1024 ** 3),
        RetentionPolicy(),
    )


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("12h", 12 * HOUR), ("7d", 7 * DAY), ("2w", 14 * DAY), ("1.5h", 5400),
    ("3600", 3600), (3600, 3600), (0.5, 0.5), ("7D", 7 * DAY),
])
def test_durations(text, seconds):
    (policy,) = parse_policies([{"max_age": text}], "conveyor.toml")
    assert policy.max_age_s == seconds


@pytest.mark.parametrize("text, size", [
    ("500m", 500 * MIB), ("10g", 10 * 1024 ** 3), ("1024", 1024), (2048, 2048), ("10GiB", 10 * 1024 ** 3),
    ("512kb", 512 * 1024), ("1.5t", int(1.5 * 1024 ** 4)),
])
def test_sizes(text, size):
    (policy,) = parse_policies([{"max_total_size": text}], "conveyor.toml")
    assert policy.max_total_bytes == size


@pytest.mark.parametrize("entry, where, hint", [
    ({"max_age": "7x"}, "retention[1].max_age", "7d"),
    ({"max_age": "0s"}, "retention[1].max_age", "longer than zero"),
    ({"unused_for": True}, "retention[1].unused_for", "7d"),
    ({"max_age_s": 60}, "retention[1].max_age_s", "did you mean 'max_age'"),
    ({"color": "red"}, "retention[1].color", "known keys: job, keep_last"),
    ({"keep_last": 0}, "retention[1].keep_last", "at least 1"),
    ({"keep_last": True}, "retention[1].keep_last", "number of runs"),
    ({"keep_last": "5"}, "retention[1].keep_last", "number of runs"),
    ({"max_total_size": "lots"}, "retention[1].max_total_size", "500m"),
    ({"max_total_size": -1}, "retention[1].max_total_size", "more than zero"),
    ({"kind": "artefact"}, "retention[1].kind", "artifact, log, source"),
    ({"priority": "high"}, "retention[1].priority", "integer"),
    ({"job": ""}, "retention[1].job", "pattern"),
    ({"pipeline": 3}, "retention[1].pipeline", "pattern"),
])
def test_errors_name_the_source_the_policy_and_the_field_with_a_hint(entry, where, hint):
    with pytest.raises(ValueError) as caught:
        parse_policies([{"max_age": "1d"}, entry], "/etc/conveyor.toml")
    message = str(caught.value)
    assert message.startswith(f"/etc/conveyor.toml: {where}: ")
    assert hint in message


def test_the_array_and_its_entries_must_be_tables():
    with pytest.raises(ValueError, match=r"^conveyor.toml: retention\[0\]: expected a table"):
        parse_policies(["7d"], "conveyor.toml")
    with pytest.raises(ValueError, match=r"^conveyor.toml: retention: expected an array of tables"):
        parse_policies({"max_age": "7d"}, "conveyor.toml")


def test_formatting():
    assert [format_duration(s) for s in (45, 90, 12 * HOUR, 3 * DAY + 5 * HOUR, -3)] == ["45s", "1.5m", "12h",
                                                                                       "3.2d", "0s"]
    assert [format_size(s) for s in (512, 1536, 10 * 1024 ** 3)] == ["512 B", "1.5 KiB", "10.0 GiB"]


# -- selection -----------------------------------------------------------------------------

def test_without_policies_or_expiry_everything_is_kept_forever():
    records = [rec(age=3650 * DAY, idle=3650 * DAY), rec("run-2", kind="log")]
    decisions = decide(records)
    assert [d.record for d in decisions] == records
    assert [(d.action, d.reason) for d in decisions] == [("keep", "no retention rule applies")] * 2


def test_a_records_own_expiry_deletes_it_whatever_its_policy_says():
    expired = rec(age=5 * DAY, expire_in=2 * DAY)
    fresh = rec("run-2", age=1 * DAY, expire_in=3 * DAY)
    pin = RetentionPolicy(priority=100)  # a policy without limits
    decisions = decide([expired, fresh], [pin])
    assert [(d.action, d.reason) for d in decisions] == [
        ("delete", "expired 3d ago"), ("keep", "within retention[0]; expires in 2d")]


def test_max_age_and_unused_for():
    policy = RetentionPolicy(max_age_s=30 * DAY, unused_for_s=7 * DAY)
    old = rec("old", age=31 * DAY, idle=0)
    idle = rec("idle", age=10 * DAY, idle=8 * DAY)
    used = rec("used", age=10 * DAY, idle=1 * DAY)
    decisions = decide([old, idle, used], [policy])
    assert actions(decisions) == ["delete", "delete", "keep"]
    assert decisions[0].reason == "31d old, older than 30d (retention[0])"
    assert decisions[1].reason == "unused for 8d, longer than 7d (retention[0])"
    assert decisions[2].reason == "within retention[0]"


def test_keep_last_counts_runs_per_pipeline_job_and_kind():
    records = [rec(f"run-{n}", job, kind, pipeline, age=n * HOUR)
               for n in range(4) for job in ("build", "test") for kind in ("artifact", "log")
               for pipeline in ("web", "api")]
    decisions = decide(records, [RetentionPolicy(keep_last=2)])
    kept = {(d.record.pipeline, d.record.job, d.record.kind, d.record.run_id)
            for d in decisions if d.action == "keep"}
    assert kept == {(p, j, k, r) for p in ("web", "api") for j in ("build", "test")
                    for k in ("artifact", "log") for r in ("run-0", "run-1")}
    reasons = {d.reason for d in decisions if d.record.key == ("run-3", "test", "log") and d.record.pipeline == "api"}
    assert reasons == {"not among the newest 2 runs of api/test/log (retention[0])"}


def test_max_total_size_deletes_the_oldest_governed_records_until_under():
    records = [rec(f"run-{n}", age=n * HOUR, size=100) for n in range(5)]  # run-4 is the oldest
    other = rec("other", pipeline="api", age=10 * DAY, size=10_000)  # governed by no policy
    decisions = decide(records + [other], [RetentionPolicy(pipeline="web", max_total_bytes=250)])
    assert actions(decisions) == ["keep", "keep", "delete", "delete", "delete", "keep"]
    assert decisions[4].reason == "over the size limit of retention[0]: it governs 500 B, limit 250 B; oldest first"


def test_the_highest_priority_policy_governs_and_ties_go_to_the_first_listed():
    release = rec("r1", job="release", age=100 * DAY)
    build = rec("r2", job="build", age=100 * DAY)
    policies = [
        RetentionPolicy(max_age_s=30 * DAY),
        RetentionPolicy(job="release", priority=10),  # pins releases
        RetentionPolicy(job="build", max_age_s=200 * DAY),  # same priority as [0], listed later: loses
    ]
    decisions = decide([release, build], policies)
    assert [(d.action, d.reason) for d in decisions] == [
        ("keep", "within retention[1]"), ("delete", "100d old, older than 30d (retention[0])")]


def test_incomplete_records_are_left_to_their_uploader_until_stale():
    uploading = rec("up", age=5 * 60, complete=False, expire_in=60)  # even past its own expiry
    stale = rec("dead", age=STALE_RESERVATION_S + HOUR, complete=False)
    decisions = decide([uploading, stale], [RetentionPolicy(max_age_s=1, max_total_bytes=1)])
    assert [(d.action, d.reason) for d in decisions] == [
        ("keep", "upload in progress (reserved 5m ago)"),
        ("delete", "stale reservation: incomplete 2h after it was reserved")]


def test_held_records_are_kept_with_the_holders_reason_whatever_the_rules():
    records = [rec("expired", age=2, expire_in=1, holders=frozenset({"deploy"})),
               rec("old", age=100 * DAY, holders=frozenset({"deploy"})),
               rec("stale", age=2 * STALE_RESERVATION_S, complete=False, holders=frozenset({"deploy"}))]
    asked: list[str] = []

    def held(record: ArtifactRecord) -> str:
        asked.append(record.run_id)
        return "held by pending job deploy"

    decisions = decide(records, [RetentionPolicy(max_age_s=DAY)], held)
    assert [(d.action, d.reason) for d in decisions] == [("keep", "held by pending job deploy")] * 3
    assert sorted(asked) == ["expired", "old", "stale"]  # once each


def test_held_records_are_only_asked_about_when_a_rule_would_delete_them():
    asked: list[ArtifactRecord] = []
    decide([rec(), rec("run-2", expire_in=-1)], [], lambda r: asked.append(r))
    assert [r.run_id for r in asked] == ["run-2"]


def test_a_held_record_beyond_keep_last_is_kept():
    records = [rec(f"run-{n}", age=n * HOUR) for n in range(3)]  # run-2 the oldest
    decisions = decide(records, [RetentionPolicy(keep_last=1)],
                       lambda r: "held by pending job test" if r.run_id == "run-2" else None)
    assert [(d.action, d.reason) for d in decisions] == [
        ("keep", "within retention[0]"),
        ("delete", "not among the newest 1 runs of web/build/artifact (retention[0])"),
        ("keep", "held by pending job test")]


def test_a_held_record_over_the_size_limit_makes_room_from_the_next_oldest():
    records = [rec(f"run-{n}", age=n * HOUR, size=100) for n in range(4)]  # run-3 the oldest
    decisions = decide(records, [RetentionPolicy(max_total_bytes=250)],
                       lambda r: "held by pending job test" if r.run_id == "run-3" else None)
    # The held 100 B stay, so two younger records go to get from 400 B under 250 B.
    assert [(d.record.run_id, d.action) for d in decisions] == [
        ("run-0", "keep"), ("run-1", "delete"), ("run-2", "delete"), ("run-3", "keep")]


# Values are drawn from short, skewed lists so that records share a pipeline+job+kind and
# several rules overlap on them often enough for a rule ignoring `held` to be caught.
RUNS = [f"run-{n}" for n in range(4)]
record_strategy = st.builds(
    rec,
    run_id=st.sampled_from(RUNS),
    job=st.sampled_from(["build", "build", "test"]),
    kind=st.sampled_from(["artifact", "artifact", "log"]),
    pipeline=st.sampled_from(["web", "web", "api"]),
    age=st.sampled_from([0.0, HOUR, 2 * HOUR, 3 * DAY, 20 * DAY, 90 * DAY]),
    idle=st.sampled_from([None, None, 0.0, 20 * DAY]),
    expire_in=st.none() | st.floats(-DAY, 100 * DAY),
    size=st.integers(0, 1000),
    complete=st.sampled_from([True, True, True, False]),
    holders=st.frozensets(st.sampled_from(["deploy", "test"]), max_size=2),
)
policy_strategy = st.builds(
    RetentionPolicy,
    pipeline=st.sampled_from(["*", "*", "web", "a*"]),
    job=st.sampled_from(["*", "*", "build", "t*"]),
    kind=st.sampled_from(["*", "*", "artifact", "log"]),
    priority=st.integers(0, 2),
    max_age_s=st.sampled_from([None, None, None, 10 * DAY, 60 * DAY]),
    unused_for_s=st.sampled_from([None, None, None, 10 * DAY, 60 * DAY]),
    keep_last=st.sampled_from([None, None, 1, 2]),
    max_total_bytes=st.sampled_from([None, None, 300, 1500]),
)


@settings(max_examples=100, deadline=None)
@given(records=st.lists(record_strategy, min_size=1, max_size=15),
       policies=st.lists(policy_strategy, min_size=1, max_size=3),
       held_runs=st.frozensets(st.sampled_from(RUNS), min_size=1, max_size=2))
def test_held_records_are_never_deleted_and_every_record_gets_one_decision(records, policies, held_runs):
    def held(record: ArtifactRecord) -> str | None:
        return f"held by run {record.run_id}" if record.run_id in held_runs else None

    decisions = select_deletions(records, policies, NOW, held)
    assert [d.record for d in decisions] == records
    for decision in decisions:
        assert decision.action in ("delete", "keep") and decision.reason
        if decision.record.run_id in held_runs:
            assert decision.action == "keep"
