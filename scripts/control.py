#!/usr/bin/env python
"""Act on runs from the shell: cancel one, run one again, backfill a schedule.

    python scripts/control.py cancel 42
    python scripts/control.py rerun 42            # a failed or cancelled run, queued again
    python scripts/control.py backfill nightly --from 2026-11-20 --to 2026-11-22
    python scripts/control.py prune               # history retention now, not at the next tick

Each prints what it did as JSON (the API's answer) and exits 1 with the
reason when it is refused, e.g. a run that is already sending its mail.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import control  # noqa: E402
import history  # noqa: E402
import runviews  # noqa: E402
from errors import ApiError  # noqa: E402
from models import bind_database, utcnow  # noqa: E402
from settings import SettingsError, load_settings  # noqa: E402
from vocab import Trigger  # noqa: E402

WHO = 'the command line'


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', help='config file')
    commands = parser.add_subparsers(dest='command', required=True)
    cancel = commands.add_parser('cancel', help='cancel a queued or running run')
    cancel.add_argument('run', type=int)
    rerun = commands.add_parser('rerun', help='run a failed or cancelled run again')
    rerun.add_argument('run', type=int)
    backfill = commands.add_parser('backfill', help="run a schedule's past slots")
    backfill.add_argument('schedule')
    backfill.add_argument('--from', dest='start', required=True,
                          help="first day (YYYY-MM-DD) or time, in the schedule's timezone")
    backfill.add_argument('--to', dest='end', required=True, help='last day or time, included')
    commands.add_parser('prune', help='remove runs past history_days now')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        sys.exit('control: bad settings: %s' % exc)
    bind_database(settings.database_url, auto=settings.auto_migrate)
    from tasks import Jobs
    jobs = Jobs(settings)
    try:
        if args.command == 'cancel':
            answer = runviews.run_as_dict(control.cancel_run(settings, jobs.store, args.run,
                                                             by=WHO))
        elif args.command == 'rerun':
            run = control.rerun(jobs.registry, settings, args.run, trigger=Trigger.CLI, by=WHO)
            jobs.enqueue_run(run)
            answer = {'id': run.id, 'status': run.status, 'rerun_of': args.run}
        elif args.command == 'backfill':
            created, answer = control.backfill(jobs.registry, settings, args.schedule,
                                               args.start, args.end)
            for run in created:
                if run.status == 'queued':
                    jobs.enqueue_run(run)
        else:
            answer = {'removed': history.remove_old_runs(settings, utcnow(),
                                                         budget=float('inf'))}
    except ApiError as exc:
        sys.exit('control: %s%s' % ('%s: ' % exc.field if exc.field else '', exc.message))
    print(json.dumps(answer, indent=2))


if __name__ == '__main__':
    main()
