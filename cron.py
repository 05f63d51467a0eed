"""Cron slots in a schedule's own timezone, stored and compared in UTC.

croniter walks the wall clock (naive local times); zoneinfo turns each wall
time into an instant. The DST rules:
- a wall time that does not exist (the spring-forward gap) still happens
  once, at the same offset as before the jump (02:30 -> 03:30 new time);
  an interval's slots in the gap coincide with the ones after it, once each;
- a wall time that happens twice (the fall-back overlap) runs once, at its
  first occurrence, when the expression names its hours (`0 7 * * *`,
  `*/15 1 * * *`, `0 */2 * * *`): a daily report is sent once a day;
- an expression that fires in every hour (hour field `*`: `*/15 * * * *`,
  `0 * * * *`, `@hourly`) runs at both occurrences, so its interval holds
  in real time through the repeated hour: no 75-minute gap, no lost hour.
All times passed in and out are naive UTC datetimes; nothing reads the clock.
"""
import datetime
import functools
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


@functools.lru_cache(maxsize=1024)
def repeats_hours(expression):
    """True when the expression fires in every hour of the day, so a repeated
    (fall-back) hour is just another hour for it."""
    hours = croniter(expression).expanded[1]
    return hours == ['*'] or len(hours) == 24


def _instants(wall, zone, repeat):
    """The UTC instants of one wall time: one, or two in a fall-back overlap
    when `repeat` (see repeats_hours)."""
    first = to_utc(wall, zone)
    if repeat:
        second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(tzinfo=None)
        # In a gap fold=1 names no real time (it does not map back to `wall`).
        if second != first and to_local(second, zone).replace(tzinfo=None) == wall:
            return (first, second)
    return (first,)


def _settled(instant, zone):
    """No DST change within _MARGIN of `instant`: wall times near it map to
    instants in the same order, so a walk needs no margin there."""
    return (to_local(instant - _MARGIN, zone).utcoffset()
            == to_local(instant + _MARGIN, zone).utcoffset())


def _wall(instant, zone, margin):
    """The naive wall time of `instant`, moved by `margin` if a DST change is near."""
    wall = to_local(instant, zone).replace(tzinfo=None)
    return wall if _settled(instant, zone) else wall + margin


def recent_slots(expression, zone, after, until, limit):
    """(slots, more): the latest `limit` slots with after < slot <= until,
    oldest first, and whether older ones in that range were left out.

    Walks back from `until` and stops after limit + 1 slots, so a schedule
    that was stopped for a year costs no more than one stopped for a day.
    """
    repeat = repeats_hours(expression)
    start = _wall(after, zone, -_MARGIN)
    # croniter's get_prev is strictly before its start: a second later keeps `until`.
    walker = croniter(expression, _wall(until, zone, _MARGIN) + datetime.timedelta(seconds=1))
    found = set()
    while True:
        wall = walker.get_prev(datetime.datetime)
        if wall < start:
            break
        instants = _instants(wall, zone, repeat)
        found.update(i for i in instants if after < i <= until)
        if len(found) > limit and _settled(instants[0], zone):
            break
    slots = sorted(found)
    return slots[-limit:] if limit else [], len(slots) > limit


def slots_between(expression, zone, after, until, limit=10000):
    """Slots (naive UTC) with after < slot <= until, oldest first, at most `limit`
    (the most recent ones are kept when there are more)."""
    return recent_slots(expression, zone, after, until, limit)[0]


def next_slot(expression, zone, after):
    """The first slot strictly after `after` (naive UTC), or None.

    A forward walk from `after`'s wall time that usually takes one step;
    only near a DST change does it look a few hours around."""
    repeat = repeats_hours(expression)
    walker = croniter(expression, _wall(after, zone, -_MARGIN))
    best = None
    for _ in range(100000):
        try:
            wall = walker.get_next(datetime.datetime)
        except CroniterBadDateError:
            return best
        if best is not None and wall > _wall(best, zone, _MARGIN):
            return best
        for instant in _instants(wall, zone, repeat):
            if instant > after and (best is None or instant < best):
                best = instant
    return best
