"""Relative dates: a `date` or `datetime` parameter given as `yesterday` or
`start of last month - 7 days`, resolved in a timezone at a moment.

A scheduled run resolves them at its slot's time in the schedule's
timezone, so a run caught up after downtime, retried or re-run covers its
own slot's window; an on-demand run at the moment it is made. The grammar
(case and spacing do not matter):

    expression := anchor offset*  |  offset+      (offsets alone count from today)
    anchor     := today | yesterday
                | start of (this | last | next) (week | month | quarter | year)
    offset     := (+ | -) N unit                  (N a whole number up to 99999)
    unit       := d | day | days | w | week | weeks | month | months | year | years

e.g. `today`, `yesterday`, `start of last month`, `today - 7 days`, `-7d`,
`start of this quarter - 1 year`, `today + 1 day` (no `tomorrow`: an end
bound is usually `today`, the first day not included). Weeks start on Monday. Adding months or
years to the 31st lands on the month's last day. Each expression is stored
in one canonical spelling (`-7d` becomes `today - 7 days`).

A `date` parameter gets the local date. A `datetime` parameter gets that
day's local midnight (its first instant, where DST skips midnight) as naive
UTC: the form every time in Nightshift has, and what source sessions compare
in (PostgreSQL and MariaDB sessions run in UTC; SQLite compares the text
`YYYY-MM-DD HH:MM:SS`).
"""
import calendar
import datetime
import re
from typing import NamedTuple, Tuple

import cron
from errors import InputError
from params import PARSERS, dump_params

KINDS = ('date', 'datetime')
ANCHORS = ('today', 'yesterday')
_DAYS = {'today': 0, 'yesterday': -1}
WHICH = ('this', 'last', 'next')
PERIODS = ('week', 'month', 'quarter', 'year')
UNITS = {'d': 'day', 'day': 'day', 'days': 'day', 'w': 'week', 'week': 'week',
         'weeks': 'week', 'month': 'month', 'months': 'month', 'year': 'year',
         'years': 'year'}
# The page offers these; any other expression of the grammar works too.
COMMON = ('today', 'yesterday', 'today - 7 days', 'today - 30 days',
          'start of this week', 'start of last week', 'start of this month',
          'start of last month', 'start of this quarter', 'start of last quarter',
          'start of this year', 'start of last year')
HINT = ('a date as YYYY-MM-DD, or a relative date such as today, yesterday, '
        'start of last month, today - 7 days (or -7d)')
MAX_LENGTH = 100
_TOKENS = re.compile(r'\s*(?:(\d{1,5})(?![\d])|([a-z]+)|([+-]))')


class Expression(NamedTuple):
    anchor: str                  # 'today', ..., or 'start of last month'
    offsets: Tuple[tuple, ...]   # (signed count, unit) pairs, in order

    @property
    def text(self):
        parts = [self.anchor]
        for count, unit in self.offsets:
            parts.append('%s %d %s%s' % ('-' if count < 0 else '+', abs(count), unit,
                                          '' if abs(count) == 1 else 's'))
        return ' '.join(parts)


def _tokens(text):
    tokens, pos = [], 0
    text = text.strip().lower()
    while pos < len(text):
        found = _TOKENS.match(text, pos)
        if not found or found.end() == pos:
            raise ValueError('cannot read %r' % text[pos:].strip()[:20])
        number, word, sign = found.groups()
        tokens.append(int(number) if number else (word or sign))
        pos = found.end()
    return tokens


def parse(text):
    """An Expression, or ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError('expected %s' % HINT)
    if len(text) > MAX_LENGTH:
        raise ValueError('too long for a relative date (%d characters at most)' % MAX_LENGTH)
    tokens = _tokens(text)
    pos = 0
    if tokens and tokens[0] in ANCHORS:
        anchor, pos = tokens[0], 1
    elif tokens[:2] == ['start', 'of']:
        which, period = (tokens[2:4] + [None, None])[:2]
        if which not in WHICH or period not in PERIODS:
            raise ValueError('say "start of" this, last or next, then week, month, quarter '
                             'or year')
        anchor, pos = 'start of %s %s' % (which, period), 4
    elif tokens and tokens[0] in ('+', '-'):
        anchor = 'today'
    else:
        raise ValueError('%r is not %s' % (text.strip(), HINT))
    offsets = []
    while pos < len(tokens):
        sign, count, unit = (tokens[pos:pos + 3] + [None, None, None])[:3]
        if sign not in ('+', '-') or not isinstance(count, int) or unit not in UNITS:
            raise ValueError('after %r expected an offset such as "- 7 days" or "+ 1 month"'
                             % Expression(anchor, tuple(offsets)).text)
        offsets.append((count if sign == '+' else -count, UNITS[unit]))
        pos += 3
    return Expression(anchor, tuple(offsets))


def add_months(day, months):
    year, index = divmod(day.month - 1 + months, 12)
    year += day.year
    return day.replace(year=year, month=index + 1,
                       day=min(day.day, calendar.monthrange(year, index + 1)[1]))


def _start(period, which, today):
    step = {'this': 0, 'last': -1, 'next': 1}[which]
    if period == 'week':
        return today - datetime.timedelta(days=today.weekday() - 7 * step)
    if period == 'month':
        return add_months(today.replace(day=1), step)
    if period == 'quarter':
        first = today.replace(month=3 * ((today.month - 1) // 3) + 1, day=1)
        return add_months(first, 3 * step)
    return add_months(today.replace(month=1, day=1), 12 * step)


def resolve_date(expression, today):
    """The date `expression` names when the local date is `today`."""
    try:
        if expression.anchor in ANCHORS:
            day = today + datetime.timedelta(days=_DAYS[expression.anchor])
        else:
            _, _, which, period = expression.anchor.split()
            day = _start(period, which, today)
        for count, unit in expression.offsets:
            if unit in ('day', 'week'):
                day += datetime.timedelta(days=count * (7 if unit == 'week' else 1))
            else:
                day = add_months(day, count * (12 if unit == 'year' else 1))
    except (OverflowError, ValueError):
        raise ValueError('%r goes past the calendar (years 1 to 9999)' % expression.text)
    return day


def start_of_day(day, zone):
    """The first instant of local date `day` in `zone`, as naive UTC. Where
    DST skips midnight (Sao Paulo until 2019) that is 01:00 new time."""
    midnight = datetime.datetime.combine(day, datetime.time())
    # fold=0 in a gap reads the wall time with the offset before the jump:
    # the instant the day really starts.
    return cron.to_utc(midnight, zone)


def local_today(zone, at):
    """The local date in `zone` at naive UTC instant `at`."""
    return cron.to_local(at, zone).date()


def resolve(expression, kind, zone, at):
    """The value of `expression` for a `kind` parameter: a date, or a naive
    UTC datetime (the local midnight of that date)."""
    day = resolve_date(expression, local_today(zone, at))
    if kind == 'date':
        return day
    try:
        return start_of_day(day, zone)
    except OverflowError:
        raise ValueError('%r goes past the calendar (years 1 to 9999)' % expression.text)


def check_zone(name, field='timezone'):
    """A ZoneInfo, or InputError naming `field`."""
    try:
        return cron.check_timezone(name)
    except ValueError as exc:
        raise InputError(field, str(exc))


def dump(value):
    """A resolved value as a run stores it (what the parameter parsers read)."""
    if isinstance(value, datetime.datetime):
        return value.strftime('%Y-%m-%d %H:%M:%S')
    return value.isoformat()


def _relative(param, raw):
    """The Expression a raw value holds, None for a fixed value (or another
    type of parameter); InputError naming the field when it is neither."""
    if param.type not in KINDS or not isinstance(raw, str) or raw == '':
        return None
    try:
        PARSERS[param.type](raw)
        return None
    except ValueError:
        pass
    try:
        return parse(raw)
    except ValueError as exc:
        raise InputError('params.%s' % param.name, '%s; expected %s' % (exc, HINT)
                         if HINT not in str(exc) else str(exc), code='invalid_date')


def expressions(declared, raw):
    """{name: Expression} of the relative values in `raw` (checked)."""
    if not isinstance(raw, dict):
        return {}
    found = {}
    for param in declared:
        expression = _relative(param, raw.get(param.name))
        if expression is not None:
            found[param.name] = expression
    return found


def resolve_params(declared, raw, zone, at):
    """(raw with each relative date replaced by its value at naive UTC `at`
    in `zone`, {name: canonical expression}). Fixed values pass untouched;
    anything that is neither is an InputError naming the field."""
    found = expressions(declared, raw)
    if not found:
        return raw, {}
    kinds = {p.name: p.type for p in declared}
    values = dict(raw)
    for name, expression in found.items():
        try:
            values[name] = dump(resolve(expression, kinds[name], zone, at))
        except ValueError as exc:
            raise InputError('params.%s' % name, str(exc), code='invalid_date')
    return values, {name: e.text for name, e in found.items()}


def stored_params(definition, raw, zone, at):
    """A schedule's parameters as stored: fixed values typed and dumped,
    relative ones in their canonical spelling. Checked by resolving them at
    `at` in `zone`, so what the first slot would refuse is refused now."""
    concrete, asked = resolve_params(definition.params, raw, zone, at)
    stored = dump_params(definition.parse(concrete))
    stored.update(asked)
    return stored


def describe(params, asked=None, timezone=None):
    """'since=2025-03-30 (yesterday in Europe/Lisbon), status=paid': the
    values a run used, each relative one with what was asked."""
    asked = asked or {}
    parts = []
    for name, value in sorted((params or {}).items()):
        if value in (None, ''):
            continue
        text = '%s=%s' % (name, value)
        if name in asked:
            utc = ' UTC' if isinstance(value, str) and ' ' in value else ''
            where = ' in %s' % timezone if timezone else ''
            text = '%s%s (%s%s)' % (text, utc, asked[name], where)
        parts.append(text)
    return ', '.join(parts) or 'none'

