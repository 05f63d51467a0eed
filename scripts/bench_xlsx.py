#!/usr/bin/env python
"""Benchmark of the XLSX export: memory from a small to a large report, and
speed beside a bare XlsxWriter constant_memory loop over the same rows.

    .venv/bin/python scripts/bench_xlsx.py [--small 100000] [--large 2000000]
        [--rows 500000] [--repeat 3] [--no-postgres]
    .venv/bin/python scripts/bench_xlsx.py --smoke   # tiny and quick

The data is bench.py's demo shop (orders report), in a SQLite file and, when
it answers, a throwaway PostgreSQL database. Each export runs in a fresh
process (its own peak RSS). Nightshift's way is what a run does:
outputs.open_output(..., 'xlsx') on the `demo` source, written with
export.write_file. The bare loop runs the same statement on a plain cursor
(server-side on PostgreSQL) and calls worksheet.write_row() on each row as
the driver gives it: no types looked at, no formats, one sheet per
1,048,575 rows. Prints Markdown.
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # before scripts/: scripts/export.py is not export.py
sys.path.append(os.path.join(ROOT, 'scripts'))

import bench  # noqa: E402  (the shop builders, the report as a worker reads it)


def _nightshift(url, out):
    import outputs
    from export import write_file
    import sqlglot.optimizer.annotate_types  # noqa: F401  (a worker has them loaded)
    import sqlglot.optimizer.qualify  # noqa: F401
    definition, settings = bench.orders_report(url, os.path.dirname(out))
    typed = definition.parse({})

    def export():
        with outputs.open_output(definition, settings, typed, 'xlsx', escape=True, bom=False,
                                 tmpdir=os.path.dirname(out)) as stream:
            write_file(stream, out)
        return stream.rows
    return export


def _bare(url, out):
    import sources
    import xlsxwriter
    sql, params = bench.orders_statement(url, os.path.dirname(out))
    engine = sources.engine_of(url)

    def export():
        if engine == 'postgres':
            import psycopg
            conn = psycopg.connect(url)
            cursor = conn.cursor(name='bare')
        else:
            import sqlite3
            conn = sqlite3.connect(sources.sqlite_path(url))
            cursor = conn.cursor()
        cursor.execute(sql, params)
        book = xlsxwriter.Workbook(out, {'constant_memory': True,
                                         'tmpdir': os.path.dirname(out)})
        sheet, row_number, count = None, 0, 0
        header = None
        while True:
            batch = cursor.fetchmany(2000)
            if not batch:
                break
            if header is None:
                header = [d[0] for d in cursor.description]
            for row in batch:
                if sheet is None or row_number >= 1048576:
                    sheet = book.add_worksheet()
                    sheet.write_row(0, 0, header)
                    row_number = 1
                sheet.write_row(row_number, 0, row)
                row_number += 1
                count += 1
        book.close()
        conn.close()
        return count
    return export


WAYS = {'nightshift': _nightshift, 'bare': _bare}


def run_child(way, url, out):
    return bench.run_child(way, url, out, script=__file__)


def sources_for(args, workdir, cleanup, rows, tag):
    urls = {'SQLite': bench.make_sqlite(os.path.join(workdir, 'shop%s.db' % tag), rows)}
    if not args.no_postgres:
        url = bench.make_postgres(rows, cleanup)
        if url:
            urls['PostgreSQL'] = url
    return urls


def speed_table(args, workdir):
    lines = ['| engine | Nightshift xlsx | bare XlsxWriter loop | ratio (bare / Nightshift) |',
             '|---|---|---|---|']
    worst = None
    with contextlib.ExitStack() as cleanup:
        urls = sources_for(args, workdir, cleanup, args.rows, '-speed')
        for engine, url in urls.items():
            times = {'nightshift': [], 'bare': []}
            for _ in range(args.repeat):
                for way in times:  # interleaved: machine noise hits both alike
                    seconds, _, rows = run_child(way, url, os.path.join(workdir, 'speed.xlsx'))
                    assert rows == args.rows, (way, rows)
                    times[way].append(seconds)
            ours, bare = (statistics.median(times[w]) for w in ('nightshift', 'bare'))
            ratio = bare / ours
            worst = ratio if worst is None else min(worst, ratio)
            lines.append('| %s | %.2f s (%s rows/s) | %.2f s | %.2fx |' % (
                engine, ours, '{:,.0f}'.format(args.rows / ours), bare, ratio))
    lines += ['', '%s rows of the orders report, median of %d interleaved rounds, each in a '
              'fresh process. Target: at least 0.7x.' % ('{:,}'.format(args.rows), args.repeat)]
    return lines, worst


def memory_table(args, workdir):
    peaks = {}
    for rows in (args.small, args.large):
        with contextlib.ExitStack() as cleanup:
            urls = sources_for(args, workdir, cleanup, rows, '-mem%d' % rows)
            peaks[rows] = {}
            for engine, url in urls.items():
                seconds, peak, got = run_child('nightshift', url,
                                               os.path.join(workdir, 'mem.xlsx'))
                assert got == rows, (engine, got)
                sheets = _sheets(os.path.join(workdir, 'mem.xlsx'))
                peaks[rows][engine] = (peak, seconds, sheets)
            os.unlink(urls['SQLite'][len('sqlite:///'):])
    engines = list(peaks[args.large])
    lines = ['| rows | %s |' % ' | '.join('%s: peak RSS MB (seconds, sheets)' % e
                                          for e in engines),
             '|---|%s' % ('---|' * len(engines))]
    for rows in (args.small, args.large):
        lines.append('| %s | %s |' % ('{:,}'.format(rows), ' | '.join(
            '%.0f (%.1f s, %d)' % peaks[rows][e] for e in engines)))
    growth = {e: peaks[args.large][e][0] - peaks[args.small][e][0] for e in engines}
    lines += ['', 'Peak RSS of a fresh process writing the workbook. Growth from %s to %s '
              'rows: %s (target: at most +15 MB).' % (
                  '{:,}'.format(args.small), '{:,}'.format(args.large),
                  ', '.join('%s %+.1f MB' % item for item in growth.items()))]
    return lines, max(growth.values())


def _sheets(path):
    import zipfile
    with zipfile.ZipFile(path) as book:
        return sum(1 for name in book.namelist() if name.startswith('xl/worksheets/sheet'))


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == '--child':
        return bench.child_main(*sys.argv[2:5], ways=WAYS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, default=500000, help='rows for the speed table')
    parser.add_argument('--small', type=int, default=100000)
    parser.add_argument('--large', type=int, default=2000000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--no-postgres', action='store_true')
    parser.add_argument('--no-memory', action='store_true', help='the speed table only')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, one round')
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.small, args.large, args.repeat = 2000, 1000, 5000, 1
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-xlsx-')
    try:
        memory, growth = memory_table(args, workdir) if not args.no_memory else ([], 0)
        speed, ratio = speed_table(args, workdir)
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    print('\n'.join(['### Memory', ''] + memory + ['', '### Speed', ''] + speed))
    if not args.smoke and (growth > 15 or ratio < 0.7):
        print('\nOff target: memory growth %+.1f MB, speed %.2fx' % (growth, ratio))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
