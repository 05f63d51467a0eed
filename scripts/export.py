#!/usr/bin/env python
"""Run a report from the shell, to a file or by email, with a progress bar.

    python scripts/export.py orders --param since=2025-01-01 --out orders.csv
    python scripts/export.py orders -o - | gzip > orders.csv.gz
    python scripts/export.py customers --to a@example.org [--queue]
    python scripts/export.py --list       # the reports, and broken files with their error
    python scripts/export.py --check      # prepare every report on its source; exit 1 on
                                          # any problem, each as file:line: message

By email the run is recorded in the run history (trigger "cli") and built
here, unless --queue hands it to the worker instead.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from huey.exceptions import RetryTask  # noqa: E402
from tqdm import tqdm  # noqa: E402

import reldates  # noqa: E402
import runfiles  # noqa: E402
import runs  # noqa: E402
import sqlexport  # noqa: E402
from export import write_file  # noqa: E402
from models import Run, bind_database, utcnow  # noqa: E402
from params import InputError  # noqa: E402
from reports import BrokenReport, UnknownReport, create_catalogue  # noqa: E402
from settings import SettingsError, load_settings  # noqa: E402
from sources import SourceError, UnknownSource  # noqa: E402
from vocab import RunStatus, Trigger  # noqa: E402


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
    parser.add_argument('--check', action='store_true',
                        help='read every report file and prepare each query on its source; '
                             'exit 1 with file:line errors if any is broken')
    parser.add_argument('--quiet', '-q', action='store_true', help='no progress bar')
    parser.add_argument('--config', help='config file')
    args = parser.parse_args(argv)
    if not args.list and not args.check and not args.report:
        parser.error('name a report, or --list, or --check')
    if not args.list and not args.check and bool(args.out) == bool(args.to):
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


def export_file(settings, definition, params, path, escape, bom, quiet):
    """Write the report to `path`, or to standard output when it is `-`
    (then the progress bar and the summary go to standard error)."""
    # Relative dates (yesterday, -7d): now, in the timezone setting.
    params, _ = reldates.resolve_params(definition.params, params,
                                        reldates.check_zone(settings.timezone), utcnow())
    typed = definition.parse(params)
    to_stdout = path == '-'
    report = sys.stderr if to_stdout else sys.stdout
    started = time.perf_counter()
    with tqdm(unit=' rows', unit_scale=True, disable=quiet, file=sys.stderr) as bar:
        def progress(rows, size):
            bar.update(rows - bar.n)
        with runfiles.open_report(definition, settings, typed, escape, bom) as stream:
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
        print('cut at %d rows (max_rows); the data has more' % settings.max_rows, file=report)


SAMPLES = {'int': 0, 'decimal': 0, 'str': 'x', 'bool': False}


def sample_params(definition):
    """Values to prepare a query with: defaults, else a plausible value."""
    import datetime
    values = {}
    for param in definition.params:
        value = param.default if param.default is not None else param.min
        if value is None:
            value = {'date': datetime.date.today(),
                     'datetime': datetime.datetime.now().replace(microsecond=0),
                     'choice': (param.choices or ('',))[0]}.get(param.type,
                                                               SAMPLES.get(param.type))
        values[param.name] = value
    return values


def check(settings, registry):
    """Every report: its file parses, its source is configured and answers,
    and its query prepares there. Returns the number of problems."""
    problems = 0
    for name, error in sorted(registry.broken.items()):
        print('%s' % error)
        problems += 1
    for definition in registry:
        where = definition.path or definition.name
        if definition.kind == 'sql':
            where = '%s:%d' % (definition.path, definition.parsed.sql_line)
        try:
            source = settings.source(definition.source)
            sql, params = definition.statement(source.engine, sample_params(definition))
            sqlexport.check_query(source, sql, params)
        except UnknownSource:
            print('%s: report %s reads source %r, which is not configured'
                  % (where, definition.name, definition.source))
            problems += 1
        except SourceError as exc:
            print('%s: report %s on source %s: %s' % (where, definition.name, exc.source,
                                                       exc.message))
            problems += 1
        else:
            print('ok  %s (%s)' % (definition.name, definition.source))
    return problems


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
    registry = create_catalogue(settings)
    if args.list:
        for definition in registry:
            names = ', '.join('%s:%s' % (p.name, p.type) for p in definition.params)
            print('%-12s %s  [%s] (source %s)' % (definition.name, definition.title, names,
                                                  definition.source))
        for name, error in sorted(registry.broken.items()):
            print('%-12s BROKEN %s' % (name, error))
        return
    if args.check:
        sys.exit(1 if check(settings, registry) else 0)
    try:
        definition = registry.get(args.report)
        params = params_from(args.param)
        if args.out:
            return export_file(settings, definition, params, args.out,
                               definition.escape_formulas and not args.no_escape,
                               settings.csv_bom and not args.no_bom, args.quiet)
        bind_database(settings.database_url, auto=settings.auto_migrate)
        run = runs.create_run(registry, settings, args.report, params, args.to,
                              trigger=Trigger.CLI,
                              escape_formulas=False if args.no_escape else None,
                              bom=settings.csv_bom and not args.no_bom)
    except UnknownReport:
        sys.exit('export: no report named %r (see --list)' % args.report)
    except BrokenReport as exc:
        sys.exit('export: %s' % exc.error)
    except InputError as exc:
        sys.exit('export: %s: %s' % (exc.field, exc.message))
    except UnknownSource:
        sys.exit('export: report %s reads source %r, which is not configured'
                 % (args.report, definition.source))
    except SourceError as exc:
        sys.exit('export: report %s on source %s: %s' % (args.report, exc.source, exc.message))
    from tasks import Jobs
    jobs = Jobs(settings, registry=registry)
    if args.queue:
        jobs.enqueue_run(run)
        print('run %d queued' % run.id)
        return
    try:
        jobs.execute(run.id)
    except RetryTask as retry:
        # A temporary failure: leave the retry to the worker.
        jobs.run_report.schedule((run.id,), delay=retry.delay or 0)
    run = Run.get_by_id(run.id)
    print('run %d %s: %d rows, %d bytes%s' % (run.id, run.status, run.rows, run.bytes,
                                             ' (%s)' % run.error if run.error else ''))
    if run.status == RunStatus.QUEUED:
        print('the worker will try again')
    elif run.status != RunStatus.DELIVERED:
        sys.exit(1)


if __name__ == '__main__':
    main()
