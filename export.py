"""CSV writing shared by every engine: rows into csv.writer in chunks, the
formula escape (in Python, and as the pattern PostgreSQL matches it with),
and the atomic write of a finished file. Memory does not grow with rows.

sqlexport.py runs a report's SQL on its source and feeds these.
"""
import contextlib
import csv
import io
import os
import re
import time
from itertools import islice

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


def escape_formula(value):
    """Neutralise a text cell a spreadsheet would run as a formula."""
    if value.__class__ is str and _TRIGGERED.match(value) \
            and not _PLAIN_NEGATIVE.match(value):
        return "'" + value
    return value


def _regex_class(chars):
    # Every character as a \uXXXX escape: no "%" for the driver to take as a
    # placeholder, no quote, no raw control character in the SQL.
    return ''.join('\\u%04x' % ord(c) for c in chars)


# escape_formula()'s rule as a PostgreSQL regular expression (an SQL string
# literal), built from the same two lists.
POSTGRES_FORMULA_PATTERN = "'^[%s]*[%s]'" % (_regex_class(LEADING_BLANKS),
                                             _regex_class(FORMULA_TRIGGERS))


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


class StreamOf:
    """A byte-chunk stream made from another (a CsvStream's gzip, typed
    rows' workbook): `rows` and `truncated` are the inner stream's, `bytes`
    counts this one's own chunks."""

    def __init__(self, inner):
        self.inner = inner
        self.bytes = 0

    @property
    def rows(self):
        return self.inner.rows

    @property
    def truncated(self):
        return self.inner.truncated


class _BatchStream:
    """A CsvStream whose rows come from `cursor` in batches of `chunk_rows`,
    each batch made text at once by `_text(batch)` (a subclass's); the
    header (BOM first), NULs, the row limit and `truncated` as CsvStream
    has them."""

    def __init__(self, header, cursor, chunk_rows=2000, bom=False, limit=None):
        self.header, self.cursor = header, cursor
        self.chunk_rows, self.bom, self.limit = chunk_rows, bom, limit
        self.rows = self.bytes = 0
        self.truncated = False

    def __iter__(self):
        buffer = _Buffer()
        if self.bom:
            buffer.write('\ufeff')
        csv.writer(buffer, lineterminator=LINE_END).writerow(self.header)
        head = buffer.drain()
        fetch = self.cursor.fetchmany
        while True:
            wanted = self.chunk_rows
            if self.limit is not None:
                wanted = min(wanted, self.limit - self.rows)
            batch = fetch(wanted) if wanted > 0 else []
            text = head + (self._text(batch) if batch else '')
            head = ''
            if text:
                if '\x00' in text:
                    text = text.replace('\x00', NUL_STANDIN)
                data = text.encode('utf-8')
                self.rows += len(batch)
                self.bytes += len(data)
                yield data
            if len(batch) < wanted or wanted <= 0:
                if self.limit is not None and self.rows >= self.limit:
                    self.truncated = bool(fetch(1))
                return


class LineStream(_BatchStream):
    """CsvStream for rows that arrive as CSV lines the database joined (see
    sqlexport._sqlite_lines): Python joins lines, and looks at a line's
    cells only where a batch holds a quote, CR, LF or NUL. Each row's line
    is followed by a value per `float_columns` entry: that column's float,
    for Python to write, or None."""

    def __init__(self, header, cursor, float_columns=(), chunk_rows=2000, bom=False,
                 limit=None, final=False):
        super().__init__(header, cursor, chunk_rows, bom, limit)
        self.float_columns = float_columns
        # final: lines come quoted in full (MariaDB), nothing to look at.
        self.final = final
        self.single = len(header) == 1

    def _text(self, batch):
        single = self.single
        lines = [row[0] for row in batch]
        if self.final and single:
            lines = [line or '""' for line in lines]
        text = LINE_END.join(lines)
        if not self.final and (single or '"' in text or '\r' in text or '\x00' in text
                               or text.count(LINE_END) != len(lines) - 1):
            text = LINE_END.join([_line_text(row, single, self.float_columns)
                                  for row in batch])
        return text + LINE_END


class ColumnStream(_BatchStream):
    """CsvStream for rows whose cells are turned into text a column at a
    time: `columns` holds, per column, a function from that column's values
    in a batch (a tuple) to their cells as text. Column-wise list work costs
    less than a call per row or per cell; a column is looked at cell by cell
    only when its batch holds a comma, quote, CR or LF (csv.writer's
    quoting, a lone CR quoted too, as CsvStream does)."""

    def __init__(self, header, cursor, columns, chunk_rows=2000, bom=False, limit=None):
        super().__init__(header, cursor, chunk_rows, bom, limit)
        self.columns = columns

    def _text(self, batch):
        cells = [_csv_quoted(cells_of(values))
                 for cells_of, values in zip(self.columns, zip(*batch))]
        if len(cells) == 1:
            # csv.writer writes a row of one empty cell as "".
            return LINE_END.join([cell or '""' for cell in cells[0]]) + LINE_END
        return LINE_END.join(map(','.join, zip(*cells))) + LINE_END


def _csv_quoted(cells):
    """A column's cells quoted as _quoted does, looked at one by one only
    when the column holds something to quote, and then only for what it
    holds (most often commas alone: one test a cell, not four)."""
    joined = ''.join(cells)
    found = [c for c in ',"\n\r' if c in joined]
    if not found:
        return cells
    if len(found) == 1:
        (special,) = found
        return ['"%s"' % cell.replace('"', '""') if special in cell else cell
                for cell in cells]
    return ['"%s"' % cell.replace('"', '""')
            if ',' in cell or '"' in cell or '\n' in cell or '\r' in cell else cell
            for cell in cells]


def _line_text(row, single, float_columns):
    line = row[0]
    if line[:1] == '\x00':
        line = line[1:]  # quoted by the database
        if any(value is not None for value in row[1:]):
            cells = next(csv.reader([line.replace('\x00', NUL_STANDIN)])) or ['']
            for column, value in zip(float_columns, row[1:]):
                if value is not None:
                    cells[column] = repr(value)
            line = ','.join(_quoted(cell) for cell in cells)
        return line
    if '"' in line or '\r' in line or '\n' in line:
        return ','.join(_quoted(cell) for cell in line.split(','))
    if single and not line:
        return '""'  # as csv.writer writes a row of one empty cell
    return line


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
