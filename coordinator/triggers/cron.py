"""Cron schedules: parse 5-field expressions, find the next tick in a time zone, and the one tick due now.

Syntax (Vixie cron / cronie, crontab(5)): `minute hour day-of-month month day-of-week`.

| field | values | names |
|---|---|---|
| minute | 0-59 | |
| hour | 0-23 | |
| day-of-month | 1-31 | |
| month | 1-12 | jan-dec |
| day-of-week | 0-7, 0 and 7 are Sunday | sun-sat |

Each field is a comma list of items: `*`, a value `5`, a range `1-5` (names too:
`mon-fri`, `jan-mar`), and a step after `*` or a range: `*/15`, `1-30/10`. Names are
three letters, any case. As in Vixie cron, a step after a single value (`5/15`) is an
error (write `5-59/15`), ranges do not wrap (`fri-mon` is an error: write `fri-sat,sun-mon`
or `0,1,5,6`), and a step must be between 1 and the field's maximum.

Aliases: `@yearly` = `@annually` = `0 0 1 1 *`, `@monthly` = `0 0 1 * *`, `@weekly` =
`0 0 * * 0`, `@daily` = `@midnight` = `0 0 * * *`, `@hourly` = `0 * * * *`. (`@reboot`
has no meaning for a server and is an error.)

Day of month and day of week, as Vixie cron: when both fields are restricted, a day
matches if EITHER matches (`0 0 13 * 5`: every 13th and every Friday); when either field
starts with `*` (`*` itself, or `*/2`), a day must match BOTH. An expression whose days
can never occur (`0 0 30 2 *`, `0 0 31 4,6 *`) is refused by `parse_cron`.

Time zones and daylight saving time (zoneinfo, IANA names). We follow Vixie cron and
cronie, which treat two kinds of jobs differently: "wildcard" jobs, whose minute or hour
field starts with `*` (`*/15 * * * *`, `0 * * * *`), and "fixed-time" jobs (`30 2 * * *`).

| local wall time | fixed-time job (`30 2 * * *`) | wildcard job (`30 * * * *`) |
|---|---|---|
| skipped (spring forward: in Europe/Berlin, 02:00-02:59 on the last Sunday of March does not exist) | fires once at the end of the gap (03:00 CEST), so a daily job still runs that day; several fixed times in one gap fire as one tick | skipped: the 02:30 tick does not happen that day |
| repeated (fall back: in Europe/Berlin, 02:00-02:59 on the last Sunday of October happens twice) | fires once, at the first occurrence (02:30 CEST) | fires at both occurrences (02:30 CEST and 02:30 CET) |

(Vixie cron catches up fixed-time jobs only for clock jumps under 3 hours; we do for
every gap, DST or not: a schedule should not silently lose a day.) Results are always
aware UTC datetimes; ticks are whole minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc

# A tick with no history counts only in the minute it is due (see due_ticks).
FIRST_FIRE_WINDOW = timedelta(minutes=1)

# Every feasible expression fires within 28 years (the weekday calendar repeats); 2100
# is not a leap year, so 29 February on a given weekday can be 40 years apart. The
# bound only guards against a bug looping forever.
_SEARCH_DAYS = 100 * 366

ALIASES: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The longest each month can be: a day-of-month the month never reaches makes the
# expression impossible when days must match both fields.
_MONTH_MAX_DAY = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class CronError(ValueError):
    """An invalid cron expression or time zone; the message names the field and how to fix it."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, {name: number for number, name in enumerate(_MONTHS, start=1)}),
    _Field("day-of-week", 0, 7, {name: number for number, name in enumerate(_DAYS)}),
)


@dataclass(frozen=True)
class CronExpr:
    """A parsed expression: the matching values of each field, and the flags that change matching.

    `weekdays` uses 0 = Sunday .. 6 = Saturday (a 7 in the source is folded into 0).
    `dom_star`/`dow_star`: the field starts with `*` (Vixie's DOM_STAR/DOW_STAR), which
    makes days match both fields instead of either. `wildcard`: the minute or hour field
    starts with `*`, which changes what happens at DST transitions (module docstring).
    """

    source: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_star: bool
    dow_star: bool
    wildcard: bool

    def day_matches(self, day: date) -> bool:
        """Does the expression fire on this (local) calendar day?"""
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        return (dom and dow) if (self.dom_star or self.dow_star) else (dom or dow)


def parse_cron(expr: str) -> CronExpr:
    """Parse a 5-field expression or an `@alias`; raise CronError naming the bad field."""
    if not isinstance(expr, str):
        raise CronError(f"cron expression must be a string such as '0 3 * * 1-5', got {type(expr).__name__}")
    return _parse(expr)


@lru_cache(maxsize=512)
def _parse(expr: str) -> CronExpr:
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise CronError(f"cron expression '{expr}': unknown alias {text}; use one of {', '.join(ALIASES)}")
        text = ALIASES[text.lower()]
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise CronError(f"cron expression '{expr}' has {len(parts)} fields; expected 5: "
                        "minute hour day-of-month month day-of-week")
    values = [_parse_field(expr, part, spec) for part, spec in zip(parts, _FIELDS)]
    weekdays = frozenset(0 if d == 7 else d for d in values[4])
    cron = CronExpr(source=expr, minutes=values[0], hours=values[1], days=values[2], months=values[3],
                    weekdays=weekdays, dom_star=parts[2].startswith("*"), dow_star=parts[4].startswith("*"),
                    wildcard=parts[0].startswith("*") or parts[1].startswith("*"))
    if (cron.dom_star or cron.dow_star) and not any(
            day <= _MONTH_MAX_DAY[month - 1] for month in cron.months for day in cron.days):
        raise CronError(f"cron expression '{expr}': day-of-month {parts[2]} never occurs in month {parts[3]}; "
                        "the expression would never fire")
    return cron


def _parse_field(expr: str, text: str, spec: _Field) -> frozenset[int]:
    where = f"cron expression '{expr}': {spec.name} field '{text}'"
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{where}: empty list item (a stray comma?)")
        span, slash, step_text = item.partition("/")
        if span == "*":
            low, high = spec.low, spec.high
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _value(where, first, spec), _value(where, last, spec)
            if low > high:
                raise CronError(f"{where}: range {span} goes backwards; ranges do not wrap, split it into two "
                                "items (fri-mon is fri-sat,sun-mon)")
        else:
            low = high = _value(where, span, spec)
            if slash:
                raise CronError(f"{where}: a step needs * or a range before it; write {span}-{spec.high}/{step_text} "
                                f"or */{step_text}")
        step = 1
        if slash:
            if not step_text.isascii() or not step_text.isdigit() or not 1 <= int(step_text) <= spec.high:
                raise CronError(f"{where}: step '{step_text}' must be a number from 1 to {spec.high}")
            step = int(step_text)
        values.update(range(low, high + 1, step))
    return frozenset(values)


def _value(where: str, text: str, spec: _Field) -> int:
    lowered = text.lower()
    if lowered in spec.names:
        return spec.names[lowered]
    if not text.isascii() or not text.isdigit():
        hint = f"a number {spec.low}-{spec.high}"
        if spec.names:
            hint += f" or a name ({', '.join(spec.names)})"
        raise CronError(f"{where}: '{text}' is not {hint}")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise CronError(f"{where}: {number} is out of range {spec.low}-{spec.high}")
    return number


def zone(tz: str) -> ZoneInfo:
    """The IANA time zone `tz`; CronError when there is no such zone."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        raise CronError(f"timezone '{tz}' is unknown; use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


def _cron(expr: str | CronExpr) -> CronExpr:
    return expr if isinstance(expr, CronExpr) else parse_cron(expr)


def _aware(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (use datetime.now(timezone.utc))")
    return value.astimezone(UTC)


# -- ticks --------------------------------------------------------------------------------


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _resolve(wall: datetime, tz: ZoneInfo, fixed: bool) -> tuple[datetime, ...]:
    """The UTC instants at which the local wall time `wall` is a tick (see the DST table)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if _wall(first, tz) == wall:  # it exists twice: a repeated hour
        return (first,) if fixed else (first, second)
    # It does not exist (PEP 495 maps it with the offsets from before and after the gap).
    return (_gap_end(wall, tz, min(first, second), max(first, second)),) if fixed else ()


def _gap_end(wall: datetime, tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first instant whose wall time is past `wall`: the moment the clock jumped over it.

    `low` shows a wall time before `wall`, `high` one after it; bisect on whole seconds.
    """
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(datetime.fromtimestamp(mid, UTC), tz) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _steady_offset(day: date, hour: int, tz: ZoneInfo) -> timedelta | None:
    """The UTC offset of every wall time in this hour, or None when the hour has a transition.

    A wall time is in a gap or a repeated hour exactly when its two PEP 495 readings
    (fold 0 and 1) differ; checking both readings at :00 and :59 finds any transition
    inside the hour (zones do not change twice within one hour). This lets a day cost 4
    conversions per hour instead of 2 per tick.
    """
    first = datetime(day.year, day.month, day.day, hour, 0)
    last = first.replace(minute=59)
    offsets = {wall.replace(tzinfo=tz, fold=fold).utcoffset() for wall in (first, last) for fold in (0, 1)}
    return offsets.pop() if len(offsets) == 1 else None


@lru_cache(maxsize=1024)
def _day_ticks(cron: CronExpr, day: date, tz: ZoneInfo) -> tuple[datetime, ...]:
    """Every tick of one local calendar day, sorted (cached: the scheduler asks about the same day often)."""
    if not cron.day_matches(day):
        return ()
    ticks: set[datetime] = set()
    for hour in cron.hours:
        offset = _steady_offset(day, hour, tz)
        for minute in cron.minutes:
            wall = datetime(day.year, day.month, day.day, hour, minute)
            if offset is not None:
                ticks.add((wall - offset).replace(tzinfo=UTC))
            else:
                ticks.update(_resolve(wall, tz, fixed=not cron.wildcard))
    # Sorted as instants, not as wall times: in a repeated hour a wildcard job's second
    # 02:30 (CET) comes after the first 02:45 (CEST).
    return tuple(sorted(ticks))


def next_fire(expr: str | CronExpr, after: datetime, tz: str) -> datetime:
    """The first tick strictly after `after` (aware), as an aware UTC datetime.

    `expr` is an expression or a parsed `CronExpr`; `tz` an IANA zone name the expression
    is read in. Raises CronError for a bad expression or zone, ValueError for a naive `after`.
    """
    cron, where, start = _cron(expr), zone(tz), _aware("after", after)
    # Start a day early: a repeated hour just after midnight can put ticks of the previous
    # local day after `start`.
    day = _wall(start, where).date() - timedelta(days=1)
    for _ in range(_SEARCH_DAYS):
        for tick in _day_ticks(cron, day, where):
            if tick > start:
                return tick
        day += timedelta(days=1)
    raise CronError(f"cron expression '{cron.source}' does not fire within 100 years")


def prev_fire(expr: str | CronExpr, at: datetime, tz: str) -> datetime:
    """The last tick at or before `at` (aware), as an aware UTC datetime (same rules as next_fire)."""
    cron, where, end = _cron(expr), zone(tz), _aware("at", at)
    day = _wall(end, where).date() + timedelta(days=1)
    for _ in range(_SEARCH_DAYS):
        for tick in reversed(_day_ticks(cron, day, where)):
            if tick <= end:
                return tick
        day -= timedelta(days=1)
    raise CronError(f"cron expression '{cron.source}' did not fire within the last 100 years")


def due_ticks(expr: str | CronExpr, tz: str, last_fired: datetime | None, now: datetime) -> datetime | None:
    """The one tick to fire now, or None: the most recent tick at or before `now`, if not yet fired.

    A server that was down does not replay missed ticks, except the most recent one
    (spec): with `last_fired` set, the latest tick in (`last_fired`, `now`] is due,
    however many were missed before it. With `last_fired` None (never fired: a new
    schedule) nothing is replayed: only a tick within the last minute is due, so adding
    a `0 3 * * *` schedule at 10:00 does not start a run at 10:00.

    The caller records the returned tick as `last_fired` once it has started the run;
    across servers, a lock keyed by (schedule, tick) makes it fire once. `last_fired`
    after `now` (clock skew between servers) means nothing is due.
    """
    moment = _aware("now", now)
    tick = prev_fire(expr, moment, tz)
    if last_fired is None:
        return tick if moment - tick < FIRST_FIRE_WINDOW else None
    return tick if tick > _aware("last_fired", last_fired) else None
