#!/usr/bin/env python
"""Bursting's cost: the `orders` report exported plainly and split by
`customer_email`, on the same SQLite shop, each in a fresh process.

    .venv/bin/python scripts/bench_split.py [--rows 1000000] [--customers 200]

Prints seconds (wall and CPU: the CPU is the steadier figure on a busy
machine) and peak RSS per way: memory stays flat as rows grow, and a
split costs a little more than the plain export it contains.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def child(way, shop, workdir):
    import bursting
    import runfiles
    from export import write_file
    from reports import Catalogue
    from settings import load_settings
    config = os.path.join(workdir, 'bench.ini')
    with open(config, 'w') as out:
        out.write('[nightshift]\nmax_rows = 1000000000\nmax_split_recipients = 1000\n'
                  '[source:demo]\nurl = sqlite:///%s\n' % shop)
    settings = load_settings(config, environ={})
    report = Catalogue([os.path.join(ROOT, 'reports')]).get('orders')
    target = tempfile.mkdtemp(dir=workdir)
    started, cpu = time.perf_counter(), time.process_time()
    with runfiles.open_report(report, settings, report.parse({}), True, True) as stream:
        if way == 'plain':
            write_file(stream, os.path.join(target, 'orders.csv'))
            files = 1
        else:
            split = bursting.Split('customer_email', [])
            bursting.split_stream(stream, os.path.join(target, 'orders.csv'),
                                  os.path.join(target, 'parts'), split, settings)
            files = 1 + len(split.parts)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print('%s\t%d\t%.2f\t%.2f\t%.0f\t%d' % (way, stream.rows, seconds, cpu, peak, files))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', type=int, default=1000000)
    parser.add_argument('--customers', type=int, default=200)
    parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    import demo
    with tempfile.TemporaryDirectory() as workdir:
        shop = os.path.join(workdir, 'shop.db')
        demo.open_shop('sqlite:///%s' % shop)
        demo.seed(customers=args.customers, orders=args.rows)
        print('| way | rows | seconds | CPU seconds | peak RSS (MB) | files written |')
        print('|---|---:|---:|---:|---:|---:|')
        for way in ('plain', 'split', 'plain', 'split'):
            line = subprocess.run([sys.executable, __file__, '--child', way, shop, workdir],
                                  capture_output=True, text=True, check=True).stdout
            print('| %s |' % ' | '.join(line.strip().split('\t')))


if __name__ == '__main__':
    main()
