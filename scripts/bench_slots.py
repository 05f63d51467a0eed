#!/usr/bin/env python
"""How late a schedule slot's run starts: slot-to-start latency with two
consumer processes, every-minute schedules, real minutes.

    .venv/bin/python scripts/bench_slots.py [--schedules 20] [--minutes 3] [--modes 5,0]
                                            [--start-at 20,45]
    .venv/bin/python scripts/bench_slots.py --smoke     # 3 schedules, one minute, ~1.5 min

Each mode is a value of `tick_every`: 5 runs the consumers' schedule clock
every 5 s on the wall clock's beat; 0 leaves only Huey's periodic tick, once
a minute counted from each consumer's start. For each mode: a fresh SQLite
state database and demo shop, a throwaway redis-server on loopback (the
SQLite queue when redis-server is missing), `--schedules` schedules on
`* * * * *`, and two `huey_consumer tasks.huey -w 2 -k thread` processes
started a random number of seconds apart, as real deployments are. After
`--minutes` minute boundaries both are stopped and every slot checked:
exactly one run per (schedule, slot), none missed. Latency is the run's
`started_at` (the database's clock, at its claim) minus its slot, and
`created_at` minus the slot for when the tick made it. Loopback only;
bounded in time; mail goes to the outbox folder.
"""
import argparse
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # the loopback services live with the tests
from loopback import stop_gracefully  # noqa: E402


def percentile(values, share):
    ordered = sorted(values)
    if not ordered:
        return float('nan')
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered))) - 1))]


def environment(workdir, tick_every, redis_url):
    config = os.path.join(workdir, 'bench.ini')
    with open(config, 'w') as out:
        out.write('[nightshift]\nqueue = %s\nqueue_path = %s\noutbox_dir = %s\nreports_dir = %s\n'
                  'report_paths = %s\nmail_backend = outbox\n'
                  % ('redis' if redis_url else 'sqlite', os.path.join(workdir, 'queue.db'),
                     os.path.join(workdir, 'outbox'), os.path.join(workdir, 'files'),
                     os.path.join(ROOT, 'reports')))
    state = 'sqlite:///%s' % os.path.join(workdir, 'state.db')
    shop = 'sqlite:///%s' % os.path.join(workdir, 'shop.db')
    return dict(os.environ, NIGHTSHIFT_CONFIG=config, DATABASE_URL=state,
                NIGHTSHIFT_SOURCE_DEMO_URL=shop, REDIS_URL=redis_url or '', SMTP_HOST='',
                NIGHTSHIFT_TICK_EVERY=str(tick_every), NIGHTSHIFT_API_TOKEN='',
                NIGHTSHIFT_MAX_CONCURRENT_PER_REPORT='4', NIGHTSHIFT_REPORT_PATHS='')


def prepare(env, count, now):
    """The shop, Nightshift's tables and `count` every-minute schedules."""
    import demo
    import schedules
    from models import bind_database
    from reports import create_catalogue
    from settings import load_settings
    database = demo.open_shop(env['NIGHTSHIFT_SOURCE_DEMO_URL'])
    demo.seed(customers=5, orders=10)
    database.close()
    settings = load_settings(env['NIGHTSHIFT_CONFIG'], environ=env)
    bind_database(settings.database_url)
    registry = create_catalogue(settings)
    for i in range(count):
        schedules.create_schedule(registry, settings, {
            'name': 'every-minute-%02d' % i, 'report': 'customers', 'cron': '* * * * *',
            'to': ['bench@example.org'], 'timezone': 'UTC'}, now)


def wait_for_second(second):
    """Sleep until the wall clock is `second` seconds past a minute."""
    time.sleep((second - time.time() % 60) % 60)


def measure(tick_every, schedules_count, minutes, redis_url, workdir, log, apart=(5, 40),
            start_at=None):
    """(latencies to start, latencies to creation, problems, the consumers'
    start seconds past the minute) for one mode."""
    from models import Run, bind_database, utcnow
    env = environment(workdir, tick_every, redis_url)
    begin = utcnow()
    prepare(env, schedules_count, begin)
    command = [sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2',
               '-k', 'thread']
    procs, offsets = [], []
    try:
        for i in range(2):
            if start_at:
                wait_for_second(start_at[i])
            elif i:
                time.sleep(random.uniform(*apart))  # started apart, as deployments are
            offsets.append(time.time() % 60)
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        # The first slot measured comes after both have started (a slot before
        # is caught up by a starting consumer's own tick: another story).
        first = (utcnow() + datetime.timedelta(seconds=65)).replace(second=0, microsecond=0)
        last = first + datetime.timedelta(minutes=minutes - 1)
        # Past the last slot by a minute and a few seconds: huey's own tick
        # comes at most a minute after it.
        deadline = time.time() + (last - utcnow()).total_seconds() + 70
        bind_database(env['DATABASE_URL'], create=False)
        while time.time() < deadline:
            taken = Run.select().where(Run.slot_at >= first, Run.slot_at <= last,
                                       Run.started_at.is_null(False)).count()
            if taken >= schedules_count * minutes:
                break
            time.sleep(1)
    finally:
        for proc in procs:
            stop_gracefully(proc, timeout=30)
    runs = list(Run.select().where(Run.slot_at >= first, Run.slot_at <= last))
    problems = []
    seen = {}
    for run in runs:
        seen.setdefault((run.schedule, run.slot_at), []).append(run.id)
    doubles = {k: v for k, v in seen.items() if len(v) > 1}
    if doubles:
        problems.append('%d slots ran more than once' % len(doubles))
    missing = schedules_count * minutes - len(seen)
    if missing:
        problems.append('%d slots have no run' % missing)
    not_started = [r.id for r in runs if r.started_at is None]
    if not_started:
        problems.append('%d runs never started' % len(not_started))
    start = [(r.started_at - r.slot_at).total_seconds() for r in runs if r.started_at]
    created = [(r.created_at - r.slot_at).total_seconds() for r in runs]
    return start, created, problems, offsets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--schedules', type=int, default=20)
    parser.add_argument('--minutes', type=int, default=3)
    parser.add_argument('--modes', default='5,0', help='tick_every values, comma-separated')
    parser.add_argument('--start-at', help='seconds past the minute to start each consumer '
                        'at, e.g. 20,45 (default: 5-40 s apart at random)')
    parser.add_argument('--smoke', action='store_true',
                        help='3 schedules, one minute, tick_every 5 only; exits 1 if p99 > 5 s')
    args = parser.parse_args(argv)
    if args.smoke:
        args.schedules, args.minutes, args.modes = 3, 1, '5'
    from loopback import RedisServer
    redis_server = None
    if shutil.which('redis-server'):
        redis_server = RedisServer()
        redis_server.start()
    rows, failed = [], False
    try:
        for mode in [float(m) for m in args.modes.split(',')]:
            workdir = tempfile.mkdtemp(prefix='nightshift-slots-')
            if redis_server is not None:
                import redis
                redis.Redis.from_url(redis_server.url).flushdb()
            with open(os.path.join(workdir, 'consumers.log'), 'wb') as log:
                start, created, problems, offsets = measure(
                    mode, args.schedules, args.minutes,
                    redis_server.url if redis_server else None, workdir, log,
                    apart=(1, 3) if args.smoke else (5, 40),
                    start_at=[float(s) for s in args.start_at.split(',')]
                    if args.start_at else None)
            from models import db
            db.close()
            if problems:
                failed = True
                print('tick_every=%g: %s (logs in %s)' % (mode, '; '.join(problems), workdir))
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            rows.append((mode, len(start), statistics.median(start) if start else float('nan'),
                         percentile(start, 0.99), max(start or [float('nan')]),
                         statistics.median(created) if created else float('nan'),
                         percentile(created, 0.99), 'exactly once' if not problems
                         else '; '.join(problems),
                         ', '.join(':%02d' % o for o in offsets)))
    finally:
        if redis_server is not None:
            redis_server.stop()
            shutil.rmtree(redis_server.dir, ignore_errors=True)
    print('| tick_every | slots | start p50 s | start p99 s | start max s | created p50 s '
          '| created p99 s | runs per slot | consumers started at |')
    print('|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        label = '%g (schedule clock)' % row[0] if row[0] else "0 (Huey's minute tick only)"
        print('| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %s |'
              % ((label,) + row[1:]))
    if args.smoke and (failed or rows[0][3] > 5):
        sys.exit(1)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
