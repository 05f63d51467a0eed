"""Stream a report query into CSV, row by row: memory does not grow with rows."""
import contextlib
import csv
import os
import re
import time
import uuid
from itertools import islice

from peewee import Alias, DecimalField, Field, Function, PostgresqlDatabase, fn

# OWASP's list of characters a spreadsheet may read as the start of a formula.
FORMULA_TRIGGERS = frozenset('=+-@\t\r\n|%')
_PLAIN_NUMBER = re.compile(r'-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z')


def escape_formula(value):
    """Neutralise a text cell a spreadsheet would run as a formula.

    Plain negative numbers such as "-12.5" stay numbers.
    """
    if value.__class__ is str and value[:1] in FORMULA_TRIGGERS \
            and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def _escape_row(row):
    return [escape_formula(v) for v in row]


def _column_name(node):
    if isinstance(node, Alias):
        return node._alias
    if isinstance(node, Field):
        return node.column_name
    return None


def _decimal_places(node):
    """Decimal places of a money-like column, looking through aliases and
    functions such as SUM or COALESCE; None when it is not a decimal."""
    while True:
        if isinstance(node, Alias):
            node = node.node
        elif isinstance(node, Function) and node.arguments:
            node = node.arguments[0]
        elif isinstance(node, DecimalField):
            return node.decimal_places
        else:
            return None


def prepare_query(query, database):
    """Make decimal columns print the same on every database.

    SQLite keeps DECIMAL as a float (12.5, not 12.50), so the formatting is
    pushed into the SELECT, where it costs almost nothing.
    """
    columns = []
    changed = False
    for node in query.selected_columns:
        places = _decimal_places(node)
        name = _column_name(node)
        if places is None or name is None:
            columns.append(node)
            continue
        inner = node.node if isinstance(node, Alias) else node
        if isinstance(database, PostgresqlDatabase):
            wrapped = inner.cast('NUMERIC(38, %d)' % places)
        else:
            wrapped = fn.printf('%.' + str(places) + 'f', inner)
        columns.append(wrapped.alias(name))
        changed = True
    if not changed:
        return query
    query = query.clone()
    query.selected_columns = columns
    return query


@contextlib.contextmanager
def open_rows(query, database, batch=2000):
    """Run `query` and yield (header, rows) with rows fetched lazily.

    PostgreSQL gets a server-side (named) cursor inside a transaction, so
    the driver never loads the whole result.
    """
    query = prepare_query(query, database)
    if isinstance(database, PostgresqlDatabase):
        sql, params = query.sql()
        with database.atomic():
            cursor = database.connection().cursor(
                name='nightshift-%s' % uuid.uuid4().hex, withhold=False)
            cursor.itersize = batch
            try:
                cursor.execute(sql, params)
                yield [d[0] for d in cursor.description], cursor
            finally:
                cursor.close()
    else:
        cursor = database.execute(query)
        try:
            yield [d[0] for d in cursor.description], cursor
        finally:
            cursor.close()


class _Buffer:
    """The file csv.writer writes into; drained after each batch."""
    __slots__ = ('parts',)

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def drain(self):
        text = ''.join(self.parts)
        self.parts.clear()
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
        writer = csv.writer(buffer)
        if self.bom:
            buffer.write('\ufeff')
        writer.writerow(self.header)
        source = iter(self.source)
        while True:
            wanted = self.chunk_rows
            if self.limit is not None:
                wanted = min(wanted, self.limit - self.rows)
            batch = list(islice(source, wanted)) if wanted > 0 else []
            if batch:
                if self.escape:
                    batch = [_escape_row(row) for row in batch]
                writer.writerows(batch)
                self.rows += len(batch)
            data = buffer.drain().encode('utf-8')
            if data:
                self.bytes += len(data)
                yield data
            if len(batch) < wanted or wanted <= 0:
                if self.limit is not None and self.rows >= self.limit:
                    self.truncated = next(source, None) is not None
                return


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
