"""Sources on real servers: read-only, time-limited, and the same bytes from
the same SQL on SQLite, PostgreSQL and MariaDB."""
import datetime
import decimal
import textwrap

import pytest

import sources
import sqlexport
import sqlfiles
from conftest import fill_items

D = decimal.Decimal
ROWS = [
    (1, 'Zoë Müller', D('12.50'), 0.1, True, datetime.date(2025, 1, 31),
     datetime.datetime(2025, 1, 31, 10, 0), '=SUM(A1:A9)'),
    (2, None, None, None, None, None, None, None),
    (3, '', D('0.00'), 1e20, False, datetime.date(2024, 2, 29),
     datetime.datetime(2025, 6, 1, 9, 30, 0, 123456), '-5'),
    (4, 'a,b "quoted"\nnext line', D('-3.10'), -2.5, True, datetime.date(1999, 12, 31),
     datetime.datetime(1999, 12, 31, 23, 59, 59, 999999), '-x'),
    (5, '日本語 ✓', D('1234567890.99'), 1.5e-07, False, datetime.date(2025, 1, 1),
     datetime.datetime(2025, 1, 1), '@home'),
    (6, '+1 555', D('0.01'), 3.0, None, datetime.date(2025, 3, 30),
     datetime.datetime(2025, 3, 30, 1, 0, 0, 500000), '| pipe'),
]
DDL = {
    'sqlite': 'CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount DECIMAL(12,2), '
              'price REAL, paid BOOLEAN, day DATE, at DATETIME, note TEXT)',
    'postgres': 'CREATE TABLE items (id integer PRIMARY KEY, name text, amount numeric(12,2), '
                'price double precision, paid boolean, day date, at timestamp, note text)',
    'mysql': 'CREATE TABLE items (id int PRIMARY KEY, name varchar(200), amount decimal(12,2), '
             'price double, paid boolean, day date, at datetime(6), note text) '
             'CHARACTER SET utf8mb4',
}
QUERY = 'SELECT id, name, amount, price, paid, day, at, note FROM items ORDER BY id'


def _fill(engine, url):
    fill_items(engine, url, DDL[engine], ROWS)


@pytest.fixture
def engines(tmp_path, postgres_url, mariadb_url):
    urls = {'sqlite': 'sqlite:///%s' % (tmp_path / 'source.db'),
            'postgres': postgres_url, 'mysql': mariadb_url}
    for engine, url in urls.items():
        _fill(engine, url)
    yield {engine: sources.Source(engine, url, 10) for engine, url in urls.items()}
    import psycopg
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute('DROP TABLE IF EXISTS items')


def export(source, sql, params=None, **options):
    with sqlexport.open_query_csv(source, sql, params or {}, **options) as stream:
        return b''.join(stream), stream


EXPECTED = textwrap.dedent('''\
    id,name,amount,price,paid,day,at,note
    1,Zoë Müller,12.50,0.1,true,2025-01-31,2025-01-31T10:00:00.000000,'=SUM(A1:A9)
    2,,,,,,,
    3,,0.00,1e+20,false,2024-02-29,2025-06-01T09:30:00.123456,-5
    4,"a,b ""quoted""
    next line",-3.10,-2.5,true,1999-12-31,1999-12-31T23:59:59.999999,'-x
    5,日本語 ✓,1234567890.99,1.5e-07,false,2025-01-01,2025-01-01T00:00:00.000000,'@home
    6,'+1 555,0.01,3,,2025-03-30,2025-03-30T01:00:00.500000,'| pipe
    ''').encode()


def test_the_same_sql_gives_the_same_bytes_on_every_engine(engines):
    results = {engine: export(source, QUERY)[0] for engine, source in engines.items()}
    assert results['sqlite'] == EXPECTED
    assert results['postgres'] == EXPECTED
    assert results['mysql'] == EXPECTED


def test_sums_and_casts_keep_their_scale_everywhere(engines):
    sql = ('SELECT COUNT(*) AS n, SUM(amount) AS total, '
           'CAST(AVG(amount) AS DECIMAL(12,2)) AS mean FROM items WHERE amount IS NOT NULL')
    results = {engine: export(source, sql)[0] for engine, source in engines.items()}
    assert set(results.values()) == {b'n,total,mean\n5,1234567900.40,246913580.08\n'}


@pytest.mark.parametrize('engine', ['sqlite', 'postgres', 'mysql'])
@pytest.mark.parametrize('sql', [
    'DELETE FROM items',
    "UPDATE items SET name = 'x'",
    'CREATE TABLE stolen (x int)',
    'DROP TABLE items',
    'SELECT 1; DELETE FROM items',
])
def test_a_write_is_refused_by_the_database_and_changes_nothing(engines, engine, sql):
    source = engines[engine]
    with pytest.raises(sources.ReportSQLError):
        export(source, sql)
    assert export(source, QUERY)[0] == EXPECTED


def test_a_data_modifying_cte_is_refused_on_postgres(engines):
    with pytest.raises(sources.ReportSQLError):
        export(engines['postgres'], 'WITH gone AS (DELETE FROM items RETURNING id) '
                                    'SELECT * FROM gone')
    # Even sent as it is, with no wrapper around it, the connection refuses it.
    source = engines['postgres']
    conn = sources.connect(source)
    try:
        with pytest.raises(Exception) as raw:
            conn.cursor().execute('WITH gone AS (DELETE FROM items RETURNING id) '
                                  'SELECT * FROM gone')
        assert 'read-only' in sources.classify(source, raw.value).message
    finally:
        conn.close()
    assert export(engines['postgres'], QUERY)[0] == EXPECTED


@pytest.mark.parametrize('engine, slow', [
    ('postgres', 'SELECT pg_sleep(5) AS slept'),
    ('mysql', 'SELECT SLEEP(5) AS slept'),
    ('sqlite', 'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) '
               'SELECT count(*) FROM r'),
])
def test_the_time_limit_stops_a_slow_query(engines, engine, slow):
    source = engines[engine]._replace(query_timeout=1)
    with pytest.raises(sources.ReportSQLError) as info:
        export(source, slow)
    assert 'time limit of 1s hit' in str(info.value)
    assert export(source, QUERY)[0] == EXPECTED  # and the next one runs


def test_a_report_may_lower_the_time_limit_but_not_raise_it(engines):
    source = engines['postgres']._replace(query_timeout=1)
    assert sqlexport.effective_timeout(source, 60) == 1
    assert sqlexport.effective_timeout(source, 0.5) == 0.5
    with pytest.raises(sources.ReportSQLError):
        export(source, 'SELECT pg_sleep(3)', timeout=60)


def test_a_source_that_does_not_answer_is_unavailable_not_the_reports_fault(tmp_path):
    from conftest import free_port
    for url in ['postgresql://postgres@127.0.0.1:%d/x' % free_port(),
                'mysql://root@127.0.0.1:%d/x' % free_port(),
                'sqlite:///%s' % (tmp_path / 'missing.db')]:
        with pytest.raises(sources.SourceUnavailable):
            export(sources.Source('gone', url, 5), 'SELECT 1')


@pytest.mark.parametrize('engine', ['sqlite', 'postgres', 'mysql'])
def test_an_unknown_table_is_the_reports_error_with_the_databases_words(engines, engine):
    with pytest.raises(sources.ReportSQLError) as info:
        export(engines[engine], 'SELECT * FROM no_such_table')
    assert 'no_such_table' in str(info.value)


def test_limit_cuts_and_says_so(engines):
    for source in engines.values():
        data, stream = export(source, QUERY, limit=3)
        assert data == b''.join(EXPECTED.split(b'\n4,')[:1]) + b'\n'
        assert (stream.rows, stream.truncated) == (3, True)


def test_escaping_can_be_turned_off_and_a_bom_added(engines):
    for source in engines.values():
        data, _ = export(source, 'SELECT note FROM items WHERE id = 1', escape=False,
                         bom=True)
        assert data == b'\xef\xbb\xbfnote\n=SUM(A1:A9)\n'


# --- report files -------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


ORDERS = '''\
    /*
    title: Items since a day
    description: Items on or after a day, optionally only paid ones.
    source: shop
    params:
      since: {type: date, required: true, help: First day included.}
      min_amount: {type: decimal, help: Smallest amount.}
      paid: {type: bool}
    */
    SELECT id, name, amount FROM items
    WHERE day >= :since
      AND (:min_amount IS NULL OR amount >= :min_amount)
      AND (:paid IS NULL OR paid = :paid)
      AND name NOT LIKE '%:nope%'  -- a colon in a string or comment is not a :placeholder
    ORDER BY id
    '''


def test_a_report_file_binds_typed_parameters_on_every_engine(engines, tmp_path):
    report = sqlfiles.read_report_file(write(tmp_path, 'items_since.sql', ORDERS))
    assert (report.name, report.title, report.source) == ('items_since', 'Items since a day',
                                                          'shop')
    typed = {'since': datetime.date(2025, 1, 1), 'min_amount': D('1.5'), 'paid': None}
    for engine, source in engines.items():
        sql, params = sqlfiles.bind(report, engine, typed)
        data, _ = export(source, sql, params)
        assert data == 'id,name,amount\n1,Zoë Müller,12.50\n5,日本語 ✓,1234567890.99\n'.encode(), \
            engine
        sql, params = sqlfiles.bind(report, engine, dict(typed, min_amount=None, paid=False))
        data, _ = export(source, sql, params)
        assert data == b'id,name,amount\n5,\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xe2\x9c\x93,' \
                       b'1234567890.99\n', engine


@pytest.mark.parametrize('text, line, words', [
    ('SELECT 1', 1, 'starts with a /* ... */ header'),
    ('/*\ntitle: T\n*/\nDELETE FROM items', 4, 'this starts with DELETE'),
    ('/*\ntitle: T\n*/\nSELECT 1;\nDELETE FROM items', 5, 'one statement per report'),
    ('/*\ntitle: T\ncolour: red\n*/\nSELECT 1', 3, "unknown header key 'colour'"),
    ('/*\ntitle: T\nparams:\n  since: {type: when}\n*/\nSELECT :since', 4, 'type must be'),
    ('/*\ntitle: T\n*/\nSELECT * FROM t WHERE a = :since', 4, ':since is not a declared'),
    ('/*\ntitle: T\nparams:\n  since: {type: date}\n*/\nSELECT 1', 4, 'never uses :since'),
    ('/*\ntitle: [unclosed\n*/\nSELECT 1', 2, 'not valid YAML'),
    ('/*\ndescription: no title\n*/\nSELECT 1', 1, 'title: give the report a title'),
    ('/*\ntitle: T\nparams:\n  s: {type: choice}\n*/\nSELECT :s', 4, 'needs choices'),
    ("/*\ntitle: T\nparams:\n  n: {type: int, min: x}\n*/\nSELECT :n", 4, "min 'x'"),
    ('/*\ntitle: T\n*/\nSELECT \'unclosed', 4, 'cannot be read'),
])
def test_a_broken_report_file_says_which_line_and_why(tmp_path, text, line, words):
    path = write(tmp_path, 'broken.sql', text)
    with pytest.raises(sqlfiles.ReportFileError) as info:
        sqlfiles.read_report_file(path)
    assert info.value.line == line, str(info.value)
    assert words in info.value.message
    assert str(info.value).startswith('%s:%d: ' % (path, line))


# --- the catalogue as a deployment uses it --------------------------------------

PY_REPORTS = '''
from params import Param
from reports import report


@report('paid_items', 'Paid items', source='shop',
        params=[Param('min_amount', 'decimal', default=0)])
def paid_items(min_amount):
    """Items paid for, from a Python module the settings name."""
    return 'SELECT id, amount FROM items WHERE paid AND amount >= :min_amount ORDER BY id'
'''


def test_python_reports_come_from_a_module_the_settings_name(engines, make_settings, tmp_path,
                                                             monkeypatch):
    import sys
    from reports import create_catalogue
    (tmp_path / 'team_reports_mod.py').write_text(PY_REPORTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for engine, source in engines.items():
        sys.modules.pop('team_reports_mod', None)
        settings = make_settings({'NIGHTSHIFT_SOURCE_SHOP_URL': source.url},
                                 python_reports='team_reports_mod',
                                 report_paths=str(tmp_path / 'none'))
        catalogue = create_catalogue(settings)
        definition = catalogue.get('paid_items')
        assert definition.describe()['description'] == \
            'Items paid for, from a Python module the settings name.'
        import runfiles
        typed = definition.parse({'min_amount': '5'})
        with runfiles.open_report(definition, settings, typed, True, False) as stream:
            assert b''.join(stream) == b'id,amount\n1,12.50\n', engine


def test_check_prepares_every_report_and_names_file_and_line(engines, tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    folder = tmp_path / 'sql'
    folder.mkdir()
    (folder / 'good.sql').write_text('/*\ntitle: Good\nsource: shop\n*/\nSELECT id FROM items\n')
    (folder / 'typo.sql').write_text('/*\ntitle: Typo\nsource: shop\n*/\n\nSELECT id FROM itemz\n')
    (folder / 'header.sql').write_text('/*\ntitle: H\nsource: shop\ncolour: red\n*/\nSELECT 1\n')
    (folder / 'elsewhere.sql').write_text('/*\ntitle: E\nsource: nowhere\n*/\nSELECT 1\n')
    config = tmp_path / 'c.ini'
    config.write_text('[nightshift]\nreport_paths = sql\n')
    env = dict(os.environ, NIGHTSHIFT_CONFIG=str(config),
               NIGHTSHIFT_SOURCE_SHOP_URL=engines['postgres'].url)
    env.pop('NIGHTSHIFT_REPORT_PATHS', None)
    done = subprocess.run([sys.executable, 'scripts/export.py', '--check'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert 'ok  good (shop)' in lines
    assert '%s:6: report typo on source shop: relation "itemz" does not exist' \
        % (folder / 'typo.sql') in lines
    assert "%s:4: unknown header key 'colour'; expected title, description, source, " \
        "timeout, escape_formulas, params" % (folder / 'header.sql') in lines
    assert "%s:5: report elsewhere reads source 'nowhere', which is not configured" \
        % (folder / 'elsewhere.sql') in lines


def test_a_run_that_hits_the_time_limit_fails_and_the_worker_goes_on(engines, make_jobs,
                                                                      tmp_path):
    import runs
    from conftest import run_queued
    from models import Run
    folder = tmp_path / 'sql'
    folder.mkdir()
    (folder / 'slow.sql').write_text('/*\ntitle: Slow\nsource: shop\n*/\n'
                                     'SELECT pg_sleep(3) AS slept\n')
    (folder / 'quick.sql').write_text('/*\ntitle: Quick\nsource: shop\n*/\n'
                                      'SELECT id FROM items ORDER BY id\n')
    jobs = make_jobs(env={'NIGHTSHIFT_SOURCE_SHOP_URL': engines['postgres'].url},
                     report_paths=str(folder), query_timeout=1)
    settings = jobs.settings
    slow = runs.create_run(jobs.registry, settings, 'slow', {}, ['a@example.org'])
    quick = runs.create_run(jobs.registry, settings, 'quick', {}, ['a@example.org'])
    jobs.enqueue_run(slow)
    jobs.enqueue_run(quick)
    run_queued(jobs)
    slow, quick = Run.get_by_id(slow.id), Run.get_by_id(quick.id)
    assert (slow.status, slow.attempts) == ('failed', 1)
    assert 'time limit of 1s hit' in slow.error
    assert (quick.status, quick.rows) == ('delivered', 6)


def test_a_python_reports_module_that_fails_to_import_is_listed_not_fatal(tmp_path,
                                                                         monkeypatch):
    from conftest import REPORTS_DIR
    from reports import Catalogue
    (tmp_path / 'bad_reports_mod.py').write_text('import no_such_module_anywhere\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    catalogue = Catalogue([REPORTS_DIR], ['bad_reports_mod'])
    assert [r.name for r in catalogue] == ['customers', 'orders']
    error = catalogue.broken['bad_reports_mod']
    assert 'cannot be imported: ModuleNotFoundError' in error.message


def test_an_abandoned_mariadb_export_stops_its_query(engines):
    """A client that goes away mid-download: the query is killed on the
    server, not left to stream to the end (nor drained by the driver)."""
    import time
    import pymysql
    from urllib.parse import urlsplit
    source = engines['mysql']._replace(query_timeout=0)  # no limit to end it for us
    marker = 'abandoned_%d' % int(time.time() * 1000)
    # About 100 s of rows if nothing stops it.
    sql = "SELECT seq, SLEEP(0.0005) AS %s FROM seq_1_to_200000" % marker
    with sqlexport.open_query_csv(source, sql, {}) as stream:
        chunks = iter(stream)
        assert next(chunks).startswith(b'seq,%s\n' % marker.encode())
        left = time.monotonic()
        # Leaving here unfinished is what a reader that had enough does.
    # Generous: draining the rest instead of stopping it would take ~100 s.
    assert time.monotonic() - left < 15
    parts = urlsplit(source.url)
    admin = pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username,
                            password=parts.password or '')
    try:
        def running():
            with admin.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM information_schema.processlist "
                               "WHERE info LIKE %s AND info NOT LIKE %s",
                               ('%' + marker + '%', '%processlist%'))
                return cursor.fetchone()[0]
        deadline = time.monotonic() + 10
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running() == 0
    finally:
        admin.close()
