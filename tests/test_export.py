import csv
import datetime
import io
import sqlite3
from decimal import Decimal

import pytest

import runfiles
from conftest import demo_catalogue
from demo import Customer, Order
from export import ColumnStream, CsvStream, escape_formula, write_file

registry = demo_catalogue()


@pytest.fixture
def tricky_rows(database):
    smith = Customer.create(name='Smith, Jr.', email='smith@example.org')
    quote = Customer.create(name='Say "hi"', email=None)
    lines = Customer.create(name='Line\nBreak', email='lines@example.org')
    owl = Customer.create(name='Zoë 🦉 Øre', email='zoe@example.org')
    formula = Customer.create(name='=HYPERLINK("http://evil.example","x")', email='@SUM(A1)')
    rows = [
        (smith, 'paid', Decimal('12.5'), datetime.datetime(2025, 3, 4, 5, 6, 7)),
        (quote, 'shipped', Decimal('0.10'), datetime.datetime(2025, 3, 5)),
        (lines, 'pending', Decimal('1234567.89'), datetime.datetime(2025, 12, 31, 23, 59, 59)),
        (owl, 'refunded', Decimal('-3'), datetime.datetime(2026, 1, 1)),
        (formula, 'paid', Decimal('7.00'), datetime.datetime(2026, 1, 2)),
    ]
    for customer, status, amount, created in rows:
        Order.create(customer=customer, status=status, amount=amount, created_at=created)


@pytest.fixture
def shop_settings(make_settings, database_url, database):
    return make_settings({'DATABASE_URL': database_url})


def export(settings, report, params=None, escape=True, limit=None):
    """(CSV text, the finished stream: its row count and whether it was cut)."""
    from dataclasses import replace
    if limit is not None:
        settings = replace(settings, max_rows=limit)
    definition = registry.get(report)
    with runfiles.open_report(definition, settings, definition.parse(params or {}), escape,
                          False) as stream:
        return b''.join(stream).decode('utf-8'), stream


def csv_text(settings, report, params=None, escape=True):
    return export(settings, report, params, escape)[0]


def test_orders_csv_exact_text(tricky_rows, shop_settings):
    assert csv_text(shop_settings, 'orders') == (
        'id,created_at,customer_name,customer_email,status,amount\n'
        '1,2025-03-04T05:06:07.000000,"Smith, Jr.",smith@example.org,paid,12.50\n'
        '2,2025-03-05T00:00:00.000000,"Say ""hi""",,shipped,0.10\n'
        '3,2025-12-31T23:59:59.000000,"Line\nBreak",lines@example.org,pending,1234567.89\n'
        '4,2026-01-01T00:00:00.000000,Zoë 🦉 Øre,zoe@example.org,refunded,-3.00\n'
        '5,2026-01-02T00:00:00.000000,"\'=HYPERLINK(""http://evil.example"",""x"")",'
        '\'@SUM(A1),paid,7.00\n'
    )


def test_params_filter_rows(tricky_rows, shop_settings):
    text = csv_text(shop_settings, 'orders',
                    {'since': '2025-03-05', 'until': '2026-01-01', 'status': 'shipped'})
    assert text.splitlines()[1:] == ['2,2025-03-05T00:00:00.000000,"Say ""hi""",,shipped,0.10']


def test_escaping_can_be_turned_off(tricky_rows, shop_settings):
    text = csv_text(shop_settings, 'orders', {'since': '2026-01-02'}, escape=False)
    assert text.splitlines()[1] == ('5,2026-01-02T00:00:00.000000,'
                                    '"=HYPERLINK(""http://evil.example"",""x"")",@SUM(A1),paid,7.00')


def test_aggregate_report_formats_totals(tricky_rows, shop_settings):
    Customer.create(name='No Orders', email='none@example.org')
    lines = csv_text(shop_settings, 'customers').splitlines()
    assert lines[0] == 'id,name,email,orders,total_spent'
    assert lines[1] == '1,"Smith, Jr.",smith@example.org,1,12.50'
    assert lines[-1] == '6,No Orders,none@example.org,0,0.00'
    assert csv_text(shop_settings, 'customers', {'min_orders': '1'}).count('No Orders') == 0


def test_empty_result_is_just_the_header(shop_settings):
    assert csv_text(shop_settings, 'orders') == \
        'id,created_at,customer_name,customer_email,status,amount\n'


@pytest.mark.parametrize('cell, expected', [
    ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
    ('@SUM(A1)', "'@SUM(A1)"),
    ('+1+2', "'+1+2"),
    ('-2+3', "'-2+3"),
    ('\tcmd', "'\tcmd"),
    ('\rcmd', "'\rcmd"),
    ('|calc', "'|calc"),
    ('%0A', "'%0A"),
    ('-12.5', '-12.5'),
    ('-3', '-3'),
    ('-1e5', "'-1e5"),
    ('-.5', "'-.5"),
    ('-', "'-"),
    ('plain', 'plain'),
    ('', ''),
    (-12.5, -12.5),
    (None, None),
])
def test_formula_escaping(cell, expected):
    assert escape_formula(cell) == expected


def test_row_limit_cuts_and_tells(tricky_rows, shop_settings):
    import csv
    import io
    text, stream = export(shop_settings, 'orders', limit=3)
    assert len(list(csv.reader(io.StringIO(text, newline='')))) == 4
    assert stream.truncated
    assert stream.rows == 3
    text, stream = export(shop_settings, 'orders', limit=5)
    assert not stream.truncated


def test_database_and_python_escaping_agree(shop_settings):
    """The SQL CASE (PostgreSQL's COPY) and escape_formula() (rows written
    here) decide every cell the same way."""
    import sqlexport
    cells = ['=1', '+1', '-1', '-1.5', '-1.2.3', '-', '--1', '-1a', '-a', '@x', '|x', '%x',
             '\tx', '\rx', '\nx', 'x', '', ' =x', "'=x", '-0', '1-', '=', '\u00a0=x',
             '\ufeff+x', '\uff1dx', '  -1', '\u3000@x']
    for cell in cells:
        Customer.create(name=cell, email=None)
    source = shop_settings.source('demo')
    with sqlexport.open_query_csv(source, 'SELECT name FROM customer ORDER BY id', {}) as stream:
        text = b''.join(stream).decode('utf-8')
    import csv
    import io
    got = [row[0] if row else '' for row in csv.reader(io.StringIO(text, newline=''))][1:]
    assert got == [escape_formula(c) or '' for c in cells]


def test_write_file_is_atomic_and_reports_progress(tmp_path):
    rows = ((i, 'row %d' % i) for i in range(10000))
    seen = []
    ticks = iter(range(0, 10 ** 6))
    path = tmp_path / 'out.csv'
    count, size = write_file(CsvStream(['n', 'label'], rows, chunk_rows=1000), str(path),
                             on_progress=lambda r, b: seen.append(r), every=1,
                             clock=lambda: next(ticks))
    assert count == 10000 and size == path.stat().st_size
    assert seen == sorted(seen) and 0 < len(seen) <= 11
    assert not (tmp_path / 'out.csv.part').exists()
    assert path.read_text().splitlines()[-1] == '9999,row 9999'


def test_failed_write_leaves_no_file(tmp_path):
    def rows():
        yield (1, 'a')
        raise RuntimeError('database went away')
    path = tmp_path / 'out.csv'
    with pytest.raises(RuntimeError):
        write_file(CsvStream(['n', 'label'], rows(), chunk_rows=1), str(path))
    assert list(tmp_path.iterdir()) == []


def test_column_stream_writes_what_csv_writer_writes():
    conn = sqlite3.connect(':memory:')
    rows = [('',), ('x,y',), ('say "hi"',), ('cr\ronly',), ('two\nlines',), ('plain',)]
    expected = io.StringIO()
    csv.writer(expected, lineterminator='\n').writerows([('cell',)] + rows)
    for chunk_rows in (1, 4, 100):
        cursor = conn.execute('SELECT column1 FROM (VALUES %s)' % ', '.join('(?)' for _ in rows),
                              [r[0] for r in rows])
        stream = ColumnStream(['cell'], cursor, [list], chunk_rows=chunk_rows)
        written = b''.join(stream).decode()
        # csv.writer leaves a lone CR bare (see CsvStream); ColumnStream quotes it.
        assert written == expected.getvalue().replace('cr\ronly', '"cr\ronly"')
        assert stream.rows == len(rows)
