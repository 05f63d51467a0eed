#!/usr/bin/env python
"""The SQLite export alone, side by side: ways of writing the `orders`
report's CSV, each in a fresh process, rounds interleaved.

    .venv/bin/python scripts/bench_sqlite.py [--rows 500000] [--repeat 5]
    .venv/bin/python scripts/bench_sqlite.py --smoke

For each way: the export's own wall and CPU seconds (as bench.py times it:
modules imported, report read), and the whole process, started to exited
(wall, and its user + system CPU from the kernel), which is how the sqlite3
shell is timed. Medians; ratios against the stdlib loop and the shell.
Nightshift's ways are checked to write the same bytes.
"""
import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import bench  # noqa: E402 (after the path)

# Nightshift's SQLite paths, chosen with sqlexport's switches.
NIGHTSHIFT_WAYS = {
    'nightshift': {},  # what a run does now
    'nightshift-lines': {'SQLITE_PYTHON_CELLS': False},  # SQLite joins the lines
    'nightshift-cells': {'SQLITE_LINES': False},  # SQLite formats, csv.writer writes
    # Variants of the way a run goes, measured to choose it.
    'nightshift-250': {'SQLITE_CHUNK_ROWS': 250},
    'nightshift-2000': {'SQLITE_CHUNK_ROWS': 2000},
    'nightshift-1000': {'SQLITE_CHUNK_ROWS': 1000},
    'nightshift-5000': {'SQLITE_CHUNK_ROWS': 5000},
}


# The overlap tried (and not kept): a thread steps the statement and hands
# batches through a bounded queue while the main thread formats and writes.
THREADED_WAYS = {'nightshift-reader-thread': ('ColumnStream', {}),
                 'nightshift-lines-reader-thread': ('LineStream', {'SQLITE_PYTHON_CELLS': False})}


class ReaderThread:
    """A cursor whose fetchmany() takes the batches another thread read.
    Bench only: no cancel, no error passing."""

    def __init__(self, cursor, size=2000, depth=4):
        import queue
        import threading
        self.batches = queue.Queue(depth)
        self.cursor, self.size = cursor, size
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        while True:
            batch = self.cursor.fetchmany(self.size)
            self.batches.put(batch)
            if not batch:
                return

    def fetchmany(self, size):
        return self.batches.get()


def threaded(stream_class):
    def stream(header, cursor, *args, **options):
        return stream_class(header, ReaderThread(cursor, options.get('chunk_rows', 2000)),
                            *args, **options)
    return stream


def child(way, url, out):
    if way in NIGHTSHIFT_WAYS or way in THREADED_WAYS:
        import sqlexport
        switches = NIGHTSHIFT_WAYS.get(way, {})
        if way in THREADED_WAYS:
            stream_name, switches = THREADED_WAYS[way]
            setattr(sqlexport, stream_name, threaded(getattr(sqlexport, stream_name)))
        for name, value in switches.items():
            setattr(sqlexport, name, value)
        export = bench.CHILD_WAYS['nightshift'](url, out)
    else:
        export = bench.CHILD_WAYS[way](url, out)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = export()
    print(json.dumps({'seconds': time.perf_counter() - wall,
                      'cpu': time.process_time() - cpu, 'rows': rows,
                      'peak_mb': bench.peak_rss_mb()}))


def run_way(way, url, out):
    """{seconds, cpu, rows, process_wall, process_cpu} of one fresh process."""
    if way == 'shell':
        sql, params = bench.orders_statement(url, os.path.dirname(out))
        script = ''.join('.parameter set :%s %s\n' % (name, bench.sql_literal(value))
                         for name, value in params.items()) + sql + ';\n'
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    if way == 'shell':
        with open(out, 'wb') as f:
            subprocess.run(['sqlite3', '-csv', '-header', url[len('sqlite:///'):]],
                           input=script.encode(), stdout=f, check=True)
        info = {'rows': bench.count_lines(out) - 1, 'peak_mb': float('nan')}
    else:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', way, url,
                               out], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError('%s failed: %s' % (way, proc.stderr[-2000:]))
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    info['process_wall'] = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    info['process_cpu'] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if way == 'shell':
        info['seconds'], info['cpu'] = info['process_wall'], info['process_cpu']
    return info


def column_costs(url, repeat):
    """Per column of the report, CPU seconds for SQLite to format it in the
    SELECT (the raw columns fetched with that one formatted, less all raw)
    and for Python's column function (sqlexport._sqlite_cells) on the same
    values, quoting included. In this process; medians of `repeat`."""
    import sqlite3

    import sources
    import sqlexport
    from export import _csv_quoted
    sql, params = bench.orders_statement(url, tempfile.gettempdir())
    types = sqlexport.sqlite_column_types(sources.Source('sqlite', url, 0), sql)
    header = [d[0] for d in sqlite3.connect(url[len('sqlite:///'):]).execute(
        'SELECT * FROM (\n%s\n) LIMIT 0' % sql, params).description]
    raw = ['q.c%d' % i for i in range(len(types))]
    names = ', '.join('c%d' % i for i in range(len(types)))
    with_q = 'WITH q(%s) AS (\n%s\n) SELECT ' % (names, sql)
    _, functions = sqlexport._sqlite_cells(types, True)
    conn = sqlite3.connect(url[len('sqlite:///'):])
    conn.set_progress_handler(lambda: 0, 10000)  # as a source connection has

    def batches(select):
        cursor = conn.execute(with_q + ', '.join(select) + ' FROM q', params)
        while True:
            batch = cursor.fetchmany(sqlexport.SQLITE_CHUNK_ROWS)
            if not batch:
                return
            yield batch

    def fetching(select):
        started = time.process_time()
        for _ in batches(select):
            pass
        return time.process_time() - started

    def formatting(i):
        spent = 0
        for batch in batches(raw):
            values = list(zip(*batch))[i]
            started = time.process_time()
            _csv_quoted(functions[i](values))
            spent += time.process_time() - started
        return spent
    sqlite_costs, python_costs, bases = {}, {}, []
    for _ in range(repeat):
        base = fetching(raw)
        bases.append(base)
        for i, kind in enumerate(types):
            x = 'q.c%d' % i
            cell = sqlexport.sqlite_escape_sql(x) if kind[0] == 'text' \
                else sqlexport._sqlite_column(x, kind, True)
            formatted = raw[:i] + ["ifnull(%s, '')" % cell] + raw[i + 1:]
            sqlite_costs.setdefault(i, []).append(fetching(formatted) - base)
            if functions[i] is not sqlexport._as_they_are:
                python_costs.setdefault(i, []).append(formatting(i))
    print('Raw columns fetched: %.3f s of CPU' % statistics.median(bases))
    print('| column | kind | SQLite formats it, CPU s | Python formats it, CPU s |')
    print('|---|---|---|---|')
    for i, kind in enumerate(types):
        python = statistics.median(python_costs[i]) if i in python_costs else float('nan')
        print('| %s | %s | +%.3f | %.3f |' % (header[i], kind[0],
                                            statistics.median(sqlite_costs[i]), python))


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=500000)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--ways', default='shell,stdlib,nightshift-lines,nightshift')
    parser.add_argument('--db', help='an existing shop file made by an earlier run (kept)')
    parser.add_argument('--smoke', action='store_true')
    parser.add_argument('--columns', action='store_true',
                        help="each column's formatting cost, in SQLite and in Python")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.repeat = 5000, 1
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-sqlite-')
    path = args.db or os.path.join(workdir, 'shop.db')
    url = 'sqlite:///%s' % os.path.abspath(path)
    if not os.path.exists(path):
        bench.make_sqlite(path, args.rows)
    if args.columns:
        column_costs(url, args.repeat)
        return 0
    ways = args.ways.split(',')
    results = {way: [] for way in ways}
    for _ in range(args.repeat):
        for way in ways:
            out = os.path.join(workdir, '%s.csv' % way)
            info = run_way(way, url, out)
            if info['rows'] != args.rows:
                raise RuntimeError('%s wrote %d rows, not %d' % (way, info['rows'], args.rows))
            results[way].append(info)
    written = {digest(os.path.join(workdir, '%s.csv' % way)) for way in ways
               if way.startswith('nightshift')}
    print('| way | export wall s | export CPU s | process wall s | process CPU s | '
          'rows/s (export) | vs stdlib (export wall) | vs shell (process wall) | '
          'peak RSS MB |')
    print('|---|---|---|---|---|---|---|---|---|')

    def middle(way, key):
        return statistics.median(info[key] for info in results[way])
    for way in ways:
        stdlib = middle('stdlib', 'seconds') if 'stdlib' in ways else float('nan')
        shell = middle('shell', 'process_wall') if 'shell' in ways else float('nan')
        print('| %s | %.2f | %.2f | %.2f | %.2f | %s | %.2fx | %.2fx | %.0f |' % (
            way, middle(way, 'seconds'), middle(way, 'cpu'), middle(way, 'process_wall'),
            middle(way, 'process_cpu'), '{:,.0f}'.format(args.rows / middle(way, 'seconds')),
            stdlib / middle(way, 'seconds'), shell / middle(way, 'process_wall'),
            middle(way, 'peak_mb')))
    print()
    print('Nightshift ways wrote the same bytes: %s' % (len(written) <= 1))
    if len(written) > 1:
        return 1
    return 0


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        child(*sys.argv[2:5])
    else:
        sys.exit(main())
