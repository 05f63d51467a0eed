#!/usr/bin/env python
"""PostgreSQL export alone: psql's COPY beside Nightshift, with the CPU of
each side.

    .venv/bin/python scripts/bench_pgexport.py [--rows 500000] [--rounds 7]
        [--root OTHER_CHECKOUT ...]

The rows of bench.py's export table for PostgreSQL, in interleaved rounds:
`psql -c "COPY (orders) TO STDOUT CSV"` into a file, and Nightshift's
export in a fresh process (bench.py's `nightshift` child way: connect,
describe, COPY, write the file), once for this checkout and once for each
`--root` (another checkout, e.g. a worktree of main before a change, run
with this interpreter). Besides the wall time of the export it reports the
CPU seconds of the client process (psql, or the Python export), of the
PostgreSQL backend serving it and of that backend's parallel workers, read
from /proc (the server is on loopback): on a shared 2-core machine the wall
time moves with other load, the CPU seconds much less.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import bench  # noqa: E402

TICKS = os.sysconf('SC_CLK_TCK')

# The child: bench.py's way from the checkout at argv[1], timed with its CPU.
CHILD = r'''
import json, os, sys, time
root = sys.argv[1]
sys.path[:0] = [root, os.path.join(root, 'scripts')]
import bench
export = bench.CHILD_WAYS['nightshift'](sys.argv[2], sys.argv[3])
started, cpu = time.perf_counter(), time.process_time()
rows = export()
print(json.dumps({'seconds': time.perf_counter() - started,
                  'cpu': time.process_time() - cpu, 'rows': rows}))
'''


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class BackendWatch(threading.Thread):
    """Follows the backend whose application_name is `name` (and its
    parallel workers) and keeps their last CPU reading before they end."""

    def __init__(self, url, name):
        import psycopg
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.name, self.pid, self.done = name, None, False
        self.leader, self.workers = float('nan'), {}

    def run(self):
        while not self.done:
            if self.pid is None:
                row = self.conn.execute('SELECT pid FROM pg_stat_activity '
                                        'WHERE application_name = %s', (self.name,)).fetchone()
                self.pid = row[0] if row else None
            else:
                with contextlib.suppress(OSError):
                    self.leader = cpu_seconds(self.pid)
                for (pid,) in self.conn.execute('SELECT pid FROM pg_stat_activity WHERE '
                                                'leader_pid = %s AND pid <> %s',
                                                (self.pid, self.pid)).fetchall():
                    self.workers.setdefault(pid, 0.0)
                for pid in self.workers:
                    with contextlib.suppress(OSError):
                        self.workers[pid] = cpu_seconds(pid)
            time.sleep(0.005)

    def stop(self):
        time.sleep(0.02)
        self.done = True
        self.join()
        self.conn.close()
        return self.leader, sum(self.workers.values())


def run_psql(url, literal_sql, out, env):
    started = time.perf_counter()
    with open(out, 'wb') as f:
        proc = subprocess.Popen(['psql', '-q', url, '-c', 'COPY (%s) TO STDOUT WITH (FORMAT csv, '
                                 'HEADER true)' % literal_sql], stdout=f, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError('psql failed')
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, \
        bench.count_lines(out) - 1


def run_nightshift(root, url, out, env):
    proc = subprocess.run([sys.executable, '-c', CHILD, root, url, out], env=env, cwd=root,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError('export failed: %s' % proc.stderr[-2000:])
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info['seconds'], info['cpu'], info['rows']


def measure(way, url, tag):
    """(wall s, client CPU s, backend CPU s, workers CPU s, rows) of one export."""
    name = 'bench_pgexport_%s_%d' % (tag, time.monotonic_ns())
    env = dict(os.environ, PGAPPNAME=name)
    watch = BackendWatch(url, name)
    watch.start()
    try:
        wall, client, rows = way(env)
    finally:
        leader, workers = watch.stop()
    return wall, client, leader, workers, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=500000)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--root', action='append', default=[],
                        help='another checkout to run Nightshift from (repeatable)')
    parser.add_argument('--analyze', action='store_true',
                        help='ANALYZE the shop first (bench.py does not: with no statistics '
                             'PostgreSQL picks a parallel plan for the orders query)')
    args = parser.parse_args(argv)
    import tempfile
    import psycopg
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-pg-')
    with contextlib.ExitStack() as cleanup:
        url = bench.make_postgres(args.rows, cleanup)
        if url is None:
            return 1
        sql, params = bench.orders_statement(url, workdir)
        with psycopg.connect(url, autocommit=True) as conn:
            if args.analyze:
                conn.execute('ANALYZE')
            literal_sql = psycopg.ClientCursor(conn).mogrify(sql, params)
        ways = [('psql COPY (baseline)', lambda env: run_psql(
            url, literal_sql, os.path.join(workdir, 'psql.csv'), env))]
        for i, root in enumerate([ROOT] + [os.path.abspath(r) for r in args.root]):
            label = 'Nightshift (%s)' % ('this checkout' if i == 0 else root)
            out = os.path.join(workdir, 'nightshift-%d.csv' % i)
            ways.append((label, lambda env, root=root, out=out: run_nightshift(
                root, url, out, env)))
        results = {label: [] for label, _ in ways}
        for round_ in range(args.rounds):
            for i, (label, way) in enumerate(ways):
                figures = measure(way, url, i)
                if figures[-1] != args.rows:
                    raise RuntimeError('%s wrote %d rows' % (label, figures[-1]))
                results[label].append(figures[:4])
            print('round %d done' % (round_ + 1), file=sys.stderr, flush=True)
        outputs = sorted(n for n in os.listdir(workdir) if n.startswith('nightshift-'))
        digests = {open(os.path.join(workdir, n), 'rb').read() for n in outputs}
    base = statistics.median(r[0] for r in results[ways[0][0]])
    lines = ['| way (%s rows, median of %d rounds) | wall s | ratio | client CPU s | '
             'backend CPU s | parallel workers CPU s |' % ('{:,}'.format(args.rows), args.rounds),
             '|---|---|---|---|---|---|']
    for label, _ in ways:
        wall, client, leader, workers = (statistics.median(r[k] for r in results[label])
                                         for k in range(4))
        lines.append('| %s | %.3f | %.2f× | %.3f | %.3f | %.3f |'
                     % (label, wall, base / wall, client, leader, workers))
    lines += ['', 'Nightshift wrote the same bytes from every checkout: %s'
              % ('yes' if len(digests) == 1 else 'NO')]
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
