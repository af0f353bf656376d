"""Cron: parsing (Vixie syntax and errors), next/previous ticks across DST, and the one tick due now."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from coordinator.triggers.cron import (
    ALIASES,
    CronError,
    due_ticks,
    next_fire,
    parse_cron,
    prev_fire,
    zone,
)

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    """A wall time in `tz` as UTC (an ambiguous wall time never compares equal across zones: PEP 495)."""
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def ticks(expr: str, after: datetime, tz: str, count: int) -> list[datetime]:
    out = []
    for _ in range(count):
        after = next_fire(expr, after, tz)
        out.append(after)
    return out


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, field, values", [
    ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
    ("0-10/5,59 * * * *", "minutes", {0, 5, 10, 59}),
    ("0 9-17/4 * * *", "hours", {9, 13, 17}),
    ("0 0 1,15 * *", "days", {1, 15}),
    ("0 0 1 jan,JUL,Dec *", "months", {1, 7, 12}),
    ("0 0 1 feb-apr *", "months", {2, 3, 4}),
    ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
    ("0 0 * * 7", "weekdays", {0}),  # 7 is Sunday too
    ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
    ("0 0 * * sun-sat", "weekdays", set(range(7))),
    ("0\t3  *  * *", "hours", {3}),  # any blanks separate fields
])
def test_fields(expr: str, field: str, values: set[int]) -> None:
    assert getattr(parse_cron(expr), field) == values


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_mean_their_expansion(alias: str) -> None:
    a, b = parse_cron(alias), parse_cron(ALIASES[alias])
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays, a.dom_star, a.dow_star, a.wildcard) == (
        b.minutes, b.hours, b.days, b.months, b.weekdays, b.dom_star, b.dow_star, b.wildcard)
    assert parse_cron(alias.upper()).minutes == a.minutes


def test_star_flags_follow_vixie() -> None:
    expr = parse_cron("*/5 3 */2 * 1")
    assert (expr.dom_star, expr.dow_star, expr.wildcard) == (True, False, True)
    assert parse_cron("30 2 * * *").wildcard is False
    assert parse_cron("30 */2 * * *").wildcard is True


@pytest.mark.parametrize("expr, words", [
    ("0 3 * *", ["has 4 fields", "expected 5", "minute hour day-of-month month day-of-week"]),
    ("0 3 * * * *", ["has 6 fields"]),
    ("", ["has 0 fields"]),
    ("60 * * * *", ["minute field '60'", "out of range 0-59"]),
    ("0 24 * * *", ["hour field", "out of range 0-23"]),
    ("0 0 0 * *", ["day-of-month field", "out of range 1-31"]),
    ("0 0 * 13 *", ["month field", "out of range 1-12"]),
    ("0 0 * foo *", ["month field", "'foo' is not a number 1-12 or a name (jan,"]),
    ("0 0 * * 8", ["day-of-week field", "out of range 0-7"]),
    ("0 0 * * monday", ["day-of-week field", "sun, mon"]),
    ("x * * * *", ["minute field", "'x' is not a number 0-59"]),
    ("-1 * * * *", ["minute field"]),
    ("5/15 * * * *", ["minute field", "write 5-59/15 or */15"]),
    ("*/0 * * * *", ["minute field", "step '0'", "1 to 59"]),
    ("*/61 * * * *", ["minute field", "step '61'"]),
    ("*/x * * * *", ["minute field", "step 'x'"]),
    ("0 0 * * fri-mon", ["day-of-week field", "goes backwards", "fri-sat,sun-mon"]),
    ("1,,2 * * * *", ["minute field", "empty list item"]),
    ("@reboot", ["unknown alias @reboot", "@daily"]),
    ("0 0 30 2 *", ["never"]),
    ("0 0 31 4,6,9,11 *", ["never"]),
    ("0 0 31 2 */2", ["never"]),  # day-of-week starting with * makes days match both fields
])
def test_errors_name_the_field_and_a_fix(expr: str, words: list[str]) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(expr)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_day_that_exists_only_in_leap_years_or_on_a_weekday_is_fine() -> None:
    parse_cron("0 0 29 2 *")
    parse_cron("0 0 30 2 1")  # both restricted: every Monday in February counts


def test_non_string_expression_and_unknown_zone() -> None:
    with pytest.raises(CronError, match="string"):
        parse_cron(5)  # type: ignore[arg-type]
    for bad in ("Mars/Olympus", "", "/etc/passwd", "../UTC", "Europe"):
        with pytest.raises(CronError, match="IANA"):
            zone(bad)


# -- which days -----------------------------------------------------------------------------


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    expr = parse_cron("0 0 13 * 5")  # every 13th, and every Friday
    assert expr.day_matches(date(2024, 5, 13))  # a Monday the 13th
    assert expr.day_matches(date(2024, 5, 17))  # a Friday the 17th
    assert not expr.day_matches(date(2024, 5, 14))


def test_day_of_month_and_day_of_week_when_one_starts_with_a_star() -> None:
    expr = parse_cron("0 0 */2 * 5")  # */2 counts as a star: odd days that are Fridays
    assert expr.day_matches(date(2024, 5, 17))
    assert not expr.day_matches(date(2024, 5, 10))  # Friday, even day
    assert not expr.day_matches(date(2024, 5, 13))  # odd day, Monday


# -- next and previous ticks -----------------------------------------------------------------


def test_next_fire_is_strictly_after_and_aware_utc() -> None:
    at = utc(2024, 1, 1, 3, 0)
    assert next_fire("0 3 * * *", at, "UTC") == utc(2024, 1, 2, 3, 0)
    assert next_fire("0 3 * * *", at - timedelta(seconds=1), "UTC") == at
    result = next_fire("0 3 * * *", at.astimezone(ZoneInfo("Asia/Tokyo")), "UTC")  # any aware input
    assert result == utc(2024, 1, 2, 3, 0) and result.tzinfo is UTC


def test_weekdays_in_a_time_zone() -> None:
    # 2024-01-05 is a Friday; 03:00 in New York is 08:00 UTC in winter.
    assert ticks("0 3 * * 1-5", utc(2024, 1, 5, 9, 0), "America/New_York", 2) == [
        utc(2024, 1, 8, 8, 0), utc(2024, 1, 9, 8, 0)]


def test_leap_day_and_year_rollover() -> None:
    assert next_fire("0 0 29 2 *", utc(2024, 3, 1), "UTC") == utc(2028, 2, 29)
    assert next_fire("@yearly", utc(2024, 12, 31, 23, 59, 59), "UTC") == utc(2025, 1, 1)
    assert next_fire("0 0 29 2 1", utc(2024, 3, 1), "UTC") == utc(2025, 2, 3)  # OR: a Monday in February


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire("@daily", datetime(2024, 1, 1), "UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        due_ticks("@daily", "UTC", None, datetime(2024, 1, 1))


BERLIN = "Europe/Berlin"  # 2024: 02:00 CET -> 03:00 CEST on 31 March, 03:00 CEST -> 02:00 CET on 27 October


def test_spring_forward_fixed_time_fires_at_the_end_of_the_gap() -> None:
    assert ticks("30 2 * * *", utc(2024, 3, 30, 12), BERLIN, 2) == [
        local(BERLIN, 2024, 3, 31, 3, 0), local(BERLIN, 2024, 4, 1, 2, 30)]


def test_spring_forward_several_fixed_times_in_the_gap_fire_once() -> None:
    assert ticks("0,30 2 * * *", utc(2024, 3, 30, 12), BERLIN, 2) == [
        local(BERLIN, 2024, 3, 31, 3, 0), local(BERLIN, 2024, 4, 1, 2, 0)]


def test_spring_forward_wildcard_skips_the_missing_hour() -> None:
    assert ticks("30 * * * *", local(BERLIN, 2024, 3, 31, 1, 0), BERLIN, 2) == [
        local(BERLIN, 2024, 3, 31, 1, 30), local(BERLIN, 2024, 3, 31, 3, 30)]
    assert ticks("*/30 2 * * *", utc(2024, 3, 30, 12), BERLIN, 1) == [local(BERLIN, 2024, 4, 1, 2, 0)]


def test_fall_back_fixed_time_fires_once_at_the_first_occurrence() -> None:
    assert ticks("30 2 * * *", utc(2024, 10, 26, 12), BERLIN, 2) == [
        local(BERLIN, 2024, 10, 27, 2, 30, fold=0), local(BERLIN, 2024, 10, 28, 2, 30)]


def test_fall_back_wildcard_fires_at_both_occurrences_in_time_order() -> None:
    assert ticks("0,30 * * * *", local(BERLIN, 2024, 10, 27, 1, 45), BERLIN, 5) == [
        local(BERLIN, 2024, 10, 27, 2, 0, fold=0), local(BERLIN, 2024, 10, 27, 2, 30, fold=0),
        local(BERLIN, 2024, 10, 27, 2, 0, fold=1), local(BERLIN, 2024, 10, 27, 2, 30, fold=1),
        local(BERLIN, 2024, 10, 27, 3, 0)]


def test_new_york_transitions() -> None:
    ny = "America/New_York"  # 2024: 02:00 -> 03:00 on 10 March, 02:00 -> 01:00 on 3 November
    assert next_fire("30 2 * * *", utc(2024, 3, 10), ny) == utc(2024, 3, 10, 7, 0)  # 03:00 EDT
    assert ticks("30 1 * * *", utc(2024, 11, 2, 12), ny, 2) == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


def test_half_hour_dst_and_midnight_and_whole_day_gaps() -> None:
    # Lord Howe Island moves 30 minutes: 02:00 -> 02:30 on 6 October 2024.
    assert next_fire("15 2 * * *", utc(2024, 10, 5), "Australia/Lord_Howe") == local(
        "Australia/Lord_Howe", 2024, 10, 6, 2, 30)
    # Sao Paulo's DST began at midnight in 2018: 00:00 -> 01:00 on 4 November.
    assert next_fire("0 0 * * *", utc(2018, 11, 3, 12), "America/Sao_Paulo") == local(
        "America/Sao_Paulo", 2018, 11, 4, 1, 0)
    # Samoa skipped 30 December 2011 entirely: a daily job runs at the end of the gap.
    assert ticks("0 12 * * *", utc(2011, 12, 29, 0), "Pacific/Apia", 3) == [
        local("Pacific/Apia", 2011, 12, 29, 12, 0), local("Pacific/Apia", 2011, 12, 31, 0, 0),
        local("Pacific/Apia", 2011, 12, 31, 12, 0)]


def test_prev_fire_is_at_or_before() -> None:
    at = utc(2024, 1, 2, 3, 0)
    assert prev_fire("0 3 * * *", at, "UTC") == at
    assert prev_fire("0 3 * * *", at - timedelta(seconds=1), "UTC") == utc(2024, 1, 1, 3, 0)
    assert prev_fire("30 2 * * *", utc(2024, 3, 31, 12), BERLIN) == local(BERLIN, 2024, 3, 31, 3, 0)


# -- properties -------------------------------------------------------------------------------


def render(values: set[int], low: int, high: int) -> str:
    return "*" if values == set(range(low, high + 1)) else ",".join(map(str, sorted(values)))


def subset(low: int, high: int, max_size: int, pick_high: int | None = None) -> st.SearchStrategy[set[int]]:
    """The whole field (rendered `*`) or a few values (up to `pick_high`, so that ticks stay frequent)."""
    return st.one_of(st.just(set(range(low, high + 1))),
                     st.sets(st.integers(low, pick_high or high), min_size=1, max_size=max_size))


EXPRESSIONS = st.tuples(subset(0, 59, 4), subset(0, 23, 3), subset(1, 31, 3, pick_high=28), subset(1, 12, 4),
                        subset(0, 6, 3))
INSTANTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2035, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC))


def expression(fields: tuple[set[int], ...]) -> str:
    minutes, hours, days, months, weekdays = fields
    return " ".join([render(minutes, 0, 59), render(hours, 0, 23), render(days, 1, 31), render(months, 1, 12),
                     render(weekdays, 0, 6)])


def brute_force_next(fields: tuple[set[int], ...], after: datetime) -> datetime:
    """The next UTC tick by checking every minute of every matching day (the cron rules, restated)."""
    minutes, hours, days, months, weekdays = fields
    dom_star, dow_star = days == set(range(1, 32)), weekdays == set(range(7))
    day = after.date()
    while True:
        dom, dow = day.day in days, day.isoweekday() % 7 in weekdays
        both = dom_star or dow_star
        if day.month in months and ((dom and dow) if both else (dom or dow)):
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    tick = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                    if tick > after:
                        return tick
        day += timedelta(days=1)


@settings(max_examples=100, deadline=None)
@given(fields=EXPRESSIONS, after=INSTANTS)
def test_next_fire_in_utc_agrees_with_brute_force(fields: tuple[set[int], ...], after: datetime) -> None:
    expr = expression(fields)
    assert next_fire(expr, after, "UTC") == brute_force_next(fields, after)


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "America/Sao_Paulo"]


@settings(max_examples=100, deadline=None)
@given(fields=EXPRESSIONS, after=INSTANTS, tz=st.sampled_from(ZONES))
def test_next_and_prev_fire_are_consistent_in_every_zone(fields, after: datetime, tz: str) -> None:
    minutes, hours = fields[0], fields[1]
    expr = expression(fields)
    tick = next_fire(expr, after, tz)
    assert tick > after and tick.second == 0 and tick.microsecond == 0 and tick.tzinfo is UTC
    assert prev_fire(expr, tick, tz) == tick
    assert prev_fire(expr, tick - timedelta(microseconds=1), tz) <= after  # nothing in between
    wall = tick.astimezone(ZoneInfo(tz))
    cron = parse_cron(expr)
    jumped = (tick - timedelta(minutes=1)).astimezone(ZoneInfo(tz)).utcoffset() != wall.utcoffset()
    on_schedule = wall.minute in minutes and wall.hour in hours and cron.day_matches(wall.date())
    assert on_schedule or (jumped and not cron.wildcard), (expr, tz, wall)


# -- due_ticks --------------------------------------------------------------------------------


def test_a_new_schedule_fires_only_a_tick_of_the_current_minute() -> None:
    assert due_ticks("0 3 * * *", "UTC", None, utc(2024, 1, 1, 3, 0, 30)) == utc(2024, 1, 1, 3, 0)
    assert due_ticks("0 3 * * *", "UTC", None, utc(2024, 1, 1, 3, 1, 0)) is None
    assert due_ticks("0 3 * * *", "UTC", None, utc(2024, 1, 1, 10, 0)) is None  # added at 10:00: no replay


def test_a_server_that_was_down_fires_only_the_most_recent_missed_tick() -> None:
    last = utc(2024, 1, 1, 3, 0)
    assert due_ticks("0 3 * * *", "UTC", last, utc(2024, 1, 5, 12, 0)) == utc(2024, 1, 5, 3, 0)
    assert due_ticks("0 3 * * *", "UTC", utc(2024, 1, 5, 3, 0), utc(2024, 1, 5, 12, 0)) is None


def test_nothing_is_due_before_the_next_tick_or_when_last_fired_is_ahead() -> None:
    assert due_ticks("*/15 * * * *", "UTC", utc(2024, 1, 1, 0, 15), utc(2024, 1, 1, 0, 29, 59)) is None
    assert due_ticks("*/15 * * * *", "UTC", utc(2024, 1, 1, 0, 15), utc(2024, 1, 1, 0, 30)) == utc(2024, 1, 1, 0, 30)
    assert due_ticks("*/15 * * * *", "UTC", utc(2024, 1, 1, 1, 0), utc(2024, 1, 1, 0, 50)) is None  # clock skew


@settings(max_examples=60, deadline=None)
@given(expr=st.sampled_from(["*/7 * * * *", "0 * * * *", "30 2 * * *", "0,30 1-3 * * *", "@daily"]),
       tz=st.sampled_from(["UTC", BERLIN]), start=INSTANTS,
       gaps=st.lists(st.integers(1, 6 * 3600), min_size=1, max_size=40))
def test_a_polling_scheduler_fires_each_tick_at_most_once_and_never_falls_behind(expr, tz, start, gaps) -> None:
    """Poll at random intervals (seconds to hours: a server that is sometimes down); record what fires."""
    now, last, fired = start, None, []
    for gap in gaps:
        now += timedelta(seconds=gap)
        tick = due_ticks(expr, tz, last, now)
        if tick is not None:
            assert tick <= now and (last is None or tick > last)
            fired.append(tick)
            last = tick
        latest = prev_fire(expr, now, tz)
        if last is not None:
            assert last == latest  # after any poll, the latest tick has fired: at most one behind, never more
    assert fired == sorted(set(fired))
