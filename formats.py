"""The file formats a report is written in: their names, file name
extensions and MIME types, and the check of a request's `format` field.

`csv` is the default; `csv.gz` is the same CSV bytes, gzipped; `xlsx` is an
Excel workbook written from typed rows (xlsxexport.py). A run's file may
then be zipped or sent as a link (runfiles.package): that comes after.
"""
from errors import InputError
from vocab import FileFormat

DEFAULT = FileFormat.CSV
EXTENSIONS = {FileFormat.CSV: '.csv', FileFormat.CSV_GZ: '.csv.gz', FileFormat.XLSX: '.xlsx'}
CONTENT_TYPES = {
    FileFormat.CSV: 'text/csv; charset=utf-8',
    FileFormat.CSV_GZ: 'application/gzip',
    FileFormat.XLSX: 'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet',
}
ZIP_TYPE = 'application/zip'


def check_format(value, field='format', given=False) -> FileFormat:
    """The format a request names, or InputError on `field`. None is the
    default, unless the request `given` it explicitly (a JSON null)."""
    if value is None and not given:
        return DEFAULT
    if isinstance(value, str) and value in list(FileFormat):
        return FileFormat(value)
    raise InputError(field, 'must be one of %s' % ', '.join(FileFormat))


def check_split(file_format, split_by, field='format'):
    """A run split by recipient (bursting.py) writes CSV files: another
    format with `split_by` is an InputError on `field`, not ignored."""
    if split_by and file_format != FileFormat.CSV:
        raise InputError(field, 'a run split by recipient (split_by) sends CSV files; '
                                'leave format out or use csv')


def format_of_name(name: str):
    """The FileFormat a file name ends in, or None (a .zip, anything else)."""
    for fmt in sorted(EXTENSIONS, key=lambda f: -len(EXTENSIONS[f])):
        if name.endswith(EXTENSIONS[fmt]):
            return fmt
    return None


def content_type_of(name: str) -> str:
    """The MIME type to send a stored file or an attachment with, by its name."""
    if name.endswith('.zip'):
        return ZIP_TYPE
    fmt = format_of_name(name)
    return CONTENT_TYPES[fmt] if fmt else 'application/octet-stream'


def without_extension(name: str) -> str:
    fmt = format_of_name(name)
    return name[:-len(EXTENSIONS[fmt])] if fmt else name
