#!/usr/bin/env python
"""Benchmarks: Nightshift's export paths against the baselines, side by side.

    .venv/bin/python scripts/bench.py [--rows 1000000] [--repeat 3] [--out docs/benchmarks.md]
    .venv/bin/python scripts/bench.py --smoke      # tiny and quick: CI runs it

Builds its own data (a SQLite file and, when PostgreSQL answers, a throwaway
database), runs every way of exporting the same `orders` query in turn,
`--repeat` rounds interleaved so machine noise hits them alike, and prints
medians and ratios as one Markdown table (also written to --out). Memory is
the peak RSS of a fresh process per export. Loopback only; bounded in time.
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
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # the loopback services live with the tests

PG_ADMIN_URL = os.environ.get('NIGHTSHIFT_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/test')

# Each export way runs in a child process (fresh memory, its own peak RSS):
# python bench.py --child WAY DATABASE_URL OUT
CHILD_WAYS = {}


def child_way(name):
    def register(fn):
        CHILD_WAYS[name] = fn
        return fn
    return register


def _orders_query():
    from reports import registry
    definition = registry.get('orders')
    return definition.query(definition.parse({}))


@child_way('stdlib')
def _stdlib(url, out):
    """sqlite3 cursor -> csv.writer.writerows, no escaping (the baseline)."""
    import csv
    import sqlite3
    sql, params = _orders_query().sql()
    conn = sqlite3.connect(url[len('sqlite:///'):])
    cursor = conn.execute(sql, params)
    with open(out, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow([d[0] for d in cursor.description])
        writer.writerows(cursor)
    return None


@child_way('peewee-tuples')
def _peewee_tuples(url, out):
    import csv
    query = _orders_query()
    with open(out, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerows(query.tuples().iterator())


@child_way('peewee-models')
def _peewee_models(url, out):
    """The tutorial way: model instances, plain loop."""
    import csv
    query = _orders_query()
    with open(out, 'w', newline='') as f:
        writer = csv.writer(f)
        for order in query.objects():
            writer.writerow([order.id, order.created_at, order.customer_name,
                             order.customer_email, order.status, order.amount])


@child_way('psycopg-named')
def _psycopg_named(url, out):
    """psycopg server-side cursor -> csv.writer (the driver baseline)."""
    import csv
    import psycopg
    from models import db
    sql, params = _orders_query().sql()
    with psycopg.connect(url) as conn, conn.transaction():
        cursor = conn.cursor(name='bench')
        cursor.itersize = 2000
        cursor.execute(sql, params)
        with open(out, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerows(cursor)
    del db


@child_way('nightshift')
def _nightshift(url, out):
    """What a run does: escaping on, decimals formatted, written atomically."""
    from export import open_csv, write_file
    from models import db
    with open_csv(_orders_query(), db.obj, escape=True) as stream:
        write_file(stream, out)
    return stream.rows


def run_child(way, url, out):
    """Run one export in a fresh process; (seconds, peak RSS MB)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, '--child', way, url, out], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError('%s failed: %s' % (way, proc.stderr[-2000:]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info['seconds'], info['peak_mb'], seconds


def child_main(way, url, out):
    import resource
    from models import bind_database
    bind_database(url, create=False)
    started = time.perf_counter()
    CHILD_WAYS[way](url, out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({'seconds': seconds, 'peak_mb': peak}))


def run_command(args, out_path=None):
    """A shell-tool baseline; (seconds, peak RSS MB of the tool itself).

    GNU time measures the tool after exec; the rusage of a child forked
    from this process would count this process's pages too."""
    gnu_time = '/usr/bin/time' if os.path.exists('/usr/bin/time') else None
    measured = os.path.join(tempfile.gettempdir(), 'nightshift-bench-%d.rss' % os.getpid())
    command = [gnu_time, '-f', '%M', '-o', measured] + args if gnu_time else args
    started = time.perf_counter()
    with open(out_path or os.devnull, 'wb') as out:
        subprocess.run(command, stdout=out, check=True)
    seconds = time.perf_counter() - started
    peak = float('nan')
    if gnu_time:
        with open(measured) as f:
            peak = int(f.read().split()[-1]) / 1024.0
    return seconds, peak


def make_sqlite(path, rows):
    from models import bind_database
    import demo
    bind_database('sqlite:///%s' % path)
    demo.seed(customers=max(rows // 100, 10), orders=rows)
    return 'sqlite:///%s' % path


def make_postgres(rows):
    try:
        import psycopg
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        print('PostgreSQL not reachable (%s): its rows are left out' % exc)
        return None, None
    name = 'nightshift_bench_%s' % uuid.uuid4().hex[:8]
    admin.execute('CREATE DATABASE %s' % name)
    url = '%s/%s' % (PG_ADMIN_URL.rsplit('/', 1)[0], name)
    from models import bind_database
    import demo
    bind_database(url)
    demo.seed(customers=max(rows // 100, 10), orders=rows)
    from models import db
    db.close()

    def drop():
        admin.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
        admin.close()
    return url, drop


def median(values):
    return statistics.median(values) if values else float('nan')


def export_table(args, workdir):
    rows = args.rows
    sqlite_url = make_sqlite(os.path.join(workdir, 'bench.db'), rows)
    pg_url, drop_pg = make_postgres(rows) if not args.no_postgres else (None, None)
    from models import bind_database
    bind_database(sqlite_url, create=False)
    query_sql, query_params = _orders_query().sql()
    shell_sql = query_sql
    for value in query_params:
        shell_sql = shell_sql.replace('?', "'%s'" % value, 1)
    ways = []
    if shutil.which('sqlite3'):
        ways.append(('SQLite', 'sqlite3 -csv shell', lambda: run_command(
            ['sqlite3', '-csv', '-header', sqlite_url[len('sqlite:///'):], shell_sql])))
    for way, label in (('stdlib', 'stdlib cursor -> csv.writer (baseline)'),
                       ('peewee-tuples', 'Peewee .tuples().iterator() -> csv.writer'),
                       ('peewee-models', 'Peewee model instances, plain loop'),
                       ('nightshift', 'Nightshift (escaping on)')):
        if way == 'peewee-models' and rows > args.naive_max:
            continue
        ways.append(('SQLite', label, (lambda w: lambda: run_child(
            w, sqlite_url, os.path.join(workdir, w + '.csv'))[:2])(way)))
    if pg_url:
        bind_database(pg_url, create=False)
        pg_sql, pg_params = _orders_query().sql()
        import psycopg
        from models import db
        copy_sql = psycopg.ClientCursor(db.obj.connection()).mogrify(pg_sql, pg_params)
        db.close()
        bind_database(sqlite_url, create=False)
        if shutil.which('psql'):
            ways.append(('PostgreSQL', 'psql COPY (query) TO STDOUT CSV', lambda: run_command(
                ['psql', '-q', pg_url, '-c',
                 'COPY (%s) TO STDOUT WITH (FORMAT csv, HEADER true)' % copy_sql])))
        for way, label in (('psycopg-named', 'psycopg server-side cursor -> csv.writer'),
                           ('nightshift', 'Nightshift (COPY, escaping on)')):
            ways.append(('PostgreSQL', label, (lambda w: lambda: run_child(
                w, pg_url, os.path.join(workdir, 'pg-' + w + '.csv'))[:2])(w=way)))
    results = {(db_name, label): ([], []) for db_name, label, _ in ways}
    for _ in range(args.repeat):
        for db_name, label, fn in ways:
            seconds, peak = fn()
            results[(db_name, label)][0].append(seconds)
            results[(db_name, label)][1].append(peak)
    if drop_pg:
        drop_pg()
    lines = ['| database | way to export %s rows | rows/s | ratio | peak RSS MB |' % '{:,}'.format(rows),
             '|---|---|---|---|---|']
    ratios = {}
    for db_name in ('SQLite', 'PostgreSQL'):
        entries = [(label, results[(d, label)]) for d, label, _ in ways if d == db_name]
        base_label = {'SQLite': 'stdlib cursor -> csv.writer (baseline)',
                      'PostgreSQL': 'psql COPY (query) TO STDOUT CSV'}[db_name]
        base = median(results.get((db_name, base_label), ([], []))[0])
        for label, (times, peaks) in entries:
            rate = rows / median(times)
            ratio = base / median(times) if base == base else float('nan')
            ratios[(db_name, label)] = ratio
            lines.append('| %s | %s | %s | %.2f× | %.0f |' % (
                db_name, label, '{:,.0f}'.format(rate), ratio, median(peaks)))
    return lines, ratios, sqlite_url, pg_url


def memory_table(args, workdir):
    """Peak RSS, small report against large: the worker's file export in a
    fresh process, and a fresh web server after one streamed download."""
    lines = ['| rows | worker: file export, peak RSS MB | web server: one download, peak RSS MB |',
             '|---|---|---|']
    peaks = {}
    for rows in (args.memory_small, args.memory_large):
        url = make_sqlite(os.path.join(workdir, 'mem-%d.db' % rows), rows)
        _, worker, _ = run_child('nightshift', url, os.path.join(workdir, 'mem.csv'))
        web = serve_and_download(url, workdir)[1]
        peaks[rows] = (worker, web)
        lines.append('| %s | %.0f | %.0f |' % ('{:,}'.format(rows), worker, web))
        os.unlink(url[len('sqlite:///'):])
    worker_growth = peaks[args.memory_large][0] - peaks[args.memory_small][0]
    web_growth = peaks[args.memory_large][1] - peaks[args.memory_small][1]
    lines.append('')
    lines.append('Growth from %s to %s rows: worker %+.1f MB, web server %+.1f MB '
                 '(target: at most +15 MB).' % ('{:,}'.format(args.memory_small),
                                                 '{:,}'.format(args.memory_large),
                                                 worker_growth, web_growth))
    return lines, max(worker_growth, web_growth)


def serve_and_download(db_url, workdir, times=1):
    """Start server.py on db_url, download the orders report `times` times.
    Returns ([seconds per download], peak RSS MB of the server)."""
    import urllib.request
    from loopback import free_port, wait_until
    config = os.path.join(workdir, 'http.ini')
    with open(config, 'w') as out:
        out.write('[nightshift]\nqueue_path = q.db\noutbox_dir = outbox\nreports_dir = r\n')
    port = free_port()
    env = dict(os.environ, NIGHTSHIFT_CONFIG=config, DATABASE_URL=db_url, REDIS_URL='',
               SMTP_HOST='', NIGHTSHIFT_API_TOKEN='')
    server = subprocess.Popen([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = 'http://127.0.0.1:%d' % port
    seconds = []
    try:
        wait_until(lambda: _answers(base + '/healthz'), timeout=30, message='server')
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
    from loopback import RedisServer, SmtpSink, free_port, wait_until
    redis_server = RedisServer()
    redis_server.start()
    sink = SmtpSink()
    sink.start()
    db_url = make_sqlite(os.path.join(workdir, 'queue.db'), 10)
    config = os.path.join(workdir, 'queue.ini')
    with open(config, 'w') as out:
        # As many runs of one report at once as there are workers: the
        # per-report limit is a policy, not what is measured here.
        out.write('[nightshift]\nreports_dir = r\noutbox_dir = o\n'
                  'max_concurrent_per_report = %d\n' % args.consumer_workers)
    env = dict(os.environ, NIGHTSHIFT_CONFIG=config, DATABASE_URL=db_url,
               REDIS_URL=redis_server.url, SMTP_HOST='127.0.0.1', SMTP_PORT=str(sink.port),
               NIGHTSHIFT_SMTP_SECURITY='none', NIGHTSHIFT_API_TOKEN='')
    consumer_args = ['-w', str(args.consumer_workers), '-k', 'thread', '-q']
    port = free_port()
    base = 'http://127.0.0.1:%d' % port
    procs = [subprocess.Popen([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey']
                              + consumer_args, cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_until(lambda: _answers(base + '/healthz'), timeout=30, message='server')

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
        from models import bind_database
        bind_database(db_url, create=False)
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
    from loopback import free_port, wait_until
    pin = ['taskset', '-c', '0'] if _can_pin() else []
    port = free_port()
    proc = subprocess.Popen(pin + [c.format(port=port) for c in command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = 'http://127.0.0.1:%d' % port
        wait_until(lambda: _answers(base + '/healthz'), timeout=30, message=name)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def _server_env(workdir, db_url, name):
    config = os.path.join(workdir, '%s.ini' % name)
    with open(config, 'w') as out:
        out.write('[nightshift]\nqueue_path = %sq.db\noutbox_dir = o\nreports_dir = r\n' % name)
    return dict(os.environ, NIGHTSHIFT_CONFIG=config, DATABASE_URL=db_url, REDIS_URL='',
                SMTP_HOST='', NIGHTSHIFT_API_TOKEN='')


def health_table(args, workdir):
    """/healthz against a bare Bottle route, servers pinned to core 0 and the
    load generator to core 1."""
    db_url = make_sqlite(os.path.join(workdir, 'health.db'), 10)
    env = _server_env(workdir, db_url, 'health')
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
    db_url = make_sqlite(os.path.join(workdir, 'page.db'), 10)  # binds it too
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
    env = _server_env(workdir, db_url, 'page')
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


def _answers(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == '--child':
        return child_main(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=1000000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--naive-max', type=int, default=1000000,
                        help='skip the model-instance loop above this many rows')
    parser.add_argument('--memory-small', type=int, default=100000)
    parser.add_argument('--memory-large', type=int, default=5000000)
    parser.add_argument('--no-postgres', action='store_true')
    parser.add_argument('--latency-runs', type=int, default=200)
    parser.add_argument('--throughput-runs', type=int, default=300)
    parser.add_argument('--consumer-workers', type=int, default=4)
    parser.add_argument('--load-seconds', type=float, default=5)
    parser.add_argument('--page-runs', type=int, default=2000,
                        help='runs in the history for the page benchmark')
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
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-')
    started = time.monotonic()
    try:
        export_lines, ratios, sqlite_url, _ = export_table(args, workdir)
        http_lines, http_ratio = http_table(args, workdir, sqlite_url)
        memory_lines, growth = memory_table(args, workdir)
        queue_lines, p50, queue_ratio = queue_table(args, workdir)
        health_lines, health_ratio = health_table(args, workdir)
        page_lines, page_ratio = page_table(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = ['# Benchmarks', '',
              'Produced by `.venv/bin/python scripts/bench.py --rows %d --repeat %d` on a '
              '%d-core machine; medians of %d interleaved rounds, each export in a fresh '
              'process. Ratios are against the baseline of the same database (SQLite: the '
              'stdlib cursor into csv.writer, no escaping; PostgreSQL: psql\'s COPY).'
              % (args.rows, args.repeat, os.cpu_count(), args.repeat), '',
              '## Export of the `orders` report (6 columns, a join)', ''] + export_lines + [
              '', '## Streamed download', ''] + http_lines + [
              '', '## Memory', ''] + memory_lines + [
              '', '## Queue: Redis and a running consumer (`-k thread -w %d -q`)'
              % args.consumer_workers, ''] + queue_lines + [
              '', '## /healthz', ''] + health_lines + [
              '', '## The web page', ''] + page_lines + [
              '', 'Took %.0f s.' % (time.monotonic() - started)]
    text = '\n'.join(report) + '\n'
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as out:
        out.write(text)


if __name__ == '__main__':
    main()
