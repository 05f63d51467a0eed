"""Nightshift in a database that is already someone's: its own tables are
nightshift_*, made by logged, numbered migrations; the team's tables - even
ones called run, schedule and delivery - are never created, altered or
written, whatever Nightshift does there."""
import datetime
import logging
import subprocess
import urllib.parse
import uuid

import pytest
import webtest

import migrations
import models
import runfiles
from conftest import PG_ADMIN_URL, MARIADB_ADMIN, run_queued

USER_TABLES = ('order', 'customer', 'run', 'schedule', 'delivery')
USER_DDL = {
    'postgres': [
        'CREATE TABLE "order" (id serial PRIMARY KEY, sku text NOT NULL, qty integer NOT NULL)',
        'CREATE TABLE customer (id serial PRIMARY KEY, full_name text)',
        'CREATE TABLE run (id serial PRIMARY KEY, note text)',
        'CREATE TABLE schedule (id serial PRIMARY KEY, cron_text text)',
        'CREATE TABLE delivery (id serial PRIMARY KEY, address text, run_id integer '
        'REFERENCES run (id))',
        'CREATE INDEX order_sku ON "order" (sku)',
    ],
    'mysql': [
        'CREATE TABLE `order` (id int AUTO_INCREMENT PRIMARY KEY, sku varchar(20) NOT NULL, '
        'qty int NOT NULL)',
        'CREATE TABLE customer (id int AUTO_INCREMENT PRIMARY KEY, full_name varchar(100))',
        'CREATE TABLE run (id int AUTO_INCREMENT PRIMARY KEY, note varchar(100))',
        'CREATE TABLE schedule (id int AUTO_INCREMENT PRIMARY KEY, cron_text varchar(50))',
        'CREATE TABLE delivery (id int AUTO_INCREMENT PRIMARY KEY, address varchar(100), '
        'run_id int, FOREIGN KEY (run_id) REFERENCES run (id))',
    ],
}
USER_ROWS = [
    'INSERT INTO {order} (sku, qty) VALUES (\'A-1\', 3), (\'B-2\', 0), (\'=cmd\', 7)',
    'INSERT INTO customer (full_name) VALUES (\'Ana\'), (NULL)',
    'INSERT INTO run (note) VALUES (\'the team\'\'s own run table\')',
    'INSERT INTO schedule (cron_text) VALUES (\'0 7 * * *\')',
    'INSERT INTO delivery (address, run_id) VALUES (\'x@example.org\', 1)',
]
REPORT = '''/*
title: Stock
source: shop
params:
  min_qty: {type: int, default: 0}
*/
SELECT id, sku, qty FROM %s WHERE qty >= :min_qty ORDER BY id
'''


class UserDatabase:
    """A throwaway database holding the team's tables, made with the
    driver directly (as the team would have)."""

    def __init__(self, engine):
        self.engine = engine
        self.name = 'nightshift_user_%s' % uuid.uuid4().hex[:8]
        admin = PG_ADMIN_URL if engine == 'postgres' else MARIADB_ADMIN
        self.url = '%s/%s' % (admin.rsplit('/', 1)[0], self.name)
        self._admin(['CREATE DATABASE %s' % self.name])
        self.execute(USER_DDL[engine] + [sql.format(order=self.quote('order'))
                                         for sql in USER_ROWS])

    def quote(self, name):
        return '"%s"' % name if self.engine == 'postgres' else '`%s`' % name

    def _connect(self, url, autocommit=True):
        if self.engine == 'postgres':
            import psycopg
            return psycopg.connect(url, autocommit=autocommit)
        import pymysql
        parts = urllib.parse.urlsplit(url)
        return pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                               user=parts.username or 'root', password=parts.password or '',
                               database=parts.path.lstrip('/') or None, autocommit=autocommit)

    def _admin(self, statements):
        admin = PG_ADMIN_URL if self.engine == 'postgres' else MARIADB_ADMIN
        if self.engine == 'mysql':
            admin = admin.rsplit('/', 1)[0] + '/'
        self._run(admin, statements)

    def execute(self, statements):
        self._run(self.url, statements)

    def _run(self, url, statements):
        conn = self._connect(url)
        try:
            cursor = conn.cursor()
            for sql in statements:
                cursor.execute(sql)
        finally:
            conn.close()

    def query(self, sql):
        conn = self._connect(self.url)
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            return cursor.fetchall()
        finally:
            conn.close()

    def snapshot(self):
        """Every user table's definition and rows."""
        if self.engine == 'postgres':
            schema = subprocess.run(
                ['pg_dump', '--schema-only', '--no-owner', '--dbname', self.url] +
                sum((['-t', '"%s"' % t] for t in USER_TABLES), []),
                capture_output=True, text=True, check=True).stdout
            # pg_dump 15.14+ wraps its output in a random \restrict key.
            schema = '\n'.join(line for line in schema.splitlines()
                                if not line.startswith(('\\restrict', '\\unrestrict')))
        else:
            schema = '\n'.join(self.query('SHOW CREATE TABLE %s' % self.quote(t))[0][1]
                               for t in USER_TABLES)
        rows = {t: self.query('SELECT * FROM %s ORDER BY id' % self.quote(t))
                for t in USER_TABLES}
        return schema, rows

    def drop(self):
        if self.engine == 'postgres':
            self._admin(['DROP DATABASE IF EXISTS %s WITH (FORCE)' % self.name])
        else:
            self._admin(['DROP DATABASE IF EXISTS %s' % self.name])


@pytest.fixture(params=['postgres', 'mysql'])
def user_database(request):
    request.getfixturevalue('postgres_url' if request.param == 'postgres' else 'mariadb_url')
    database = UserDatabase(request.param)
    yield database
    if models.db.obj is not None:
        models.db.close()
    database.drop()


def test_nightshift_never_touches_the_teams_tables(user_database, make_settings, redis_url,
                                                   smtp_sink, tmp_path):
    from server import create_app
    from tasks import Jobs
    before = user_database.snapshot()
    folder = tmp_path / 'sql'
    folder.mkdir()
    (folder / 'stock.sql').write_text(REPORT % user_database.quote('order'))
    settings = make_settings({
        'DATABASE_URL': user_database.url, 'NIGHTSHIFT_SOURCE_SHOP_URL': user_database.url,
        'REDIS_URL': redis_url, 'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(smtp_sink.port),
        'NIGHTSHIFT_SMTP_SECURITY': 'none'}, report_paths=str(folder), retry_delay=0,
        file_store='database')
    models.bind_database(settings.database_url)
    jobs = Jobs(settings)
    app = webtest.TestApp(create_app(settings, jobs))

    # A download, a run by email, a schedule and its tick, retention.
    download = app.get('/reports/stock.csv?min_qty=1')
    assert download.body == b"\xef\xbb\xbfid,sku,qty\n1,A-1,3\n3,'=cmd,7\n"
    run_id = app.post_json('/api/runs', {'report': 'stock', 'to': ['a@example.org']}).json['id']
    run_queued(jobs)
    assert app.get('/api/runs/%d' % run_id).json['status'] == 'delivered'
    assert len(smtp_sink.messages) == 1
    app.post_json('/api/schedules', {'name': 'nightly', 'report': 'stock',
                                     'to': ['b@example.org'], 'cron': '* * * * *'})
    jobs.tick(models.utcnow() + datetime.timedelta(minutes=2))
    run_queued(jobs)
    assert len(smtp_sink.messages) == 2
    later = models.utcnow() + datetime.timedelta(days=settings.retention_days + 1)
    assert runfiles.remove_expired_files(settings, jobs.store, later) == 2
    jobs.tick(later)

    assert user_database.snapshot() == before
    tables = {t.lower() for (t,) in user_database.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
        % ("'public'" if user_database.engine == 'postgres' else "'%s'" % user_database.name))}
    assert tables - set(USER_TABLES) == {m._meta.table_name for m in models.ALL_MODELS} | {
        'nightshift_schema'}


LEGACY_SQLITE = [
    'CREATE TABLE run (id INTEGER NOT NULL PRIMARY KEY, report VARCHAR(255) NOT NULL, '
    'params TEXT NOT NULL, recipients TEXT NOT NULL, status VARCHAR(255) NOT NULL, '
    '"rows" INTEGER NOT NULL, bytes INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT, '
    '"trigger" VARCHAR(255) NOT NULL, schedule VARCHAR(255), slot_at DATETIME, '
    'created_at DATETIME NOT NULL, file_key VARCHAR(255), file_name VARCHAR(255), '
    'file_bytes INTEGER, escape_formulas INTEGER NOT NULL)',
    "INSERT INTO run VALUES (7, 'orders', '{\"status\": \"paid\"}', '[\"a@example.org\"]', "
    "'delivered', 5, 50, 1, NULL, 'schedule', 'nightly', '2025-01-01 07:00:00', "
    "'2025-01-01 07:00:01', 'run-7/orders.csv', 'orders.csv', 50, 1)",
    'CREATE TABLE delivery (id INTEGER NOT NULL PRIMARY KEY, run_id INTEGER NOT NULL, '
    'address VARCHAR(255) NOT NULL, status VARCHAR(255) NOT NULL, error TEXT, '
    'sent_at DATETIME)',
    "INSERT INTO delivery VALUES (3, 7, 'a@example.org', 'sent', NULL, '2025-01-01 07:00:02')",
    'CREATE TABLE schedule (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, '
    'report VARCHAR(255) NOT NULL, params TEXT NOT NULL, recipients TEXT NOT NULL, '
    'cron VARCHAR(255) NOT NULL, timezone VARCHAR(255) NOT NULL, enabled INTEGER NOT NULL, '
    'managed_by VARCHAR(255) NOT NULL, checked_through DATETIME NOT NULL, '
    'created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)',
    "INSERT INTO schedule VALUES (1, 'nightly', 'orders', '{}', '[\"a@example.org\"]', "
    "'0 7 * * *', 'Europe/Lisbon', 1, 'api', '2025-01-01 07:00:00', '2024-12-01 00:00:00', "
    "'2024-12-01 00:00:00')",
    'CREATE TABLE reportfilechunk (key VARCHAR(255) NOT NULL, seq INTEGER NOT NULL, '
    'data BLOB NOT NULL, PRIMARY KEY (key, seq))',
    "INSERT INTO reportfilechunk VALUES ('run-7/orders.csv', 0, X'69640a31')",
    'CREATE TABLE appsecret (name VARCHAR(255) NOT NULL PRIMARY KEY, value VARCHAR(255) '
    'NOT NULL)',
    "INSERT INTO appsecret VALUES ('links', 'kept-secret-value')",
]


def legacy_database(tmp_path):
    """The path of a SQLite file as the previous release left it."""
    import sqlite3
    path = tmp_path / 'old.db'
    conn = sqlite3.connect(str(path))
    for sql in LEGACY_SQLITE:
        conn.execute(sql)
    conn.commit()
    conn.close()
    return path


def test_a_database_of_the_previous_release_is_carried_over(tmp_path, caplog):
    path = legacy_database(tmp_path)
    caplog.set_level(logging.INFO, logger='nightshift.migrations')
    try:
        database = models.bind_database('sqlite:///%s' % path)
        run = models.Run.get_by_id(7)
        assert (run.report, run.params, run.status, run.schedule, run.file_key) == \
            ('orders', {'status': 'paid'}, 'delivered', 'nightly', 'run-7/orders.csv')
        assert run.queued_at is not None and run.bom is True  # columns it did not have
        assert [(d.id, d.address, d.status) for d in run.deliveries] == \
            [(3, 'a@example.org', 'sent')]
        schedule = models.Schedule.get(models.Schedule.name == 'nightly')
        assert (schedule.cron, schedule.timezone) == ('0 7 * * *', 'Europe/Lisbon')
        assert models.AppSecret.get_by_id('links').value == 'kept-secret-value'
        from filestore import DatabaseFileStore
        assert b''.join(DatabaseFileStore().open_chunks('run-7/orders.csv')) == b'id\n1'
        assert models.Run.create(report='customers').id == 8  # ids go on after the old ones
        steps = [r.getMessage() for r in caplog.records if 'applying step' in r.getMessage()]
        assert len(steps) == len(migrations.MIGRATIONS)
        assert any('carried over from the previous release' in r.getMessage()
                   for r in caplog.records)
        assert database.table_exists('run')  # the old tables are left as they were
        assert migrations.pending(database) == []
        assert models.bind_database('sqlite:///%s' % path) is database  # nothing more to do
    finally:
        models.db.close()


def test_a_foreign_table_named_run_is_not_carried_over(tmp_path, caplog):
    import sqlite3
    path = tmp_path / 'team.db'
    conn = sqlite3.connect(str(path))
    conn.execute('CREATE TABLE run (id INTEGER PRIMARY KEY, report TEXT, params TEXT, '
                 'recipients TEXT, status TEXT, attempts INTEGER, "trigger" TEXT, '
                 'created_at TEXT, pilot TEXT)')
    conn.execute("INSERT INTO run VALUES (1, 'x', '{}', '[]', 'ok', 0, 'w', '2025', 'Ada')")
    conn.commit()
    conn.close()
    try:
        models.bind_database('sqlite:///%s' % path)
        assert models.Run.select().count() == 0
        assert any("table 'run' is not one Nightshift made" in r.getMessage()
                   for r in caplog.records)
    finally:
        models.db.close()
    conn = sqlite3.connect(str(path))
    assert conn.execute('SELECT * FROM run').fetchall() == [
        (1, 'x', '{}', '[]', 'ok', 0, 'w', '2025', 'Ada')]
    conn.close()


def test_a_schema_that_is_behind_is_not_changed_without_being_told(tmp_path):
    path = legacy_database(tmp_path)
    try:
        database = models.bind_database('sqlite:///%s' % path, create=False)
        database.create_tables(models.ALL_MODELS)  # made by step 1 of an older run...
        database.execute_sql('CREATE TABLE nightshift_schema (version INTEGER PRIMARY KEY, '
                             'name TEXT, applied_at TEXT)')
        database.execute_sql("INSERT INTO nightshift_schema VALUES (1, 'x', 'y')")
        with pytest.raises(migrations.SchemaBehind) as info:
            migrations.migrate(database, auto=False)
        assert 'scripts/migrate.py --apply' in str(info.value)
        assert models.Run.select().count() == 0
        assert migrations.migrate(database) == [v for v, _, _ in migrations.MIGRATIONS if v > 1]
        assert models.Run.select().count() == 1
    finally:
        models.db.close()
