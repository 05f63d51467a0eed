#!/usr/bin/env python
"""Run a report from the shell, to a file or by email, with a progress bar.

    python scripts/export.py orders --param since=2025-01-01 --out orders.csv
    python scripts/export.py orders -o - | gzip > orders.csv.gz
    python scripts/export.py customers --to a@example.org [--queue]

By email the run is recorded in the run history (trigger "cli") and built
here, unless --queue hands it to the worker instead.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from huey.exceptions import CancelExecution, RetryTask  # noqa: E402
from tqdm import tqdm  # noqa: E402

import runs  # noqa: E402
from export import open_csv, write_file  # noqa: E402
from models import Run, bind_database, db  # noqa: E402
from params import InputError  # noqa: E402
from reports import UnknownReport, registry  # noqa: E402
from settings import SettingsError, load_settings  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('report', help='report name (see --list)', nargs='?')
    parser.add_argument('--param', '-p', action='append', default=[], metavar='NAME=VALUE')
    parser.add_argument('--out', '-o', help='write the CSV to this file (- for standard output)')
    parser.add_argument('--to', action='append', default=[], metavar='ADDRESS',
                        help='email the CSV (repeat for more recipients)')
    parser.add_argument('--queue', action='store_true', help='let the worker send it')
    parser.add_argument('--no-escape', action='store_true',
                        help='write cells as they are (no spreadsheet formula escaping)')
    parser.add_argument('--no-bom', action='store_true',
                        help='no UTF-8 byte order mark (it helps Excel read UTF-8)')
    parser.add_argument('--list', action='store_true', help='list the reports')
    parser.add_argument('--quiet', '-q', action='store_true', help='no progress bar')
    parser.add_argument('--config', help='config file')
    args = parser.parse_args(argv)
    if not args.list and not args.report:
        parser.error('name a report, or --list')
    if not args.list and bool(args.out) == bool(args.to):
        parser.error('give either --out FILE or --to ADDRESS')
    return args


def params_from(pairs):
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition('=')
        if not sep:
            raise InputError('param', '%r is not NAME=VALUE' % pair)
        params[name] = value
    return params


def export_file(definition, params, path, escape, bom, limit, quiet):
    """Write the report to `path`, or to standard output when it is `-`
    (then the progress bar and the summary go to standard error)."""
    query = definition.query(definition.parse(params))
    total = None if quiet else query.count()
    to_stdout = path == '-'
    report = sys.stderr if to_stdout else sys.stdout
    started = time.perf_counter()
    with tqdm(total=total, unit=' rows', unit_scale=True, disable=quiet,
              file=sys.stderr) as bar:
        def progress(rows, size):
            bar.update(rows - bar.n)
        with open_csv(query, db.obj, escape=escape, bom=bom, limit=limit) as stream:
            if to_stdout:
                rows, size = write_stdout(stream, progress)
            else:
                rows, size = write_file(stream, path, on_progress=progress, every=0.2)
        rows = stream.rows
        bar.update(rows - bar.n)
    seconds = time.perf_counter() - started
    print('%s: %d rows, %d bytes in %.1f s (%.0f rows/s)' % (
        'stdout' if to_stdout else path, rows, size, seconds,
        rows / seconds if seconds else 0), file=report)
    if stream.truncated:
        print('cut at %d rows (max_rows); the data has more' % limit, file=report)


def write_stdout(stream, on_progress, every=0.2):
    out = sys.stdout.buffer
    last = time.monotonic()
    for chunk in stream:
        out.write(chunk)
        if time.monotonic() - last >= every:
            on_progress(stream.rows, stream.bytes)
            last = time.monotonic()
    out.flush()
    return stream.rows, stream.bytes


def main(argv=None):
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        sys.exit('export: bad settings: %s' % exc)
    if args.list:
        for definition in registry:
            names = ', '.join('%s:%s' % (p.name, p.type) for p in definition.params)
            print('%-12s %s  [%s]' % (definition.name, definition.title, names))
        return
    bind_database(settings.database_url)
    try:
        definition = registry.get(args.report)
        params = params_from(args.param)
        if args.out:
            return export_file(definition, params, args.out,
                               definition.escape_formulas and not args.no_escape,
                               settings.csv_bom and not args.no_bom, settings.max_rows,
                               args.quiet)
        run = runs.create_run(registry, settings, args.report, params, args.to, trigger='cli',
                              escape_formulas=False if args.no_escape else None,
                              bom=settings.csv_bom and not args.no_bom)
    except UnknownReport:
        sys.exit('export: no report named %r (see --list)' % args.report)
    except InputError as exc:
        sys.exit('export: %s: %s' % (exc.field, exc.message))
    from tasks import Jobs
    jobs = Jobs(settings)
    if args.queue:
        jobs.enqueue_run(run)
        print('run %d queued' % run.id)
        return
    try:
        jobs.execute(run.id)
    except RetryTask as retry:
        # A temporary failure: leave the retry to the worker.
        jobs.run_report.schedule((run.id,), delay=retry.delay or 0)
    except CancelExecution:
        pass  # failed for good; the reason is on the run, printed below
    run = Run.get_by_id(run.id)
    print('run %d %s: %d rows, %d bytes%s' % (run.id, run.status, run.rows, run.bytes,
                                             ' (%s)' % run.error if run.error else ''))
    if run.status == 'queued':
        print('the worker will try again')
    elif run.status != 'delivered':
        sys.exit(1)


if __name__ == '__main__':
    main()
