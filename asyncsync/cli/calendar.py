"""Command: ``asyncsync calendar EVENT`` prints when a calendar event fires next.

Like ``systemd-analyze calendar --iterations=N``: one RFC 3339 time a line,
the first strictly after ``--from`` (default: now), so an administrator can
check a schedule before giving it to a sync job.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, tzinfo

import click

from ..errors import InvalidInput
from ..jobs.calendar import CalendarEvent, local_timezone


def _parse_from(text: str, tz: tzinfo) -> datetime:
    """An RFC 3339 time (``Z`` or an offset); a time without offset is read in ``tz``."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(
            f"'{text}' is not an RFC 3339 time (like 2026-12-01T08:00:00+01:00)", field="--from"
        ) from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def _rfc3339(when: datetime) -> str:
    text = when.isoformat()
    if when.tzinfo is UTC:
        text = text.removesuffix("+00:00") + "Z"
    return text


@click.command("calendar")
@click.argument("event")
@click.option(
    "--from",
    "from_",
    metavar="RFC3339",
    default=None,
    help="Start instant (default: now); the first time shown is strictly after it.",
)
@click.option(
    "--count",
    "-n",
    type=click.IntRange(1, 10_000),
    default=5,
    show_default=True,
    help="How many times to show.",
)
@click.option("--utc", is_flag=True, help="Print the times in UTC (the event itself stays local).")
def calendar_cmd(event: str, from_: str | None, count: int, utc: bool) -> None:
    """Show the next times calendar EVENT fires, e.g. 'mon..fri 08:00' or '*:0/15'.

    Times are local (the TZ variable or /etc/localtime) unless the event ends
    with UTC. Format: [WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:]MINUTE[:SECOND] [UTC].
    """
    parsed = CalendarEvent.parse(event)
    tz = local_timezone()
    after = _parse_from(from_, tz) if from_ is not None else datetime.now(tz)
    # Compute in the real local zone (with its DST rules), not the fixed offset --from gave.
    after = after.astimezone(tz)
    times = parsed.upcoming(after, count)
    for when in times:
        click.echo(_rfc3339(when.astimezone(UTC) if utc else when))
    if not times:
        click.echo(
            f"error: calendar event '{parsed}' never fires after {_rfc3339(after.replace(microsecond=0))}",
            err=True,
        )
        sys.exit(1)
    if len(times) < count:
        click.echo(f"note: calendar event '{parsed}' fires no more after {_rfc3339(times[-1])}", err=True)


commands: list[click.Command] = [calendar_cmd]
