"""Fixtures: real Redis, PostgreSQL, SQLite and SMTP, all on loopback.

Redis runs as a throwaway redis-server on a free port; PostgreSQL gets a
throwaway database that is dropped at the end, SQLite one file for the
session; in each, the tables are made once and emptied before every test.
`service_env` names these services as a deployment's environment would;
`make_jobs(**settings)` and `web_app(jobs)` build on it. The services
themselves (redis-server, the SMTP sink) are in loopback.py. Under CI
(CI=true) a missing service fails the run instead of skipping.
"""
import os
import shutil
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import models  # noqa: E402
from loopback import RedisServer, SmtpSink, free_port, wait_until  # noqa: E402,F401
from settings import load_settings  # noqa: E402

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
PG_ADMIN_URL = os.environ.get('NIGHTSHIFT_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/test')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: end-to-end tests with real processes')


def missing(what):
    if IN_CI:
        pytest.fail('%s is required in CI' % what)
    pytest.skip('%s not available' % what)


def faketime_library():
    """Path of libfaketime's library for threaded programs (Debian package
    faketime), or None. Preloaded into a process, FAKETIME='+90s' sets its
    clock ahead; the library rather than the faketime wrapper, so that a
    signal sent to the process reaches it."""
    import glob
    found = (glob.glob('/usr/lib/*/faketime/libfaketimeMT.so.1') +
             glob.glob('/usr/lib/faketime/libfaketimeMT.so.1'))
    return found[0] if found else None


@pytest.fixture(scope='session')
def redis_server():
    if shutil.which('redis-server') is None:
        missing('redis-server')
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server):
    import redis
    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    if redis_server.proc is None:  # a test stopped it
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushdb()


# --- PostgreSQL ----------------------------------------------------------

@pytest.fixture(scope='session')
def postgres_url():
    try:
        import psycopg
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:
        missing('PostgreSQL at %s (%s)' % (PG_ADMIN_URL, exc))
    name = 'nightshift_test_%s' % uuid.uuid4().hex[:10]
    admin.execute('CREATE DATABASE %s' % name)
    base = PG_ADMIN_URL.rsplit('/', 1)[0]
    yield '%s/%s' % (base, name)
    models.db.close() if models.db.obj is not None else None
    admin.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
    admin.close()


@pytest.fixture(scope='session')
def sqlite_url(tmp_path_factory):
    """One SQLite file for the session: its tables are made once and emptied
    between tests, as PostgreSQL's are."""
    return 'sqlite:///%s' % (tmp_path_factory.mktemp('sqlite') / 'nightshift.db')


@pytest.fixture(params=['sqlite', 'postgres'])
def database_url(request):
    return request.getfixturevalue('%s_url' % request.param)


REPORTS_DIR = os.path.join(ROOT, 'reports')
# Processes the tests start (consumers, the web server, scripts) read the
# repository's report files whatever config file they are given.
os.environ.setdefault('NIGHTSHIFT_REPORT_PATHS', REPORTS_DIR)

# Database URLs whose tables this session has made: making them (every
# migration step) costs far more than emptying them, on PostgreSQL most.
_TABLES_MADE = set()


@pytest.fixture
def database(database_url):
    """Nightshift's state tables in a throwaway database, with the demo shop
    in the same database (the tests' `demo` source is this database): empty,
    ids counting from 1. Made once per session and database, emptied before
    each test; made again if a test left them unusable."""
    import demo
    database = models.bind_database(database_url, create=False)
    if database_url in _TABLES_MADE and not _emptied(database):
        _TABLES_MADE.discard(database_url)
        database.drop_tables(_state_models(), safe=True)
        database.execute_sql('DROP TABLE IF EXISTS nightshift_schema')
    if database_url not in _TABLES_MADE:
        models.bind_database(database_url)
        _TABLES_MADE.add(database_url)
    demo.open_shop(database)
    yield database
    models.bind_database(database_url, create=False)  # a test may have rebound it
    database.close()


def _state_models():
    import demo
    from peewee import sort_models
    # Children before parents: no foreign key is left pointing at a deleted row.
    return list(reversed(sort_models(demo.DEMO_MODELS + models.ALL_MODELS)))


def _emptied(database):
    """Delete every row and restart the ids. DELETE rather than TRUNCATE: on
    a test's few rows it is several times faster on PostgreSQL, and it does
    not queue behind a reader a test left open. False if that failed."""
    from peewee import AutoField, DatabaseError, PostgresqlDatabase, SqliteDatabase
    quote = database.quote
    try:
        with database.atomic():
            for model in _state_models():
                table = '%s%s%s' % (quote[0], model._meta.table_name, quote[1])
                database.execute_sql('DELETE FROM %s' % table)
                key = model._meta.primary_key
                if isinstance(database, PostgresqlDatabase) and isinstance(key, AutoField):
                    database.execute_sql('SELECT setval(pg_get_serial_sequence(%s, %s), 1, '
                                         'false)', (table, key.column_name))
            if isinstance(database, SqliteDatabase) and database.table_exists(
                    'sqlite_sequence'):  # kept for AUTOINCREMENT keys only
                database.execute_sql('DELETE FROM sqlite_sequence')
    except DatabaseError:
        return False
    return True


def catalogue_of(folder, files):
    """A catalogue of report files a team keeps in `folder` (made here):
    {file name: text}."""
    from reports import Catalogue
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return Catalogue([str(folder)])


def demo_catalogue():
    """The repository's own reports (reports/*.sql), as a deployment has them."""
    from reports import Catalogue
    return Catalogue([REPORTS_DIR])


# --- SMTP (loopback.SmtpSink) ------------------------------------------------

@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


# --- Settings and application -------------------------------------------

@pytest.fixture
def make_settings(tmp_path):
    """Build Settings from a config file in tmp_path plus an env dict."""
    def make(env=None, **values):
        values.setdefault('reports_dir', str(tmp_path / 'reports'))
        values.setdefault('report_paths', REPORTS_DIR)
        values.setdefault('outbox_dir', str(tmp_path / 'outbox'))
        values.setdefault('queue_path', str(tmp_path / 'queue.db'))
        lines = ['[nightshift]'] + ['%s = %s' % item for item in values.items()]
        path = tmp_path / ('config-%s.ini' % uuid.uuid4().hex[:6])
        path.write_text('\n'.join(lines) + '\n')
        env = dict(env or {})
        if 'DATABASE_URL' in env:
            # The demo shop lives in the test's own database.
            env.setdefault('NIGHTSHIFT_SOURCE_DEMO_URL', env['DATABASE_URL'])
        return load_settings(path, environ=env)
    return make


@pytest.fixture
def service_env(database, database_url, redis_url, smtp_sink):
    """The environment variables a deployment would set, naming this test's
    services: its database (tables made and empty; also the `demo` source),
    Redis and the SMTP sink. Change a copy: `dict(service_env, PORT='9124')`."""
    return {'DATABASE_URL': database_url, 'NIGHTSHIFT_SOURCE_DEMO_URL': database_url,
            'REDIS_URL': redis_url, 'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(smtp_sink.port),
            'NIGHTSHIFT_SMTP_SECURITY': 'none', 'MAIL_FROM': 'reports@nightshift.test'}


@pytest.fixture
def settings(make_settings, service_env):
    return make_settings(service_env, retry_delay=0)


@pytest.fixture
def make_jobs(make_settings, service_env):
    """Jobs on this test's services with some settings changed:
    `make_jobs(max_attempts=2)`; environment variables through `env`.
    Retries come at once unless `retry_delay` says otherwise."""
    from tasks import Jobs

    def make(env=None, registry=None, **values):
        values.setdefault('retry_delay', 0)
        settings = make_settings(dict(service_env, **(env or {})), **values)
        return Jobs(settings, registry=registry)
    return make


@pytest.fixture
def jobs(settings):
    from tasks import Jobs
    return Jobs(settings)


def web_app(jobs, **options):
    """A webtest client of the application built on `jobs` (and its settings)."""
    import webtest
    from server import create_app
    return webtest.TestApp(create_app(jobs.settings, jobs, **options))


@pytest.fixture
def app(settings, jobs):
    import webtest
    from server import create_app
    bottle_app = create_app(settings, jobs)
    bottle_app.config['catchall'] = False
    return webtest.TestApp(bottle_app)


@pytest.fixture
def consumer_env(settings, service_env, tmp_path):
    """Environment for a consumer process (or a script) on this test's services."""
    config = tmp_path / 'consumer.ini'
    config.write_text('[nightshift]\nreports_dir = %s\nreport_paths = %s\nretry_delay = 0\n'
                      % (settings.reports_dir, REPORTS_DIR))
    return dict(service_env, NIGHTSHIFT_CONFIG=str(config))


def run_queued(jobs, limit=10):
    """Step the queue by hand: dequeue and execute what is there."""
    done = 0
    # Checking first: an empty Redis dequeue blocks for a second.
    while done < limit and jobs.huey.pending_count():
        task = jobs.huey.dequeue()
        if task is None:
            break
        jobs.huey.execute(task)
        done += 1
    return done


def attachment(message):
    """(filename, bytes) of the single attachment of a parsed message."""
    parts = [p for p in message.walk() if p.get_filename()]
    assert len(parts) == 1, [p.get_content_type() for p in message.walk()]
    return parts[0].get_filename(), parts[0].get_payload(decode=True)


# --- MariaDB / MySQL ---------------------------------------------------------

MARIADB_ADMIN = os.environ.get('NIGHTSHIFT_TEST_MARIADB', 'mysql://root@127.0.0.1:3306/test')


@pytest.fixture(scope='session')
def mariadb_url():
    """A throwaway database on the MariaDB server, dropped at the end."""
    import urllib.parse
    try:
        import pymysql
        parts = urllib.parse.urlsplit(MARIADB_ADMIN)
        admin = pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                                user=parts.username or 'root', password=parts.password or '',
                                autocommit=True, connect_timeout=5)
    except Exception as exc:
        missing('MariaDB at %s (%s)' % (MARIADB_ADMIN, exc))
    name = 'nightshift_test_%s' % uuid.uuid4().hex[:10]
    with admin.cursor() as cursor:
        cursor.execute('CREATE DATABASE %s CHARACTER SET utf8mb4 COLLATE utf8mb4_bin' % name)
    yield '%s/%s' % (MARIADB_ADMIN.rsplit('/', 1)[0], name)
    with admin.cursor() as cursor:
        cursor.execute('DROP DATABASE IF EXISTS %s' % name)
    admin.close()


def fill_items(engine, url, ddl, rows):
    """Create and fill the table `items` as a source's owner would (not through
    Nightshift, which never writes a source). SQLite gets its decimals as
    floats and its dates as ISO text."""
    import datetime
    import decimal
    placeholders = ', '.join(['?' if engine == 'sqlite' else '%s'] * len(rows[0]))
    if engine == 'sqlite':
        import sqlite3
        import sources
        conn = sqlite3.connect(sources.sqlite_path(url))
        rows = [tuple(float(v) if isinstance(v, decimal.Decimal) else
                      (v.isoformat(' ') if isinstance(v, datetime.datetime) else
                       (v.isoformat() if isinstance(v, datetime.date) else v)) for v in row)
                for row in rows]
    elif engine == 'postgres':
        import psycopg
        conn = psycopg.connect(url)
    else:
        import pymysql
        from urllib.parse import urlsplit
        parts = urlsplit(url)
        conn = pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username,
                               password=parts.password or '', database=parts.path[1:],
                               charset='utf8mb4')
    cursor = conn.cursor()
    cursor.execute('DROP TABLE IF EXISTS items')
    cursor.execute(ddl)
    cursor.executemany('INSERT INTO items VALUES (%s)' % placeholders, rows)
    conn.commit()
    conn.close()
