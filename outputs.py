"""A report's rows in the format asked for, as one kind of stream: byte
chunks to iterate, with `rows`, `bytes` and `truncated` as CsvStream has
them. Downloads send the chunks; a run writes them to its file.

- csv: sqlexport's CSV stream, as it is.
- csv.gz: the same CSV bytes, gzipped as they stream.
- xlsx: typed rows (typedrows.py) into a workbook (xlsxexport.py).
"""
import contextlib
import zlib

from export import StreamOf
from sqlexport import open_query_csv
from typedrows import open_query_rows
from vocab import FileFormat
from xlsxexport import EXCEL_MAX_ROWS, XlsxStream


class GzipStream(StreamOf):
    """A byte-chunk stream, gzipped chunk by chunk. The gzip header carries
    no time and no name, so the same CSV always gives the same file."""

    def __init__(self, stream, level=6):
        super().__init__(stream)
        self.level = level

    def __iter__(self):
        packer = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # 31: a gzip wrapper
        for chunk in self.inner:
            packed = packer.compress(chunk)
            if packed:
                self.bytes += len(packed)
                yield packed
        packed = packer.flush()
        self.bytes += len(packed)
        yield packed


@contextlib.contextmanager
def open_output(definition, settings, typed, fmt, *, escape, bom, tmpdir=None,
                sheet_rows=EXCEL_MAX_ROWS):
    """The report's rows on its source as a stream of `fmt` (a context
    manager). Raises ReportSQLError / SourceUnavailable from the source, and
    UnknownSource for a report that names a source nobody configured.
    `escape` and `bom` are CSV matters: a workbook keeps text as text."""
    source = settings.source(definition.source)
    sql, params = definition.statement(source.engine, typed)
    if fmt == FileFormat.XLSX:
        with open_query_rows(source, sql, params, limit=settings.max_rows,
                             timeout=definition.timeout) as rows:
            yield XlsxStream(rows, definition.title, tmpdir=tmpdir, sheet_rows=sheet_rows)
        return
    with open_query_csv(source, sql, params, escape=escape, bom=bom, limit=settings.max_rows,
                        timeout=definition.timeout) as stream:
        yield GzipStream(stream) if fmt == FileFormat.CSV_GZ else stream
