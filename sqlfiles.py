"""Reports as SQL files: one `.sql` file a report, kept in the team's git.

    /*
    title: Orders
    description: One row per order, with the customer's name.
    source: shop
    params:
      since:  {type: date, required: true, help: First day included.}
      status: {type: choice, choices: [paid, shipped], help: Only this status.}
    */
    SELECT o.id, o.created_at, o.status
    FROM orders o
    WHERE o.created_at >= :since
      AND (:status IS NULL OR o.status = :status)

The header is YAML in the file's first comment; the query is one SELECT (or
WITH ... SELECT) with `:name` placeholders. Placeholders only ever become
bound parameters of the database driver: nothing a request sends is pasted
into SQL by Nightshift. A file is checked strictly when it is read; every
error names the file and line.
"""
import os
import re
from typing import Any, Dict, NamedTuple, Sequence, Tuple

import sqlglot
import yaml
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from params import PARSERS, Param

NAME = re.compile(r'[a-z][a-z0-9_]{0,63}\Z')
PARAM_NAME = re.compile(r'[a-z_][a-z0-9_]{0,63}\Z')
HEADER_KEYS = {
    'title': 'the report\'s name for people',
    'description': 'one or two sentences on what it holds',
    'source': 'the source it reads (default: default)',
    'timeout': 'seconds before the query is stopped (at most the source\'s query_timeout)',
    'escape_formulas': 'false for a report whose text is meant for programs, not spreadsheets',
    'params': 'the parameters, name: {type: ..., ...}',
}
PARAM_KEYS = ('type', 'required', 'default', 'choices', 'min', 'max', 'after', 'help')
RESERVED_PARAMS = ('escape_formulas', 'bom', 'format')
# What a report's statement may start with: a query, nothing else.
QUERY_STARTS = {TokenType.SELECT, TokenType.WITH, TokenType.VALUES, TokenType.TABLE,
                TokenType.L_PAREN}


class ReportFileError(Exception):
    """A report file that cannot be used; says where."""

    def __init__(self, path, line, message):
        super().__init__('%s:%d: %s' % (path, line, message))
        self.path, self.line, self.message = path, line, message


class Placeholder(NamedTuple):
    name: str
    start: int  # offset of the ':' in the query text
    end: int    # offset just past the name


class SqlReport(NamedTuple):
    """A parsed report file. `sql` is the query as written; `placeholders`
    where its parameters go."""
    name: str
    path: str
    title: str
    description: str
    source: str
    timeout: float
    escape_formulas: bool
    params: tuple
    sql: str
    placeholders: tuple
    sql_line: int = 1  # where the query starts in the file


def read_report_file(path: str) -> 'SqlReport':
    """Parse and check one report file; ReportFileError says what and where."""
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise ReportFileError(path, 1, 'not UTF-8 text (byte %d)' % exc.start)
    if not NAME.match(name):
        raise ReportFileError(path, 1, 'a report file is named like orders_by_day.sql '
                              '(lower case letters, digits, _; it is the report\'s name)')
    header, header_line, body, body_offset = _split_header(path, text)
    meta = _read_header(path, header, header_line)
    params = tuple(_read_param(path, header, header_line, key, spec)
                   for key, spec in (meta.get('params') or {}).items())
    placeholders = _read_query(path, text, body_offset)
    sql = text[body_offset:]
    shifted = tuple(Placeholder(p.name, p.start - body_offset, p.end - body_offset)
                    for p in placeholders)
    declared = {p.name for p in params}
    for param in params:
        if param.after is not None and param.after not in declared:
            raise ReportFileError(path, header_line + _key_line(header, param.name),
                                  'parameter %r: after: %r is not a parameter'
                                  % (param.name, param.after))
    for placeholder in placeholders:
        if placeholder.name not in declared:
            raise ReportFileError(path, _line_of(text, placeholder.start),
                                  ':%s is not a declared parameter (declared: %s)'
                                  % (placeholder.name, ', '.join(sorted(declared)) or 'none'))
    used = {p.name for p in placeholders}
    for param in params:
        if param.name not in used:
            raise ReportFileError(path, header_line + _key_line(header, param.name),
                                  'parameter %r is declared but the query '
                                  'never uses :%s' % (param.name, param.name))
    return SqlReport(
        name=name, path=path, title=meta['title'], description=meta.get('description', ''),
        source=meta.get('source', 'default'), timeout=meta.get('timeout'),
        escape_formulas=meta.get('escape_formulas', True), params=params, sql=sql,
        placeholders=shifted, sql_line=_line_of(text, body_offset + len(sql) - len(sql.lstrip())))


def query_report(name: str, sql: str, params: Sequence[Param], where: str) -> 'SqlReport':
    """A report's query given as text by Python code, checked by the same
    rules as a file's (one query, every placeholder declared)."""
    placeholders = _read_query(where, sql, 0)
    declared = {p.name for p in params}
    for placeholder in placeholders:
        if placeholder.name not in declared:
            raise ReportFileError(where, _line_of(sql, placeholder.start),
                                  ':%s is not a declared parameter' % placeholder.name)
    return SqlReport(name=name, path=where, title=name, description='', source='default',
                     timeout=None, escape_formulas=True, params=tuple(params), sql=sql,
                     placeholders=placeholders)


def _line_of(text, offset):
    return text.count('\n', 0, offset) + 1


def _split_header(path, text):
    """(header text, its first line, the rest, the rest's offset)."""
    stripped = text.lstrip()
    start = len(text) - len(stripped)
    if not stripped.startswith('/*'):
        raise ReportFileError(path, _line_of(text, start),
                              'a report file starts with a /* ... */ header giving at least '
                              'its title, e.g. /*\\ntitle: Orders\\n*/')
    end = text.find('*/', start + 2)
    if end < 0:
        raise ReportFileError(path, _line_of(text, start), 'the /* header is never closed')
    return text[start + 2:end], _line_of(text, start), text[end + 2:], end + 2


def _read_header(path, header, first_line):
    try:
        meta = yaml.safe_load(header)
    except yaml.YAMLError as exc:
        # Where the broken construct began (an unclosed [ or {), else where
        # the parser gave up.
        mark = getattr(exc, 'context_mark', None) or getattr(exc, 'problem_mark', None)
        line = first_line + (mark.line if mark else 0)
        raise ReportFileError(path, line, 'header is not valid YAML: %s'
                              % (getattr(exc, 'problem', None) or exc))
    if not isinstance(meta, dict):
        raise ReportFileError(path, first_line, 'the header is "key: value" lines (title, '
                              'description, source, params)')

    def where(key):
        return first_line + _key_line(header, key)

    for key in meta:
        if key not in HEADER_KEYS:
            raise ReportFileError(path, where(key), 'unknown header key %r; expected %s'
                                  % (key, ', '.join(HEADER_KEYS)))
    if not isinstance(meta.get('title'), str) or not meta['title'].strip():
        raise ReportFileError(path, where('title'), 'title: give the report a title')
    for key in ('description', 'source'):
        if key in meta and not isinstance(meta[key], str):
            raise ReportFileError(path, where(key), '%s: must be text' % key)
    if 'source' in meta and not NAME.match(meta['source']):
        raise ReportFileError(path, where('source'), 'source: %r is not a source name'
                              % meta['source'])
    if 'timeout' in meta and (isinstance(meta['timeout'], bool) or
                              not isinstance(meta['timeout'], (int, float)) or
                              meta['timeout'] <= 0):
        raise ReportFileError(path, where('timeout'), 'timeout: seconds, a number above 0')
    if 'escape_formulas' in meta and not isinstance(meta['escape_formulas'], bool):
        raise ReportFileError(path, where('escape_formulas'), 'escape_formulas: true or false')
    if 'params' in meta and meta['params'] is not None and not isinstance(meta['params'], dict):
        raise ReportFileError(path, where('params'), 'params: one "name: {type: ...}" a line')
    meta['title'] = ' '.join(meta['title'].split())
    if 'description' in meta:
        meta['description'] = ' '.join(meta['description'].split())
    return meta


def _key_line(header, key):
    # The header's line (0-based) that starts `key:`, for error messages.
    for number, line in enumerate(header.split('\n')):
        if line.strip().startswith('%s:' % key):
            return number
    return 0


def _read_param(path, header, first_line, name, spec):
    line = first_line + _key_line(header, str(name))
    if not isinstance(name, str) or not PARAM_NAME.match(name) or name in RESERVED_PARAMS:
        raise ReportFileError(path, line, 'parameter %r: a name is lower case letters, digits '
                              'and _ (and not %s)' % (name, ', '.join(RESERVED_PARAMS)))
    if isinstance(spec, str):
        spec = {'type': spec}
    if not isinstance(spec, dict):
        raise ReportFileError(path, line, 'parameter %r: give {type: ..., ...}' % name)
    unknown = sorted(set(spec) - set(PARAM_KEYS))
    if unknown:
        raise ReportFileError(path, line, 'parameter %r: unknown key %r; expected %s'
                              % (name, unknown[0], ', '.join(PARAM_KEYS)))
    kind = spec.get('type')
    if kind not in PARSERS:
        raise ReportFileError(path, line, 'parameter %r: type must be one of %s'
                              % (name, ', '.join(sorted(PARSERS))))
    choices = spec.get('choices')
    if kind == 'choice':
        if not isinstance(choices, list) or not choices or \
                not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in choices):
            raise ReportFileError(path, line, 'parameter %r: a choice needs choices: [a, b]'
                                  % name)
        choices = [str(c) for c in choices]
    elif choices is not None:
        raise ReportFileError(path, line, 'parameter %r: choices only go with type: choice'
                              % name)
    if 'required' in spec and not isinstance(spec['required'], bool):
        raise ReportFileError(path, line, 'parameter %r: required is true or false' % name)
    if 'help' in spec and not isinstance(spec['help'], str):
        raise ReportFileError(path, line, 'parameter %r: help is text' % name)
    bounds = {}
    probe = Param(name, kind, choices=choices)
    for key in ('default', 'min', 'max'):
        if spec.get(key) is None:
            continue
        if key != 'default' and kind not in ('int', 'decimal', 'date', 'datetime'):
            raise ReportFileError(path, line, 'parameter %r: %s only goes with numbers and '
                                  'dates' % (name, key))
        raw = spec[key]
        if hasattr(raw, 'isoformat'):
            raw = raw.isoformat()  # YAML reads 2025-01-01 as a date already
        try:
            bounds[key] = probe.parse(raw)
        except ValueError as exc:
            raise ReportFileError(path, line, 'parameter %r: %s %r: %s'
                                  % (name, key, spec[key], exc))
    if spec.get('required') and 'default' in bounds:
        raise ReportFileError(path, line, 'parameter %r: required, so a default is never '
                              'used; drop one of them' % name)
    after = spec.get('after')
    if after is not None and (kind not in ('int', 'decimal', 'date', 'datetime')
                              or not isinstance(after, str)):
        raise ReportFileError(path, line, 'parameter %r: after names another parameter this '
                              'one must be greater than (numbers and dates)' % name)
    param = Param(name, kind, required=spec.get('required', False),
                  default=bounds.get('default'), choices=choices, min=bounds.get('min'),
                  max=bounds.get('max'), help=' '.join(spec.get('help', '').split()))
    param.after = after
    return param


def _read_query(path, text, offset):
    """Check the query and find its placeholders (offsets in `text`)."""
    body = text[offset:]
    try:
        tokens = sqlglot.tokenize(body, read='postgres')
    except TokenError as exc:
        raise ReportFileError(path, _line_of(text, offset) - 1 + _token_error_line(exc),
                              'the query cannot be read: %s' % _token_error_words(exc))
    if not tokens:
        raise ReportFileError(path, _line_of(text, len(text)), 'there is no query after '
                              'the header')
    if tokens[0].token_type not in QUERY_STARTS:
        raise ReportFileError(path, _line_of(text, offset + tokens[0].start),
                              'a report is one query (SELECT or WITH ... SELECT); this starts '
                              'with %s' % tokens[0].text.upper())
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.SEMICOLON and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            raise ReportFileError(path, _line_of(text, offset + nxt.start),
                                  'one statement per report: %s after the ";" is a second '
                                  'one' % nxt.text.upper())
    placeholders = []
    for prev, token in zip(tokens, tokens[1:]):
        if prev.token_type == TokenType.COLON and token.start == prev.end + 1 \
                and token.token_type not in (TokenType.STRING, TokenType.NUMBER) \
                and re.match(r'[A-Za-z_]\w*\Z', token.text):
            placeholders.append(Placeholder(token.text.lower(), offset + prev.start,
                                            offset + token.end + 1))
    return tuple(placeholders)


def _token_error_line(exc):
    # sqlglot says where in the words of the error it chains ("Missing ' from 3:9").
    found = re.search(r'from (\d+):\d+', str(exc.__cause__ or ''))
    return int(found.group(1)) if found else 1


def _token_error_words(exc):
    cause = str(exc.__cause__ or exc).splitlines()[0]
    return re.sub(r' from \d+:\d+', '', cause) or 'unreadable text'


# PostgreSQL cannot tell the type of a NULL in `:x IS NULL`: each placeholder
# carries its declared type.
PG_CASTS = {'date': 'date', 'datetime': 'timestamp', 'int': 'bigint', 'decimal': 'numeric',
            'str': 'text', 'choice': 'text', 'bool': 'boolean'}


def bind(report: 'SqlReport', engine: str, typed: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(sql, parameters) for the driver of `engine`: placeholders become the
    driver's own (:name for SQLite, %(name)s for psycopg and PyMySQL), with
    each value converted to what that database compares correctly."""
    values = {p.name: to_driver(engine, p.type, typed.get(p.name)) for p in report.params}
    sql = report.sql.rstrip().rstrip(';').rstrip()
    if engine == 'sqlite':
        return sql, values
    kinds = {p.name: p.type for p in report.params}
    out, last = [], 0
    for placeholder in report.placeholders:
        # Both drivers read %-formats in the whole statement: a literal %
        # (in LIKE 'a%', say) must be doubled.
        out.append(sql[last:placeholder.start].replace('%', '%%'))
        if engine == 'postgres':
            out.append('CAST(%%(%s)s AS %s)'
                       % (placeholder.name, PG_CASTS[kinds[placeholder.name]]))
        else:
            out.append('%%(%s)s' % placeholder.name)
        last = placeholder.end
    out.append(sql[last:].replace('%', '%%'))
    return ''.join(out), values


def to_driver(engine: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if engine == 'sqlite':
        # SQLite keeps dates as text and numbers as REAL: a Decimal bound as
        # text would compare as text (and lose to every number).
        if kind == 'decimal':
            return float(value)
        if kind == 'datetime':
            return value.strftime('%Y-%m-%d %H:%M:%S')
        if kind == 'date':
            return value.isoformat()
    return value
