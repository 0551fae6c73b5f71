"""Calendar events: parsing, next-event computation (incl. DST in Europe/Vienna), and the CLI."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from asyncsync.errors import InvalidInput
from asyncsync.jobs.calendar import CalendarEvent, local_timezone, next_event

VIENNA = ZoneInfo("Europe/Vienna")


def _at(text: str, tz: tzinfo = VIENNA) -> datetime:
    """An RFC 3339 instant, seen in ``tz`` (so fold is set right in a repeated hour)."""
    return datetime.fromisoformat(text).astimezone(tz)


# (event, from (strictly after), expected next event or None). Times are read in Europe/Vienna.
# 2026-11-28 is a Saturday; DST in Vienna: spring forward 2026-03-29 02:00 -> 03:00,
# fall back 2026-10-25 03:00 -> 02:00.
TABLE: list[tuple[str, str, str | None]] = [
    # weekday + time
    ("Wed 02:30", "2026-11-28T00:00:00+01:00", "2026-12-02T02:30:00+01:00"),
    ("Wed 02:30", "2026-12-02T02:30:00+01:00", "2026-12-09T02:30:00+01:00"),
    ("Wed 02:30", "2026-12-02T02:29:59.500000+01:00", "2026-12-02T02:30:00+01:00"),
    ("wednesday 2:30", "2026-12-02T02:30:00.000001+01:00", "2026-12-09T02:30:00+01:00"),
    ("12:00", "2026-11-28T12:00:01+01:00", "2026-11-29T12:00:00+01:00"),
    ("12:00", "2026-11-28T11:59:59+01:00", "2026-11-28T12:00:00+01:00"),
    # minute-only forms, repetition
    ("*:0/15", "2026-11-28T10:07:00+01:00", "2026-11-28T10:15:00+01:00"),
    ("*:0/15", "2026-11-28T10:45:00+01:00", "2026-11-28T11:00:00+01:00"),
    ("0/15", "2026-11-28T10:59:59+01:00", "2026-11-28T11:00:00+01:00"),
    ("30", "2026-11-28T10:31:00+01:00", "2026-11-28T11:30:00+01:00"),
    ("*:30/10", "2026-11-28T10:55:00+01:00", "2026-11-28T11:30:00+01:00"),
    ("8..17/2:00", "2026-11-28T09:00:00+01:00", "2026-11-28T10:00:00+01:00"),
    ("8..17/2:00", "2026-11-28T16:00:00+01:00", "2026-11-29T08:00:00+01:00"),
    ("fri 12..13:5/20", "2026-11-27T12:45:00+01:00", "2026-11-27T13:05:00+01:00"),
    ("fri 12..13:5/20", "2026-11-27T13:45:00+01:00", "2026-12-04T12:05:00+01:00"),
    ("*:*:30", "2026-11-28T10:00:30+01:00", "2026-11-28T10:01:30+01:00"),
    ("*:*:0/20", "2026-11-28T10:00:45+01:00", "2026-11-28T10:01:00+01:00"),
    ("10:00:05", "2026-11-28T10:00:00+01:00", "2026-11-28T10:00:05+01:00"),
    # weekday lists and ranges, across month ends
    ("mon..fri 8..17:00", "2026-10-30T17:00:00+01:00", "2026-11-02T08:00:00+01:00"),
    ("mon..fri", "2026-01-31T12:00:00+01:00", "2026-02-02T00:00:00+01:00"),
    ("sat,sun 10:00", "2026-03-30T00:00:00+02:00", "2026-04-04T10:00:00+02:00"),
    ("fri..mon 9:00", "2026-06-30T10:00:00+02:00", "2026-07-03T09:00:00+02:00"),
    ("mon..fri 8..17,22:0/15", "2026-05-29T17:50:00+02:00", "2026-05-29T22:00:00+02:00"),
    ("mon..fri 8..17,22:0/15", "2026-05-29T22:45:00+02:00", "2026-06-01T08:00:00+02:00"),
    ("MON,Wed..thu 07:15", "2026-12-31T08:00:00+01:00", "2027-01-04T07:15:00+01:00"),
    # dates
    ("2021-02-29", "2020-01-01T00:00:00+01:00", None),
    ("*-02-29", "2025-01-01T00:00:00+01:00", "2028-02-29T00:00:00+01:00"),
    ("*-02-29", "2024-02-29T00:00:00+01:00", "2028-02-29T00:00:00+01:00"),
    ("sat *-1..7 15:00", "2026-03-01T00:00:00+01:00", "2026-03-07T15:00:00+01:00"),
    ("sat *-1..7 15:00", "2026-03-07T15:00:00+01:00", "2026-04-04T15:00:00+02:00"),
    ("*-*-01 00:00", "2026-01-31T23:59:00+01:00", "2026-02-01T00:00:00+01:00"),
    ("*-*-31", "2026-04-01T00:00:00+02:00", "2026-05-31T00:00:00+02:00"),
    ("2026-12-24 18:00", "2026-01-01T00:00:00+01:00", "2026-12-24T18:00:00+01:00"),
    ("2026-12-24 18:00", "2026-12-24T18:00:00+01:00", None),
    ("2027..2029-01-01", "2027-06-01T00:00:00+02:00", "2028-01-01T00:00:00+01:00"),
    ("2026/2-06-01", "2026-07-01T00:00:00+02:00", "2028-06-01T00:00:00+02:00"),
    ("*-1/3-1", "2026-05-15T00:00:00+02:00", "2026-07-01T00:00:00+02:00"),
    ("12-25", "2026-12-25T00:00:00+01:00", "2027-12-25T00:00:00+01:00"),
    ("mon *-12-24..31 12:00", "2026-11-28T00:00:00+01:00", "2026-12-28T12:00:00+01:00"),
    # DST: spring forward 2026-03-29 (02:00..02:59 does not exist)
    ("02:30", "2026-03-28T12:00:00+01:00", "2026-03-30T02:30:00+02:00"),
    ("daily", "2026-03-28T12:00:00+01:00", "2026-03-29T00:00:00+01:00"),
    ("03:00", "2026-03-29T01:59:59+01:00", "2026-03-29T03:00:00+02:00"),
    ("*:0/15", "2026-03-29T01:50:00+01:00", "2026-03-29T03:00:00+02:00"),
    ("2:*:*", "2026-03-29T01:59:59+01:00", "2026-03-30T02:00:00+02:00"),
    ("sun 2:30", "2026-03-28T00:00:00+01:00", "2026-04-05T02:30:00+02:00"),
    # DST: fall back 2026-10-25 (02:00..02:59 happens twice; fires on the first pass only)
    ("02:30", "2026-10-24T12:00:00+02:00", "2026-10-25T02:30:00+02:00"),
    ("02:30", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"),
    ("*:0/15", "2026-10-25T02:45:00+02:00", "2026-10-25T03:00:00+01:00"),
    ("*:0/15", "2026-10-25T02:10:00+01:00", "2026-10-25T03:00:00+01:00"),
    ("hourly", "2026-10-25T01:30:00+02:00", "2026-10-25T02:00:00+02:00"),
    ("hourly", "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00"),
    ("daily", "2026-10-24T12:00:00+02:00", "2026-10-25T00:00:00+02:00"),
    # UTC events: computed in UTC whatever the caller's zone
    ("02:30 UTC", "2026-11-28T03:00:00+01:00", "2026-11-28T02:30:00+00:00"),
    ("Wed 02:30 UTC", "2026-03-29T00:00:00+01:00", "2026-04-01T02:30:00+00:00"),
    ("02:30 utc", "2026-03-29T03:00:00+02:00", "2026-03-29T02:30:00+00:00"),
    ("daily UTC", "2026-10-25T00:30:00+02:00", "2026-10-25T00:00:00+00:00"),
    # keywords (from Saturday 2026-11-28 10:20:30)
    ("minutely", "2026-11-28T10:20:30+01:00", "2026-11-28T10:21:00+01:00"),
    ("hourly", "2026-11-28T10:20:30+01:00", "2026-11-28T11:00:00+01:00"),
    ("daily", "2026-11-28T10:20:30+01:00", "2026-11-29T00:00:00+01:00"),
    ("Daily", "2026-11-29T00:00:00+01:00", "2026-11-30T00:00:00+01:00"),
    ("weekly", "2026-11-28T10:20:30+01:00", "2026-11-30T00:00:00+01:00"),
    ("monthly", "2026-11-28T10:20:30+01:00", "2026-12-01T00:00:00+01:00"),
    ("yearly", "2026-11-28T10:20:30+01:00", "2027-01-01T00:00:00+01:00"),
    ("annually", "2027-01-01T00:00:00+01:00", "2028-01-01T00:00:00+01:00"),
    ("quarterly", "2027-02-01T00:00:00+01:00", "2027-04-01T00:00:00+02:00"),
    ("semiannually", "2027-02-01T00:00:00+01:00", "2027-07-01T00:00:00+02:00"),
    ("semi-annually", "2027-07-01T00:00:00+02:00", "2028-01-01T00:00:00+01:00"),
]


@pytest.mark.parametrize(("event", "start", "expected"), TABLE, ids=[f"{e}@{s}" for e, s, _ in TABLE])
def test_next_after_table(event: str, start: str, expected: str | None) -> None:
    found = CalendarEvent.parse(event).next_after(_at(start))
    assert (found.isoformat() if found else None) == expected


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 40


def test_result_zone_and_utc_events() -> None:
    local = CalendarEvent.parse("12:00").next_after(_at("2026-06-01T00:00:00+02:00"))
    assert local is not None and local.tzinfo is VIENNA
    utc = CalendarEvent.parse("12:00 UTC").next_after(_at("2026-06-01T00:00:00+02:00"))
    assert utc is not None and utc.tzinfo is UTC
    assert utc.isoformat() == "2026-06-01T12:00:00+00:00"


def test_naive_datetime_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        CalendarEvent.parse("daily").next_after(datetime(2026, 1, 1))


def test_wed_0230_fires_weekly_across_a_month() -> None:
    event = CalendarEvent.parse("Wed 02:30")
    fired = event.upcoming(_at("2026-03-01T00:00:00+01:00"), 6)
    assert [d.isoformat() for d in fired] == [
        "2026-03-04T02:30:00+01:00",
        "2026-03-11T02:30:00+01:00",
        "2026-03-18T02:30:00+01:00",
        "2026-03-25T02:30:00+01:00",
        "2026-04-01T02:30:00+02:00",  # after the DST change: still 02:30 local
        "2026-04-08T02:30:00+02:00",
    ]
    # Real elapsed time (same-zone datetime subtraction would compare wall times).
    gaps = {b.timestamp() - a.timestamp() for a, b in itertools.pairwise(fired)}
    assert gaps == {7 * 86400, 7 * 86400 - 3600}


def test_every_quarter_hour_fires_four_times_an_hour() -> None:
    event = CalendarEvent.parse("*:0/15")
    fired = event.upcoming(_at("2026-11-28T09:59:59+01:00"), 12)
    assert len(fired) == 12
    per_hour: dict[int, int] = {}
    for d in fired:
        per_hour[d.hour] = per_hour.get(d.hour, 0) + 1
        assert d.minute in (0, 15, 30, 45) and d.second == 0
    assert per_hour == {10: 4, 11: 4, 12: 4}


def test_spring_forward_day_has_one_hour_less_of_quarter_hours() -> None:
    event = CalendarEvent.parse("*:0/15")
    start = _at("2026-03-29T00:00:00+01:00")
    day = [d for d in event.upcoming(start, 200) if d.date() == start.date()]
    assert len(day) == 23 * 4 - 1  # midnight itself is not strictly after the start
    assert all(d.hour != 2 for d in day)


def test_fall_back_day_fires_each_wall_time_once() -> None:
    event = CalendarEvent.parse("*:0/15")
    start = _at("2026-10-24T23:59:00+02:00")
    day = [d for d in event.upcoming(start, 200) if d.date() == start.date() + timedelta(days=1)]
    walls = [d.replace(tzinfo=None) for d in day]
    assert len(walls) == len(set(walls)) == 24 * 4
    instants = [d.timestamp() for d in day]
    assert instants == sorted(instants)


def test_next_event_epoch_helper() -> None:
    start = _at("2026-11-28T00:00:00+01:00").timestamp()
    got = next_event("Wed 02:30", start, VIENNA)
    assert got == _at("2026-12-02T02:30:00+01:00").timestamp()
    parsed = CalendarEvent.parse("Wed 02:30")
    assert next_event(parsed, start, VIENNA) == got
    assert next_event("2021-02-29", start, VIENNA) is None
    with pytest.raises(InvalidInput):
        next_event("bogus", start, VIENNA)


def test_str_and_normalized() -> None:
    event = CalendarEvent.parse("  mon..fri   8..17/2:0/15  ")
    assert str(event) == "mon..fri 8..17/2:0/15"
    assert event.normalized() == "Mon..Fri *-*-* 08,10,12,14,16:00,15,30,45:00"
    assert CalendarEvent.parse("weekly").normalized() == "Mon *-*-* 00:00:00"
    assert CalendarEvent.parse("quarterly UTC").normalized() == "*-01,04,07,10-01 00:00:00 UTC"
    assert CalendarEvent.parse("0/15").normalized() == CalendarEvent.parse("*:0/15").normalized()
    assert CalendarEvent.parse("Wed 02:30") == CalendarEvent.parse("Wed 02:30")
    assert repr(CalendarEvent.parse("daily")) == "CalendarEvent('daily')"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("UTC", "UTC"),
        ("foo", "weekday"),
        ("mon..xyz 12:00", "weekday"),
        ("mon, 12:00", "weekday"),
        ("25:00", "hour 25"),
        ("12:60", "minute 60"),
        ("12:00:60", "second 60"),
        ("2021-13-01", "month 13"),
        ("*-*-0", "day 0"),
        ("*-02-31", "no month has such a day"),
        ("*-04-31", "no month has such a day"),
        ("1969-01-01", "year 1969"),
        ("5..3:00", "backwards"),
        ("*/0", "repetition 0"),
        ("*:0/0", "repetition 0"),
        ("1,,2", "empty item"),
        ("1..", "not a number"),
        ("12:00.5", "not a number"),
        ("１２:00", "not a number"),
        ("mon 12:00 extra", "unexpected 'extra'"),
        ("12:00 mon", "unexpected 'mon'"),
        ("daily 12:00", "keyword"),
        ("12:00:00:00", "not [HOUR:]MINUTE[:SECOND]"),
        ("1-2-3-4", "not [YEAR-]MONTH-DAY"),
        ("-5", "empty month"),
        ("2021-02-", "empty day"),
        ("12:00 UTC UTC", "unexpected"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        CalendarEvent.parse(text)
    assert info.value.field == "schedule"
    message = str(info.value)
    assert message.startswith("schedule: ")
    assert fragment in message
    assert "\n" not in message


# -- property: next_after is the first matching instant strictly after ---------------------

_WEEKDAY = st.sampled_from(["", "mon ", "tue..thu ", "sat,sun ", "fri..mon ", "Wednesday "])
_DATE = st.one_of(
    st.just(""),
    st.builds(
        lambda y, m, d: f"{y}{m}-{d} ",
        st.sampled_from(["", "*-", "2026..2030-", "2027/2-"]),
        st.sampled_from(["*", "2", "1,7", "3..5", "*/4", "10"]),
        st.sampled_from(["*", "29", "1..7", "*/10", "31", "15", "28..31"]),
    ),
)
_TIME = st.builds(
    lambda h, m, s: f"{h}:{m}{s}",
    st.sampled_from(["*", "0", "2", "3", "8..17/2", "22,23", "1..3"]),
    st.sampled_from(["*", "0", "30", "0/15", "5/20", "59"]),
    st.sampled_from(["", ":0", ":*/30", ":15", ":59"]),
)
_EVENTS = st.builds(lambda w, d, t, u: f"{w}{d}{t}{u}", _WEEKDAY, _DATE, _TIME, st.sampled_from(["", " UTC"]))
_ZONES = st.sampled_from([VIENNA, UTC, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")])


def _parse_or_none(text: str) -> CalendarEvent | None:
    try:
        return CalendarEvent.parse(text)
    except InvalidInput:
        return None


@settings(max_examples=150, deadline=None)
@given(
    text=_EVENTS,
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31)),
    zone=_ZONES,
    fold=st.integers(0, 1),
)
def test_next_after_property(text: str, start: datetime, zone: tzinfo, fold: int) -> None:
    event = _parse_or_none(text)
    assume(event is not None)
    assert event is not None
    after = start.replace(tzinfo=zone, fold=fold).astimezone(UTC).astimezone(zone)
    found = event.next_after(after)
    window_end = after + timedelta(hours=30)
    if found is not None:
        assert found > after
        assert event.matches(found)
        calc_zone = UTC if event.utc else zone
        # The instant is real and is the first occurrence of its wall time.
        assert found.astimezone(UTC).astimezone(calc_zone).replace(tzinfo=None) == found.replace(tzinfo=None)
        assert found.replace(fold=0).astimezone(UTC) == found.astimezone(UTC)
        window_end = min(window_end, found)
    # Brute force over whole minutes (plus the event's seconds): nothing earlier matches.
    calc_zone = UTC if event.utc else zone
    t = after.astimezone(UTC).replace(second=0, microsecond=0)
    end_utc = window_end.astimezone(UTC)
    while t < end_utc:
        for sec in event.seconds:
            x = t + timedelta(seconds=sec)
            if after < x < end_utc:
                local = x.astimezone(calc_zone)
                assert not (event.matches(local) and local.fold == 0), (text, after, x, found)
        t += timedelta(minutes=1)


@settings(max_examples=60, deadline=None)
@given(text=_EVENTS, start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31)))
def test_upcoming_is_strictly_increasing(text: str, start: datetime) -> None:
    event = _parse_or_none(text)
    assume(event is not None)
    assert event is not None
    times = event.upcoming(start.replace(tzinfo=VIENNA), 5)
    stamps = [d.timestamp() for d in times]
    assert stamps == sorted(set(stamps))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789*/.,:- abcmonfriUTC")), max_size=30))
def test_parse_never_crashes(text: str) -> None:
    try:
        event = CalendarEvent.parse(text)
    except InvalidInput as exc:
        assert str(exc).startswith("schedule: ")
        return
    assert str(event) == " ".join(text.split())
    after = datetime(2026, 1, 1, tzinfo=UTC)
    found = event.next_after(after)
    assert found is None or (found > after and event.matches(found))


def test_search_is_bounded_and_fast_for_never() -> None:
    # 2021-02-29 never exists; "sun *-02-29" exists only some leap years: both must return promptly.
    assert CalendarEvent.parse("2021-02-29").next_after(_at("2021-01-01T00:00:00+01:00")) is None
    found = CalendarEvent.parse("sun *-02-29 23:59:59").next_after(_at("2026-01-01T00:00:00+01:00"))
    assert found is not None and found.isoformat() == "2032-02-29T23:59:59+01:00"
    # Far in the future but within the bound.
    assert CalendarEvent.parse("2200-01-01").next_after(_at("2026-01-01T00:00:00+01:00")) is not None


# -- local_timezone ------------------------------------------------------------------------


def test_local_timezone_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Vienna")
    assert local_timezone() == VIENNA
    monkeypatch.setenv("TZ", ":Europe/Vienna")
    assert local_timezone() == VIENNA
    monkeypatch.setenv("TZ", "UTC")
    assert local_timezone() is UTC
    monkeypatch.setenv("TZ", "")
    assert local_timezone() is UTC
    monkeypatch.setenv("TZ", "Not/AZone")
    assert local_timezone() is UTC
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/Europe/Vienna")
    zone = local_timezone()
    assert datetime(2026, 7, 1, tzinfo=zone).utcoffset() == timedelta(hours=2)
    assert datetime(2026, 1, 1, tzinfo=zone).utcoffset() == timedelta(hours=1)


def test_local_timezone_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    zone = local_timezone()
    # Whatever /etc/localtime says, it is a usable zone.
    assert datetime(2026, 1, 1, tzinfo=zone).utcoffset() is not None


# -- CLI -----------------------------------------------------------------------------------


def _cli(
    env: dict[str, str], *args: str, tz: str | None = "Europe/Vienna"
) -> subprocess.CompletedProcess[str]:
    env = dict(env)
    if tz is not None:
        env["TZ"] = tz
    return subprocess.run(
        [sys.executable, "-m", "asyncsync", "calendar", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_lists_next_times(cli_env: dict[str, str]) -> None:
    r = _cli(cli_env, "Wed 02:30", "--from", "2026-11-28T00:00:00Z", "--count", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2026-12-02T02:30:00+01:00",
        "2026-12-09T02:30:00+01:00",
        "2026-12-16T02:30:00+01:00",
    ]
    assert r.stderr == ""


def test_cli_dst_and_utc_output(cli_env: dict[str, str]) -> None:
    r = _cli(cli_env, "*:0/15", "--from", "2026-10-25T02:40:00+02:00", "-n", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2026-10-25T02:45:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:15:00+01:00",
    ]
    r = _cli(cli_env, "*:0/15", "--from", "2026-10-25T02:40:00+02:00", "-n", "2", "--utc")
    assert r.stdout.splitlines() == ["2026-10-25T00:45:00Z", "2026-10-25T02:00:00Z"]
    r = _cli(cli_env, "daily UTC", "--from", "2026-10-25T00:30:00+02:00", "-n", "2")
    assert r.stdout.splitlines() == ["2026-10-25T00:00:00Z", "2026-10-26T00:00:00Z"]
    r = _cli(cli_env, "daily", "--from", "2026-10-25T00:30:00+02:00", "-n", "1", tz="UTC")
    assert r.stdout.splitlines() == ["2026-10-25T00:00:00Z"]


def test_cli_from_without_offset_is_local(cli_env: dict[str, str]) -> None:
    r = _cli(cli_env, "02:30", "--from", "2026-03-28T12:00:00", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_cli_default_from_is_now(cli_env: dict[str, str]) -> None:
    before = datetime.now(UTC)
    r = _cli(cli_env, "minutely", "-n", "2")
    assert r.returncode == 0, r.stderr
    lines = [datetime.fromisoformat(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0] > before - timedelta(seconds=1) and lines[1] - lines[0] == timedelta(minutes=1)


def test_cli_never_fires(cli_env: dict[str, str]) -> None:
    r = _cli(cli_env, "2021-02-29")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "never fires" in r.stderr and "2021-02-29" in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_cli_runs_out(cli_env: dict[str, str]) -> None:
    r = _cli(cli_env, "2027-01-01 UTC", "--from", "2026-01-01T00:00:00Z", "-n", "3")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["2027-01-01T00:00:00Z"]
    assert "no more" in r.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["25:00"], "hour 25"),
        (["daily", "--from", "yesterday"], "--from"),
    ],
)
def test_cli_bad_input(cli_env: dict[str, str], args: list[str], fragment: str) -> None:
    r = _cli(cli_env, *args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in r.stderr
