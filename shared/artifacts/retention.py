"""Retention policies: which artifact records to delete, as pure functions of the records and a clock.

A `[[retention]]` table in conveyor.toml becomes a `RetentionPolicy`:

    [[retention]]
    pipeline = "web-*"        # fnmatch patterns; "*" (the default) matches anything,
    job = "build"             # including the empty job name of a run's source snapshot
    kind = "artifact"         # artifact | source | log
    priority = 10             # the highest-priority matching policy governs a record
    max_age = "30d"           # delete records created longer ago than this
    unused_for = "7d"         # ... or not downloaded for this long
    keep_last = 5             # ... or not among the newest 5 runs of pipeline+job+kind
    max_total_size = "10g"    # ... or, oldest first, while the records it governs exceed this

Exactly one policy governs each record: the matching one with the highest priority, the
first listed on a tie. A policy without limits therefore pins what it matches. Besides its
policy, a record is deleted once its own `expire_at` (the job's `expire_in`) has passed.
An incomplete record is left to its uploader, whatever the rules, until it is older than
`STALE_RESERVATION_S`: then its uploader died. A record that `held` names (a job that will
still download it) is never deleted. With no policy and no `expire_at`, records
are kept forever.
"""
from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Literal, Sequence

from shared.artifacts.index.base import KINDS, STALE_RESERVATION_S, ArtifactRecord
from shared.units import format_duration, format_size, parse_duration, parse_size

Action = Literal["delete", "keep"]
Held = Callable[[ArtifactRecord], str | None]


@dataclass(frozen=True)
class RetentionPolicy:
    """Which records a policy governs (patterns, priority) and when it deletes them (limits)."""

    pipeline: str = "*"
    job: str = "*"
    kind: str = "*"
    priority: int = 0
    max_age_s: float | None = None
    unused_for_s: float | None = None
    keep_last: int | None = None
    max_total_bytes: int | None = None

    def matches(self, record: ArtifactRecord) -> bool:
        """Whether the record's pipeline, job and kind match this policy's patterns."""
        return (fnmatchcase(record.pipeline, self.pipeline) and fnmatchcase(record.job, self.job)
                and fnmatchcase(record.kind, self.kind))


@dataclass(frozen=True)
class Decision:
    """What the collector does with one record, and why, in words a user can act on."""

    record: ArtifactRecord
    action: Action
    reason: str


# -- parsing -----------------------------------------------------------------------------

_PATTERN_KEYS = {"pipeline", "job", "kind"}
_KNOWN_KEYS = sorted(_PATTERN_KEYS | {"priority", "max_age", "unused_for", "keep_last", "max_total_size"})


def parse_policies(raw: Sequence[dict[str, Any]], source: str) -> tuple[RetentionPolicy, ...]:
    """The `[[retention]]` tables read from `source` (named in every error), as policies.

    Raises ValueError naming `source`, the table's index and the field, with a hint.
    """
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{source}: retention: expected an array of tables ([[retention]]), "
                         f"got {type(raw).__name__}")
    return tuple(_parse_policy(entry, f"{source}: retention[{i}]") for i, entry in enumerate(raw))


def _parse_policy(entry: Any, where: str) -> RetentionPolicy:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table of key = value pairs, got {type(entry).__name__}")
    for key in entry:
        if key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), _KNOWN_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{where}.{key}: unknown key; {hint}known keys: {', '.join(_KNOWN_KEYS)}")
    fields: dict[str, Any] = {}
    for key in sorted(_PATTERN_KEYS & entry.keys()):
        fields[key] = _pattern(entry[key], f"{where}.{key}")
    if "kind" in fields and not any(fnmatchcase(k, fields["kind"]) for k in KINDS):
        raise ValueError(f"{where}.kind: {fields['kind']!r} matches no kind; use one of "
                         f"{', '.join(sorted(KINDS))} or a pattern such as \"*\"")
    if "priority" in entry:
        value = entry["priority"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}.priority: expected an integer (higher wins), got {value!r}")
        fields["priority"] = value
    if "max_age" in entry:
        fields["max_age_s"] = parse_duration(entry["max_age"], f"{where}.max_age")
    if "unused_for" in entry:
        fields["unused_for_s"] = parse_duration(entry["unused_for"], f"{where}.unused_for")
    if "keep_last" in entry:
        value = entry["keep_last"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}.keep_last: expected a number of runs, at least 1, got {value!r} "
                             "(to delete everything, use max_age)")
        fields["keep_last"] = value
    if "max_total_size" in entry:
        fields["max_total_bytes"] = parse_size(entry["max_total_size"], f"{where}.max_total_size")
    return RetentionPolicy(**fields)


def _pattern(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty name or fnmatch pattern such as \"deploy-*\", "
                         f"got {value!r}")
    return value


# -- selection ---------------------------------------------------------------------------

def select_deletions(records: Iterable[ArtifactRecord], policies: Sequence[RetentionPolicy], now: float,
                     held: Held) -> list[Decision]:
    """One decision per record, in input order.

    `held(record)` names what still needs a record (e.g. "held by pending job deploy") or
    returns None; it is asked only about records a rule would delete, at most once each.
    Policies are named in reasons by position, `retention[i]`, as in conveyor.toml.
    """
    records = list(records)
    governing = [_governing(r, policies) for r in records]
    decided: dict[int, tuple[Action, str]] = {}
    holds: dict[int, str | None] = {}

    def delete(i: int, reason: str) -> None:
        if i not in holds:
            holds[i] = held(records[i])
        why_kept = holds[i]
        decided[i] = ("keep", why_kept) if why_kept else ("delete", reason)

    # Rules about one record alone.
    for i, record in enumerate(records):
        p = governing[i]
        if not record.complete:
            # Before any expiry: deleting a record mid-upload would let the sweep take the
            # objects its uploader has just put.
            age = now - record.created_at
            if age >= STALE_RESERVATION_S:
                delete(i, f"stale reservation: incomplete {format_duration(age)} after it was reserved")
            else:
                decided[i] = ("keep", f"upload in progress (reserved {format_duration(age)} ago)")
        elif record.expire_at is not None and record.expire_at <= now:
            delete(i, f"expired {format_duration(now - record.expire_at)} ago")
        elif p is not None:
            policy, age, idle = policies[p], now - record.created_at, now - record.last_access
            if policy.max_age_s is not None and age > policy.max_age_s:
                delete(i, f"{format_duration(age)} old, older than {format_duration(policy.max_age_s)} "
                          f"(retention[{p}])")
            elif policy.unused_for_s is not None and idle > policy.unused_for_s:
                delete(i, f"unused for {format_duration(idle)}, longer than "
                          f"{format_duration(policy.unused_for_s)} (retention[{p}])")

    def alive(i: int) -> bool:
        return decided.get(i, ("keep", ""))[0] == "keep"

    # keep_last: rank the surviving complete records of each pipeline+job+kind, newest first.
    groups: dict[tuple[int, str, str, str], list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        p = governing[i]
        if p is not None and policies[p].keep_last is not None and record.complete and alive(i):
            groups[(p, record.pipeline, record.job, record.kind)].append(i)
    for (p, pipeline, job, kind), members in groups.items():
        members.sort(key=lambda i: (records[i].created_at, records[i].run_id), reverse=True)
        limit = policies[p].keep_last
        for i in members[limit:]:
            if i not in decided:
                delete(i, f"not among the newest {limit} runs of {pipeline}/{job or '-'}/{kind} (retention[{p}])")

    # max_total_bytes: over everything a policy still governs, drop the oldest until under.
    governed: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        p = governing[i]
        if p is not None and policies[p].max_total_bytes is not None and alive(i):
            governed[p].append(i)
    for p, members in governed.items():
        limit = policies[p].max_total_bytes
        total = sum(records[i].size for i in members)
        members.sort(key=lambda i: (records[i].created_at, records[i].run_id))
        for i in members:
            if total <= limit:
                break
            if i in decided:  # an upload in progress or a held record: its bytes stay
                continue
            delete(i, f"over the size limit of retention[{p}]: it governs {format_size(total)}, "
                      f"limit {format_size(limit)}; oldest first")
            if decided[i][0] == "delete":
                total -= records[i].size

    decisions = []
    for i, record in enumerate(records):
        action, reason = decided.get(i) or ("keep", _keep_reason(record, governing[i], now))
        decisions.append(Decision(record, action, reason))
    return decisions


def _governing(record: ArtifactRecord, policies: Sequence[RetentionPolicy]) -> int | None:
    """The index of the policy governing `record`: highest priority, first listed on a tie."""
    best: int | None = None
    for i, policy in enumerate(policies):
        if policy.matches(record) and (best is None or policy.priority > policies[best].priority):
            best = i
    return best


def _keep_reason(record: ArtifactRecord, policy: int | None, now: float) -> str:
    reason = "no retention rule applies" if policy is None else f"within retention[{policy}]"
    if record.expire_at is not None:
        reason += f"; expires in {format_duration(record.expire_at - now)}"
    return reason
