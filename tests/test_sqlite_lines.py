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




# --- Python formats the cells SQLite hands as they are (sqlexport._sqlite_cells) ---

def three_ways(monkeypatch, source, sql, **options):
    """The bytes of the cells path (SQLite formats, Python formats the
    columns), of the lines SQLite joins, and of the stream itself."""
    assert sqlexport.sqlite_column_types(source, sql) is not None
    cells, stream = export(source, sql, **options)
    assert type(stream._stream).__name__ == 'ColumnStream'
    monkeypatch.setattr(sqlexport, 'SQLITE_PYTHON_CELLS', False)
    lines, _ = export(source, sql, **options)
    monkeypatch.setattr(sqlexport, 'SQLITE_PYTHON_CELLS', True)
    return cells, lines, stream


@pytest.mark.parametrize('escape', [True, False])
@pytest.mark.parametrize('chunk_rows', [1, 3, 2000])
def test_python_cells_are_the_bytes_of_the_lines(items, monkeypatch, escape, chunk_rows):
    monkeypatch.setattr(sqlexport, 'SQLITE_CHUNK_ROWS', chunk_rows)
    cells, lines, stream = three_ways(monkeypatch, items, 'SELECT * FROM t ORDER BY rowid',
                                      escape=escape)
    assert cells == lines
    assert stream.rows == 19 and not stream.truncated


# Values each column may hold, whatever its declared type: what Python's
# shortcuts take, and what they must leave to SQLite.
TEXTS = ['plain', '', ' ', 'a,b', 'say "hi"', 'two\nlines', 'cr\ronly', '\x00nul', 'in\x00side',
         '=1+2', '+1', '-5', '-5.5', '-5x', '-', '@me', '%p', '|x', '\tt', ' =x', '\u00a0=x',
         '\u3000+x', '\ufeff@x', '\uff1dx', '\uff0b1', '\uff20x', '\uff0dx', '\x1fsep', 'Zoë',
         '日本語', '-1\x00x', ' \x00=', "'=q"]
STAMPS = ['2025-01-02 03:04:05', '2025-01-02T03:04:05', '2025-01-02 03:04:05.5',
          '2025-01-02 03:04:05.123456', '2025-01-02', '2025-01-02 03:04', '2025 01 02 03:04:05',
          '2025-01-02 03:04:0\x00', 'when, exactly', '2025-01-02 03:04:05Z', '=2025-01-02 03:04']
NUMBERS = [0, 1, -1, 2 ** 62, -2 ** 63, 0.0, -0.0, 0.1, 1.5, 2.675, 0.125, 0.005, -0.005, 1e20,
           1e-7, 12.5, 130.3, 99999999999.99, 1e13 - 0.01, 123456789012345.67, 3.0, -3.1]
# Bytes that are no UTF-8 fail a line as they fail a cell (see below).
BLOBS = [b'', b'\x00', b'abc', b'a,b', 'é"'.encode()]


def _odd_value(rng, column):
    pool = {'text': TEXTS, 'stamp': STAMPS, 'number': NUMBERS}[column]
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(pool)
    if roll < 0.7:
        return None
    if roll < 0.8:
        return rng.choice(NUMBERS)
    if roll < 0.9:
        return rng.choice(TEXTS + STAMPS)
    return rng.choice(BLOBS + [b'\x00\xff'] if column == 'number' else BLOBS)


@pytest.fixture
def odd_rows(tmp_path):
    """2,000 rows of every kind of column, each cell drawn from what that
    column is meant to hold and, now and then, anything else SQLite keeps."""
    path = tmp_path / 'odd.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE o (n INTEGER, name TEXT, at DATETIME, day DATE, '
                 'amount DECIMAL(12,2), rate NUMERIC(8,4), ok BOOLEAN, note VARCHAR(20))')
    rng = random.Random(16)
    kinds = ['number', 'text', 'stamp', 'stamp', 'number', 'number', 'number', 'text']
    rows = [tuple(_odd_value(rng, kind) for kind in kinds) for _ in range(2000)]
    # Runs of plain rows too, for batches that take the shortcuts whole.
    rows += [(i, 'name %d' % i, '2025-01-02 03:04:%02d' % (i % 60), '2025-01-02', i / 4,
              i / 8, i % 2, 'note') for i in range(3000)]
    conn.executemany('INSERT INTO o VALUES (?, ?, ?, ?, ?, ?, ?, ?)', rows)
    conn.commit()
    conn.close()
    return sources.Source('sqlite', 'sqlite:///%s' % path, 10)


@pytest.mark.parametrize('escape', [True, False])
@pytest.mark.parametrize('chunk_rows', [7, 500])
def test_python_cells_match_the_lines_whatever_the_cells_hold(odd_rows, monkeypatch, escape,
                                                              chunk_rows):
    monkeypatch.setattr(sqlexport, 'SQLITE_CHUNK_ROWS', chunk_rows)
    cells, lines, stream = three_ways(monkeypatch, odd_rows, 'SELECT * FROM o ORDER BY rowid',
                                      escape=escape)
    assert stream.rows == 5000
    assert cells == lines


def test_python_cells_write_sqlites_decimals(tmp_path, monkeypatch):
    """A decimal is written by Python only where its text is surely what
    SQLite's printf writes: compare on many random numbers at several scales."""
    path = tmp_path / 'decimals.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE d (id INTEGER, a DECIMAL(12,2), b DECIMAL(20,0), '
                 'c NUMERIC(10,4), e DECIMAL(30,6))')
    rng = random.Random(12)

    def number():
        roll = rng.random()
        if roll < 0.4:
            return round(rng.uniform(-1e6, 1e6), rng.randint(0, 6))
        if roll < 0.6:
            return round(rng.uniform(-1e16, 1e16), rng.randint(0, 3))
        if roll < 0.7:
            return rng.randint(-10 ** 16, 10 ** 16)
        if roll < 0.85:
            x = struct.unpack('d', struct.pack('Q', rng.getrandbits(64)))[0]
            return None if x != x else x
        return rng.randint(-2000, 2000) / 1000 + rng.choice([0.005, 0.0005, 0.5, 0])
    conn.executemany('INSERT INTO d VALUES (?, ?, ?, ?, ?)',
                     [(i, number(), number(), number(), number()) for i in range(20000)])
    conn.commit()
    conn.close()
    source = sources.Source('sqlite', 'sqlite:///%s' % path, 10)
    cells, lines, _ = three_ways(monkeypatch, source, 'SELECT * FROM d ORDER BY id')
    assert cells == lines


def test_python_cells_limit_truncation_and_bom(items, monkeypatch):
    monkeypatch.setattr(sqlexport, 'SQLITE_CHUNK_ROWS', 2)
    cells, lines, stream = three_ways(monkeypatch, items, 'SELECT n, name FROM t ORDER BY rowid',
                                      limit=3, bom=True)
    assert cells == lines and cells.startswith('\ufeffn,name\n'.encode())
    assert stream.rows == 3 and stream.truncated
    cells, lines, stream = three_ways(monkeypatch, items, 'SELECT n, name FROM t ORDER BY rowid',
                                      limit=19)
    assert cells == lines and stream.rows == 19 and not stream.truncated


def test_python_cells_stop_at_the_time_limit(items, monkeypatch):
    source = items._replace(query_timeout=0.5)
    slow = 'SELECT a.n, a.name, b.at FROM t a, t b, t c, t d, t e, t f, t g'
    for python_cells in (True, False):
        monkeypatch.setattr(sqlexport, 'SQLITE_PYTHON_CELLS', python_cells)
        with pytest.raises(sources.ReportSQLError) as info:
            export(source, slow)
        assert 'time limit of 0.5s hit' in str(info.value)


def test_python_cells_stop_when_the_reader_stops(items, tmp_path, monkeypatch):
    """A reader that leaves early (a download that went away, a cancelled
    run whose progress callback raises) ends the stream and its query; the
    half-written file is removed, and the source answers the next export."""
    from export import write_file
    monkeypatch.setattr(sqlexport, 'SQLITE_CHUNK_ROWS', 2)
    sql = 'SELECT * FROM t ORDER BY rowid'
    with sqlexport.open_query_csv(items, sql, {}) as stream:
        first = next(iter(stream))
        assert first.startswith(b'n,name,')
    assert not stream.exhausted

    class Cancelled(Exception):
        pass

    def progress(rows, size):
        raise Cancelled()
    out = tmp_path / 'out.csv'
    with pytest.raises(Cancelled):
        with sqlexport.open_query_csv(items, sql, {}) as stream:
            write_file(stream, str(out), on_progress=progress, every=0)
    assert not out.exists() and not (tmp_path / 'out.csv.part').exists()
    cells, lines, _ = three_ways(monkeypatch, items, sql)
    assert cells == lines


def test_bytes_that_are_no_text_fail_as_they_do_in_lines(tmp_path, monkeypatch):
    path = tmp_path / 'blob.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE b (n INTEGER, name TEXT, at DATETIME)')
    conn.executemany('INSERT INTO b VALUES (?, ?, ?)',
                     [(1, b'\xff', None), (2, None, b'\xfe\xff')])
    conn.commit()
    conn.close()
    source = sources.Source('sqlite', 'sqlite:///%s' % path, 10)
    for sql in ('SELECT n, name FROM b WHERE n = 1', 'SELECT n, at FROM b WHERE n = 2'):
        for python_cells in (True, False):
            monkeypatch.setattr(sqlexport, 'SQLITE_PYTHON_CELLS', python_cells)
            with pytest.raises(sources.ReportSQLError, match='decode'):
                export(source, sql)



def test_a_decimal_without_scale_is_printed_as_in_the_lines_and_quoted(tmp_path, monkeypatch):
    """A DECIMAL with no scale is printed by what it holds, as SQLite writes
    it in text (0.3 for 0.30000000000000004). Text with a comma there is
    quoted, on every path (the lines once left it bare: a row one cell too
    long), a one-column report's included."""
    path = tmp_path / 'unscaled.db'
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE u (n INTEGER, price DECIMAL, other NUMERIC)')
    conn.executemany('INSERT INTO u VALUES (?, ?, ?)',
                     [(1, 'a,b', 0.1 + 0.2), (2, 1.5, 'x"y'), (3, None, 2), (4, '=1', b'z')])
    conn.commit()
    conn.close()
    source = sources.Source('sqlite', 'sqlite:///%s' % path, 10)
    cells, lines, _ = three_ways(monkeypatch, source, 'SELECT * FROM u ORDER BY n')
    assert lines == b'n,price,other\n1,"a,b",0.3\n2,1.5,"x""y"\n3,,2\n4,\'=1,\\x7a\n'
    assert cells == lines
    one, _ = export(source, 'SELECT price FROM u ORDER BY n')
    assert one == b'price\n"a,b"\n1.5\n""\n\'=1\n'


def test_decimal_cells_are_sqlites_printf_for_any_number():
    """Values a DECIMAL column cannot keep (-0.0 is stored as 0) can still
    come from an expression traced as DECIMAL: Python's shortcut and SQLite's
    printf agree on them too."""
    values = (-0.0, 0.0, 0, -0.001, 0.001, 2.675, 0.125, -1e-300, 1e13, -1e13 + 0.01, 1e15,
              123.4, -5, 2 ** 53 + 1, float('inf'), float('-inf'), None, '', 'x', b'1')
    printer = sqlexport._SqliteCells().printer
    for places in (0, 2, 4):
        expression = sqlexport._sqlite_column('?1', ('decimal', places), True)
        printed = printer(expression)
        assert sqlexport._decimal_cells(places, printed)(values) == [printed(v) for v in values]


def test_traced_types_are_kept_while_the_schema_stays_and_traced_again_when_it_changes(
        items, tmp_path):
    """A source that is also the state database changes with every run:
    the traced types are kept per schema, read on the export's connection."""
    path = tmp_path / 'lines.db'
    sql = 'SELECT n, amount FROM t'
    conn = sqlite3.connect(path)
    cursor = conn.cursor()
    first = sqlexport.sqlite_column_types(items, sql, cursor)
    assert first[1] == ('decimal', 2)
    traced = sqlexport._traced_types.cache_info().misses
    conn.execute("INSERT INTO t (n) VALUES (99)")
    conn.commit()
    assert sqlexport.sqlite_column_types(items, sql, cursor) == first
    assert sqlexport._traced_types.cache_info().misses == traced  # rows changed, kept
    conn.execute('ALTER TABLE t RENAME TO old_t')
    conn.execute('CREATE TABLE t (n INTEGER, amount DECIMAL(10,4))')
    conn.commit()
    assert sqlexport.sqlite_column_types(items, sql, cursor)[1] == ('decimal', 4)
    conn.close()
