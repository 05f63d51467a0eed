#!/usr/bin/env python
"""Benchmarks: Nightshift's export paths against the baselines, side by side.

    .venv/bin/python scripts/bench.py [--rows 1000000] [--repeat 3] [--out docs/benchmarks.md]
    .venv/bin/python scripts/bench.py --smoke      # tiny and quick: CI runs it
    .venv/bin/python scripts/bench.py --burst-only [--burst-runs 1000] [--burst-rounds 3]
        # issue #16's bursts; rounds: the slot bursts, median shown

Builds its own data (the demo shop in a SQLite file and, when they answer,
in a throwaway PostgreSQL database and a throwaway MariaDB database with the
same rows), runs every way of exporting the `orders` report's statement in
turn, `--repeat` rounds interleaved so machine noise hits them alike, and
prints medians and ratios as Markdown tables (also written to --out).
Nightshift's way is the real one: the report file, runfiles.open_report and
sqlexport on a `demo` source. Memory is the peak RSS of a fresh process per
export. Loopback only; bounded in time.
"""
import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # the loopback services live with the tests

PG_ADMIN_URL = os.environ.get('NIGHTSHIFT_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/test')
MARIADB_ADMIN_URL = os.environ.get('NIGHTSHIFT_TEST_MARIADB', 'mysql://root@127.0.0.1:3306/test')
ENGINE_NAMES = {'sqlite': 'SQLite', 'postgres': 'PostgreSQL', 'mysql': 'MariaDB'}

# Each export way runs in a child process (fresh memory, its own peak RSS):
# python bench.py --child WAY SOURCE_URL OUT. A way is a setup function
# (imports, settings, the report's statement: not timed, a running worker
# has them already) returning the timed export, which returns its row count.
CHILD_WAYS = {}


def child_way(name):
    def register(fn):
        CHILD_WAYS[name] = fn
        return fn
    return register


def report_folder(url, workdir):
    """Where the bench reads the orders report for the source at `url`.

    reports/orders.sql quotes its table as "order", which MariaDB reads as a
    string (no ANSI_QUOTES): a MariaDB team writes `order`. The bench makes
    that one change, with sqlglot's tokenizer, in a copy under workdir."""
    import sources
    if sources.engine_of(url) != 'mysql':
        return os.path.join(ROOT, 'reports')
    folder = os.path.join(workdir, 'reports-mariadb')
    path = os.path.join(folder, 'orders.sql')
    if not os.path.exists(path):
        import sqlglot
        from sqlglot.tokens import TokenType
        with open(os.path.join(ROOT, 'reports', 'orders.sql'), encoding='utf-8') as f:
            text = f.read()
        out, last = [], 0
        for token in sqlglot.tokenize(text, read='postgres'):
            if token.token_type == TokenType.IDENTIFIER and text[token.start] == '"':
                out += [text[last:token.start], '`%s`' % token.text.replace('`', '``')]
                last = token.end + 1
        os.makedirs(folder, exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(''.join(out) + text[last:])
    return folder


def orders_report(url, workdir):
    """(definition, settings) of the orders report on a `demo` source at
    `url`, read the way a worker reads it."""
    from reports import Catalogue
    from settings import load_settings
    # A generous time limit: the default (300 s) bounds the whole stream, and
    # the bench measures speed, not that policy.
    settings = load_settings(os.path.join(ROOT, 'config.ini'), environ={
        'NIGHTSHIFT_SOURCE_DEMO_URL': url, 'NIGHTSHIFT_QUERY_TIMEOUT': '3600',
        'NIGHTSHIFT_REPORT_PATHS': report_folder(url, workdir)})
    definition = Catalogue(settings.report_folders).get('orders')
    return definition, settings


def orders_statement(url, workdir):
    """(sql, params) exactly as Nightshift binds the orders report for the
    engine of `url`: every baseline runs this same statement."""
    import sources
    definition, _ = orders_report(url, workdir)
    return definition.statement(sources.engine_of(url), definition.parse({}))


def mysql_options(url):
    parts = urllib.parse.urlsplit(url)
    return dict(host=parts.hostname or '127.0.0.1', port=parts.port or 3306,
                user=urllib.parse.unquote(parts.username or 'root'),
                password=urllib.parse.unquote(parts.password or ''),
                database=parts.path.lstrip('/') or None)


@child_way('nightshift')
def _nightshift(url, out):
    """What a run does: runfiles.open_report (sqlexport.open_query_csv on the
    source), escaping on, decimals and times formatted, written atomically."""
    import runfiles
    from export import write_file
    # sqlexport imports these on the first SQLite query; a worker has them.
    import sqlglot.optimizer.annotate_types  # noqa: F401
    import sqlglot.optimizer.qualify  # noqa: F401
    definition, settings = orders_report(url, os.path.dirname(out))
    typed = definition.parse({})

    def export():
        with runfiles.open_report(definition, settings, typed, escape=True, bom=False) as stream:
            write_file(stream, out)
        return stream.rows
    return export


def _writing(out, header, rows):
    import csv
    count = 0
    with open(out, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for batch in rows:
            writer.writerows(batch)
            count += len(batch)
    return count


@child_way('stdlib')
def _stdlib(url, out):
    """sqlite3 cursor -> csv.writer.writerows, no escaping (the baseline)."""
    import sqlite3

    import sources
    sql, params = orders_statement(url, os.path.dirname(out))

    def export():
        conn = sqlite3.connect(sources.sqlite_path(url))
        cursor = conn.execute(sql, params)
        rows = _writing(out, [d[0] for d in cursor.description], _batches(cursor))
        conn.close()
        return rows
    return export


def _batches(cursor, size=2000):
    while True:
        batch = cursor.fetchmany(size)
        if not batch:
            return
        yield batch


@child_way('psycopg-named')
def _psycopg_named(url, out):
    """psycopg server-side cursor -> csv.writer (the driver baseline)."""
    import psycopg
    sql, params = orders_statement(url, os.path.dirname(out))

    def export():
        with psycopg.connect(url) as conn, conn.transaction():
            cursor = conn.cursor(name='bench')
            cursor.itersize = 2000
            cursor.execute(sql, params)
            return _writing(out, [d.name for d in cursor.description], _batches(cursor))
    return export


@child_way('pymysql-sscursor')
def _pymysql_sscursor(url, out):
    """PyMySQL unbuffered SSCursor -> csv.writer, values as the driver
    gives them (the driver baseline)."""
    import pymysql
    import pymysql.cursors
    sql, params = orders_statement(url, os.path.dirname(out))

    def export():
        conn = pymysql.connect(charset='utf8mb4', **mysql_options(url))
        cursor = conn.cursor(pymysql.cursors.SSCursor)
        cursor.execute(sql, params)
        rows = _writing(out, [d[0] for d in cursor.description], _batches(cursor))
        conn.close()
        return rows
    return export


def run_child(way, url, out, script=__file__):
    """Run one export in a fresh process of `script` (its `--child` calls
    child_main); (seconds, peak RSS MB, rows)."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), '--child', way, url, out],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError('%s failed: %s' % (way, proc.stderr[-2000:]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info['seconds'], info['peak_mb'], info['rows']


def child_main(way, url, out, ways=CHILD_WAYS):
    export = ways[way](url, out)
    started = time.perf_counter()
    rows = export()
    seconds = time.perf_counter() - started
    print(json.dumps({'seconds': seconds, 'peak_mb': peak_rss_mb(), 'rows': rows}))


def peak_rss_mb():
    """This process's peak RSS since its exec. ru_maxrss would not do: Linux
    carries it over exec from the fork, i.e. the parent's size at the time."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_command(args, out_path, stdin_text=None, env=None):
    """A command-line tool's export into `out_path`; (seconds, peak RSS MB of
    the tool itself, data lines written after the header).

    GNU time measures the tool after exec; the rusage of a child forked
    from this process would count this process's pages too."""
    gnu_time = '/usr/bin/time' if os.path.exists('/usr/bin/time') else None
    measured = os.path.join(tempfile.gettempdir(), 'nightshift-bench-%d.rss' % os.getpid())
    command = [gnu_time, '-f', '%M', '-o', measured] + args if gnu_time else args
    started = time.perf_counter()
    with open(out_path, 'wb') as out:
        subprocess.run(command, stdout=out, check=True, env=env,
                       input=stdin_text.encode() if stdin_text is not None else None)
    seconds = time.perf_counter() - started
    peak = float('nan')
    if gnu_time:
        with open(measured) as f:
            peak = int(f.read().split()[-1]) / 1024.0
        os.unlink(measured)
    return seconds, peak, count_lines(out_path) - 1


def count_lines(path):
    # The orders rows hold no line breaks, so lines are rows in every format.
    lines = 0
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            lines += block.count(b'\n')
    return lines


def customers_for(rows):
    return max(rows // 100, 10)


def make_sqlite(path, rows):
    """A demo shop with `rows` orders in a SQLite file; its source URL."""
    import demo
    url = 'sqlite:///%s' % os.path.abspath(path)
    database = demo.open_shop(url)
    demo.seed(customers=customers_for(rows), orders=rows)
    database.close()
    return url


def make_postgres(rows, cleanup):
    """The same shop in a throwaway PostgreSQL database (dropped by
    `cleanup`, an ExitStack); None when PostgreSQL does not answer."""
    try:
        import psycopg
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        print('PostgreSQL not reachable (%s): its rows are left out' % exc)
        return None
    name = 'nightshift_bench_%s' % uuid.uuid4().hex[:8]
    admin.execute('CREATE DATABASE %s' % name)

    def drop():
        admin.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
        admin.close()
    cleanup.callback(drop)
    url = '%s/%s' % (PG_ADMIN_URL.rsplit('/', 1)[0], name)
    import demo
    database = demo.open_shop(url)
    demo.seed(customers=customers_for(rows), orders=rows)
    database.close()
    return url


def make_mariadb(sqlite_url, cleanup, workdir):
    """A throwaway MariaDB database holding the rows of the SQLite shop at
    `sqlite_url` (dropped by `cleanup`); None when MariaDB does not answer."""
    try:
        import pymysql
        admin = pymysql.connect(autocommit=True, connect_timeout=3,
                                **dict(mysql_options(MARIADB_ADMIN_URL), database=None))
    except Exception as exc:
        print('MariaDB not reachable (%s): its rows are left out' % exc)
        return None
    name = 'nightshift_bench_%s' % uuid.uuid4().hex[:8]
    with admin.cursor() as cursor:
        cursor.execute('CREATE DATABASE %s CHARACTER SET utf8mb4' % name)

    def drop():
        with admin.cursor() as cursor:
            cursor.execute('DROP DATABASE IF EXISTS %s' % name)
        admin.close()
    cleanup.callback(drop)
    url = '%s/%s' % (MARIADB_ADMIN_URL.rsplit('/', 1)[0], name)
    import demo
    demo.open_shop(url).close()  # the shop's own tables, as Peewee makes them
    load_mariadb(sqlite_url, url, workdir)
    return url


SHOP_TABLES = (('customer', ('id', 'name', 'email', 'created_at')),
               ('order', ('id', 'customer_id', 'status', 'amount', 'created_at')))


def load_mariadb(sqlite_url, url, workdir):
    """Copy the shop's rows from SQLite into MariaDB: LOAD DATA LOCAL from a
    tab-separated file, or batched INSERTs where the server refuses that."""
    import sqlite3

    import pymysql

    import sources
    source = sqlite3.connect(sources.sqlite_path(sqlite_url))
    conn = pymysql.connect(charset='utf8mb4', local_infile=True, **mysql_options(url))
    try:
        for table, columns in SHOP_TABLES:
            select = 'SELECT %s FROM "%s" ORDER BY id' % (', '.join(columns), table)
            target = '`%s` (%s)' % (table, ', '.join(columns))
            path = os.path.join(workdir, 'load-%s.tsv' % table)
            with open(path, 'w', encoding='utf-8', newline='') as f:
                for row in source.execute(select):
                    f.write('\t'.join(_tsv(v) for v in row) + '\n')
            with conn.cursor() as cursor:
                try:
                    cursor.execute("LOAD DATA LOCAL INFILE %%s INTO TABLE `%s` CHARACTER SET "
                                   "utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' "
                                   "LINES TERMINATED BY '\\n' (%s)"
                                   % (table, ', '.join(columns)), (path,))
                except pymysql.err.MySQLError as exc:
                    print('LOAD DATA LOCAL refused (%s): batched INSERTs instead' % exc)
                    conn.rollback()
                    insert = 'INSERT INTO %s VALUES (%s)' % (target,
                                                            ', '.join(['%s'] * len(columns)))
                    rows = source.execute(select)
                    while True:
                        batch = rows.fetchmany(5000)
                        if not batch:
                            break
                        cursor.executemany(insert, batch)
            conn.commit()
            os.unlink(path)
    finally:
        conn.close()
        source.close()


def _tsv(value):
    if value is None:
        return '\\N'
    return str(value).replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n')


def sql_literal(value):
    if value is None:
        return 'NULL'
    return "'%s'" % str(value).replace("'", "''")


def median(values):
    return statistics.median(values) if values else float('nan')


def shop_sources(args, workdir, cleanup, rows, tag=''):
    """{engine label: source URL} of the same shop, seeded with `rows`
    orders on every engine that answers."""
    urls = {'SQLite': make_sqlite(os.path.join(workdir, 'shop%s.db' % tag), rows)}
    if not args.no_postgres:
        urls['PostgreSQL'] = make_postgres(rows, cleanup)
    if not args.no_mariadb:
        urls['MariaDB'] = make_mariadb(urls['SQLite'], cleanup, workdir)
    return {k: v for k, v in urls.items() if v}


def export_ways(urls, workdir):
    """[(engine label, way label, baseline?, fn)] where fn() -> (seconds,
    peak MB, rows): every way runs the orders report's statement."""
    ways = []

    def child(label, way, url, baseline=False):
        out = os.path.join(workdir, '%s-%s.csv' % (way, urllib.parse.urlsplit(url).scheme))
        ways.append((engine, label, baseline, lambda: run_child(way, url, out)))

    def command(label, args, suffix, stdin_text=None, env=None, baseline=False):
        out = os.path.join(workdir, 'tool-%s' % suffix)
        ways.append((engine, label, baseline,
                     lambda: run_command(args, out, stdin_text=stdin_text, env=env)))

    engine = 'SQLite'
    if engine in urls:
        import sources
        url = urls[engine]
        sql, params = orders_statement(url, workdir)
        if shutil.which('sqlite3'):
            # The shell binds the report's own :name parameters.
            script = ''.join('.parameter set :%s %s\n' % (name, sql_literal(value))
                             for name, value in params.items()) + sql + ';\n'
            command('sqlite3 -csv shell', ['sqlite3', '-csv', '-header',
                                           sources.sqlite_path(url)], 'sqlite.csv', script)
        child('stdlib cursor -> csv.writer (baseline)', 'stdlib', url, baseline=True)
        child('Nightshift (escaping on)', 'nightshift', url)
    engine = 'PostgreSQL'
    if engine in urls:
        import psycopg
        url = urls[engine]
        sql, params = orders_statement(url, workdir)
        with psycopg.connect(url) as conn:
            literal_sql = psycopg.ClientCursor(conn).mogrify(sql, params)
        if shutil.which('psql'):
            command('psql COPY (query) TO STDOUT CSV (baseline)',
                    ['psql', '-q', url, '-c', 'COPY (%s) TO STDOUT WITH (FORMAT csv, HEADER '
                     'true)' % literal_sql], 'psql.csv', baseline=True)
        child('psycopg server-side cursor -> csv.writer', 'psycopg-named', url)
        child('Nightshift (COPY, escaping on)', 'nightshift', url)
    engine = 'MariaDB'
    if engine in urls:
        import pymysql
        url = urls[engine]
        sql, params = orders_statement(url, workdir)
        options = mysql_options(url)
        conn = pymysql.connect(charset='utf8mb4', **options)
        literal_sql = conn.cursor().mogrify(sql, params)
        conn.close()
        if shutil.which('mysql'):
            env = dict(os.environ, MYSQL_PWD=options['password'])
            base = ['mysql', '--batch', '-h', options['host'], '-P', str(options['port']),
                    '-u', options['user'], options['database'], '-e', literal_sql]
            command('mysql --batch (buffers the result) -> file', base, 'mysql.tsv',
                    env=env, baseline=True)
            command('mysql --batch --quick (row by row) -> file',
                    base[:2] + ['--quick'] + base[2:], 'mysql-quick.tsv', env=env,
                    baseline=True)
        child('PyMySQL SSCursor -> csv.writer', 'pymysql-sscursor', url, baseline=True)
        child('Nightshift (SSCursor, escaping on)', 'nightshift', url)
    return ways


def export_table(args, workdir, cleanup):
    rows = args.rows
    urls = shop_sources(args, workdir, cleanup, rows)
    ways = export_ways(urls, workdir)
    results = {(engine, label): ([], []) for engine, label, _, _ in ways}
    for _ in range(args.repeat):
        for engine, label, _, fn in ways:
            seconds, peak, got = fn()
            if got != rows:
                raise RuntimeError('%s / %s wrote %d rows, not %d' % (engine, label, got, rows))
            results[(engine, label)][0].append(seconds)
            results[(engine, label)][1].append(peak)
    lines = ['| database | way to export %s rows | rows/s | ratio | peak RSS MB |'
             % '{:,}'.format(rows), '|---|---|---|---|---|']
    ratios = {}
    for engine in urls:
        entries = [(label, baseline) for e, label, baseline, _ in ways if e == engine]
        # Against the fastest of the engine's baselines.
        base = min((median(results[(engine, label)][0]) for label, baseline in entries
                    if baseline), default=float('nan'))
        for label, _ in entries:
            times, peaks = results[(engine, label)]
            ratio = base / median(times)
            ratios[(engine, label)] = ratio
            lines.append('| %s | %s | %s | %.2f× | %.0f |' % (
                engine, label, '{:,.0f}'.format(rows / median(times)), ratio, median(peaks)))
    same = same_bytes(workdir, urls)
    lines += ['', same]
    return lines, ratios, urls


def same_bytes(workdir, urls):
    """Whether Nightshift wrote the same bytes from every engine."""
    import hashlib
    digests = {}
    for engine, url in urls.items():
        path = os.path.join(workdir, 'nightshift-%s.csv' % urllib.parse.urlsplit(url).scheme)
        with open(path, 'rb') as f:
            digests[engine] = hashlib.sha256(f.read()).hexdigest()
    if len(set(digests.values())) == 1:
        return 'Nightshift wrote the same bytes from %s.' % ', '.join(digests)
    return 'Nightshift\'s files differ between engines: %s.' % ', '.join(
        '%s %s' % (engine, digest[:12]) for engine, digest in digests.items())


def memory_table(args, workdir):
    """Peak RSS, small report against large: the worker's file export in a
    fresh process on each engine, and a fresh web server after one streamed
    download (SQLite)."""
    engines = ['SQLite'] + [e for e, skip in (('PostgreSQL', args.no_postgres),
                                              ('MariaDB', args.no_mariadb)) if not skip]
    peaks = {}
    for rows in (args.memory_small, args.memory_large):
        with contextlib.ExitStack() as cleanup:
            urls = shop_sources(args, workdir, cleanup, rows, tag='-mem%d' % rows)
            peaks[rows] = {engine: run_child('nightshift', url,
                                             os.path.join(workdir, 'mem.csv'))[1]
                           for engine, url in urls.items()}
            peaks[rows]['web'] = serve_and_download(urls['SQLite'], workdir)[1]
            os.unlink(urls['SQLite'][len('sqlite:///'):])
    columns = [e for e in engines if e in peaks[args.memory_large]] + ['web']
    names = {'web': 'web server, one download (SQLite)'}
    lines = ['| rows | %s |' % ' | '.join(names.get(c, 'worker export, %s' % c)
                                          for c in columns),
             '|---|%s' % ('---|' * len(columns))]
    for rows in (args.memory_small, args.memory_large):
        lines.append('| %s | %s |' % ('{:,}'.format(rows), ' | '.join(
            '%.0f' % peaks[rows][c] for c in columns)))
    growth = {c: peaks[args.memory_large][c] - peaks[args.memory_small][c] for c in columns}
    lines += ['', 'Peak RSS MB of a fresh process. Growth from %s to %s rows: %s '
              '(target: at most +15 MB).' % (
                  '{:,}'.format(args.memory_small), '{:,}'.format(args.memory_large),
                  ', '.join('%s %+.1f MB' % (names.get(c, c), growth[c]) for c in columns))]
    return lines, max(growth.values())


def server_env(workdir, name, source_url=None):
    """The environment of a server.py or consumer for the bench: its own
    SQLite state database, the repo's reports, the demo source at
    `source_url` (a tiny shop when None)."""
    config = os.path.join(workdir, '%s.ini' % name)
    with open(config, 'w') as out:
        out.write('[nightshift]\nqueue_path = %s-q.db\noutbox_dir = %s-outbox\n'
                  'reports_dir = %s-files\nreport_paths = %s\n'
                  % (name, name, name, os.path.join(ROOT, 'reports')))
    if source_url is None:
        source_url = make_sqlite(os.path.join(workdir, '%s-shop.db' % name), 10)
    state_url = 'sqlite:///%s' % os.path.join(workdir, '%s-state.db' % name)
    return dict(os.environ, NIGHTSHIFT_CONFIG=config, DATABASE_URL=state_url,
                NIGHTSHIFT_SOURCE_DEMO_URL=source_url, REDIS_URL='', SMTP_HOST='',
                NIGHTSHIFT_API_TOKEN='')


def serve_and_download(source_url, workdir, times=1):
    """Start server.py with the demo source at source_url, download the
    orders report `times` times. Returns ([seconds per download], peak RSS MB
    of the server)."""
    import urllib.request
    from loopback import answers, free_port, wait_until
    port = free_port()
    env = server_env(workdir, 'http', source_url)
    server = subprocess.Popen([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = 'http://127.0.0.1:%d' % port
    seconds = []
    try:
        wait_until(lambda: answers(base + '/healthz'), timeout=30, message='server')
        for _ in range(times):
            started = time.perf_counter()
            with urllib.request.urlopen(base + '/reports/orders.csv', timeout=900) as res:
                while res.read(1 << 20):
                    pass
            seconds.append(time.perf_counter() - started)
        with open('/proc/%d/status' % server.pid) as status:
            hwm = [line.split()[1] for line in status if line.startswith('VmHWM')][0]
    finally:
        server.terminate()
        server.wait(20)
    return seconds, int(hwm) / 1024.0


def http_table(args, workdir, sqlite_url):
    """The streamed download over waitress against writing the same file,
    interleaved."""
    http_times, file_times = [], []
    for _ in range(args.repeat):
        http_times += serve_and_download(sqlite_url, workdir)[0]
        file_times.append(run_child('nightshift', sqlite_url, os.path.join(workdir, 'f.csv'))[0])
    ratio = median(file_times) / median(http_times)
    lines = ['| way (SQLite) | rows/s | ratio |', '|---|---|---|',
             '| write the report to a file | %s | 1.00× |' % '{:,.0f}'.format(
                 args.rows / median(file_times)),
             '| HTTP download over waitress | %s | %.2f× |' % (
                 '{:,.0f}'.format(args.rows / median(http_times)), ratio)]
    return lines, ratio


def queue_table(args, workdir):
    """POST -> message accepted by the SMTP sink, through Redis and a real
    consumer; and tiny-run throughput against Huey's own no-op tasks."""
    import json as json_module
    import urllib.request
    from loopback import RedisServer, SmtpSink, answers, free_port, wait_until
    redis_server = RedisServer()
    redis_server.start()
    sink = SmtpSink()
    sink.start()
    # As many runs of one report at once as there are workers: the
    # per-report limit is a policy, not what is measured here.
    env = dict(server_env(workdir, 'queue'), REDIS_URL=redis_server.url,
               SMTP_HOST='127.0.0.1', SMTP_PORT=str(sink.port),
               NIGHTSHIFT_SMTP_SECURITY='none',
               NIGHTSHIFT_MAX_CONCURRENT_PER_REPORT=str(args.consumer_workers))
    config = env['NIGHTSHIFT_CONFIG']
    from models import bind_database
    bind_database(env['DATABASE_URL'])  # Nightshift's tables, before both processes start
    consumer_args = ['-w', str(args.consumer_workers), '-k', 'thread', '-q']
    port = free_port()
    base = 'http://127.0.0.1:%d' % port
    procs = [subprocess.Popen([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey']
                              + consumer_args, cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_until(lambda: answers(base + '/healthz'), timeout=30, message='server')

        def post():
            body = json_module.dumps({'report': 'customers', 'to': ['b@example.org']}).encode()
            request = urllib.request.Request(base + '/api/runs', data=body, method='POST',
                                             headers={'Content-Type': 'application/json'})
            with urllib.request.urlopen(request, timeout=30) as res:
                return json_module.load(res)['id']

        post()
        sink.wait_for(1, timeout=60)  # warm up
        latencies = []
        for i in range(args.latency_runs):
            count = len(sink.messages)
            started = time.perf_counter()
            post()
            sink.wait_for(count + 1, timeout=60)
            latencies.append((sink.messages[-1]['at'] - started) * 1000)
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p95 = latencies[int(len(latencies) * 0.95) - 1]

        # Throughput: runs queued straight into Redis (as a schedule tick
        # does), against no-op tasks drained by the same consumer settings.
        from settings import load_settings
        from tasks import Jobs
        import runs
        settings = load_settings(config, environ={k: v for k, v in env.items()})
        jobs = Jobs(settings)
        batch = [runs.create_run(jobs.registry, settings, 'customers', {}, ['b@example.org'])
                 for _ in range(args.throughput_runs)]
        count = len(sink.messages)
        started = time.perf_counter()
        for run in batch:
            jobs.enqueue_run(run)
        sink.wait_for(count + len(batch), timeout=600)
        run_rate = len(batch) / (sink.messages[-1]['at'] - started)
        procs[1].terminate()
        procs[1].wait(30)

        noop_env = dict(env, PYTHONPATH=os.path.join(ROOT, 'scripts'))
        import redis
        client = redis.Redis.from_url(redis_server.url)
        client.delete('nightshift-bench-noop-done')
        sys.path.insert(0, os.path.join(ROOT, 'scripts'))
        os.environ['REDIS_URL'] = redis_server.url
        import bench_noop
        procs.append(subprocess.Popen([sys.executable, '-m', 'huey.bin.huey_consumer',
                                       'bench_noop.huey'] + consumer_args, cwd=ROOT,
                                      env=noop_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        bench_noop.noop()  # the consumer is up once this one is done
        wait_until(lambda: int(client.get('nightshift-bench-noop-done') or 0) >= 1,
                   timeout=60, interval=0.01, message='no-op consumer')
        tasks = args.throughput_runs * 4
        started = time.perf_counter()
        for _ in range(tasks):
            bench_noop.noop()
        wait_until(lambda: int(client.get('nightshift-bench-noop-done') or 0) >= tasks + 1,
                   timeout=600, interval=0.005, message='no-op tasks')
        noop_rate = tasks / (time.perf_counter() - started)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        sink.stop()
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)
    lines = ['| measure | value |', '|---|---|',
             '| POST -> accepted by SMTP, p50 (%d runs, one at a time) | %.1f ms |'
             % (args.latency_runs, p50),
             '| POST -> accepted by SMTP, p95 | %.1f ms |' % p95,
             '| tiny runs delivered per second (%d queued at once) | %.0f |'
             % (args.throughput_runs, run_rate),
             '| Huey no-op tasks per second, same consumer settings | %.0f |' % noop_rate,
             '| ratio | %.2f× |' % (run_rate / noop_rate)]
    return lines, p50, run_rate / noop_rate


def _load(url, seconds, connections=8):
    """Requests per second against `url`: wrk when installed, else a small
    keep-alive client in threads (weaker, but the same for both sides)."""
    wrk = shutil.which('wrk')
    pin = ['taskset', '-c', '1'] if _can_pin() else []
    if wrk:
        out = subprocess.run(pin + [wrk, '-t1', '-c%d' % connections, '-d%ds' % seconds, url],
                             capture_output=True, text=True, check=True).stdout
        return float([line.split()[1] for line in out.splitlines()
                      if line.startswith('Requests/sec')][0])
    code = (
        'import http.client, sys, threading, time\n'
        'host, port, path, seconds, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], '
        'float(sys.argv[4]), int(sys.argv[5])\n'
        'counts = [0] * n\n'
        'end = time.monotonic() + seconds\n'
        'def worker(i):\n'
        '    conn = http.client.HTTPConnection(host, port)\n'
        '    while time.monotonic() < end:\n'
        '        conn.request("GET", path); conn.getresponse().read(); counts[i] += 1\n'
        'threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]\n'
        '[t.start() for t in threads]; [t.join() for t in threads]\n'
        'print(sum(counts) / seconds)\n')
    from urllib.parse import urlparse
    parsed = urlparse(url)
    path = parsed.path + ('?' + parsed.query if parsed.query else '')
    out = subprocess.run(pin + [sys.executable, '-c', code, parsed.hostname, str(parsed.port),
                                path, str(seconds), str(connections)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def _can_pin():
    return shutil.which('taskset') is not None and (os.cpu_count() or 1) >= 2


@contextlib.contextmanager
def serving(command, env, name):
    """A server started from `command` ('{port}' filled in), pinned to core 0
    when the load can have core 1; yields its base URL."""
    from loopback import answers, free_port, wait_until
    pin = ['taskset', '-c', '0'] if _can_pin() else []
    port = free_port()
    proc = subprocess.Popen(pin + [c.format(port=port) for c in command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = 'http://127.0.0.1:%d' % port
        wait_until(lambda: answers(base + '/healthz'), timeout=30, message=name)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def health_table(args, workdir):
    """/healthz against a bare Bottle route, servers pinned to core 0 and the
    load generator to core 1."""
    env = server_env(workdir, 'health')
    rates = {}
    for name, command in (
            ('bare', [sys.executable, 'scripts/bench_bare.py', '{port}', '4']),
            ('healthz', [sys.executable, 'server.py', '--port', '{port}'])):
        samples = []
        for _ in range(args.repeat):
            with serving(command, env, name) as base:
                samples.append(_load(base + '/healthz', args.load_seconds))
        rates[name] = median(samples)
    tool = 'wrk' if shutil.which('wrk') else 'a Python keep-alive client'
    lines = ['| route (waitress, 4 threads%s; load: %s) | requests/s | ratio |'
             % (', pinned to core 0' if _can_pin() else '', tool), '|---|---|---|',
             '| bare Bottle route | %s | 1.00× |' % '{:,.0f}'.format(rates['bare']),
             '| Nightshift /healthz (database and queue checked) | %s | %.2f× |'
             % ('{:,.0f}'.format(rates['healthz']), rates['healthz'] / rates['bare'])]
    return lines, rates['healthz'] / rates['bare']


PAGE_URLS = (
    ('JSON API: `GET /api/runs?limit=25` (baseline)', '/api/runs?limit=25'),
    ('the poll: `GET /ui/runs` (25 rows as HTML)', '/ui/runs'),
    ('a chart: `GET /ui/charts/orders` (30 runs as SVG)', '/ui/charts/orders'),
    ('the whole page: `GET /`', '/'),
)


def page_table(args, workdir):
    """What the page costs the server: its fragments against the JSON API
    for the same runs, on a history of `args.page_runs` runs."""
    import datetime
    import urllib.request

    from models import Run, Schedule, utcnow
    env = server_env(workdir, 'page')
    from models import bind_database
    bind_database(env['DATABASE_URL'])
    now = utcnow()
    for i in range(args.page_runs):
        started = now - datetime.timedelta(minutes=args.page_runs - i)
        Run.create(report=('orders', 'customers')[i % 2], params={}, recipients=['a@example.org'],
                   status='failed' if i % 17 == 0 else 'delivered', rows=1000 + i,
                   bytes=90000 + i, attempts=1, started_at=started,
                   finished_at=started + datetime.timedelta(seconds=2))
    for i in range(5):
        Schedule.create(name='s%d' % i, report='orders', params={}, recipients=['a@example.org'],
                        cron='%d 2 * * *' % i, timezone='Europe/Lisbon', enabled=True,
                        managed_by='api', checked_through=now, created_at=now, updated_at=now)
    command = [sys.executable, 'server.py', '--port', '{port}']
    rates = {path: [] for _, path in PAGE_URLS}
    sizes = {}
    for _ in range(args.repeat):
        with serving(command, env, 'page') as base:
            for _, path in PAGE_URLS:
                with urllib.request.urlopen(base + path) as res:
                    sizes[path] = len(res.read())
                rates[path].append(_load(base + path, args.load_seconds))
    baseline = median(rates[PAGE_URLS[0][1]])
    lines = ['| request (%d runs in the history, 5 schedules) | bytes | requests/s | ratio |'
             % args.page_runs, '|---|---|---|---|']
    for label, path in PAGE_URLS:
        rate = median(rates[path])
        lines.append('| %s | %s | %s | %.2f× |' % (label, '{:,}'.format(sizes[path]),
                                                 '{:,.0f}'.format(rate), rate / baseline))
    poll = median(rates['/ui/runs'])
    lines += ['', 'An open page polls `/ui/runs` every 1.5 s while a run is queued or '
              'running, every 10 s otherwise: one server process answers the polls of '
              'about %s pages with runs moving.' % '{:,.0f}'.format(poll * 1.5)]
    return lines, poll / baseline


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == '--child':
        return child_main(*sys.argv[2:5])
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=1000000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--memory-small', type=int, default=100000)
    parser.add_argument('--memory-large', type=int, default=5000000)
    parser.add_argument('--no-postgres', action='store_true')
    parser.add_argument('--no-mariadb', action='store_true')
    parser.add_argument('--latency-runs', type=int, default=200)
    parser.add_argument('--throughput-runs', type=int, default=300)
    parser.add_argument('--consumer-workers', type=int, default=4)
    parser.add_argument('--load-seconds', type=float, default=5)
    parser.add_argument('--page-runs', type=int, default=2000,
                        help='runs in the history for the page benchmark')
    parser.add_argument('--burst-runs', type=int, default=None,
                        help='runs per burst in the Bursts section (default 1000; --smoke 20)')
    parser.add_argument('--burst-only', action='store_true',
                        help='only the Bursts section (issue #16): printed, not written to --out')
    parser.add_argument('--burst-rounds', type=int, default=1,
                        help='rounds of the slot bursts, thread and process workers '
                             'alternating; the tables show the median round (default 1)')
    parser.add_argument('--burst-postgres', action='store_true',
                        help="the bursts' state database in a throwaway PostgreSQL database")
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, one round')
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'benchmarks.md'))
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.repeat = 5000, 1
        args.memory_small, args.memory_large = 2000, 10000
        args.latency_runs, args.throughput_runs = 10, 20
        args.load_seconds = 1
        args.page_runs = 100
        args.out = os.path.join(tempfile.gettempdir(), 'nightshift-bench-smoke.md')
    args.burst_runs = args.burst_runs or (20 if args.smoke else 1000)
    if args.burst_rounds < 1:
        parser.error('--burst-rounds: at least 1')
    if args.burst_only:
        return burst_only(args)
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-')
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as cleanup:  # drops the throwaway databases
            export_lines, ratios, urls = export_table(args, workdir, cleanup)
            http_lines, http_ratio = http_table(args, workdir, urls['SQLite'])
        show(export_lines + [''] + http_lines)
        memory_lines, growth = memory_table(args, workdir)
        show(memory_lines)
        queue_lines, p50, queue_ratio = queue_table(args, workdir)
        health_lines, health_ratio = health_table(args, workdir)
        page_lines, page_ratio = page_table(args, workdir)
        burst_lines, _, burst_problems = burst_table(args, workdir)
        burst_lines.append('Small-report end to end (the Queue table): POST -> accepted p50 '
                           '%.1f ms, target at most 50 ms.' % p50)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = ' '.join(['.venv/bin/python scripts/bench.py'] + [
        a for a in argv if not a.startswith('--out')])
    report = ['# Benchmarks', '',
              'Produced by `%s` on a %d-core machine; medians of %d interleaved rounds, each '
              'export in a fresh process that has already imported its modules and read '
              'the report (as a running worker has). Every way runs the `orders` report\'s '
              'own statement, as Nightshift binds it, on the same rows (checked: each '
              'writes all of them). Ratios are against the fastest baseline of the same '
              'database (SQLite: the stdlib cursor into csv.writer, no escaping; '
              'PostgreSQL: psql\'s COPY; MariaDB: the faster of the `mysql` client and a '
              'plain PyMySQL loop).' % (command, os.cpu_count(), args.repeat), '',
              '## Export of the `orders` report (6 columns, a join)', ''] + export_lines + [
              '', '## Streamed download', ''] + http_lines + [
              '', '## Memory', ''] + memory_lines + [
              '', '## Queue: Redis and a running consumer (`-k thread -w %d -q`)'
              % args.consumer_workers, ''] + queue_lines + [
              '', '## /healthz', ''] + health_lines + [
              '', '## The web page', ''] + page_lines + [
              '', '## Bursts: runs end to end against plain smtplib (#16)', ''] + burst_lines + [
              '', 'Took %.0f s.' % (time.monotonic() - started)]
    text = '\n'.join(report) + '\n'
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    notes = hand_written(args.out)
    with open(args.out, 'w') as out:
        out.write(text + notes)
    fail_on(burst_problems)


def burst_table(args, workdir):
    """Issue #16's bursts (scripts/bench_throughput.py): runs/s end to end
    against plain smtplib, the CPU of each part, the 30-run turn check.
    (lines, summary, problems): lost or doubled deliveries, never timings."""
    import bench_throughput
    folder = os.path.join(workdir, 'burst')
    os.makedirs(folder)
    return bench_throughput.burst_section(args.burst_runs, folder,
                                          postgres=args.burst_postgres, smoke=args.smoke,
                                          rounds=args.burst_rounds)


def burst_only(args):
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-')
    started = time.monotonic()
    lines, _, problems = burst_table(args, workdir)
    show(lines + ['', 'Took %.0f s.' % (time.monotonic() - started)])
    if problems:  # the processes' log stays for the reading
        print('Logs: %s' % os.path.join(workdir, 'burst', 'processes.log'))
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    fail_on(problems)


def fail_on(problems):
    """Exit 1 on lost or doubled deliveries: what --smoke guards in CI."""
    if problems:
        print('Deliveries went wrong:\n' + '\n'.join('- ' + p for p in problems))
        sys.exit(1)


def show(lines):
    # Each table as soon as it is measured: a failure later keeps it.
    print('\n'.join(lines) + '\n', flush=True)


NOTES = '\n## Notes\n'


def hand_written(path):
    """What people wrote under "## Notes" in an earlier report: a run
    rewrites the figures, not the reading of them."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        return ''
    at = text.find(NOTES)
    return text[at:] if at >= 0 else ''


if __name__ == '__main__':
    main()
