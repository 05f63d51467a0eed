"""Typed report parameters: parse what a request sends, say clearly what is wrong."""
import datetime
import decimal
import re


from errors import InputError  # noqa: F401  (re-exported: params.InputError)


_DATE = re.compile(r'\d{4}-\d{2}-\d{2}\Z')


def _parse_date(raw):
    if isinstance(raw, datetime.date) and not isinstance(raw, datetime.datetime):
        return raw
    # Exactly YYYY-MM-DD: fromisoformat alone also takes 20250101 and 2025-W01-1.
    if not isinstance(raw, str) or not _DATE.match(raw):
        raise ValueError('expected a date as YYYY-MM-DD')
    try:
        return datetime.date.fromisoformat(raw)
    except ValueError:
        raise ValueError('expected a date as YYYY-MM-DD')


INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


_DATETIME = re.compile(r'\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?\Z')


def _parse_datetime(raw):
    if isinstance(raw, datetime.datetime):
        return raw.replace(tzinfo=None) if raw.tzinfo is None else raw
    # A wall time, to the second: 2025-06-01T07:00 or 2025-06-01 07:00:00.
    if not isinstance(raw, str) or not _DATETIME.match(raw):
        raise ValueError('expected a date and time as YYYY-MM-DDTHH:MM[:SS]')
    try:
        return datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError('expected a date and time as YYYY-MM-DDTHH:MM[:SS]')


def _parse_int(raw):
    if isinstance(raw, bool):
        raise ValueError('expected an integer')
    if isinstance(raw, int):
        value = raw
    else:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError('expected an integer')
    # What both databases store: past it SQLite raises OverflowError on every
    # try of a run, and PostgreSQL refuses the query.
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError('out of range (a 64-bit integer: %d to %d)' % (INT64_MIN, INT64_MAX))
    return value


def _parse_decimal(raw):
    if isinstance(raw, bool):
        raise ValueError('expected a number')
    try:
        value = decimal.Decimal(str(raw).strip())
    except decimal.InvalidOperation:
        raise ValueError('expected a number')
    if not value.is_finite():
        raise ValueError('expected a finite number')
    return value


def _parse_str(raw):
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ValueError('expected a string')
    value = str(raw)
    if any(c in value for c in '\r\n\x00'):
        raise ValueError('must not contain line breaks or NUL')
    return value


def _parse_bool(raw):
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ('1', 'true', 'yes', 'on'):
        return True
    if text in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError('expected true or false')


PARSERS = {
    'date': _parse_date,
    'datetime': _parse_datetime,
    'int': _parse_int,
    'decimal': _parse_decimal,
    'str': _parse_str,
    'choice': _parse_str,
    'bool': _parse_bool,
}


class Param:
    """One declared report parameter."""

    def __init__(self, name, type='str', required=False, default=None,
                 choices=None, min=None, max=None, help=''):
        if type not in PARSERS:
            raise ValueError('unknown parameter type %r' % type)
        if type == 'choice' and not choices:
            raise ValueError('a choice parameter needs choices')
        self.name = name
        self.type = type
        self.required = required
        self.default = default
        self.choices = tuple(choices) if choices else None
        self.min = min
        self.max = max
        self.help = help

    def parse(self, raw):
        """Raw request value -> typed value; ValueError says why not."""
        if isinstance(raw, str) and len(raw) > 1000:
            raise ValueError('too long (1000 characters at most)')
        value = PARSERS[self.type](raw)
        if self.choices and value not in self.choices:
            raise ValueError('must be one of: %s' % ', '.join(self.choices))
        if self.min is not None and value < self.min:
            raise ValueError('must be at least %s' % self.min)
        if self.max is not None and value > self.max:
            raise ValueError('must be at most %s' % self.max)
        return value

    @staticmethod
    def dump(value):
        """Typed value -> JSON-safe value, as stored in a run."""
        if isinstance(value, (datetime.date, decimal.Decimal)):
            return str(value)
        return value

    def describe(self):
        return {'name': self.name, 'type': self.type, 'required': self.required,
                'default': self.dump(self.default), 'choices': list(self.choices or ()),
                'min': self.dump(self.min), 'max': self.dump(self.max), 'help': self.help}


def parse_params(declared, raw):
    """Validate a mapping of raw values against declared Params.

    Returns typed values for every declared parameter (defaults filled in).
    Raises InputError naming the first bad field as `params.<name>`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError('params', 'must be an object of parameter values')
    known = {p.name: p for p in declared}
    for name in raw:
        if name not in known:
            raise InputError('params.%s' % name, 'unknown parameter; expected one of: %s'
                             % (', '.join(known) or 'none'), code='unknown_param')
    typed = {}
    for param in declared:
        value = raw.get(param.name)
        if value is None:
            if param.required:
                raise InputError('params.%s' % param.name, 'is required', code='required')
            typed[param.name] = param.default
            continue
        if value == '':
            raise InputError('params.%s' % param.name, 'is empty; leave it out instead')
        try:
            typed[param.name] = param.parse(value)
        except ValueError as exc:
            raise InputError('params.%s' % param.name, str(exc))
    return typed


def dump_params(typed):
    return {name: Param.dump(value) for name, value in typed.items()}
