"""SQLite exports whose column types are known are joined into CSV lines by
SQLite itself (sqlexport._sqlite_lines): the bytes must be exactly those of
the cell-by-cell path and of the other engines, whatever the cells hold."""
import random
import sqlite3
import struct

import pytest

import sources
import sqlexport
from test_sources import EXPECTED, engines, export  # noqa: F401 (a fixture)




@pytest.fixture
def items(tmp_path):
    path = tmp_path / 'lines.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE t (n INTEGER, name TEXT, day DATE, at DATETIME, '
                 'amount DECIMAL(10,2), ok BOOLEAN)')
    odd = [
        (1, 'plain', '2025-01-02', '2025-01-02 03:04:05', 1.5, 1),
        (2, 'a,b', '2025-01-02', '2025-01-02 03:04:05.5', 2, 0),
        (3, 'say "hi"', 'not, a date', 'when, exactly', None, None),
        (4, 'two\nlines', None, None, '', 1),
        (5, 'cr\ronly', '', '', 0.1, 0),
        (6, '\x00starts with NUL', '2025-01-02', '2025-01-02T03:04:05', 3, 1),
        (7, 'NUL\x00inside, and a comma', None, None, None, None),
        (8, 'unit \x1f separator, \x1fc \x1fu \x1fr1', None, None, None, None),
        (9, '=1+2', None, None, None, None),
        (10, ' @home, away', None, None, None, None),
        (11, '-5', None, None, None, None),
        (1.5, 'float in an integer column', None, None, None, None),
        (0.30000000000000004, '', None, None, None, None),
        (1e20, None, None, None, None, None),
        ('text, in an integer column', 'x', None, None, None, None),
        ('=cmd', 'x', None, None, None, None),
        (b'\x00\xff', 'blob', None, None, None, None),
        (None, None, None, None, None, None),
        (12, '', '', '', '', ''),
    ]
    conn.executemany('INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)', odd)
    conn.commit()
    conn.close()
    return sources.Source('sqlite', 'sqlite:///%s' % path, 10)


def both_ways(monkeypatch, source, sql, **options):
    assert sqlexport.sqlite_column_types(source, sql) is not None
    lines, stream = export(source, sql, **options)
    monkeypatch.setattr(sqlexport, 'SQLITE_LINES', False)
    cells, _ = export(source, sql, **options)
    monkeypatch.setattr(sqlexport, 'SQLITE_LINES', True)
    return lines, cells, stream


@pytest.mark.parametrize('escape', [True, False])
def test_lines_are_the_bytes_of_the_cell_by_cell_path(items, monkeypatch, escape):
    lines, cells, stream = both_ways(monkeypatch, items, 'SELECT * FROM t ORDER BY rowid',
                                     escape=escape)
    assert lines == cells
    assert stream.rows == 19
    text = lines.decode()
    assert '"a,b"' in text and '"say ""hi"""' in text and '"two\nlines"' in text
    assert '"cr\ronly"' in text and '1.5,float in an integer column' in text
    assert '0.30000000000000004,,' in text and '1e+20,,' in text
    assert '"text, in an integer column",x' in text
    assert '\ufffdstarts with NUL' in text and '\x00' not in text
    assert '"unit \x1f separator, \x1fc \x1fu \x1fr1"' in text
    assert ("'=1+2" in text) == escape and ('"\' @home, away"' in text) == escape
    assert '\n11,-5,' in text


def test_one_column_reports_write_an_empty_cell_as_csv_writer_does(items, monkeypatch):
    for sql in ('SELECT name FROM t ORDER BY rowid', 'SELECT n FROM t ORDER BY rowid',
                'SELECT day FROM t ORDER BY rowid'):
        lines, cells, _ = both_ways(monkeypatch, items, sql)
        assert lines == cells, sql
        assert b'\n""\n' in lines


def test_limit_and_truncation_and_bom(items, monkeypatch):
    lines, cells, stream = both_ways(monkeypatch, items, 'SELECT n, name FROM t ORDER BY rowid',
                                     limit=3, bom=True)
    assert lines == cells and lines.startswith('\ufeffn,name\n'.encode())
    assert stream.rows == 3 and stream.truncated


def test_floats_in_an_integer_column_are_written_as_python_writes_them(tmp_path, monkeypatch):
    path = tmp_path / 'floats.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE f (n INTEGER)')
    rng = random.Random(7)
    values = []
    while len(values) < 5000:
        x = struct.unpack('d', struct.pack('Q', rng.getrandbits(64)))[0]
        if x != x or abs(x) == float('inf'):
            continue
        values.append(x if rng.random() < 0.5 else round(rng.uniform(-1e6, 1e6), rng.randint(0, 9)))
    conn.executemany('INSERT INTO f VALUES (?)', [(v,) for v in values])
    conn.commit()
    stored = [r[0] for r in conn.execute('SELECT n FROM f ORDER BY rowid')]
    conn.close()
    source = sources.Source('sqlite', 'sqlite:///%s' % path, 10)
    lines, cells, _ = both_ways(monkeypatch, source, 'SELECT n FROM f ORDER BY rowid')
    assert lines == cells
    assert lines.decode().split('\n')[1:-1] == [repr(v) if isinstance(v, float) else str(v)
                                                 for v in stored]


def test_typed_queries_give_the_other_engines_bytes(engines):  # noqa: F811 (the fixture)
    sql = 'SELECT id, name, amount, paid, day, at, note FROM items ORDER BY id'
    assert sqlexport.sqlite_column_types(engines['sqlite'], sql) is not None
    expected = '\n'.join(
        ','.join(cell for i, cell in enumerate(row) if i != 3)
        for row in _cells(EXPECTED.decode())) + '\n'
    results = {engine: export(source, sql)[0].decode() for engine, source in engines.items()}
    assert results == {'sqlite': expected, 'postgres': expected, 'mysql': expected}


def _cells(text):
    import csv
    import io
    rows = list(csv.reader(io.StringIO(text)))
    out = []
    for row in rows:
        out.append([('"%s"' % c.replace('"', '""')) if any(ch in c for ch in ',"\r\n') else c
                    for c in row])
    return out


