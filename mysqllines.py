"""MariaDB/MySQL: the server writes each row as its CSV line.

PyMySQL spends most of an export reading and converting each cell (a
DECIMAL into Decimal, a DATETIME into datetime) that Python then turns back
into text. Asked for one text column per row instead, the server formats,
escapes and quotes the cells (in its own process) and the driver reads one
string a row.

The query cannot simply be wrapped (`SELECT ... FROM (query) q`): MariaDB
drops an ORDER BY inside a derived table. So the report's own SELECT list is
replaced by the line, in the text of the statement, and the ORDER BY,
GROUP BY and HAVING items that named a column of that list by alias or
position are given its expression instead. Anything this does not
understand (UNION, DISTINCT, `*`, a column type without a fixed text form
such as FLOAT) gives None: the export then reads cells as before. A
rewritten statement the server refuses falls back the same way (see
sqlexport._mysql), so a mistake here costs speed, never rows.
"""
import re

from typing import List, Optional, Sequence

from export import FORMULA_TRIGGERS, LEADING_BLANKS

# PyMySQL's placeholders: %s and %(name)s; %% is a literal percent.
_PLACEHOLDER = re.compile(r'%(?:%|s|\(([^)]*)\)s)')
_SENTINEL = '__nightshift_p%d__'

# Written into the statement as the characters themselves (no backslash:
# NO_BACKSLASH_ESCAPES would change what one means); % doubled for PyMySQL.
_TRIGGERED = "'^[%s]*[%s]'" % (LEADING_BLANKS, FORMULA_TRIGGERS.replace('%', '%%'))
_NEEDS_QUOTES = "'[,\"\r\n]'"

_REFUSED_AT_TOP = {'UNION', 'INTERSECT', 'EXCEPT', 'INTO', 'DISTINCT'}
_SELECT_MODIFIERS = {'ALL', 'DISTINCT', 'DISTINCTROW', 'HIGH_PRIORITY', 'STRAIGHT_JOIN',
                     'SQL_SMALL_RESULT', 'SQL_BIG_RESULT', 'SQL_BUFFER_RESULT', 'SQL_CACHE',
                     'SQL_NO_CACHE', 'SQL_CALC_FOUND_ROWS'}
_NAMES = {'VAR', 'IDENTIFIER'}
_EXPRESSION_ENDS = {'VAR', 'IDENTIFIER', 'R_PAREN', 'NUMBER', 'STRING', 'NULL', 'TRUE', 'FALSE',
                    'END'}


def cell_sql(expr: str, field) -> Optional[str]:
    """SQL printing `expr` (a column of PyMySQL `field`'s type) as the
    cell-by-cell path prints it, already quoted for CSV; None for a type
    whose text the server would write differently."""
    from pymysql.constants import FIELD_TYPE as T
    code = field.type_code
    if code == T.TINY and field.length == 1:  # BOOLEAN is TINYINT(1)
        return "IFNULL(ELT((%s <> 0) + 1, 'false', 'true'), '')" % expr
    if code in (T.TINY, T.SHORT, T.LONG, T.LONGLONG, T.INT24, T.YEAR, T.DECIMAL,
                T.NEWDECIMAL, T.DATE, T.NEWDATE, T.NULL):
        return "IFNULL(%s, '')" % expr
    if code == T.DATETIME:
        return "IFNULL(DATE_FORMAT(%s, '%%%%Y-%%%%m-%%%%dT%%%%H:%%%%i:%%%%s.%%%%f'), '')" % expr
    if code == T.TIMESTAMP:  # the session reads TIMESTAMP in UTC
        return "IFNULL(DATE_FORMAT(%s, '%%%%Y-%%%%m-%%%%dT%%%%H:%%%%i:%%%%s.%%%%fZ'), '')" % expr
    if code in (T.VARCHAR, T.VAR_STRING, T.STRING, T.TINY_BLOB, T.MEDIUM_BLOB, T.LONG_BLOB,
                T.BLOB, T.ENUM, T.SET):
        if field.charsetnr == 63:  # binary
            return "IFNULL(CONCAT(CHAR(92), 'x', LOWER(HEX(%s))), '')" % expr
        return None  # text: see text_cell_sql (it needs to know about escaping)
    return None


def text_cell_sql(expr: str, escape: bool) -> str:
    x = expr
    if escape:
        # export.escape_formula: a cell a spreadsheet would run gets a quote,
        # but a plain negative number ("-" then digits and dots) stays one.
        x = ("IF(%(e)s REGEXP %(t)s AND NOT (%(e)s REGEXP '^-[0-9]' AND "
             "SUBSTRING(%(e)s, 2) NOT REGEXP '[^0-9.]'), CONCAT('''', %(e)s), %(e)s)"
             % {'e': expr, 't': _TRIGGERED})
    return ("IFNULL(IF(%(e)s REGEXP %(q)s, CONCAT('\"', REPLACE(%(x)s, '\"', '\"\"'), '\"'), "
            "%(x)s), '')" % {'e': expr, 'q': _NEEDS_QUOTES, 'x': x})


def is_text(field) -> bool:
    from pymysql.constants import FIELD_TYPE as T
    return field.type_code in (T.VARCHAR, T.VAR_STRING, T.STRING, T.TINY_BLOB, T.MEDIUM_BLOB,
                               T.LONG_BLOB, T.BLOB, T.ENUM, T.SET) and field.charsetnr != 63


def line_statement(sql: str, fields: Sequence, escape: bool) -> Optional[str]:
    """`sql` (bound for PyMySQL) with its SELECT list replaced by one column,
    each row's CSV line; None when the statement is not one this can
    rewrite. `fields` are PyMySQL's fields of the query's result."""
    import sqlglot
    placeholders: List[str] = []

    def hide(match):
        if match.group(0) == '%%':
            return '%%'
        placeholders.append(match.group(0))
        return _SENTINEL % (len(placeholders) - 1)
    text = _PLACEHOLDER.sub(hide, sql)
    try:
        tokens = sqlglot.tokenize(text, read='mysql')
    except Exception:
        return None
    top = _top_level(tokens)
    if top is None:
        return None
    selects = [i for i in top if tokens[i].token_type.name == 'SELECT']
    if not selects:
        return None
    start = selects[0]
    before = [tokens[i].token_type.name for i in top if i < start]
    if before and before[0] != 'WITH':
        return None
    after = [i for i in top if i > start]
    if any(tokens[i].token_type.name in _REFUSED_AT_TOP for i in after) or len(selects) > 1:
        return None
    first = tokens[start + 1] if start + 1 < len(tokens) else None
    if first is None or first.text.upper() in _SELECT_MODIFIERS:
        return None
    ends = [i for i in after if tokens[i].token_type.name in _CLAUSES + ('INTO',)]
    list_end = ends[0] if ends else len(tokens)
    items = _split(tokens, start + 1, list_end, set(top))
    if len(items) != len(fields):
        return None
    exprs, aliases = [], {}
    for position, (lo, hi) in enumerate(items):
        expr_hi, alias = _alias(tokens, lo, hi)
        if expr_hi <= lo:
            return None
        if tokens[expr_hi - 1].token_type.name == 'STAR' and (
                expr_hi - lo == 1 or tokens[expr_hi - 2].token_type.name == 'DOT'):
            return None  # * or t.*: which columns is not in the text
        exprs.append('(%s)' % text[tokens[lo].start:tokens[expr_hi - 1].end + 1])
        if alias:
            aliases[alias.lower()] = position
    cells = []
    for expr, field in zip(exprs, fields):
        cell = text_cell_sql(expr, escape) if is_text(field) else cell_sql(expr, field)
        if cell is None:
            return None
        cells.append(cell)
    line = cells[0] if len(cells) == 1 else "CONCAT(%s)" % ", ',', ".join(cells)
    splices = [(tokens[start + 1].start, tokens[list_end - 1].end + 1, line + ' AS line')]
    references = _references(tokens, top, list_end, exprs, aliases)
    if references is None:
        return None
    splices += references
    out, last = [], 0
    for lo, hi, replacement in sorted(splices):
        out += [text[last:lo], replacement]
        last = hi
    out.append(text[last:])
    rewritten = ''.join(out)
    for number, original in enumerate(placeholders):
        rewritten = rewritten.replace(_SENTINEL % number, original)
    return rewritten


def _top_level(tokens):
    """Indexes of the tokens outside parentheses; None if they do not pair."""
    depth, top = 0, []
    for i, token in enumerate(tokens):
        name = token.token_type.name
        if name == 'L_PAREN':
            depth += 1
        elif name == 'R_PAREN':
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            top.append(i)
    return top if depth == 0 else None


def _split(tokens, lo, hi, top):
    items, begin = [], lo
    for i in range(lo, hi):
        if i in top and tokens[i].token_type.name == 'COMMA':
            items.append((begin, i))
            begin = i + 1
    items.append((begin, hi))
    return [(a, b) for a, b in items if b > a]


def _alias(tokens, lo, hi):
    """(end of the expression, alias or None) of a SELECT list item:
    `expr AS name`, or `expr name` where expr ends as an expression does
    (two strings side by side are one string in MySQL, not an alias)."""
    last, previous = tokens[hi - 1], tokens[hi - 2].token_type.name if hi - lo >= 2 else None
    if hi - lo >= 3 and previous == 'ALIAS':
        return hi - 2, last.text
    kind = last.token_type.name
    if previous in _EXPRESSION_ENDS and (kind in _NAMES or (kind == 'STRING'
                                                            and previous != 'STRING')):
        return hi - 1, last.text
    return hi, None


_CLAUSES = ('ORDER_BY', 'GROUP_BY', 'HAVING', 'LIMIT', 'WINDOW', 'FOR', 'LOCK', 'WHERE', 'FROM',
            'SEMICOLON')


def _references(tokens, top, list_end, exprs, aliases):
    """Splices giving ORDER BY / GROUP BY / HAVING items that named a SELECT
    list column by position or alias its expression (None: a position out
    of range). MySQL looks an ORDER BY or HAVING name up among the aliases
    first, a GROUP BY name among the tables' columns first: a GROUP BY name
    is left as written."""
    splices, clause, top_set = [], None, set(top)

    def item_end(i):
        return i >= len(tokens) or (i in top_set and tokens[i].token_type.name in
                                    ('COMMA',) + _CLAUSES)

    for i in range(list_end, len(tokens)):
        token = tokens[i]
        name = token.token_type.name
        if i in top_set and name in _CLAUSES:
            clause = name
            continue
        if clause in ('ORDER_BY', 'GROUP_BY') and i in top_set and name == 'NUMBER':
            at_start = tokens[i - 1].token_type.name in ('COMMA', 'ORDER_BY', 'GROUP_BY')
            after = i + 1
            if after < len(tokens) and tokens[after].token_type.name in ('ASC', 'DESC'):
                after += 1
            if at_start and item_end(after):
                position = int(token.text) - 1
                if not 0 <= position < len(exprs):
                    return None
                splices.append((token.start, token.end + 1, exprs[position]))
        if clause in ('ORDER_BY', 'HAVING') and name in _NAMES \
                and token.text.lower() in aliases:
            previous = tokens[i - 1].token_type.name
            following = tokens[i + 1].token_type.name if i + 1 < len(tokens) else None
            if previous != 'DOT' and following not in ('DOT', 'L_PAREN'):
                splices.append((token.start, token.end + 1,
                                exprs[aliases[token.text.lower()]]))
    return splices
