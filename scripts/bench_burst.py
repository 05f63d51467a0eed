#!/usr/bin/env python
"""A burst of runs of one report: are its turns kept busy?

    .venv/bin/python scripts/bench_burst.py [--runs 30] [--workers 4] [--consumers 1]
                                            [--repeat 3] [--postgres] [--before CHECKOUT]
    .venv/bin/python scripts/bench_burst.py --smoke    # 10 runs, one round

`--runs` runs of the `customers` report (one recipient each) are created and
queued at once, with `max_concurrent_per_report` at its default, for
`--consumers` real `huey_consumer tasks.huey -w WORKERS -k thread` processes
on a throwaway redis-server, mailing to an SMTP sink in its own process.
Reported per round: the longest time a turn of the report stood free while a
run of the burst had not started (the handoff's gap), the total time from
queueing to the last run's end, and the longest any run waited to start.

`--before CHECKOUT` runs the same burst, in alternating rounds, with the
consumers started from another checkout of Nightshift (e.g. a worktree of
main made for the comparison): the code before a change, side by side.
Its schema must match this checkout's. Loopback only; bounded in time.
"""
import argparse
import contextlib
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
from loopback import idle_turn_gaps, stop_gracefully  # noqa: E402

PG_ADMIN_URL = os.environ.get('NIGHTSHIFT_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/test')
SINK = ('import sys, time; sys.path.insert(0, %r); from loopback import SmtpSink; '
        's = SmtpSink(); s.start(); print(s.port, flush=True); time.sleep(10 ** 6)')


def postgres_database(cleanup):
    import psycopg
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    name = 'nightshift_burst_%s' % uuid.uuid4().hex[:8]
    admin.execute('CREATE DATABASE %s' % name)

    def drop():
        admin.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
        admin.close()
    cleanup.callback(drop)
    return '%s/%s' % (PG_ADMIN_URL.rsplit('/', 1)[0], name)


def environment(workdir, database_url, redis_url, smtp_port):
    config = os.path.join(workdir, 'bench.ini')
    with open(config, 'w') as out:
        out.write('[nightshift]\nreports_dir = %s\nmail_backend = smtp\nsmtp_security = none\n'
                  % os.path.join(workdir, 'files'))
    return dict(os.environ, NIGHTSHIFT_CONFIG=config, DATABASE_URL=database_url,
                NIGHTSHIFT_SOURCE_DEMO_URL=database_url, REDIS_URL=redis_url,
                SMTP_HOST='127.0.0.1', SMTP_PORT=str(smtp_port),
                MAIL_FROM='bench@nightshift.test', NIGHTSHIFT_API_TOKEN='',
                NIGHTSHIFT_REPORT_PATHS=os.path.join(ROOT, 'reports'))


def burst(env, code, runs, workers, consumers, log, timeout=300):
    """One burst with the consumers of checkout `code`: (longest idle turn s,
    total s, longest wait to start s, runs delivered)."""
    from models import Delivery, Run, db, utcnow
    from runs import create_run
    from settings import load_settings
    from tasks import Jobs
    from vocab import RunStatus
    Delivery.delete().execute()
    Run.delete().execute()
    settings = load_settings(env['NIGHTSHIFT_CONFIG'], environ=env)
    jobs = Jobs(settings)
    command = [sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w',
               str(workers), '-k', 'thread', '-n']
    procs = [subprocess.Popen(command, cwd=code, env=dict(env, PYTHONPATH=code), stdout=log,
                              stderr=subprocess.STDOUT) for _ in range(consumers)]
    try:
        time.sleep(3)  # the consumers start and bind the database
        created = [create_run(jobs.registry, settings, 'customers', {},
                              ['r%d@example.org' % i]) for i in range(runs)]
        began = utcnow()
        for run in created:
            jobs.enqueue_run(run)
        ids = [run.id for run in created]
        deadline = time.time() + timeout
        while time.time() < deadline:
            if Run.select().where(Run.id.in_(ids), Run.status == RunStatus.DELIVERED) \
                    .count() == runs:
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            stop_gracefully(proc, timeout=30)
    rows = list(Run.select().where(Run.id.in_(ids)))
    db.close()
    done = [r for r in rows if r.status == RunStatus.DELIVERED]
    if len(done) < runs:
        return float('nan'), float('nan'), float('nan'), len(done)
    gaps = idle_turn_gaps(done, settings.max_concurrent_per_report)
    total = (max(r.finished_at for r in done) - began).total_seconds()
    wait = max((r.started_at - r.created_at).total_seconds() for r in done)
    return max(gaps, default=0.0), total, wait, len(done)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--workers', type=int, default=4, help='threads per consumer')
    parser.add_argument('--consumers', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--postgres', action='store_true',
                        help='state and shop in a throwaway PostgreSQL database')
    parser.add_argument('--before', help='another checkout whose consumers run the same '
                        'burst in alternating rounds')
    parser.add_argument('--smoke', action='store_true', help='10 runs, one round')
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.repeat = 10, 1
    import demo
    import redis
    from loopback import RedisServer
    from models import bind_database
    codes = [('after', ROOT)] + ([('before', os.path.abspath(args.before))]
                                 if args.before else [])
    results = {name: [] for name, _ in codes}
    workdir = tempfile.mkdtemp(prefix='nightshift-burst-')
    with contextlib.ExitStack() as cleanup:
        redis_server = RedisServer()
        redis_server.start()
        cleanup.callback(redis_server.stop)
        sink = subprocess.Popen([sys.executable, '-c', SINK % os.path.join(ROOT, 'tests')],
                                stdout=subprocess.PIPE)
        cleanup.callback(sink.kill)
        smtp_port = int(sink.stdout.readline())
        database_url = (postgres_database(cleanup) if args.postgres
                        else 'sqlite:///%s' % os.path.join(workdir, 'state.db'))
        env = environment(workdir, database_url, redis_server.url, smtp_port)
        database = demo.open_shop(database_url)
        demo.seed(customers=50, orders=200)
        database.close()
        bind_database(database_url)
        with open(os.path.join(workdir, 'consumers.log'), 'wb') as log:
            for _ in range(args.repeat):
                for name, code in codes:
                    redis.Redis.from_url(redis_server.url).flushdb()
                    results[name].append(burst(env, code, args.runs, args.workers,
                                               args.consumers, log))
                    print(name, '%.3f s longest idle turn, %.2f s total, %.2f s longest '
                          'wait, %d delivered' % results[name][-1], flush=True)
    print('\n| code | runs | consumers x workers | longest idle turn s (median, max) '
          '| total s (median) | longest wait to start s (median) | delivered |')
    print('|---|---|---|---|---|---|---|')
    failed = False
    for name, _ in codes:
        rounds = results[name]
        failed |= any(r[3] < args.runs for r in rounds)
        print('| %s | %d | %d x %d | %.3f, %.3f | %.2f | %.2f | %d/%d |'
              % (name, args.runs, args.consumers, args.workers,
                 statistics.median(r[0] for r in rounds), max(r[0] for r in rounds),
                 statistics.median(r[1] for r in rounds),
                 statistics.median(r[2] for r in rounds),
                 sum(r[3] for r in rounds), args.runs * len(rounds)))
    if failed:
        print('some runs were not delivered; logs in %s' % workdir)
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()
