"""MariaDB writes each row as its CSV line (mysqllines): the statement's own
SELECT list is replaced in its text, so ORDER BY, GROUP BY and HAVING must
mean what they meant, and the bytes must be those of the cell-by-cell path.
Statements it cannot rewrite, or that the server refuses rewritten, are read
cell by cell: slower, never different."""
import urllib.parse

import pymysql
import pytest

import mysqllines
import sources
import sqlexport

ROWS = [
    (1, 'Ann', 'a,b', 10.50, 1, '2025-01-31 10:00:00', '2025-01-31', b'\x00\xff', 'x'),
    (2, 'bob', 'say "hi"', -3.10, 0, '2025-06-01 09:30:00.123456', '2024-02-29', b'', 'y'),
    (3, 'Cy', 'two\nlines', None, None, None, None, None, 'x'),
    (4, 'dee', 'cr\ronly', 0.00, 2, '1999-12-31 23:59:59.999999', '1999-12-31', b'a', 'y'),
    (5, 'Eve', '=1+2', 1234567890.99, 1, '2025-01-01 00:00:00', '2025-01-01', None, 'x'),
    (6, 'fay', '-5', 0.01, 0, None, None, None, 'y'),
    (7, 'Gus', '-5\n', None, None, None, None, None, 'x'),
    (8, 'hal', ' @home, away', None, None, None, None, None, 'y'),
    (9, 'Ivy', '', None, None, None, None, None, 'x'),
    (10, 'jo', None, None, None, None, None, None, 'y'),
    (11, 'Kim', 'NUL\x00inside', None, None, None, None, None, 'x'),
    (12, 'Lu', '日本語 ✓, ok', 5, 1, None, None, None, 'y'),
    (13, 'Mo', '-1.5', None, None, None, None, None, 'x'),
    (14, 'Ned', '%s %(x)s %%', None, None, None, None, None, 'y'),
]


@pytest.fixture
def source(mariadb_url):
    parts = urllib.parse.urlsplit(mariadb_url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username,
                           password=parts.password or '', database=parts.path[1:],
                           charset='utf8mb4')
    with conn.cursor() as cursor:
        cursor.execute('DROP TABLE IF EXISTS t, ci, f')
        cursor.execute('CREATE TABLE t (id int PRIMARY KEY, name varchar(50), note text, '
                       'amount decimal(12,2), ok boolean, at datetime(6), day date, '
                       'raw varbinary(20), grp char(1)) CHARACTER SET utf8mb4')
        cursor.executemany('INSERT INTO t VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)', ROWS)
        cursor.execute('CREATE TABLE ci (id int, label varchar(20) COLLATE utf8mb4_general_ci)')
        cursor.execute("INSERT INTO ci VALUES (1, 'x'), (2, 'y')")
        cursor.execute('CREATE TABLE f (id int, price double)')
        cursor.execute('INSERT INTO f VALUES (1, 0.1), (2, 1e20)')
    conn.commit()
    conn.close()
    return sources.Source('mysql', mariadb_url, 10)


def export(source, sql, params=None, **options):
    with sqlexport.open_query_csv(source, sql, params or (), **options) as stream:
        return b''.join(stream), stream


def both_ways(monkeypatch, source, sql, params=None, **options):
    lines, stream = export(source, sql, params, **options)
    monkeypatch.setattr(sqlexport, 'MYSQL_LINES', False)
    cells, _ = export(source, sql, params, **options)
    monkeypatch.setattr(sqlexport, 'MYSQL_LINES', True)
    return lines, cells, stream


def rewritten(source, sql, params=()):
    """The line statement the export would run, or None."""
    conn = sources.connect(source)
    try:
        fields = sqlexport._mysql_fields(conn, sql, params)
        return fields and mysqllines.line_statement(sql, fields, True)
    finally:
        conn.close()


REWRITTEN = [
    'SELECT * FROM (SELECT id, name, note, amount, ok, at, day, raw FROM t) AS x ORDER BY id',
    'SELECT id, name, note, amount, ok, at, day, raw FROM t ORDER BY id',
    'SELECT id AS n, name who, note FROM t ORDER BY who DESC',
    'SELECT name, id FROM t ORDER BY 2 DESC',
    'SELECT grp, COUNT(*) AS n, SUM(amount) AS total FROM t GROUP BY 1 ORDER BY 1',
    'SELECT grp AS g, SUM(amount) AS total FROM t GROUP BY grp HAVING total > 5 ORDER BY total',
    'WITH w AS (SELECT id, note FROM t WHERE id > 3) SELECT note, id FROM w ORDER BY id',
    'SELECT note FROM t ORDER BY id',
    'SELECT id, note FROM t WHERE note LIKE \'%%,%%\' ORDER BY id',
    "SELECT id, UPPER(note) AS loud, CONCAT(name, '!') shout FROM t ORDER BY id LIMIT 5",
    'SELECT id, (SELECT MAX(id) FROM t) AS top, amount * 2 AS twice FROM t ORDER BY twice, id',
    'SELECT id, note FROM t WHERE id >= %s ORDER BY id',
]


@pytest.mark.parametrize('sql', REWRITTEN)
@pytest.mark.parametrize('escape', [True, False])
def test_lines_are_the_bytes_of_the_cell_by_cell_path(source, monkeypatch, sql, escape):
    params = (4,) if '%s' in sql else ()
    if not sql.startswith('SELECT * FROM (SELECT'):
        assert rewritten(source, sql, params), 'expected to be written as lines: ' + sql
    lines, cells, stream = both_ways(monkeypatch, source, sql, params, escape=escape)
    assert lines == cells
    assert stream.rows == len(cells.decode().splitlines()) - 1 or '\n' in cells.decode()


def test_what_the_cells_hold_comes_out_quoted_and_escaped(source):
    text = export(source, 'SELECT id, note, raw, ok, at FROM t ORDER BY id')[0].decode()
    assert '1,"a,b",\\x00ff,true,2025-01-31T10:00:00.000000' in text
    assert '2,"say ""hi""",\\x,false,2025-06-01T09:30:00.123456' in text
    assert '3,"two\nlines",,,' in text and '4,"cr\ronly",\\x61,true,' in text
    assert "5,'=1+2," in text and '\n6,-5,' in text and '7,"\'-5\n",' in text
    assert '8,"\' @home, away",' in text and '\n13,-1.5,' in text
    assert '11,NUL\ufffdinside,' in text and "14,'%s %(x)s %%," in text


@pytest.mark.parametrize('sql', [
    'SELECT * FROM t ORDER BY id',
    'SELECT DISTINCT grp FROM t',
    'SELECT id, note FROM t UNION SELECT 99, \'z\'',
    'SELECT id, price FROM f ORDER BY id',
])
def test_what_cannot_be_rewritten_is_read_cell_by_cell(source, monkeypatch, sql):
    assert not rewritten(source, sql)
    lines, cells, _ = both_ways(monkeypatch, source, sql)
    assert lines == cells


def test_a_rewrite_the_server_refuses_is_read_cell_by_cell(source, monkeypatch, caplog):
    # A utf8mb4_bin and a utf8mb4_general_ci column in one CONCAT: the server
    # refuses the mix; the export still comes out, the same.
    sql = 'SELECT t.name, ci.label FROM t JOIN ci ON ci.id = t.id ORDER BY t.id'
    assert rewritten(source, sql)
    lines, cells, stream = both_ways(monkeypatch, source, sql)
    assert lines == cells and stream.rows == 2


def test_one_column_empty_cells_and_limits(source, monkeypatch):
    lines, cells, stream = both_ways(monkeypatch, source, 'SELECT note FROM t ORDER BY id',
                                     limit=10, bom=True)
    assert lines == cells and b'\n""\n""\n' in lines and lines.startswith(b'\xef\xbb\xbfnote\n')
    assert stream.rows == 10 and stream.truncated


def test_a_time_limit_is_not_retried_cell_by_cell(mariadb_url):
    slow = sources.Source('mysql', mariadb_url, 1)
    with pytest.raises(sources.ReportSQLError) as info:
        export(slow, 'SELECT id, SLEEP(3) AS s FROM t WHERE id = 1')
    assert 'time' in info.value.message.lower()
