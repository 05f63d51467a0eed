"""Cron slots in a schedule's own timezone, stored and compared in UTC.

croniter walks the wall clock (naive local times); zoneinfo turns each wall
time into an instant. That makes DST behave as people expect:
- a wall time that does not exist (the spring-forward gap) still happens
  once, at the same offset as before the jump (02:30 -> 03:30 new time);
- a wall time that happens twice (the fall-back overlap) runs once, at its
  first occurrence.
All times passed in and out are naive UTC datetimes; nothing reads the clock.
"""
import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

ALIASES = ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly')
# A wall time is never more than this far from its UTC instant across a DST
# change; walking this much earlier than needed never misses a slot.
_MARGIN = datetime.timedelta(hours=3)
UTC = datetime.timezone.utc


def check_cron(expression):
    """The expression, normalised, or ValueError saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError('give a cron expression such as "30 2 * * *" or "@daily"')
    expression = ' '.join(expression.split())
    if expression.startswith('@'):
        if expression.lower() not in ALIASES:
            raise ValueError('unknown alias; use one of %s' % ', '.join(ALIASES))
        return expression.lower()
    if len(expression.split(' ')) != 5:
        raise ValueError('expected 5 fields (minute hour day month weekday), got %d'
                         % len(expression.split(' ')))
    if not croniter.is_valid(expression):
        raise ValueError('%r is not a valid cron expression' % expression)
    try:
        croniter(expression, datetime.datetime(2000, 1, 1)).get_next(datetime.datetime)
    except CroniterBadDateError:
        raise ValueError('%r never fires' % expression)
    return expression


def check_timezone(name):
    """A ZoneInfo for an IANA name, or ValueError."""
    if not isinstance(name, str) or not name or name.startswith(('/', '.')) or '..' in name:
        raise ValueError('give an IANA timezone such as Europe/Lisbon')
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError('unknown timezone %r; use an IANA name such as Europe/Lisbon' % name)


def to_utc(wall, zone):
    """Naive wall time in `zone` -> naive UTC (first occurrence; gaps jump forward)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC).replace(tzinfo=None)


def to_local(instant, zone):
    """Naive UTC -> aware local time."""
    return instant.replace(tzinfo=UTC).astimezone(zone)


def slots_between(expression, zone, after, until, limit=10000):
    """Slots (naive UTC) with after < slot <= until, oldest first, at most `limit`
    (the most recent ones are kept when there are more)."""
    start = to_local(after, zone).replace(tzinfo=None) - _MARGIN
    end = to_local(until, zone).replace(tzinfo=None) + _MARGIN
    walker = croniter(expression, start)
    found = []
    seen = set()
    while True:
        wall = walker.get_next(datetime.datetime)
        if wall > end:
            break
        instant = to_utc(wall, zone)
        if after < instant <= until and instant not in seen:
            seen.add(instant)
            found.append(instant)
            if len(found) > limit:
                seen.discard(found.pop(0))
    return sorted(found)


def next_slot(expression, zone, after):
    """The first slot strictly after `after` (naive UTC), or None."""
    for hours in (2, 48, 32 * 24, 367 * 24, 5 * 366 * 24):  # the last one finds Feb 29
        slots = slots_between(expression, zone, after,
                              after + datetime.timedelta(hours=hours), limit=10 ** 6)
        if slots:
            return slots[0]
    return None
