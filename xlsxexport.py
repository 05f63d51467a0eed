"""Typed rows (typedrows.py) into an Excel workbook, written with
XlsxWriter's constant_memory mode: each row goes to the sheet's file as it
comes, so memory does not grow with rows.

What a cell becomes:

- NULL: an empty cell; the empty string too (as in the CSV).
- int and float: numbers. NaN and infinities are written as the text the
  CSV has for them (NaN, Infinity, -Infinity).
- Decimal: a number, shown with its column's decimal places (0.00 for
  DECIMAL(12,2)). Excel keeps every number as a double, which holds 15
  significant digits exactly: a decimal (or whole number) with more digits
  than that would come back changed, so it is written as text with its
  exact digits instead.
- bool: TRUE / FALSE.
- date: an Excel date (yyyy-mm-dd); timestamp: an Excel date and time
  (yyyy-mm-dd hh:mm:ss), in UTC when the column had a time zone. Dates
  Excel cannot show (before 1900) are written as ISO text.
- text: always a text cell (write_string), so text that looks like a formula
  is shown as typed and never run; nothing is put in front of it, and a
  negative number in a number column stays a number. Excel holds at most
  32,767 characters in a cell: longer text is cut there.
- bytes: \\x and hex, as in the CSV.

The header row is bold and frozen. A sheet holds 1,048,576 rows, the header
included; a report with more goes on in a further sheet ("name (2)", ...),
its header repeated.
"""
import contextlib
import datetime
import decimal
import functools
import math
import os
import re
import tempfile

from export import CHUNK_BYTES, StreamOf
from sqlexport import float_text

EXCEL_MAX_ROWS = 1048576  # rows in one sheet, the header included
EXCEL_MAX_TEXT = 32767  # characters in one cell
EXACT_DIGITS = 15  # significant digits a double keeps exactly
_EXACT_LIMIT = 10 ** EXACT_DIGITS
EARLIEST_DATE = datetime.date(1900, 1, 1)
DATE_FORMAT = 'yyyy-mm-dd'
TIMESTAMP_FORMAT = 'yyyy-mm-dd hh:mm:ss'
_SHEET_FORBIDDEN = re.compile(r'[\[\]:*?/\\]')


def sheet_name(base, number):
    """Excel's rules: at most 31 characters, none of []:*?/\\."""
    base = _SHEET_FORBIDDEN.sub('_', base or 'Report').strip("'") or 'Report'
    if number == 1:
        return base[:31]
    suffix = ' (%d)' % number
    return base[:31 - len(suffix)] + suffix


@functools.lru_cache(maxsize=64)
def _quantum(places):
    # A column's scale as quantize() takes it: made once, not per cell.
    return decimal.Decimal(1).scaleb(-places)


class _Writer:
    """One workbook, its formats, and the sheet being written."""

    def __init__(self, path, columns, title, sheet_rows, tmpdir):
        import xlsxwriter
        self.book = xlsxwriter.Workbook(path, {
            'constant_memory': True, 'tmpdir': tmpdir,
            # Strings are written only with write_string: never read as a
            # formula, a number or a link.
            'strings_to_formulas': False, 'strings_to_numbers': False,
            'strings_to_urls': False})
        self.columns = columns
        self.title = title
        self.sheet_rows = sheet_rows
        self.bold = self.book.add_format({'bold': True})
        self.date = self.book.add_format({'num_format': DATE_FORMAT})
        self.timestamp = self.book.add_format({'num_format': TIMESTAMP_FORMAT})
        self._decimal_formats = {}
        self.formats = [self._column_format(c) for c in columns]
        self.sheets = 0
        self.sheet = None
        self.row = 0

    def _decimal_format(self, places):
        if places not in self._decimal_formats:
            pattern = '0.' + '0' * places if places else '0'
            self._decimal_formats[places] = self.book.add_format({'num_format': pattern})
        return self._decimal_formats[places]

    def _column_format(self, column):
        if column.kind == 'decimal' and column.places is not None:
            return self._decimal_format(column.places)
        return None

    def new_sheet(self):
        self.sheets += 1
        sheet = self.book.add_worksheet(sheet_name(self.title, self.sheets))
        for col, column in enumerate(self.columns):
            width = {'date': 11, 'timestamp': 19}.get(column.kind)
            width = max(width or 8.43, min(len(str(column.name)) + 2, 50))
            sheet.set_column(col, col, width)
            sheet.write_string(0, col, str(column.name), self.bold)
        sheet.freeze_panes(1, 0)
        self.sheet, self.row = sheet, 1

    def write_row(self, values):
        if self.sheet is None or self.row >= self.sheet_rows:
            self.new_sheet()
        sheet, row, formats = self.sheet, self.row, self.formats
        for col, value in enumerate(values):
            if value is None:
                continue
            kind = value.__class__
            if kind is str:
                if value:
                    sheet.write_string(row, col, value)
            elif kind is int:
                if -_EXACT_LIMIT < value < _EXACT_LIMIT:
                    sheet.write_number(row, col, value, formats[col])
                else:
                    sheet.write_string(row, col, str(value))
            elif kind is float:
                if math.isfinite(value):
                    sheet.write_number(row, col, value, formats[col])
                else:
                    sheet.write_string(row, col, float_text(value))  # as the CSV writes it
            elif kind is decimal.Decimal:
                self._write_decimal(row, col, value)
            elif kind is bool:
                sheet.write_boolean(row, col, value)
            elif kind is datetime.datetime:
                if value.tzinfo is not None:
                    value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
                if value.date() >= EARLIEST_DATE:
                    sheet.write_datetime(row, col, value, self.timestamp)
                else:
                    sheet.write_string(row, col, value.isoformat())
            elif kind is datetime.date:
                if value >= EARLIEST_DATE:
                    sheet.write_datetime(row, col, value, self.date)
                else:
                    sheet.write_string(row, col, value.isoformat())
            elif kind is bytes:
                sheet.write_string(row, col, '\\x' + value.hex())
            else:
                sheet.write_string(row, col, str(value))
        self.row += 1

    def _write_decimal(self, row, col, value):
        column = self.columns[col]
        if not value.is_finite():
            self.sheet.write_string(row, col, 'NaN' if value.is_nan() else
                                    ('-Infinity' if value < 0 else 'Infinity'))
            return
        parts = value.as_tuple()
        if column.places is not None and parts.exponent != -column.places:
            value = value.quantize(_quantum(column.places),
                                   rounding=decimal.ROUND_HALF_EVEN)
            parts = value.as_tuple()
        if len(parts.digits) > EXACT_DIGITS:
            self.sheet.write_string(row, col, format(value, 'f'))
            return
        fmt = self.formats[col]
        if fmt is None and column.places is None:
            # No declared scale: the value's own, so 1.50 still shows 1.50.
            fmt = self._decimal_format(-parts.exponent) if parts.exponent < 0 else None
        # float() of a Decimal is the nearest double: the one Excel would
        # read from the digits themselves.
        self.sheet.write_number(row, col, float(value), fmt)

    def close(self):
        if self.sheet is None:
            self.new_sheet()  # headers only: still a workbook with its columns
        self.book.close()


def write_xlsx(rows, columns, path, *, title='Report', sheet_rows=EXCEL_MAX_ROWS,
               tmpdir=None):
    """Write `rows` (lists of typed values, as typedrows gives them) under
    `columns` to an .xlsx at `path`. `sheet_rows` is the rows a sheet holds,
    the header included (tests lower it). Returns the number of rows written."""
    count = 0
    for count in writing_xlsx(rows, columns, path, title=title, sheet_rows=sheet_rows,
                              tmpdir=tmpdir):
        pass
    return count


def writing_xlsx(rows, columns, path, *, title='Report', sheet_rows=EXCEL_MAX_ROWS,
                 tmpdir=None, every=2000):
    """write_xlsx, as a generator giving the rows written so far every
    `every` rows and at the end: the caller can report progress, or stop."""
    writer = _Writer(path, columns, title, sheet_rows, tmpdir)
    count = 0
    try:
        for values in rows:
            writer.write_row(values)
            count += 1
            if count % every == 0:
                yield count
    except BaseException:
        # Closing removes XlsxWriter's own temporary files; the error that
        # stopped the writing is the one that matters.
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
    yield count


class XlsxStream(StreamOf):
    """A TypedRows as a finished workbook's bytes, in chunks: the workbook
    is written to a temporary file first (a zip cannot be sent before it is
    complete), then read out and removed. While it is written, an empty
    chunk now and then lets a run record its progress (Bottle skips empty
    chunks before the first). `rows`, `bytes` and `truncated` as a CsvStream
    has them."""

    def __init__(self, typed, title, *, tmpdir=None, sheet_rows=EXCEL_MAX_ROWS):
        super().__init__(typed)
        self.title = title
        self.tmpdir = tmpdir
        self.sheet_rows = sheet_rows

    def __iter__(self):
        if self.tmpdir:
            os.makedirs(self.tmpdir, exist_ok=True)
        fd, path = tempfile.mkstemp(suffix='.xlsx', dir=self.tmpdir)
        os.close(fd)
        try:
            for _ in writing_xlsx(iter(self.inner), self.inner.columns, path, title=self.title,
                                  sheet_rows=self.sheet_rows, tmpdir=self.tmpdir):
                yield b''
            with open(path, 'rb') as data:
                while True:
                    chunk = data.read(CHUNK_BYTES)
                    if not chunk:
                        break
                    self.bytes += len(chunk)
                    yield chunk
        finally:
            os.unlink(path)
