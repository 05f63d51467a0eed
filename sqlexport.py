"""A report's query on its source, streamed as CSV that reads the same on
every engine.

The same SQL over the same rows gives the same bytes on SQLite, PostgreSQL
and MariaDB:

- NULL and the empty string are an empty cell;
- booleans are `true` / `false`;
- decimals are exact to their column's scale (`12.50`), never through float;
- floats are the shortest text that reads back as the same number (3, 0.1,
  1e+20);
- dates are `YYYY-MM-DD`; timestamps `YYYY-MM-DDTHH:MM:SS.ffffff`, always
  with microseconds, and those with a time zone converted to UTC with a `Z`;
- binary values are `\\x` and hex;
- text is written as it is, but a cell a spreadsheet would run as a formula
  is escaped (see export.escape_formula) unless the report opts out.

PostgreSQL writes the CSV itself (COPY) from a SELECT that formats each
column by its type; MariaDB rows come from an unbuffered server-side cursor
and SQLite rows from its cursor, formatted here. Memory does not grow with
rows on any engine.
"""
import contextlib
import datetime
import decimal
import functools
import logging
import os
import re

from typing import List, Optional, Union

import mysqllines
import sources
from export import (CHUNK_BYTES, FORMULA_TRIGGERS, LEADING_BLANKS, POSTGRES_FORMULA_PATTERN,
                    ColumnStream, CsvStream, LineStream, escape_formula)
from sources import ReportSQLError, Source

logger = logging.getLogger('nightshift.export')

ISO_SECONDS = '%Y-%m-%dT%H:%M:%S.%f'


@contextlib.contextmanager
def open_query_csv(source: Source, sql: str, params: Union[dict, list, tuple], *,
                   escape: bool = True, bom: bool = False, limit: Optional[int] = None,
                   timeout: Optional[float] = None):
    """The rows of `sql` (bound `params`) on `source` as a stream of CSV
    byte chunks with .rows, .bytes and .truncated. Raises ReportSQLError
    for the SQL's own failures and SourceUnavailable for the database's."""
    opener = {'postgres': _postgres, 'mysql': _mysql, 'sqlite': _sqlite}[source.engine]
    with guarded_query(source, timeout,
                       lambda source, conn: opener(source, conn, sql, params, escape, bom,
                                                   limit)) as stream:
        yield stream


@contextlib.contextmanager
def guarded_query(source: Source, timeout: Optional[float], open_stream):
    """Connect to `source` (read-only, under the effective time limit), open
    `open_stream(source, conn)` (a context manager giving an iterable) and
    yield it guarded: driver errors, opening or iterating, become the right
    Source error, and the connection is closed after, its query stopped on
    the server unless it was read to its end."""
    timeout = effective_timeout(source, timeout)
    conn = sources.connect(source, timeout)
    source = source._replace(query_timeout=timeout)
    errors = sources.driver_errors(source.engine)
    guarded = None
    try:
        with open_stream(source, conn) as stream:
            guarded = _Guarded(stream, source, conn, errors)
            yield guarded
    except errors as exc:
        raise sources.classify(source, exc, getattr(conn, 'deadline', None)) from exc
    finally:
        # Finished means read to the end: a caller may also leave early
        # without an error (a client that went away, a reader that had enough).
        _close(source, conn, guarded is not None and guarded.exhausted)


def effective_timeout(source: Source, report_timeout: Optional[float]) -> float:
    """A report may lower its source's time limit, never raise it (0: none)."""
    limits = [t for t in (source.query_timeout, report_timeout) if t]
    return min(limits) if limits else 0


class _Guarded:
    """Passes the stream on, turning driver errors met while iterating into
    the right Source error."""

    def __init__(self, stream, source, conn, errors):
        self._stream, self._source, self._conn, self._errors = stream, source, conn, errors
        self.exhausted = False

    def __iter__(self):
        try:
            yield from self._stream
            # Cut at a row limit, the query still has rows: it is stopped,
            # not read to its end.
            self.exhausted = not getattr(self._stream, 'truncated', False)
        except self._errors as exc:
            raise sources.classify(self._source, exc,
                                   getattr(self._conn, 'deadline', None)) from exc

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _close(source, conn, finished):
    """Close a source connection. An abandoned stream (a client that went
    away) must stop its query on the server, not leave it running to the end."""
    if not finished and source.engine == 'mysql':
        with contextlib.suppress(Exception):
            _kill_query(source, conn.thread_id())
        # Anything that talks to the server now (a rollback, close(), the
        # cursor's own close) would first read every remaining row.
        with contextlib.suppress(Exception):
            if conn._result is not None:
                conn._result.unbuffered_active = False
            conn._result = None
            conn._force_close()
        return
    if not finished and source.engine == 'postgres':
        with contextlib.suppress(Exception):
            conn.cancel_safe(timeout=5)
    with contextlib.suppress(Exception):
        conn.rollback()
    with contextlib.suppress(Exception):
        conn.close()


def _kill_query(source, thread_id):
    killer = sources.connect(source, 10)
    try:
        with killer.cursor() as cursor:
            cursor.execute('KILL QUERY %d' % int(thread_id))
    finally:
        killer.close()


# --- PostgreSQL: the server formats and writes the CSV -----------------------

_PG_BOOL, _PG_TIMESTAMP, _PG_TIMESTAMPTZ, _PG_BYTEA = 16, 1114, 1184, 17
_PG_AS_IS = {20, 21, 23, 26, 700, 701, 1700, 1082}  # numbers, oid, date
# uuid, time, timetz, macaddr, macaddr8: their text is never empty and starts
# with a digit or a hex letter, never a blank or trigger, so the escape and
# NULLIF would only cost time. (Not inet and cidr: ::text, which the escape
# reads, adds the netmask that COPY leaves out.)
_PG_NEVER_A_FORMULA = {2950, 1083, 1266, 829, 774}


def _pg_identifier(name):
    return '"%s"' % name.replace('"', '""')


def _pg_column(position, oid, escape):
    """SQL that prints column c<position> in the canonical form."""
    c = 'q.c%d' % position
    if oid == _PG_BOOL:
        return "CASE WHEN %s THEN 'true' WHEN NOT %s THEN 'false' END" % (c, c)
    if oid == _PG_TIMESTAMP:
        return "to_char(%s, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')" % c
    if oid == _PG_TIMESTAMPTZ:
        return "to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')" % c
    if oid in _PG_AS_IS or oid in _PG_NEVER_A_FORMULA or oid == _PG_BYTEA:
        return c
    text = '%s::text' % c
    return pg_escape_sql(text) if escape else "NULLIF(%s, '')" % text


# The characters a formula may start with (a blank or a trigger), and their
# codes as the engines' SQL compares them (SQLite's unicode(), PostgreSQL's
# ascii(), which also gives 0 for an empty text: that too needs a look).
_FORMULA_FIRST = frozenset(LEADING_BLANKS + FORMULA_TRIGGERS)
_FIRST_CODES = ', '.join(str(ord(c)) for c in sorted(_FORMULA_FIRST))
_PG_FIRST_CODES = '0, ' + _FIRST_CODES


def pg_escape_sql(x):
    """The formula escape (export.escape_formula) as a PostgreSQL expression,
    the same rule from the same lists of characters; an empty text becomes
    NULL (an empty cell). Most cells cost one ascii() and a hashed IN: only
    an empty one or one starting with a blank or trigger goes on to the
    regular expressions and NULLIF."""
    return ("(CASE WHEN ascii(%(x)s) IN (%(first)s) THEN (CASE WHEN %(x)s ~ %(pattern)s "
            "AND %(x)s !~ '^-[0-9][0-9.]*$' THEN '''' || %(x)s ELSE NULLIF(%(x)s, '') END) "
            "ELSE %(x)s END)" % {'x': x, 'first': _PG_FIRST_CODES,
                                 'pattern': POSTGRES_FORMULA_PATTERN})


@contextlib.contextmanager
def _postgres(source, conn, sql, params, escape, bom, limit):
    with conn.cursor() as cursor:
        columns = [(d.name, d.type_code) for d in describe(cursor, sql, params)]
        aliases = ', '.join('c%d' % i for i in range(len(columns)))
        select = ', '.join('%s AS %s' % (_pg_column(i, oid, escape), _pg_identifier(name))
                           for i, (name, oid) in enumerate(columns))
        wrapped = 'SELECT %s FROM (\n%s\n) AS q(%s)' % (select, sql, aliases)
        yield _CopyStream(cursor, wrapped, sql, params, bom, limit)


class _CopyStream:
    def __init__(self, cursor, wrapped, sql, params, bom, limit):
        self.cursor, self.wrapped, self.sql, self.params = cursor, wrapped, sql, params
        self.bom, self.limit = bom, limit
        self.rows = self.bytes = 0
        self.truncated = False

    def __iter__(self):
        statement = self.wrapped
        if self.limit is not None:
            statement += ' LIMIT %d' % self.limit
        copy_sql = 'COPY (%s) TO STDOUT WITH (FORMAT csv, HEADER true)' % statement
        lines = 0
        with self.cursor.copy(_bound(self.cursor, copy_sql, self.params)) as copy:
            for block, count in copy_blocks(copy, self.cursor.connection.pgconn, CHUNK_BYTES):
                if self.bom and not self.bytes:
                    block = b'\xef\xbb\xbf' + block
                lines += count
                # The server sends each CSV line as one message: lines are
                # rows, the header not counted.
                self.rows = max(0, lines - 1)
                self.bytes += len(block)
                yield block
        if self.limit is not None and self.rows >= self.limit:
            self.cursor.execute('SELECT 1 FROM (\n%s\n) AS q OFFSET %d LIMIT 1'
                                % (self.sql, self.limit), self.params)
            self.truncated = self.cursor.fetchone() is not None


def _bound(cursor, sql, params):
    """`sql` with `params` merged in, as psycopg does for a COPY, but also
    when there are none: psycopg then leaves a doubled %% (how a literal %
    is written beside placeholders) as it is, and the server reads `5 %% 2`."""
    import psycopg
    return psycopg.ClientCursor(cursor.connection).mogrify(sql, params)


def copy_blocks(copy, pgconn, size):
    """The data of a COPY TO STDOUT as (block of about `size` bytes, lines
    in it). psycopg's Copy gives one line per call through its wait
    machinery, about a microsecond each; here the lines libpq already holds
    are taken with one libpq call each, and psycopg is asked (and waits for
    the server) only when libpq holds none. The lines are copied into one
    buffer at once: a list of 3,000 of libpq's buffers kept alive would wake
    Python's garbage collector over and over."""
    take = pgconn.get_copy_data
    block = bytearray()
    lines = 0
    while True:
        got, data = take(1)  # 1: never block
        if got == 0:  # no whole line at hand
            data = copy.read()  # empty once psycopg has read the end itself
            if not data:
                break
        elif got < 0:  # libpq met the end: its result is ours to read
            _end_of_copy(pgconn)
            break
        block += data
        lines += 1
        if len(block) >= size:
            yield bytes(block), lines
            block.clear()
            lines = 0
    if block:
        yield bytes(block), lines


def _end_of_copy(pgconn):
    """Read what follows the last line of a COPY, as psycopg does after it:
    the server's results up to the next query. An error (a time limit hit
    while the rows were sent, say) is raised as psycopg's exception."""
    import psycopg
    import selectors
    final = None
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)
        while True:
            while pgconn.is_busy():
                selector.select()
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            final = result
    if final.status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(final)


# --- MariaDB / MySQL and SQLite: rows formatted here -------------------------

def text_cell(escape):
    def cell(value):
        if value is None or value == '':
            return None
        if value.__class__ is bytes:
            return '\\x' + value.hex()
        text = value if value.__class__ is str else str(value)
        return escape_formula(text) if escape else text
    return cell


def bool_cell(value):
    if value is None:
        return None
    return 'true' if value else 'false'


def decimal_cell(places=None):
    quantum = decimal.Decimal(1).scaleb(-places) if places is not None else None

    def cell(value):
        if value is None or value == '':
            return None
        if not isinstance(value, decimal.Decimal):
            # SQLite keeps DECIMAL as REAL or INTEGER: its shortest text is
            # the number that was stored, then shown at the column's scale.
            value = decimal.Decimal(repr(value) if isinstance(value, float) else str(value))
        if quantum is not None and value.is_finite():
            value = value.quantize(quantum, rounding=decimal.ROUND_HALF_EVEN)
        return format(value, 'f')
    return cell


def timestamp_cell(utc=False):
    suffix = 'Z' if utc else ''

    def cell(value):
        if value is None or value == '':
            return None
        if isinstance(value, str):
            parsed = _parse_timestamp(value)
            if parsed is None:
                return value
            value = parsed
        if isinstance(value, datetime.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
                return value.strftime(ISO_SECONDS) + 'Z'
            return value.strftime(ISO_SECONDS) + suffix
        if isinstance(value, datetime.date):
            return datetime.datetime(value.year, value.month, value.day).strftime(ISO_SECONDS)
        return str(value)
    return cell


def _parse_timestamp(text):
    try:
        return datetime.datetime.fromisoformat(text.strip().replace('Z', '+00:00'))
    except ValueError:
        return None


def date_cell(value):
    if value is None or value == '':
        return None
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def number_cell(value):
    if value is None or value == '':
        return None
    if value.__class__ is float:
        return float_text(value)
    return str(value)


_FLOAT_WORDS = {'inf': 'Infinity', '-inf': '-Infinity', 'nan': 'NaN'}


def float_text(value: float) -> str:
    """PostgreSQL's way: the shortest text that reads back as the same
    number, without a trailing .0 (3, not 3.0)."""
    text = repr(value)
    if text.endswith('.0'):
        return text[:-2]
    return _FLOAT_WORDS.get(text, text)


def _formatted(rows, cells):
    for row in rows:
        yield [cell(value) for cell, value in zip(cells, row)]


# The server writes the CSV lines where it can (tests turn it off to compare).
MYSQL_LINES = True
# A statement the server stopped (time limit, killed) or a lost connection:
# running it again cell by cell would only do the same.
_MYSQL_NO_FALLBACK = {1317, 1927, 1969, 3024}


@contextlib.contextmanager
def _mysql(source, conn, sql, params, escape, bom, limit):
    import pymysql.cursors
    # PyMySQL reads %-formats only when given parameters: a rewritten
    # statement's doubled %% must always be read.
    params = params if params is not None else ()
    if MYSQL_LINES:
        fields = _mysql_fields(conn, sql, params)
        statement = fields and mysqllines.line_statement(sql, fields, escape)
        if statement:
            cursor = conn.cursor(pymysql.cursors.SSCursor)
            try:
                cursor.execute(statement, params)
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else 0
                if not isinstance(code, int) or code >= 2000 or code in _MYSQL_NO_FALLBACK:
                    raise
                logger.info('export: the server refused the statement written as CSV lines '
                            '(%s); reading its cells instead', exc)
            else:
                yield LineStream([f.name for f in fields], cursor, final=True, bom=bom,
                                 limit=limit)
                return
    cursor = conn.cursor(pymysql.cursors.SSCursor)
    cursor.execute(sql, params)
    header = [d[0] for d in cursor.description]
    cells = [_mysql_cell(d, escape) for d in cursor.description]
    yield CsvStream(header, _formatted(_fetching(cursor), cells), escape=False,
                    chunk_rows=2000, bom=bom, limit=limit)


def _mysql_fields(conn, sql, params):
    """PyMySQL's fields (type, charset) of the query's columns, no row read;
    None when the query cannot be looked at so (two columns of one name)."""
    import pymysql
    cursor = conn.cursor()
    try:
        describe(cursor, sql, params)
        return list(cursor._result.fields)
    except pymysql.err.MySQLError:
        return None
    finally:
        cursor.close()


def _fetching(cursor, size=2000):
    while True:
        batch = cursor.fetchmany(size)
        if not batch:
            return
        yield from batch


def _mysql_cell(description, escape):
    from pymysql.constants import FIELD_TYPE as T
    _, code, _, length, _, scale, _ = description
    if code in (T.DECIMAL, T.NEWDECIMAL):
        return decimal_cell(scale)
    if code == T.TINY and length == 1:
        return bool_cell  # BOOLEAN is TINYINT(1)
    if code in (T.TINY, T.SHORT, T.LONG, T.LONGLONG, T.INT24, T.YEAR, T.FLOAT, T.DOUBLE):
        return number_cell
    if code == T.TIMESTAMP:
        return timestamp_cell(utc=True)  # stored in UTC; the session reads it in UTC
    if code == T.DATETIME:
        return timestamp_cell()
    if code in (T.DATE, T.NEWDATE):
        return date_cell
    return text_cell(escape)


def sqlite_header_and_types(cursor, source, sql, params):
    """(column names, each column's traced type or None where unknown) of
    a SQLite query, before it runs."""
    header = [d[0] for d in describe(cursor, sql, params)]
    types = sqlite_column_types(source, sql, cursor)
    if types is None or len(types) != len(header):
        types = [None] * len(header)
    return header, types


@contextlib.contextmanager
def _sqlite(source, conn, sql, params, escape, bom, limit):
    # The columns first (names, count), then one SELECT. Where the query's
    # types are known, SQLite hands most cells as it keeps them and Python
    # formats them a column at a time (_sqlite_cells); a one-column report
    # has SQLite join its lines (_sqlite_lines); else SQLite prints each
    # column in the canonical form and csv.writer writes the rows.
    cursor = conn.cursor()
    header, types = sqlite_header_and_types(cursor, source, sql, params)
    names = ', '.join('c%d' % i for i in range(len(header)))
    with_q = 'WITH q(%s) AS (\n%s\n) SELECT ' % (names, sql)
    if SQLITE_LINES and all(kind is not None and kind[0] in _LINE_KINDS for kind in types):
        if SQLITE_PYTHON_CELLS and len(types) > 1:
            select, columns = _sqlite_cells(types, escape)
            cursor.execute(with_q + select + ' FROM q', params)
            yield ColumnStream(header, cursor, columns, chunk_rows=SQLITE_CHUNK_ROWS, bom=bom,
                               limit=limit)
            return
        cursor.execute(with_q + _sqlite_lines(types, escape) + ' FROM q', params)
        numbers = [i for i, kind in enumerate(types) if kind[0] == 'number']
        yield LineStream(header, cursor, numbers, bom=bom, limit=limit)
        return
    select = ', '.join('%s AS c%d' % (_sqlite_column('q.c%d' % i, kind, escape), i)
                       for i, kind in enumerate(types))
    cursor.execute(with_q + select + ' FROM q', params)
    yield CsvStream(header, cursor, escape=False, chunk_rows=2000, bom=bom, limit=limit)


# Lines built by SQLite where the types allow (tests turn it off to compare).
SQLITE_LINES = True
_LINE_KINDS = ('number', 'decimal', 'bool', 'date', 'timestamp', 'text')


def _sqlite_lines(types, escape):
    """The SELECT list giving each row as its CSV line, cells joined by
    commas, then for each integer column the value when it is a float.

    Quoting is left to Python for the rare line with a quote, CR or LF (its
    commas still split it right). A row with a comma in a cell, or holding
    what its column's type does not (SQLite keeps a float or text given to
    an integer column), comes quoted here in full after a NUL (a plain line
    never starts with one), a float's cell left empty: SQLite's printf
    cannot write every float as Python does, so Python writes those, from
    the values that follow the line (see export.LineStream)."""
    plain, marked, odd, floats = [], [], [], []
    for i, kind in enumerate(types):
        x = 'q.c%d' % i
        cell = _sqlite_column(x, kind, escape)
        if kind[0] == 'number':
            plain.append("ifnull(%s, '')" % x)
            odd.append("typeof(%s) NOT IN ('integer', 'null')" % x)
            marked.append("(CASE typeof(%s) WHEN 'real' THEN '' WHEN 'blob' THEN '\\x' || "
                          "lower(hex(%s)) ELSE %s END)" % (x, x, _sqlite_quoted(x, x)))
            floats.append("CASE WHEN typeof(%s) = 'real' THEN %s END" % (x, x))
            continue
        if kind[0] == 'bool' or (kind[0] == 'decimal' and kind[1] is not None):
            # 'true'/'false' or printf's digits: never a comma or a quote. A
            # DECIMAL with no scale prints what it holds, text included:
            # checked for commas below like any text.
            plain.append("ifnull(%s, '')" % cell)
            marked.append(plain[-1])
            continue
        if kind[0] == 'text':
            # NULL and '' are both an empty cell: no NULLIF needed here.
            cell = sqlite_escape_sql(x) if escape else x
        plain.append("ifnull(%s, '')" % cell)
        odd.append("instr(%s, ',')" % x)
        marked.append(_sqlite_quoted(x, cell))
        if i == 0:
            # unicode() and length() stop at a NUL; a blob's bytes do not.
            odd.append("substr(CAST(%s AS BLOB), 1, 1) = x'00'" % x)
    line = " || ',' || ".join(plain)
    if len(plain) == 1:
        line = "'' || %s" % line  # text, as a line of several cells is
    return ', '.join(["CASE WHEN %s THEN char(0) || %s ELSE %s END" % (
        ' OR '.join(odd), " || ',' || ".join(marked), line)] + floats)


def _sqlite_quoted(x, cell):
    """`cell` as csv.writer writes it: quoted when `x`, the value it prints,
    holds a comma, quote, CR or LF (printing adds none of those)."""
    return ("(CASE WHEN instr(%(x)s, ',') OR instr(%(x)s, '\"') OR instr(%(x)s, char(10)) OR "
            "instr(%(x)s, char(13)) THEN '\"' || replace(%(c)s, '\"', '\"\"') || '\"' "
            "ELSE ifnull(%(c)s, '') END)" % {'x': x, 'c': cell})


# Where the types allow, SQLite hands the cells of most kinds as they are
# stored and Python formats them a column at a time (tests turn it off to
# compare with the lines SQLite joins).
SQLITE_PYTHON_CELLS = True
# Rows per batch. Smaller batches stay in the CPU's caches: 500 rows took
# 10-15% less CPU than 2,000 on the orders report (250 about the same).
SQLITE_CHUNK_ROWS = 500
# The kinds SQLite still prints (cheap there).
_SQLITE_PRINTS = ('bool',)


def _sqlite_cells(types, escape):
    """(SELECT list, a cell function per column) for export.ColumnStream:
    the bytes of the lines _sqlite_lines has SQLite join, for less CPU.
    SQLite evaluates each formatting expression on every cell, even on the
    plainest, and that was most of the export's time; here the common
    shapes (an integer, a timestamp as SQLite keeps it, text that starts
    with no formula character, a decimal already at its scale) cost a few
    string operations, most of them on a whole batch of a column at once,
    and any other value is printed by the same SQLite expression, run on
    that one value (_SqliteCells)."""
    select, columns = [], []
    cells = _SqliteCells()
    for i, kind in enumerate(types):
        x = 'q.c%d' % i
        if kind[0] in _SQLITE_PRINTS or kind == ('decimal', None):
            # As text, as in a line: a DECIMAL without a scale is printed by
            # what it holds, and a float comes as SQLite writes it in text.
            select.append("'' || ifnull(%s, '')" % _sqlite_column(x, kind, escape))
            columns.append(_as_they_are)
            continue
        select.append(x)
        if kind[0] == 'number':
            columns.append(_number_cells)
            continue
        expression = sqlite_escape_sql('?1') if kind[0] == 'text' and escape \
            else _sqlite_column('?1', kind, escape)
        printed = cells.printer(expression)
        if kind[0] == 'decimal':
            columns.append(_decimal_cells(kind[1], printed))
            continue
        columns.append(_PYTHON_CELLS[kind[0], escape](printed))
    return ', '.join(select), columns


class _SqliteCells:
    """Prints single values with the SQL _sqlite_lines puts in a line, for
    the values Python's shortcuts do not cover: the same SQLite, so the same
    text, on a private in-memory database (the source's connection is busy
    with the export's statement)."""

    def __init__(self):
        self._conn = None

    def printer(self, expression):
        statement = "SELECT '' || ifnull(%s, '')" % expression

        def printed(value):
            if value is None:
                return ''
            if self._conn is None:
                import sqlite3
                self._conn = sqlite3.connect(':memory:', check_same_thread=False)
            return self._conn.execute(statement, (value,)).fetchone()[0]
        return printed


def _as_they_are(values):
    return values


def _number_cells(values):
    # SQLite keeps what it is given in an integer column: a float is written
    # as Python writes it (repr, as the lines' floats are), bytes as \x hex.
    return [str(v) if v.__class__ is int else _odd_number(v) for v in values]


def _odd_number(value):
    if value is None:
        return ''
    if value.__class__ is float:
        return repr(value)
    if value.__class__ is bytes:
        return '\\x' + value.hex()
    return value


# A cell, in a column joined by line feeds (none inside a cell), that
# starts with a formula character. One regular expression: the same search
# with `in`, once per character, walks the text a dozen times.
_FORMULA_START = re.compile('\n[%s]' % re.escape(''.join(sorted(_FORMULA_FIRST))))


def _joined(values):
    """A batch of one column joined by line feeds, when every value is text
    without one: the batch looked at in C, not cell by cell. None if not."""
    try:
        text = '\n'.join(values)
    except TypeError:
        return None
    return text if text.count('\n') == len(values) - 1 else None


def _escaped_text_cells(printed):
    # Text whose first character could start a formula goes to SQLite's own
    # escape, so its rule (GLOB, ltrim, NUL) is met exactly. Most batches
    # have none: one look at the joined column says so.
    def cells(values):
        text = _joined(values)
        if text is not None and text[:1] not in _FORMULA_FIRST \
                and not _FORMULA_START.search(text):
            return values
        return [v if v.__class__ is str and v[:1] not in _FORMULA_FIRST else printed(v)
                for v in values]
    return cells


def _plain_cells(printed):
    def cells(values):
        if _joined(values) is not None:
            return values
        return [v if v.__class__ is str else printed(v) for v in values]
    return cells


def _timestamp_cells(printed):
    # "2025-06-01 09:30:00", as SQLite's datetime() writes: the first branch
    # of _sqlite_column's timestamp, replace() and all. A NUL would make
    # SQLite's length() shorter than Python's len(): SQLite prints those.
    def cells(values):
        text = _joined(values)
        if text is not None and _all_19_long(text, len(values)) and '\x00' not in text \
                and not text[10::20].strip(' T'):
            return (text.replace(' ', 'T').replace('\n', '.000000\n') + '.000000').split('\n')
        return [v.replace(' ', 'T') + '.000000'
                if v.__class__ is str and len(v) == 19 and v[10] in ' T' and '\x00' not in v
                else printed(v) for v in values]
    return cells


def _all_19_long(text, count):
    # The line feeds (one between each two cells, none inside) fall every
    # 20 characters: each cell is 19 long.
    return len(text) == 20 * count - 1 and text[19::20] == '\n' * (count - 1)


def _decimal_cells(places, printed):
    """printf('%.<places>f') as SQLite prints it, for the numbers where
    Python's correctly rounded text is sure to be SQLite's: those that are
    the double nearest to a number of at most `places` decimals (formatted
    and read back, the same double), at most 15 significant digits (SQLite
    prints 16 at most, and its rounding is then far from the last digit).
    Zero goes to SQLite (-0.0: Python writes its sign, SQLite does not).
    Measured on 500k amounts: 0.22 s of CPU here, 0.34 s in SQLite."""
    form = '%%.%df' % places
    limit = 10.0 ** (15 - places)

    def cells(values):
        return [text if (v.__class__ is float and v and -limit < v < limit
                         and float(text := form % v) == v)
                else form % v if v.__class__ is int and -limit < v < limit
                else printed(v) for v in values]
    return cells


_PYTHON_CELLS = {('text', True): _escaped_text_cells, ('text', False): _plain_cells,
                 ('date', True): _plain_cells, ('date', False): _plain_cells,
                 ('timestamp', True): _timestamp_cells, ('timestamp', False): _timestamp_cells}


_DIGITS2 = '[0-9][0-9]'
_SQLITE_DATE = "'%s%s-%s-%s'" % (_DIGITS2, _DIGITS2, _DIGITS2, _DIGITS2)


def _sqlite_column(x, kind, escape):
    """SQL printing SQLite column `x` as the other engines print theirs."""
    name, places = kind or (None, None)
    if name == 'decimal' and places is not None:
        return ("(CASE WHEN %s IS NULL OR %s = '' THEN NULL ELSE printf('%%.%df', %s) END)"
                % (x, x, places, x))
    if name == 'bool':
        return "(CASE WHEN %s IS NULL THEN NULL WHEN %s THEN 'true' ELSE 'false' END)" % (x, x)
    if name == 'timestamp':
        # Text as SQLite keeps it ("2025-06-01 09:30:00[.123]"): the same
        # characters, with a T and always six digits of microseconds. Lengths
        # and single characters first: cheaper than a GLOB on every cell.
        return ("(CASE WHEN length(%(x)s) = 19 AND substr(%(x)s, 11, 1) IN (' ', 'T') "
                "THEN replace(%(x)s, ' ', 'T') || '.000000' "
                "WHEN length(%(x)s) BETWEEN 21 AND 26 AND substr(%(x)s, 20, 1) = '.' AND "
                "substr(%(x)s, 11, 1) IN (' ', 'T') AND %(x)s NOT GLOB '*[^0-9 T:.-]*' THEN "
                "replace(%(x)s, ' ', 'T') || substr('000000', 1, 26 - length(%(x)s)) "
                "WHEN length(%(x)s) = 10 AND %(x)s GLOB %(date)s THEN "
                "%(x)s || 'T00:00:00.000000' ELSE NULLIF(%(x)s, '') END)"
                % {'x': x, 'date': _SQLITE_DATE})
    if name == 'number':
        # SQLite keeps whatever it is given: bytes are printed as bytes are.
        return ("(CASE WHEN typeof(%s) = 'blob' THEN '\\x' || lower(hex(%s)) ELSE %s END)"
                % (x, x, x))
    if name == 'date':
        return "NULLIF(%s, '')" % x
    if name == 'text':
        # NULLIF outermost: inside, the CASE would compute it once per mention.
        return "NULLIF(%s, '')" % (sqlite_escape_sql(x) if escape else x)
    # Anything else is printed by what it holds: a float as its shortest
    # form without ".0" (csv.writer writes repr), bytes as \x and hex, text
    # as it is, escaped.
    text = ("(CASE WHEN typeof(%s) = 'real' AND %s = CAST(%s AS INTEGER) AND abs(%s) < 1e15 "
            "THEN CAST(CAST(%s AS INTEGER) AS TEXT) WHEN typeof(%s) = 'blob' THEN "
            "'\\x' || lower(hex(%s)) ELSE NULLIF(%s, '') END)" % ((x,) * 8))
    return sqlite_escape_sql(text) if escape else text


def sqlite_escape_sql(x):
    """The formula escape (export.escape_formula) as SQLite: a look at the
    first character (cheap), then trim the blanks and one GLOB on the first
    character (the class holds a real tab, CR and LF; "-" last, so it is
    literal). A plain negative number stays one."""
    return ("(CASE WHEN unicode(%(x)s) IN (%(first)s) AND typeof(%(x)s) = 'text' AND "
            "ltrim(%(x)s, '%(blanks)s') GLOB '[%(triggers)s]*' AND NOT "
            "(%(x)s GLOB '-[0-9]*' AND NOT %(x)s GLOB '-*[^0-9.]*') THEN '''' || %(x)s "
            "ELSE %(x)s END)" % {'x': x, 'blanks': LEADING_BLANKS, 'triggers': FORMULA_TRIGGERS,
                                 'first': _FIRST_CODES})



def sqlite_column_types(source: Source, sql: str,
                        cursor=None) -> Optional[List[Optional[tuple]]]:
    """[(kind, places) or None per column] from the tables' declared types,
    traced through the query by sqlglot: SQLite itself forgets that a column
    was DECIMAL(12,2) or BOOLEAN once it hands back a float or an int. None
    when the query cannot be traced (each cell is then printed by its own
    type). Kept per statement until the database's schema changes (read on
    `cursor`, a connection to it) or, without one, its file: tracing costs
    more than a small report's whole export, and a file that is also
    Nightshift's state database changes with every run."""
    path = sources.sqlite_path(source.url)
    if cursor is not None:
        # The schema itself (a source's connection may read, not PRAGMA).
        changed = ('schema', hash(tuple(cursor.execute(
            'SELECT type, name, sql FROM sqlite_master').fetchall())))
    else:
        try:
            changed = os.stat(path).st_mtime_ns
        except OSError:
            changed = None
    return _traced_types(path, sql, changed)


@functools.lru_cache(maxsize=256)
def _traced_types(path, sql, changed):
    import sqlite3

    import sqlglot
    from sqlglot.optimizer.annotate_types import annotate_types
    from sqlglot.optimizer.qualify import qualify
    try:
        conn = sqlite3.connect('file:%s?mode=ro' % path, uri=True)
        try:
            schema = {}
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
            for table in tables:
                columns = conn.execute('SELECT name, type FROM pragma_table_info(?)',
                                       (table,)).fetchall()
                schema[table] = {name: (kind or 'TEXT') for name, kind in columns}
        finally:
            conn.close()
        tree = sqlglot.parse_one(sql, read='sqlite')
        tree = annotate_types(qualify(tree, schema=schema, dialect='sqlite',
                                      validate_qualify_columns=False),
                              schema=schema, dialect='sqlite')
        return tuple(_kind(projection.type) for projection in tree.selects)
    except Exception:
        return None


def _kind(data_type):
    from sqlglot import exp
    if data_type is None:
        return None
    t = exp.DataType.Type
    this = data_type.this
    if this in (t.DECIMAL, t.BIGDECIMAL, t.MONEY):
        places = None
        if len(data_type.expressions) >= 2:
            try:
                places = int(data_type.expressions[1].sql())
            except ValueError:
                places = None
        return ('decimal', places)
    if this == t.BOOLEAN:
        return ('bool', None)
    if this in (t.DATETIME, t.TIMESTAMP, t.DATETIME64, t.TIMESTAMPNTZ):
        return ('timestamp', None)
    if this == t.DATE:
        return ('date', None)
    # SQLite's affinities keep these as integers and text: no need to look
    # at what each cell holds.
    if this in exp.DataType.INTEGER_TYPES and this != t.BIT:
        return ('number', None)
    if this in exp.DataType.TEXT_TYPES:
        return ('text', None)
    return None


def describe(cursor, sql, params):
    """The query's columns (DB-API description), planned but no row read.
    The newlines keep a trailing -- comment in the report from swallowing
    the closing parenthesis."""
    cursor.execute('SELECT * FROM (\n%s\n) AS q LIMIT 0' % sql, params)
    cursor.fetchall()
    return cursor.description


def check_query(source: Source, sql: str, params: Union[dict, list, tuple]) -> None:
    """Prepare the query on its source without reading a row: ReportSQLError
    for an unknown table or column, bad syntax or a refused statement."""
    conn = sources.connect(source, min(source.query_timeout or 30, 30))
    errors = sources.driver_errors(source.engine)
    try:
        describe(conn.cursor(), sql, params)
    except errors as exc:
        raise sources.classify(source, exc, getattr(conn, 'deadline', None)) from exc
    finally:
        _close(source, conn, True)


__all__ = ['open_query_csv', 'check_query', 'ReportSQLError']
