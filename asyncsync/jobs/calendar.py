"""Calendar events: the systemd-like schedule syntax Proxmox uses, and "when does it fire next".

Syntax (case-insensitive, fields separated by white space)::

    [WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:]MINUTE[:SECOND] [UTC]

- ``WEEKDAYS``: names (``mon`` or ``monday`` …), lists (``sat,sun``) and ranges
  (``mon..fri``; a range may wrap around the week end: ``fri..mon``).
- Every numeric field holds a comma list of items: ``*``, ``N``, ``A..B``,
  ``N/STEP`` (N, N+STEP, … up to the field's maximum), ``*/STEP`` (from the
  field's minimum) and ``A..B/STEP``.
- A time without ``:`` is a minute (``0/15`` is ``*:0/15``), as in Proxmox;
  seconds default to 0; a weekday or date without a time means 00:00:00.
- Keywords, as systemd.time(7) defines them: ``minutely hourly daily weekly
  monthly yearly annually quarterly semiannually semi-annually``.
- A trailing ``UTC`` evaluates the event in UTC instead of local time.

Semantics across daylight-saving changes follow systemd: a local time that
does not exist (spring-forward gap) is skipped, the event fires at the next
matching time that exists; a local time that exists twice (fall-back) fires
once, at its first occurrence.

Finding the next event walks dates (year, month, day) and then the sorted
hour/minute/second values, never second by second, and gives up after
:data:`SEARCH_YEARS` years (``None``: the event never fires).
"""

from __future__ import annotations

import calendar as _cal
import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import InvalidInput

SEARCH_YEARS = 200
"""How far ahead :meth:`CalendarEvent.next_after` looks before concluding "never"."""

_FIELD = "schedule"
_MIN_YEAR = 1970
_MAX_YEAR = 9999
# datetime cannot represent instants past 9999-12-31; keep a day of margin for tz shifts.
_LAST_SEARCH_YEAR = 9998

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WEEKDAYS: dict[str, int] = {}
for _i, _long in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")):
    _WEEKDAYS[_long] = _i
    _WEEKDAYS[_long[:3]] = _i

# systemd.time(7), "Calendar Events": the shorthand forms and what they expand to.
KEYWORDS: dict[str, str] = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    "semiannually": "*-01,07-01 00:00:00",
    "semi-annually": "*-01,07-01 00:00:00",
}


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, field=_FIELD)


@dataclass(frozen=True)
class _YearItem:
    """One item of the year field: ``start``, ``start+step``, … up to ``end`` (inclusive)."""

    start: int
    end: int
    step: int

    def matches(self, year: int) -> bool:
        return self.start <= year <= self.end and (year - self.start) % self.step == 0


def _parse_int(text: str, what: str, lo: int, hi: int, spec: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise _bad(f"{what} '{text}' is not a number in '{spec}'")
    value = int(text)
    if not lo <= value <= hi:
        raise _bad(f"{what} {value} is out of range {lo}..{hi} in '{spec}'")
    return value


def _parse_items(text: str, what: str, lo: int, hi: int, context: str) -> list[tuple[int, int, int]]:
    """Parse a comma list of ``*``, ``N``, ``A..B``, with optional ``/STEP``, into (start, end, step).

    ``context`` is the token the field came from, quoted in error messages.
    """
    items: list[tuple[int, int, int]] = []
    if not text:
        raise _bad(f"empty {what} in '{context}'")
    for item in text.split(","):
        if not item:
            raise _bad(f"empty item in {what} '{text}' in '{context}'")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _parse_int(step_text, f"{what} repetition", 1, hi, context)
        if base == "*":
            start, end = lo, hi
        elif ".." in base:
            a, _, b = base.partition("..")
            start = _parse_int(a, what, lo, hi, context)
            end = _parse_int(b, what, lo, hi, context)
            if start > end:
                raise _bad(f"{what} range '{base}' runs backwards in '{context}'")
        else:
            start = _parse_int(base, what, lo, hi, context)
            # "N/STEP" repeats up to the maximum; a bare "N" is just N.
            end = hi if slash else start
        items.append((start, end, step))
    return items


def _values(text: str, what: str, lo: int, hi: int, context: str) -> tuple[int, ...]:
    out: set[int] = set()
    for start, end, step in _parse_items(text, what, lo, hi, context):
        out.update(range(start, end + 1, step))
    return tuple(sorted(out))


def _parse_weekdays(text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.lower().split(","):
        first, dots, last = item.partition("..")
        if first not in _WEEKDAYS or (dots and last not in _WEEKDAYS):
            raise _bad(f"unknown weekday '{item}' (use mon, tue, wed, thu, fri, sat, sun)")
        a = _WEEKDAYS[first]
        b = _WEEKDAYS[last] if dots else a
        # Weeks are cyclic, so "fri..mon" means Fri, Sat, Sun, Mon.
        n = (b - a) % 7
        days.update((a + k) % 7 for k in range(n + 1))
    return frozenset(days)


def _fmt_values(values: Sequence[int], lo: int, hi: int, width: int = 2) -> str:
    """Compact text for a value set: ``*`` when complete, runs of 3+ as ``A..B``."""
    if list(values) == list(range(lo, hi + 1)):
        return "*"
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{values[i]:0{width}d}..{values[j]:0{width}d}")
            i = j + 1
        else:
            parts.append(f"{values[i]:0{width}d}")
            i += 1
    return ",".join(parts)


def _fmt_weekdays(days: frozenset[int]) -> str:
    ordered = sorted(days)
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{WEEKDAY_NAMES[ordered[i]]}..{WEEKDAY_NAMES[ordered[j]]}")
        else:
            parts.extend(WEEKDAY_NAMES[k] for k in ordered[i : j + 1])
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class CalendarEvent:
    """A parsed calendar event. Build it with :meth:`parse`; it is immutable and hashable.

    ``str(event)`` is the text it was parsed from, with white space collapsed
    (what a config file should store); :meth:`normalized` is the systemd-style
    canonical form (``Mon..Fri *-*-* 08..17:00:00``).
    """

    text: str
    weekdays: frozenset[int]
    years: tuple[_YearItem, ...]
    months: tuple[int, ...]
    days: tuple[int, ...]
    hours: tuple[int, ...]
    minutes: tuple[int, ...]
    seconds: tuple[int, ...]
    utc: bool = False
    _year_text: str = field(default="*", compare=False, repr=False)

    # -- parsing ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> CalendarEvent:
        """Parse ``text``; raise :class:`~asyncsync.errors.InvalidInput` (field ``schedule``) if bad."""
        if not isinstance(text, str):
            raise _bad("a calendar event must be text")
        tokens = text.split()
        if not tokens:
            raise _bad("empty calendar event")
        original = " ".join(tokens)
        utc = False
        if tokens[-1].lower() == "utc":
            utc = True
            tokens.pop()
            if not tokens:
                raise _bad("'UTC' alone is not a calendar event")
        if len(tokens) == 1 and tokens[0].lower() in KEYWORDS:
            tokens = KEYWORDS[tokens[0].lower()].split()
        elif any(t.lower() in KEYWORDS for t in tokens):
            raise _bad(f"a keyword like 'daily' cannot be combined with other fields in '{original}'")

        weekday_text: str | None = None
        date_text: str | None = None
        time_text: str | None = None
        rest = list(tokens)
        if rest and rest[0][:1].isalpha():
            weekday_text = rest.pop(0)
        if rest and "-" in rest[0]:
            date_text = rest.pop(0)
        if rest and "-" not in rest[0] and not rest[0][:1].isalpha():
            time_text = rest.pop(0)
        if rest:
            raise _bad(
                f"unexpected '{rest[0]}' in '{original}' (format: [WEEKDAYS] [[YEAR-]MONTH-DAY] "
                "[HOUR:]MINUTE[:SECOND] [UTC])"
            )
        if weekday_text is None and date_text is None and time_text is None:  # pragma: no cover
            raise _bad(f"no weekday, date or time in '{original}'")

        weekdays = _parse_weekdays(weekday_text) if weekday_text else frozenset(range(7))

        year_text, month_text, day_text = "*", "*", "*"
        if date_text is not None:
            parts = date_text.split("-")
            if len(parts) == 2:
                month_text, day_text = parts
            elif len(parts) == 3:
                year_text, month_text, day_text = parts
            else:
                raise _bad(f"date '{date_text}' is not [YEAR-]MONTH-DAY")
        dt = date_text or "*-*-*"
        years = tuple(_YearItem(*item) for item in _parse_items(year_text, "year", _MIN_YEAR, _MAX_YEAR, dt))
        months = _values(month_text, "month", 1, 12, dt)
        days = _values(day_text, "day", 1, 31, dt)

        hour_text, minute_text, second_text = "0", "0", "0"
        if time_text is not None:
            parts = time_text.split(":")
            if len(parts) == 1:
                # Proxmox: a lone number is a minute ("0/15" = "*:0/15").
                hour_text, minute_text = "*", parts[0]
            elif len(parts) == 2:
                hour_text, minute_text = parts
            elif len(parts) == 3:
                hour_text, minute_text, second_text = parts
            else:
                raise _bad(f"time '{time_text}' is not [HOUR:]MINUTE[:SECOND]")
        tt = time_text or "00:00:00"
        hours = _values(hour_text, "hour", 0, 23, tt)
        minutes = _values(minute_text, "minute", 0, 59, tt)
        seconds = _values(second_text, "second", 0, 59, tt)

        # 2000 is a leap year, so this admits Feb 29; "2021-02-29" parses and simply never fires.
        if not any(d <= _cal.monthrange(2000, m)[1] for m in months for d in days):
            raise _bad(f"no month has such a day in '{original}'")

        return cls(
            text=original,
            weekdays=weekdays,
            years=years,
            months=months,
            days=days,
            hours=hours,
            minutes=minutes,
            seconds=seconds,
            utc=utc,
            _year_text=year_text,
        )

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"CalendarEvent({self.text!r})"

    def normalized(self) -> str:
        """The canonical form, like systemd-analyze's "Normalized form"."""
        weekday = "" if len(self.weekdays) == 7 else _fmt_weekdays(self.weekdays) + " "
        date = f"{self._year_text}-{_fmt_values(self.months, 1, 12)}-{_fmt_values(self.days, 1, 31)}"
        time = ":".join(
            (
                _fmt_values(self.hours, 0, 23),
                _fmt_values(self.minutes, 0, 59),
                _fmt_values(self.seconds, 0, 59),
            )
        )
        return f"{weekday}{date} {time}{' UTC' if self.utc else ''}"

    # -- matching --------------------------------------------------------------------------

    def _year_matches(self, year: int) -> bool:
        return any(item.matches(year) for item in self.years)

    def _date_matches(self, year: int, month: int, day: int) -> bool:
        return (
            self._year_matches(year)
            and month in self.months
            and day in self.days
            and day <= _cal.monthrange(year, month)[1]
            and _cal.weekday(year, month, day) in self.weekdays
        )

    def matches(self, when: datetime) -> bool:
        """Whether the wall-clock time of ``when`` (in UTC for a UTC event) is one of the event's.

        Only the calendar fields are compared; whether the instant is the first
        of two equal wall times (fall-back) is :meth:`next_after`'s concern.
        """
        if self.utc and when.tzinfo is not None:
            when = when.astimezone(UTC)
        return (
            when.microsecond == 0
            and self._date_matches(when.year, when.month, when.day)
            and when.hour in self.hours
            and when.minute in self.minutes
            and when.second in self.seconds
        )

    def _next_time(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        """Smallest (h, m, s) of the event at or after the given time of day, if any."""
        for h in self.hours[bisect_left(self.hours, hour) :]:
            if h > hour:
                return (h, self.minutes[0], self.seconds[0])
            for m in self.minutes[bisect_left(self.minutes, minute) :]:
                if m > minute:
                    return (h, m, self.seconds[0])
                i = bisect_left(self.seconds, second)
                if i < len(self.seconds):
                    return (h, m, self.seconds[i])
        return None

    def _next_wall(self, lo: datetime, last_year: int) -> datetime | None:
        """Smallest naive wall time >= ``lo`` (whole seconds) matching the event, up to ``last_year``."""
        first_time = (self.hours[0], self.minutes[0], self.seconds[0])
        for year in range(lo.year, last_year + 1):
            if not self._year_matches(year):
                continue
            same_year = year == lo.year
            for month in self.months[bisect_left(self.months, lo.month if same_year else 1) :]:
                same_month = same_year and month == lo.month
                month_len = _cal.monthrange(year, month)[1]
                for day in self.days[bisect_left(self.days, lo.day if same_month else 1) :]:
                    if day > month_len:
                        break
                    if _cal.weekday(year, month, day) not in self.weekdays:
                        continue
                    if same_month and day == lo.day:
                        t = self._next_time(lo.hour, lo.minute, lo.second)
                        if t is None:
                            continue
                    else:
                        t = first_time
                    return datetime(year, month, day, *t)
        return None

    # -- next event ------------------------------------------------------------------------

    def next_after(self, after: datetime) -> datetime | None:
        """The first event strictly after ``after`` (an aware datetime), or ``None`` if it never fires.

        Computed in ``after``'s time zone (in UTC if the event says ``UTC``); the
        result is an aware datetime in that zone. Nonexistent local times are
        skipped; a repeated local time fires at its first occurrence only. The
        search gives up after :data:`SEARCH_YEARS` years.
        """
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("next_after needs an aware datetime")
        tz: tzinfo = UTC if self.utc else after.tzinfo
        after = after.astimezone(tz)
        after_utc = after.astimezone(UTC)
        last_year = min(after.year + SEARCH_YEARS, _LAST_SEARCH_YEAR)
        lo = _first_unambiguous_wall(after, tz)
        # Each round either returns or moves ``lo`` strictly forward; the bound is a guard only.
        for _ in range(100_000):
            wall = self._next_wall(lo, last_year)
            if wall is None:
                return None
            aware = wall.replace(tzinfo=tz)
            if not _exists(aware, tz):
                lo = _after_gap(wall, tz)
                continue
            if aware.astimezone(UTC) <= after_utc:
                lo = wall + timedelta(seconds=1)
                continue
            return aware
        return None  # pragma: no cover - unreachable for any valid event

    def iter_after(self, after: datetime) -> Iterator[datetime]:
        """The events strictly after ``after``, in order (see :meth:`next_after`)."""
        current: datetime | None = after
        while current is not None:
            current = self.next_after(current)
            if current is not None:
                yield current

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` events strictly after ``after`` (fewer if the event runs out)."""
        out: list[datetime] = []
        for when in self.iter_after(after):
            out.append(when)
            if len(out) >= count:
                break
        return out


def _exists(aware: datetime, tz: tzinfo) -> bool:
    """Whether a local wall time (fold=0) exists, i.e. survives a round trip through UTC."""
    back = aware.astimezone(UTC).astimezone(tz)
    return back.replace(tzinfo=None) == aware.replace(tzinfo=None)


def _after_gap(wall: datetime, tz: tzinfo) -> datetime:
    """The first existing wall time after the spring-forward gap that contains ``wall``.

    PEP 495: in a gap, fold=0 reads ``wall`` with the offset before the change
    and fold=1 with the offset after it, so the transition instant lies
    between the two readings; a binary search over whole seconds finds it.
    """
    late = int(wall.replace(tzinfo=tz, fold=0).astimezone(UTC).timestamp())
    early = int(wall.replace(tzinfo=tz, fold=1).astimezone(UTC).timestamp())
    new_offset = datetime.fromtimestamp(late, tz).utcoffset()
    lo, hi = early, late  # invariant: offset(hi) == new_offset
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == new_offset:
            hi = mid
        else:
            lo = mid
    first = datetime.fromtimestamp(hi, tz).replace(tzinfo=None)
    # A zone that ignores fold gives early == late; still move forward.
    return max(first, wall + timedelta(seconds=1))


def _first_unambiguous_wall(after: datetime, tz: tzinfo) -> datetime:
    """Where to start searching wall times for events strictly after ``after``.

    Usually ``after``'s own wall time (whole seconds). If ``after`` lies in
    the second pass of a repeated hour (fall-back), every wall time of that
    hour already fired on its first pass, so start where the repetition ends.
    """
    wall = after.replace(tzinfo=None, microsecond=0, fold=0)
    first_pass = wall.replace(tzinfo=tz).astimezone(UTC)
    after_utc = after.replace(microsecond=0).astimezone(UTC)
    if first_pass >= after_utc:
        return wall
    # ``after`` is the second occurrence: walls up to the end of the repetition map to
    # earlier instants. The repetition ends at most (after - first_pass) later in wall time.
    lo = 0
    hi = int((after_utc - first_pass).total_seconds())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (wall + timedelta(seconds=mid)).replace(tzinfo=tz).astimezone(UTC) > after_utc:
            hi = mid
        else:
            lo = mid
    return wall + timedelta(seconds=hi)


def next_event(text_or_event: str | CalendarEvent, after_epoch: float, tz: tzinfo) -> float | None:
    """Epoch seconds of the first event strictly after ``after_epoch``, read in ``tz``; ``None`` if never.

    The scheduler's helper: ``after_epoch`` is typically a job's last run.
    Raises :class:`~asyncsync.errors.InvalidInput` for a bad event text.
    """
    event = text_or_event if isinstance(text_or_event, CalendarEvent) else CalendarEvent.parse(text_or_event)
    found = event.next_after(datetime.fromtimestamp(after_epoch, tz))
    return None if found is None else found.timestamp()


# Zone names that mean plain UTC: returned as datetime.UTC so callers can print "Z".
_UTC_NAMES = frozenset(
    {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT"}
)


def local_timezone() -> tzinfo:
    """The local time zone as a real IANA zone with DST rules.

    ``$TZ`` if set (a zone name, optionally with a leading ``:``, or a path to a
    zone file; empty means UTC), else ``/etc/localtime``, else UTC. A ``$TZ``
    that names no known zone (e.g. a POSIX rule string) falls back to UTC, as
    the C library does. UTC itself (under any of its names) is returned as
    :data:`datetime.UTC`. May read zone files: call it at start-up or in a
    thread, not on a busy event loop.
    """
    name = os.environ.get("TZ")
    if name is not None:
        name = name.removeprefix(":")
        if not name or name in _UTC_NAMES:
            return UTC
        try:
            if name.startswith("/"):
                return _zone_from_file(name)
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            return UTC
    try:
        target = os.path.realpath("/etc/localtime")
        _, sep, key = target.partition("/zoneinfo/")
        if sep:
            if key in _UTC_NAMES:
                return UTC
            try:
                return ZoneInfo(key)
            except (ZoneInfoNotFoundError, ValueError):
                pass
        return _zone_from_file("/etc/localtime")
    except (OSError, ValueError):
        return UTC


def _zone_from_file(path: str) -> tzinfo:
    with open(path, "rb") as f:
        return ZoneInfo.from_file(f, key=path)


__all__ = ["KEYWORDS", "SEARCH_YEARS", "CalendarEvent", "local_timezone", "next_event"]
