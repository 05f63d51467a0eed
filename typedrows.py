"""A report's query on its source as typed rows, for formats that keep
types (XLSX), where sqlexport.py gives CSV text.

Each row is a list of Python values: None, bool, int, float,
decimal.Decimal, str, bytes, datetime.date or naive datetime.datetime (UTC
when the column had a time zone). Each column comes with a `Column`: its
name, its kind and, for decimals, its scale, read from the cursor's
description (SQLite: from the tables' declared types, traced through the
query by sqlglot, as sqlexport does), so a writer can give it a format
before the first row.

The connection is sqlexport's: read-only, with the source's time limit, and
rows come one batch at a time from a server-side cursor (PostgreSQL), an
unbuffered one (MariaDB) or the SQLite cursor. Memory does not grow with rows.
"""
import contextlib
import datetime
import decimal
import time
from typing import Iterator, List, NamedTuple, Optional, Union

from sources import ReportSQLError, Source
from sqlexport import (_PG_TIMESTAMPTZ, _fetching, _parse_timestamp, describe, guarded_query,
                       sqlite_header_and_types)

BATCH = 2000


class Column(NamedTuple):
    """kind: text, number (int or float), decimal, bool, date, timestamp, or
    None when only the values say (SQLite columns that could not be traced)."""
    name: str
    kind: Optional[str] = None
    places: Optional[int] = None


class TypedRows:
    """Iterate for the rows. `columns` is known before the first row; `rows`
    counts those produced, `truncated` says whether `limit` cut the rest."""

    def __init__(self, columns: List[Column], rows: Iterator[list], limit: Optional[int]):
        self.columns = columns
        self._source = rows
        self.limit = limit
        self.rows = 0
        self.truncated = False

    def __iter__(self):
        for row in self._source:
            if self.limit is not None and self.rows >= self.limit:
                self.truncated = True
                return
            self.rows += 1
            yield row


@contextlib.contextmanager
def open_query_rows(source: Source, sql: str, params: Union[dict, list, tuple], *,
                    limit: Optional[int] = None, timeout: Optional[float] = None):
    """The rows of `sql` (bound `params`) on `source` as a TypedRows. Raises
    ReportSQLError for the SQL's own failures and SourceUnavailable for the
    database's, like sqlexport.open_query_csv."""
    opener = {'postgres': _postgres, 'mysql': _mysql, 'sqlite': _sqlite}[source.engine]

    def opening(source, conn):
        columns, rows = opener(conn, source, sql, params)
        return contextlib.nullcontext(TypedRows(columns, rows, limit))

    # A limit reached leaves the query unfinished: stopped like an abandoned
    # one (the guard counts a truncated stream as not read to its end).
    with guarded_query(source, timeout, opening) as rows:
        yield rows


# --- PostgreSQL: a server-side cursor; types psycopg knows -------------------

_PG_KINDS = {16: 'bool', 20: 'number', 21: 'number', 23: 'number', 26: 'number',
             700: 'number', 701: 'number', 1700: 'decimal', 1082: 'date',
             1114: 'timestamp', 1184: 'timestamp', 25: 'text', 1043: 'text', 1042: 'text',
             19: 'text', 17: 'bytes'}


def _postgres(conn, source, sql, params):
    with conn.cursor() as cursor:
        described = describe(cursor, sql, params)
    columns, select = [], []
    for i, d in enumerate(described):
        kind = _PG_KINDS.get(d.type_code)
        places = d.scale if kind == 'decimal' else None
        # Anything psycopg would turn into a Python object of its own (json,
        # arrays, intervals, uuid...) comes as PostgreSQL's text for it, as
        # in the CSV.
        select.append('q.c%d' % i if kind else 'q.c%d::text' % i)
        columns.append(Column(d.name, kind or 'text', places))
    aliases = ', '.join('c%d' % i for i in range(len(columns)))
    wrapped = 'SELECT %s FROM (\n%s\n) AS q(%s)' % (', '.join(select), sql, aliases)
    cursor = conn.cursor(name='nightshift_rows')
    cursor.execute(wrapped, params)
    zoned = [i for i, d in enumerate(described) if d.type_code == _PG_TIMESTAMPTZ]
    return columns, _pg_rows(cursor, zoned, source)


def _pg_rows(cursor, zoned, source, clock=time.monotonic):
    # statement_timeout bounds each FETCH of a server-side cursor, not the
    # whole read (as it bounds a COPY): the rest of the limit is checked here.
    ends = clock() + source.query_timeout if source.query_timeout else None
    while True:
        batch = cursor.fetchmany(BATCH)
        if not batch:
            return
        if ends is not None and clock() > ends:
            raise ReportSQLError(source.name, 'time limit of %gs hit: the rows were still '
                                              'being read' % source.query_timeout)
        if not zoned:
            yield from batch
            continue
        for row in batch:
            row = list(row)
            for i in zoned:
                row[i] = _naive_utc(row[i])
            yield row


def _naive_utc(value):
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


# --- MariaDB / MySQL: an unbuffered cursor ----------------------------------

def _mysql(conn, source, sql, params):
    import pymysql.cursors
    cursor = conn.cursor(pymysql.cursors.SSCursor)
    from pymysql.constants import FIELD_TYPE
    cursor.execute(sql, params)
    columns = [_mysql_column(d) for d in cursor.description]
    bools = [i for i, c in enumerate(columns) if c.kind == 'bool']
    # PyMySQL reads TIME as a timedelta, and only TIME.
    times = [i for i, d in enumerate(cursor.description) if d[1] == FIELD_TYPE.TIME]
    return columns, _mysql_rows(cursor, bools, times)


def _mysql_column(description):
    from pymysql.constants import FIELD_TYPE as T
    name, code, _, length, _, scale, _ = description
    if code in (T.DECIMAL, T.NEWDECIMAL):
        return Column(name, 'decimal', scale)
    if code == T.TINY and length == 1:
        return Column(name, 'bool')  # BOOLEAN is TINYINT(1)
    if code in (T.TINY, T.SHORT, T.LONG, T.LONGLONG, T.INT24, T.YEAR, T.FLOAT, T.DOUBLE):
        return Column(name, 'number')
    if code in (T.TIMESTAMP, T.DATETIME):
        return Column(name, 'timestamp')  # TIMESTAMP is read in UTC (sources.py)
    if code in (T.DATE, T.NEWDATE):
        return Column(name, 'date')
    return Column(name, 'text')


def _mysql_rows(cursor, bools, times):
    rows = _fetching(cursor, BATCH)
    if not bools and not times:
        yield from rows  # as they come: nothing to change
        return
    for row in rows:
        row = list(row)
        for i in bools:
            if row[i] is not None:
                row[i] = bool(row[i])
        for i in times:
            if row[i].__class__ is datetime.timedelta:
                row[i] = str(row[i])
        yield row


# --- SQLite: declared types traced through the query -------------------------

def _sqlite(conn, source, sql, params):
    cursor = conn.cursor()
    names, traced = sqlite_header_and_types(cursor, source, sql, params)
    columns = [Column(name, kind[0], kind[1]) if kind else Column(name)
               for name, kind in zip(names, traced)]
    cursor.execute(sql, params)
    converters = [_decimal_converter(c.places) if c.kind == 'decimal'
                  else _SQLITE_CONVERT.get(c.kind) for c in columns]
    return columns, _sqlite_rows(cursor, converters)


def _sqlite_rows(cursor, converters):
    active = [(i, f) for i, f in enumerate(converters) if f is not None]
    for row in _fetching(cursor, BATCH):
        if active:
            row = list(row)
            for i, convert in active:
                value = row[i]
                if value is not None and value != '':
                    row[i] = convert(value)
        yield row


def _decimal_converter(places):
    # Below this a number at the column's scale has at most 15 digits.
    small = 10.0 ** (15 - places) if places is not None else 0

    def convert(value):
        # SQLite keeps DECIMAL as REAL or INTEGER: its shortest text is the
        # number that was stored. A float already at the column's scale is
        # the double that text would give again: it goes on as it is.
        if value.__class__ is float:
            if -small < value < small and round(value, places) == value:
                return value
            return decimal.Decimal(repr(value))
        if isinstance(value, int):
            return decimal.Decimal(value)
        try:
            return decimal.Decimal(value.strip()) if isinstance(value, str) else value
        except decimal.InvalidOperation:
            return value
    return convert


def _to_bool(value):
    return bool(value) if isinstance(value, (int, float)) else value


def _to_timestamp(value):
    if value.__class__ is str:
        try:
            parsed = datetime.datetime.fromisoformat(value)  # as SQLite keeps it
        except ValueError:
            parsed = _parse_timestamp(value)
        if parsed is None:
            return value
        return _naive_utc(parsed)
    return value


def _to_date(value):
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value.strip())
        except ValueError:
            return value
    return value


_SQLITE_CONVERT = {'bool': _to_bool, 'timestamp': _to_timestamp, 'date': _to_date}


__all__ = ['Column', 'TypedRows', 'open_query_rows']
