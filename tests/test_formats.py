"""Formats people open: csv (the default), csv.gz and xlsx, for downloads,
emailed runs and schedules. Workbooks are read back with openpyxl; the typed
rows they are written from come from real SQLite, PostgreSQL and MariaDB."""
import csv
import datetime
import decimal
import gzip
import io
import re
import sqlite3
import zipfile

import openpyxl
import pytest

import demo
import sources
import xlsxexport
from conftest import attachment, fill_items, run_queued
from demo import Customer, Order
from models import Run
from typedrows import Column, open_query_rows
from xlsxexport import EXCEL_MAX_ROWS, write_xlsx

D = decimal.Decimal
XLSX_TYPE = 'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet'


def read_xlsx(data_or_path):
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    return openpyxl.load_workbook(source)


def values(sheet):
    return [[cell.value for cell in row] for row in sheet.iter_rows()]


def parse_csv(data):
    return list(csv.reader(io.StringIO(data.decode('utf-8-sig'), newline='')))


# --- typed rows on every engine, written and read back ------------------------

ROWS = [
    (1, 'Zoë Müller', D('12.50'), 0.1, True, datetime.date(2025, 1, 31),
     datetime.datetime(2025, 1, 31, 10, 0), '=SUM(A1:A9)', -5),
    (2, None, None, None, None, None, None, None, None),
    (3, '', D('0.00'), 1e20, False, datetime.date(2024, 2, 29),
     datetime.datetime(2025, 6, 1, 9, 30, 0, 123000), '-5', 0),
    (4, 'a,b "quoted"\nnext line', D('-3.10'), -2.5, True, datetime.date(1999, 12, 31),
     datetime.datetime(1999, 12, 31, 23, 59, 59), '+1 555', -1),
    (5, '@home', D('1234567890.99'), 1.5e-07, False, datetime.date(2025, 1, 1),
     datetime.datetime(2025, 1, 1), '=HYPERLINK("http://x")', 7),
]
DDL = {
    'sqlite': 'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount DECIMAL(12,2), '
              'price REAL, paid BOOLEAN, day DATE, at DATETIME, note TEXT, delta INTEGER)',
    'postgres': 'CREATE TABLE items (id integer PRIMARY KEY, name text, amount numeric(12,2), '
                'price double precision, paid boolean, day date, at timestamp, note text, '
                'delta integer)',
    'mysql': 'CREATE TABLE items (id int PRIMARY KEY, name varchar(200), amount decimal(12,2), '
             'price double, paid boolean, day date, at datetime(6), note text, delta int) '
             'CHARACTER SET utf8mb4',
}
QUERY = 'SELECT id, name, amount, price, paid, day, at, note, delta FROM items ORDER BY id'


def _fill(engine, url):
    fill_items(engine, url, DDL[engine], ROWS)


@pytest.fixture(params=['sqlite', 'postgres', 'mysql'])
def source(request, tmp_path):
    engine = request.param
    if engine == 'sqlite':
        url = 'sqlite:///%s' % (tmp_path / 'source.db')
    else:
        url = request.getfixturevalue({'postgres': 'postgres_url',
                                       'mysql': 'mariadb_url'}[engine])
    _fill(engine, url)
    yield sources.Source(engine, url, 10)
    if engine == 'postgres':
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('DROP TABLE IF EXISTS items')


def export_xlsx(source, sql, path, **options):
    with open_query_rows(source, sql, {}, **options) as rows:
        write_xlsx(rows, rows.columns, str(path), title='items')
        return rows


def test_typed_rows_become_cells_of_their_type_on_every_engine(source, tmp_path):
    rows = export_xlsx(source, QUERY, tmp_path / 'items.xlsx')
    assert (rows.rows, rows.truncated) == (5, False)
    kinds = [c.kind for c in rows.columns]
    # SQLite: a REAL column is typed by its values (the declared type says nothing more).
    assert kinds[:3] + kinds[4:] == ['number', 'text', 'decimal', 'bool', 'date',
                                     'timestamp', 'text', 'number']
    assert rows.columns[2].places == 2
    book = read_xlsx(str(tmp_path / 'items.xlsx'))
    sheet = book['items']
    got = values(sheet)
    assert got[0] == ['id', 'name', 'amount', 'price', 'paid', 'day', 'at', 'note', 'delta']
    assert all(cell.font.b for cell in sheet[1])  # bold header
    assert sheet.freeze_panes == 'A2'  # the header stays in view
    expected = []
    for row in ROWS:
        cells = []
        for value in row:
            if isinstance(value, D):
                value = float(value)
            elif isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
                value = datetime.datetime(value.year, value.month, value.day)
            elif value == '':
                value = None  # the empty string is an empty cell, as in the CSV
            cells.append(value)
        expected.append(cells)
    assert got[1:] == expected
    # Numbers are numbers, decimals keep their scale, dates are Excel dates.
    amount, day, at, note, delta = (sheet.cell(5, i) for i in (3, 6, 7, 8, 9))
    assert (amount.data_type, amount.value, amount.number_format) == ('n', -3.1, '0.00')
    assert D(repr(amount.value)).quantize(D('0.01')) == D('-3.10')
    assert (day.is_date, day.number_format) == (True, 'yyyy-mm-dd')
    assert (at.is_date, at.number_format) == (True, 'yyyy-mm-dd hh:mm:ss')
    # Text that looks like a formula is text; nothing is put in front of it.
    assert (note.data_type, note.value) == ('s', '+1 555')
    assert (sheet.cell(2, 8).data_type, sheet.cell(2, 8).value) == ('s', '=SUM(A1:A9)')
    assert (delta.data_type, delta.value) == ('n', -1)
    assert (sheet.cell(4, 8).data_type, sheet.cell(4, 8).value) == ('s', '-5')
    assert [sheet.cell(r, 5).value for r in range(2, 7)] == [True, None, False, True, False]
    assert sheet.cell(2, 5).data_type == 'b'


def test_a_timestamp_with_a_time_zone_is_written_in_utc(tmp_path, postgres_url):
    source = sources.Source('postgres', postgres_url, 10)
    sql = ("SELECT TIMESTAMPTZ '2025-03-30 01:30:00+02' AS at, NUMERIC '1.5' AS loose, "
           "'{\"a\": 1}'::json AS doc, INTERVAL '1 day' AS span")
    export_xlsx(source, sql, tmp_path / 'tz.xlsx')
    sheet = read_xlsx(str(tmp_path / 'tz.xlsx')).active
    at, loose, doc, span = (sheet.cell(2, i) for i in range(1, 5))
    assert at.value == datetime.datetime(2025, 3, 29, 23, 30)
    # No declared scale: the value's own (1.5 stays 1.5, shown as 0.0).
    assert (loose.value, loose.number_format) == (1.5, '0.0')
    assert (doc.value, span.value) == ('{"a": 1}', 'P1D')  # PostgreSQL's text for them


def test_a_limit_cuts_the_rows_and_says_so(source, tmp_path):
    rows = export_xlsx(source, QUERY, tmp_path / 'cut.xlsx', limit=2)
    assert (rows.rows, rows.truncated) == (2, True)
    assert len(values(read_xlsx(str(tmp_path / 'cut.xlsx')).active)) == 3


# --- cells Excel would change, written without a database ------------------------

def test_values_excel_would_change_are_kept_exact_or_as_text(tmp_path):
    columns = [Column('n', 'number'), Column('d', 'decimal', 2), Column('t', 'text'),
               Column('any')]
    rows = [
        [-5, D('-3.10'), '-1', '=1+1'],
        [12345678901234567, D('123456789012345678.91'), '+A1', float('nan')],
        [10 ** 15 - 1, D('0.005'), '@SUM(1)', float('-inf')],
        [2.5, D('1E+3'), '\tx', datetime.date(1899, 12, 31)],
        [None, None, 'x' * 40000, b'\x00\xff'],
        [True, D('7'), '', datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone(
            datetime.timedelta(hours=2)))],
    ]
    path = tmp_path / 'edge.xlsx'
    assert write_xlsx(iter(rows), columns, str(path)) == len(rows)
    sheet = read_xlsx(str(path)).active
    got = values(sheet)[1:]
    assert got[0] == [-5, -3.1, '-1', '=1+1']
    assert [sheet.cell(2, i).data_type for i in range(1, 5)] == ['n', 'n', 's', 's']
    # More than 15 significant digits: text with every digit, not a rounded number.
    assert got[1] == ['12345678901234567', '123456789012345678.91', '+A1', 'NaN']
    assert got[2] == [999999999999999, 0.0, '@SUM(1)', '-Infinity']  # 0.005 -> 0.00 (even)
    assert got[3] == [2.5, 1000.0, '\tx', '1899-12-31']
    assert sheet.cell(5, 2).number_format == '0.00'
    assert got[4][:2] == [None, None] and len(got[4][2]) == xlsxexport.EXCEL_MAX_TEXT
    assert got[4][3] == '\\x00ff'
    assert got[5] == [True, 7.0, None, datetime.datetime(2024, 12, 31, 22, 0)]
    assert not any(cell.data_type == 'f' for row in sheet.iter_rows() for cell in row)


def test_rows_past_a_sheet_go_on_in_further_sheets_with_the_header(tmp_path):
    # Excel's own limit, and XlsxWriter's; a test lowers it to stay fast.
    import xlsxwriter
    assert EXCEL_MAX_ROWS == 1048576
    assert xlsxwriter.Workbook().add_worksheet().xls_rowmax == EXCEL_MAX_ROWS
    columns = [Column('id', 'number'), Column('name', 'text')]
    path = tmp_path / 'many.xlsx'
    write_xlsx(([i, 'row %d' % i] for i in range(1, 13)), columns, str(path),
               title='orders: [2025]', sheet_rows=5)
    book = read_xlsx(str(path))
    assert book.sheetnames == ['orders_ _2025_', 'orders_ _2025_ (2)', 'orders_ _2025_ (3)']
    sheets = [values(sheet) for sheet in book]
    assert [len(s) for s in sheets] == [5, 5, 5]
    assert all(s[0] == ['id', 'name'] for s in sheets)
    assert [r[0] for s in sheets for r in s[1:]] == list(range(1, 13))
    assert all(sheet.freeze_panes == 'A2' for sheet in book)


def test_a_sheet_name_is_cut_to_what_excel_takes():
    assert xlsxexport.sheet_name('x' * 40, 1) == 'x' * 31
    assert xlsxexport.sheet_name('x' * 40, 12) == 'x' * 26 + ' (12)'


def test_no_rows_is_a_workbook_with_its_header(tmp_path):
    path = tmp_path / 'empty.xlsx'
    write_xlsx(iter([]), [Column('a'), Column('b')], str(path))
    assert values(read_xlsx(str(path)).active) == [['a', 'b']]


# --- downloads -----------------------------------------------------------------

@pytest.fixture
def shop(database):
    demo.seed(customers=30, orders=300)


def order_values(status=None):
    query = Order.select(Order, Customer).join(Customer).order_by(Order.id)
    if status:
        query = query.where(Order.status == status)
    return [[o.id, o.created_at.replace(microsecond=round(o.created_at.microsecond, -3)),
             o.customer.name, o.customer.email, o.status, float(o.amount)] for o in query]


def same_moments(got, expected):
    """Excel keeps times to the millisecond."""
    return all(abs((g[1] - e[1]).total_seconds()) < 0.001 and g[:1] + g[2:] == e[:1] + e[2:]
               for g, e in zip(got, expected)) and len(got) == len(expected)


def test_downloads_in_each_format(app, shop):
    plain = app.get('/reports/orders.csv', {'status': 'paid'})
    packed = app.get('/reports/orders.csv.gz', {'status': 'paid'})
    assert packed.headers['Content-Type'] == 'application/gzip'
    assert re.fullmatch(r'attachment; filename="orders-\d{8}-\d{6}\.csv\.gz"',
                        packed.headers['Content-Disposition'])
    assert gzip.decompress(packed.body) == plain.body  # the same CSV bytes

    book = app.get('/reports/orders.xlsx', {'status': 'paid'})
    assert book.headers['Content-Type'] == XLSX_TYPE
    assert re.fullmatch(r'attachment; filename="orders-\d{8}-\d{6}\.xlsx"',
                        book.headers['Content-Disposition'])
    rows = values(read_xlsx(book.body).active)
    assert rows[0] == parse_csv(plain.body)[0]
    assert same_moments(rows[1:], order_values('paid'))
    assert len(rows) - 1 == len(parse_csv(plain.body)) - 1 > 50

    head = app.head('/reports/orders.xlsx', {'status': 'paid'})
    assert head.headers['Content-Type'] == XLSX_TYPE and head.body == b''


def test_the_check_gives_the_address_of_the_format(app, shop):
    res = app.get('/api/reports/orders/check', {'status': 'paid', 'format': 'xlsx'})
    assert res.json['url'] == '/reports/orders.xlsx?status=paid'
    assert res.json['options'] == {'format': 'xlsx'}
    res = app.get('/api/reports/orders/check', {'format': 'csv.gz'})
    assert res.json['url'] == '/reports/orders.csv.gz'
    assert app.get('/api/reports/orders/check').json['url'] == '/reports/orders.csv'


@pytest.mark.parametrize('url, query', [
    ('/api/reports/orders/check', {'format': 'pdf'}),
    ('/reports/orders.xlsx', {'format': 'csv'}),
    ('/reports/orders.csv', {'format': 'xlsx'}),
])
def test_a_wrong_format_is_refused_naming_the_field(app, shop, url, query):
    res = app.get(url, query, expect_errors=True)
    assert res.status_int == 400
    assert res.json['field'] == 'format'


def test_a_failing_report_is_a_json_error_in_every_format(app, make_settings, service_env,
                                                           shop):
    for url in ('/reports/orders.xlsx', '/reports/orders.csv.gz'):
        res = app.get(url, {'since': 'nope'}, expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, 'params.since')


# --- emailed runs ----------------------------------------------------------------

@pytest.mark.parametrize('bad', ['pdf', 'CSV', 1, None, ['xlsx']])
def test_a_run_with_a_wrong_format_is_refused(app, shop, bad):
    body = {'report': 'orders', 'to': ['ana@example.org'], 'format': bad}
    res = app.post_json('/api/runs', body, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'format')


def test_an_emailed_xlsx_is_a_workbook_of_the_rows(app, jobs, shop, smtp_sink):
    res = app.post_json('/api/runs', {'report': 'orders', 'params': {'status': 'shipped'},
                                      'to': ['ana@example.org'], 'format': 'xlsx'})
    run_id = res.json['id']
    assert run_queued(jobs) == 1
    [sent] = smtp_sink.messages
    message = sent['message']
    [part] = [p for p in message.walk() if p.get_filename()]
    assert part.get_content_type() == XLSX_TYPE
    assert part['Content-Disposition'].startswith('attachment')
    name, data = attachment(message)
    assert re.fullmatch(r'orders-\d{8}-\d{6}\.xlsx', name)
    rows = values(read_xlsx(data).active)
    assert same_moments(rows[1:], order_values('shipped'))
    run = app.get('/api/runs/%d' % run_id).json
    assert (run['format'], run['sent_as'], run['file_name']) == ('xlsx', 'xlsx', name)
    assert run['rows'] == len(rows) - 1 and run['file_bytes'] == len(data)
    body = message.get_body(('plain',)).get_content()
    assert 'File: %s, attached' % name in body
    kept = app.get(run['file_url'])
    assert kept.headers['Content-Type'] == XLSX_TYPE and kept.body == data


def test_an_emailed_csv_gz_is_the_csv_gzipped(app, jobs, shop, smtp_sink):
    app.post_json('/api/runs', {'report': 'orders', 'to': ['ana@example.org'],
                                'format': 'csv.gz'})
    app.post_json('/api/runs', {'report': 'orders', 'to': ['bo@example.org']})
    assert run_queued(jobs) == 2
    by_address = {sent['to'][0]: sent['message'] for sent in smtp_sink.messages}
    packed = [p for p in by_address['ana@example.org'].walk() if p.get_filename()][0]
    assert packed.get_content_type() == 'application/gzip'
    assert packed.get_filename().endswith('.csv.gz')
    plain_name, plain = attachment(by_address['bo@example.org'])
    assert plain_name.endswith('.csv')
    assert gzip.decompress(packed.get_payload(decode=True)) == plain
    assert Run.get_by_id(1).sent_as == 'csv.gz'


def test_the_zip_rule_applies_after_the_format(make_jobs, shop, smtp_sink):
    import webtest

    from server import create_app
    jobs = make_jobs(zip_over_mb=0.001)
    app = webtest.TestApp(create_app(jobs.settings, jobs))
    app.post_json('/api/runs', {'report': 'orders', 'to': ['ana@example.org'],
                                'format': 'xlsx'})
    assert run_queued(jobs) == 1
    name, data = attachment(smtp_sink.messages[0]['message'])
    assert name.endswith('.zip')
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [inner] = archive.namelist()
        assert inner == name[:-len('.zip')] + '.xlsx'
        assert len(values(read_xlsx(archive.read(inner)).active)) == 301
    assert Run.get_by_id(1).sent_as == 'zip'


# --- schedules ---------------------------------------------------------------------

def test_a_schedule_keeps_its_format_and_its_runs_use_it(app, jobs, shop, smtp_sink):
    body = {'name': 'nightly', 'report': 'orders', 'to': ['ana@example.org'],
            'cron': '0 7 * * *', 'format': 'xlsx'}
    created = app.post_json('/api/schedules', body).json
    assert created['format'] == 'xlsx'
    assert app.put_json('/api/schedules/nightly', {'cron': '0 8 * * *'}).json['format'] == 'xlsx'
    for bad in ('docx', None):
        res = app.put_json('/api/schedules/nightly', {'format': bad}, expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, 'format')
    run_id = app.post('/api/schedules/nightly/run', content_type='application/json').json['id']
    assert run_queued(jobs) == 1
    assert Run.get_by_id(run_id).format == 'xlsx'
    assert attachment(smtp_sink.messages[0]['message'])[0].endswith('.xlsx')
    changed = app.put_json('/api/schedules/nightly', {'format': 'csv.gz'}).json
    assert changed['format'] == 'csv.gz'


def test_a_scheduled_slot_run_is_written_in_the_schedule_format(registry_settings, jobs):
    import schedules
    registry, settings = registry_settings
    now = datetime.datetime(2026, 1, 5, 6, 0)
    schedules.create_schedule(registry, settings, {
        'name': 'gz', 'report': 'orders', 'to': ['ana@example.org'], 'cron': '0 7 * * *',
        'timezone': 'UTC', 'format': 'csv.gz'}, now)

    [run] = schedules.tick(registry, settings, jobs, now + datetime.timedelta(hours=1))
    assert (run.format, run.trigger) == ('csv.gz', 'schedule')
    assert jobs.huey.pending_count() == 1  # queued on the real queue


@pytest.fixture
def registry_settings(settings, shop):
    from conftest import demo_catalogue
    return demo_catalogue(), settings


def test_a_config_schedule_may_name_a_format(make_settings, service_env, database):
    import dataclasses

    import schedules
    from conftest import demo_catalogue
    from settings import SettingsError
    settings = make_settings(service_env)
    spec = {'name': 'cfg', 'report': 'orders', 'params': {}, 'to': ['ana@example.org'],
            'cron': '@daily', 'enabled': True, 'format': 'xlsx'}
    declared = schedules.declared_schedules(
        demo_catalogue(), dataclasses.replace(settings, schedules=(spec,)))
    assert declared['cfg']['format'] == 'xlsx'
    with pytest.raises(SettingsError, match='format'):
        schedules.declared_schedules(demo_catalogue(), dataclasses.replace(
            settings, schedules=(dict(spec, format='pdf'),)))


def test_a_workbook_being_written_reports_its_progress_and_leaves_no_files(tmp_path):
    from xlsxexport import XlsxStream
    path = tmp_path / 'progress.db'
    sqlite3.connect(str(path)).close()
    source = sources.Source('s', 'sqlite:///%s' % path, 10)
    sql = ('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) '
           'SELECT i, printf(\'row %d\', i) AS name FROM n')
    work = tmp_path / 'work'
    seen, data = [], b''
    with open_query_rows(source, sql, {}) as rows:
        stream = XlsxStream(rows, 'numbers', tmpdir=str(work))
        for chunk in stream:
            if not chunk:
                seen.append(stream.rows)  # an empty chunk while the rows go in
            data += chunk
    assert seen[:2] == [2000, 4000] and stream.bytes == len(data)
    assert len(values(read_xlsx(data).active)) == 5001
    assert list(work.iterdir()) == []  # the workbook and XlsxWriter's own files are gone


def test_the_command_line_writes_each_format(app, consumer_env, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT
    demo.seed(customers=20, orders=200)
    for fmt in ('csv.gz', 'xlsx'):
        out = tmp_path / ('paid.' + fmt)
        done = subprocess.run([sys.executable, 'scripts/export.py', 'orders', '-q', '-p',
                               'status=paid', '--format', fmt, '-o', str(out)], cwd=ROOT,
                              env=dict(os.environ, **consumer_env), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    plain = app.get('/reports/orders.csv', {'status': 'paid'}).body
    assert gzip.decompress((tmp_path / 'paid.csv.gz').read_bytes()) == plain
    rows = values(read_xlsx(str(tmp_path / 'paid.xlsx')).active)
    assert len(rows) == len(parse_csv(plain)) and rows[0] == parse_csv(plain)[0]


def test_the_time_limit_bounds_the_whole_read_on_postgresql(postgres_url):
    from sources import ReportSQLError
    source = sources.Source('pg', postgres_url, 1)
    # Each fetch of 2,000 rows is under the limit; all of them are not.
    sql = 'SELECT i, pg_sleep(0.0003) AS s FROM generate_series(1, 8000) AS i'
    with pytest.raises(ReportSQLError, match='time limit of 1s hit'):
        with open_query_rows(source, sql, {}) as rows:
            for _ in rows:
                pass


def test_a_run_split_by_recipient_is_csv_only(app, shop):
    # bursting.py writes each recipient's rows as CSV: another format is
    # refused, not quietly ignored.
    for url, body in (('/api/runs', {'report': 'orders', 'split_by': 'customer_email'}),
                      ('/api/schedules', {'name': 'split', 'report': 'orders',
                                          'split_by': 'customer_email', 'cron': '@daily'})):
        res = app.post_json(url, dict(body, format='xlsx'), expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, 'format')
        assert app.post_json(url, dict(body, format='csv')).status_int in (201, 202)


def test_a_real_at_its_decimal_scale_is_the_number_the_exact_path_gives():
    # typedrows passes such a REAL on as it is: it must be what
    # Decimal(repr(value)).quantize(scale) would have become.
    import random

    from typedrows import _decimal_converter
    rng = random.Random(14)
    for places in (0, 2, 4):
        convert, quantum = _decimal_converter(places), D(1).scaleb(-places)
        for _ in range(5000):
            value = rng.choice([round(rng.uniform(-1e9, 1e9), places),
                                rng.randint(-10 ** 6, 10 ** 6) / 10 ** places])
            exact = float(D(repr(value)).quantize(quantum, rounding=decimal.ROUND_HALF_EVEN))
            got = convert(value)
            got = float(got.quantize(quantum, rounding=decimal.ROUND_HALF_EVEN)) \
                if isinstance(got, D) else got
            assert got == exact, (value, places)


def test_the_message_preview_names_the_file_of_the_chosen_format(app, shop):
    body = {'report': 'orders', 'attachment_name': 'paid-{{ date }}'}
    names = {fmt: app.post_json('/api/messages/preview', dict(body, format=fmt))
             .json['attachment_name'] for fmt in ('csv', 'csv.gz', 'xlsx')}
    assert [names[f].split('.', 1)[1] for f in ('csv', 'csv.gz', 'xlsx')] == \
        ['csv', 'csv.gz', 'xlsx']
    assert app.post_json('/api/messages/preview', body).json['attachment_name'].endswith('.csv')
    res = app.post_json('/api/messages/preview', dict(body, format='pdf'), expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'format')


def test_a_templated_file_name_keeps_the_format_extension(app, jobs, shop, smtp_sink):
    app.post_json('/api/runs', {'report': 'orders', 'to': ['ana@example.org'],
                                'format': 'csv.gz', 'attachment_name': 'orders-{{ rows }}'})
    assert run_queued(jobs) == 1
    name, data = attachment(smtp_sink.messages[0]['message'])
    assert name == 'orders-%d.csv.gz' % Order.select().count()
    assert gzip.decompress(data).startswith(b'\xef\xbb\xbfid,created_at')


def test_mariadb_time_and_plain_rows_in_a_workbook(mariadb_url, tmp_path):
    """PyMySQL reads TIME as a timedelta: the cell is its text. A query with
    no TIME or BOOLEAN column passes its rows through unchanged."""
    source = sources.Source('mysql', mariadb_url, 10)
    export_xlsx(source, "SELECT CAST('12:34:56' AS TIME) AS t, CAST('-01:02:03' AS TIME) AS "
                        "back, TRUE AS yes", tmp_path / 'time.xlsx')
    assert values(read_xlsx(str(tmp_path / 'time.xlsx'))['items']) == [
        ['t', 'back', 'yes'], ['12:34:56', '-1 day, 22:57:57', True]]
    export_xlsx(source, "SELECT 7 AS n, 'x' AS s", tmp_path / 'plain.xlsx')
    assert values(read_xlsx(str(tmp_path / 'plain.xlsx'))['items']) == [['n', 's'], [7, 'x']]
