"""Stream a report query into CSV: memory does not grow with rows.

The work is pushed into the database where it can be. Formula escaping and
decimal formatting become expressions in the SELECT, so rows go from the
cursor to csv.writer untouched; on PostgreSQL the server writes the CSV
itself (COPY ... TO STDOUT). Only columns whose type cannot be known from the
query are escaped in Python.
"""
import contextlib
import csv
import io
import os
import re
import time
import uuid
from itertools import islice

from peewee import (SQL, Alias, CharField, DecimalField, Field, Function, NodeList,
                    PostgresqlDatabase, TextField)

# OWASP's list of characters a spreadsheet may read as the start of a
# formula, and their full-width forms (＝＋－＠), which spreadsheets in East
# Asian locales may take as the ASCII ones. "-" is last so that it stays
# literal inside a character class.
FORMULA_TRIGGERS = '=+@\t\r\n|%\uff1d\uff0b\uff20\uff0d-'
# Blanks a spreadsheet may skip before it looks for one: spaces, no-break
# and ideographic spaces, a byte order mark.
LEADING_BLANKS = ' \u00a0\u3000\ufeff'
_TRIGGERED = re.compile('[%s]*[%s]' % (LEADING_BLANKS, re.escape(FORMULA_TRIGGERS)))
# A "-" cell that is a plain negative number (digits and dots) stays a number.
_PLAIN_NEGATIVE = re.compile(r'-[0-9][0-9.]*\Z')
CHUNK_BYTES = 1 << 18
# Line feeds end rows everywhere (PostgreSQL's COPY writes them too), so both
# databases give the same bytes.
LINE_END = '\n'
NUL_STANDIN = '\ufffd'  # what a NUL in a text cell is written as
QUOTE = "''''"  # SQL for a string holding one apostrophe

# Functions whose result has the type of their first argument.
SAME_TYPE_AS_ARGUMENT = {'sum', 'avg', 'min', 'max', 'coalesce', 'total'}
COUNTS = {'count'}


def escape_formula(value):
    """Neutralise a text cell a spreadsheet would run as a formula."""
    if value.__class__ is str and _TRIGGERED.match(value) \
            and not _PLAIN_NEGATIVE.match(value):
        return "'" + value
    return value


def _column_name(node):
    if isinstance(node, Alias):
        return node._alias
    if isinstance(node, Field):
        return node.column_name
    return None


def column_kind(node):
    """('decimal', places), ('text', None), ('safe', None) or ('unknown', None).

    Looks through aliases and functions such as SUM or COALESCE; anything it
    cannot type is 'unknown' and gets escaped in Python.
    """
    while True:
        if isinstance(node, Alias):
            node = node.node
        elif isinstance(node, Function):
            name = (node.name or '').lower()
            if name in COUNTS:
                return 'safe', None
            if name not in SAME_TYPE_AS_ARGUMENT or not node.arguments:
                return 'unknown', None
            node = node.arguments[0]
        elif isinstance(node, DecimalField):
            return 'decimal', node.decimal_places
        elif isinstance(node, (CharField, TextField)):
            return 'text', None
        elif isinstance(node, Field):
            return 'safe', None  # numbers, dates, booleans: nothing to escape
        else:
            return 'unknown', None


# The same rule as escape_formula(), in each database's own pattern language,
# built from the same two lists. SQLite: trim the blanks, then one GLOB on the
# first character (the class holds a real tab, CR and LF).
_SQLITE_BLANKS = "'%s'" % LEADING_BLANKS
_SQLITE_TRIGGER = "'[%s]*'" % FORMULA_TRIGGERS


def _sqlite_escape(x):
    return NodeList([
        SQL('(CASE WHEN ltrim('), x, SQL(', ' + _SQLITE_BLANKS + ') GLOB ' + _SQLITE_TRIGGER +
                                         ' AND NOT ('),
        x, SQL(" GLOB '-[0-9]*' AND NOT "), x, SQL(" GLOB '-*[^0-9.]*') THEN " + QUOTE + " || "),
        x, SQL(' ELSE '), x, SQL(' END)')], glue='')


def _regex_class(chars):
    # Every character as a \uXXXX escape: no "%" for the driver to take as a
    # placeholder, no quote, no raw control character in the SQL.
    return ''.join('\\u%04x' % ord(c) for c in chars)


_POSTGRES_TRIGGER = "'^[%s]*[%s]'" % (_regex_class(LEADING_BLANKS), _regex_class(FORMULA_TRIGGERS))


def _postgres_escape(x):
    return NodeList([
        SQL('(CASE WHEN '), x, SQL(' ~ ' + _POSTGRES_TRIGGER + ' AND '), x,
        SQL(" !~ '^-[0-9][0-9.]*$' THEN " + QUOTE + " || "), x,
        SQL(' ELSE '), x, SQL(' END)')], glue='')


def prepare_query(query, database, escape=True):
    """Rewrite the SELECT so each column prints the same on every database
    and, with `escape`, text columns are escaped by the database.

    Returns (query, indexes of columns still to escape in Python).
    """
    postgres = isinstance(database, PostgresqlDatabase)
    columns, leftover = [], []
    changed = False
    for i, node in enumerate(query.selected_columns):
        kind, places = column_kind(node)
        name = _column_name(node)
        inner = node.node if isinstance(node, Alias) else node
        if kind == 'decimal' and name:
            # SQLite keeps DECIMAL as a float (12.5, not 12.50).
            wrapped = inner.cast('NUMERIC(38, %d)' % places) if postgres else \
                Function('printf', ['%.' + str(places) + 'f', inner])
        elif kind == 'text' and escape and name:
            wrapped = _postgres_escape(inner) if postgres else _sqlite_escape(inner)
        else:
            if kind != 'safe' and escape:
                leftover.append(i)
            columns.append(node)
            continue
        columns.append(Alias(wrapped, name))
        changed = True
    if changed:
        query = query.clone()
        query.selected_columns = columns
    return query, leftover


def _escaping_rows(rows, indexes):
    for row in rows:
        row = list(row)
        for i in indexes:
            row[i] = escape_formula(row[i])
        yield row


@contextlib.contextmanager
def open_rows(query, database, escape=True, batch=2000):
    """Run `query` and yield (header, rows): fetched lazily, escaped, decimals
    formatted. PostgreSQL gets a server-side (named) cursor in a transaction,
    so the driver never loads the whole result."""
    prepared, leftover = prepare_query(query, database, escape)
    with _prepared_rows(prepared, leftover, database, batch) as opened:
        yield opened


@contextlib.contextmanager
def _prepared_rows(query, leftover, database, batch=2000):
    if isinstance(database, PostgresqlDatabase):
        sql, params = query.sql()
        with database.atomic():
            cursor = database.connection().cursor(
                name='nightshift-%s' % uuid.uuid4().hex, withhold=False)
            cursor.itersize = batch
            try:
                cursor.execute(sql, params)
                header = [d[0] for d in cursor.description]
                yield header, _escaping_rows(cursor, leftover) if leftover else cursor
            finally:
                cursor.close()
    else:
        cursor = database.execute(query)
        try:
            header = [d[0] for d in cursor.description]
            yield header, _escaping_rows(cursor, leftover) if leftover else cursor
        finally:
            cursor.close()


@contextlib.contextmanager
def open_csv(query, database, escape=True, bom=False, limit=None, chunk_rows=2000,
             copy=True):
    """The report as a stream of CSV byte chunks (with .rows, .bytes and
    .truncated). PostgreSQL writes it itself with COPY when every column's
    type is known; otherwise rows are written here."""
    prepared, leftover = prepare_query(query, database, escape)
    if copy and not leftover and isinstance(database, PostgresqlDatabase):
        with database.atomic():
            cursor = database.connection().cursor()
            try:
                yield CopyStream(cursor, prepared, database, bom, limit)
            finally:
                cursor.close()
        return
    with _prepared_rows(prepared, leftover, database) as (header, rows):
        yield CsvStream(header, rows, escape=False, chunk_rows=chunk_rows, bom=bom,
                        limit=limit)


class CopyStream:
    """CSV written by PostgreSQL (COPY ... TO STDOUT), passed on in chunks."""

    def __init__(self, cursor, query, database, bom=False, limit=None):
        self.cursor, self.query, self.database = cursor, query, database
        self.bom, self.limit = bom, limit
        self.rows = self.bytes = 0
        self.truncated = False

    def __iter__(self):
        query = self.query
        if self.limit is not None:
            query = query.limit(self.limit if query._limit is None
                                else min(self.limit, query._limit))
        sql, params = query.sql()
        statement = 'COPY (%s) TO STDOUT WITH (FORMAT csv, HEADER true)' % sql
        buffer = bytearray(b'\xef\xbb\xbf' if self.bom else b'')
        ends = RowEnds()
        with self.cursor.copy(statement, params or None) as copy:
            for data in copy:
                buffer += data
                if len(buffer) >= CHUNK_BYTES:
                    # Rows finished so far, the header not counted; exact
                    # once COPY is done.
                    self.rows = max(0, ends.count(buffer) - 1)
                    self.bytes += len(buffer)
                    yield bytes(buffer)
                    buffer.clear()
        if buffer:
            self.bytes += len(buffer)
            yield bytes(buffer)
        self.rows = self.cursor.rowcount
        if self.limit is not None and self.rows >= self.limit:
            more = self.query.offset(self.limit).limit(1)
            self.truncated = self.database.execute(more).fetchone() is not None


class RowEnds:
    """Counts the line feeds that end CSV rows: those outside quotes. A quote
    opens or closes a quoted value (a doubled one does both), so the line
    feeds between an odd and the next even quote are inside a value."""

    def __init__(self):
        self.total = 0
        self.quoted = False

    def count(self, data):
        pieces = data.split(b'"')
        start = 1 if self.quoted else 0
        self.total += sum(piece.count(b'\n') for piece in pieces[start::2])
        self.quoted = (len(pieces) - 1 + self.quoted) % 2 == 1
        return self.total


class _Buffer(io.StringIO):
    """The file csv.writer writes into (C-level writes: csv.writer calls
    write() once a row); drained after each batch."""

    def drain(self):
        text = self.getvalue()
        self.seek(0)
        self.truncate()
        return text


class CsvStream:
    """Iterate to get the CSV as UTF-8 byte chunks of `chunk_rows` rows.

    `rows` and `bytes` count what has been produced so far, for progress.
    With `limit`, at most that many rows are written and `truncated` says
    whether there were more.
    """

    def __init__(self, header, rows, escape=True, chunk_rows=1000, bom=False, limit=None):
        self.header = header
        self.source = rows
        self.escape = escape
        self.chunk_rows = chunk_rows
        self.bom = bom
        self.limit = limit
        self.rows = 0
        self.bytes = 0
        self.truncated = False

    def __iter__(self):
        buffer = _Buffer()
        writer = csv.writer(buffer, lineterminator=LINE_END)
        if self.bom:
            buffer.write('\ufeff')
        writer.writerow(self.header)
        head = buffer.drain()
        source = iter(self.source)
        while True:
            wanted = self.chunk_rows
            if self.limit is not None:
                wanted = min(wanted, self.limit - self.rows)
            batch = list(islice(source, wanted)) if wanted > 0 else []
            if batch:
                if self.escape:
                    batch = [[escape_formula(v) for v in row] for row in batch]
                writer.writerows(batch)
                self.rows += len(batch)
            text = buffer.drain()
            if '\r' in text:
                # csv.writer quotes only the line terminator's characters, so
                # a lone CR would go out bare: redo this batch row by row.
                text = ''.join(_row_text(row, writer, buffer) for row in batch)
            data = head + text
            if '\x00' in data:
                # PostgreSQL cannot store a NUL in text; SQLite can, and a raw
                # one in a CSV file cuts the cell short in many readers.
                data = data.replace('\x00', NUL_STANDIN)
            data = data.encode('utf-8')
            head = ''
            if data:
                self.bytes += len(data)
                yield data
            if len(batch) < wanted or wanted <= 0:
                if self.limit is not None and self.rows >= self.limit:
                    self.truncated = next(source, None) is not None
                return


def _quoted(value):
    if value is None:
        return ''
    text = str(value)
    if any(c in text for c in ',"\r\n'):
        return '"%s"' % text.replace('"', '""')
    return text


def _row_text(row, writer, buffer):
    if any(v.__class__ is str and '\r' in v for v in row):
        return ','.join(_quoted(v) for v in row) + LINE_END
    writer.writerow(row)
    return buffer.drain()


def write_file(stream, path, on_progress=None, every=0.5, clock=time.monotonic):
    """Write a CsvStream to `path` atomically (a temp file, then rename).

    `on_progress(rows, bytes)` is called at most every `every` seconds.
    """
    tmp = '%s.part' % path
    last = clock()
    try:
        with open(tmp, 'wb') as out:
            for chunk in stream:
                out.write(chunk)
                if on_progress is not None and clock() - last >= every:
                    on_progress(stream.rows, stream.bytes)
                    last = clock()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return stream.rows, stream.bytes
