"""Slots start on time: two real huey_consumer processes, started apart, run
their schedule clocks every 5 s on the wall clock's beat. Each slot of
several every-minute schedules becomes exactly one run, started within
seconds of its minute (Huey's periodic tick alone starts it up to 60 s
late, depending on when each consumer started)."""
import datetime

import pytest

import demo
from conftest import wait_until
from models import Run, utcnow
from test_e2e import spawn, stop

pytestmark = pytest.mark.slow

NAMES = ['minute-%d' % i for i in range(4)]


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_two_consumers_start_each_slot_once_within_seconds(app, consumer_env, smtp_sink,
                                                           tmp_path):
    demo.seed(customers=5, orders=20)
    for name in NAMES:
        assert app.post_json('/api/schedules', {
            'name': name, 'report': 'customers', 'to': ['ops@example.org'],
            'cron': '* * * * *'}).status_int == 201
    env = dict(consumer_env, NIGHTSHIFT_TICK_EVERY='5')
    command = ['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2', '-k', 'thread']
    paths = [tmp_path / ('consumer-%d.log' % i) for i in range(2)]
    logs = [open(path, 'wb') for path in paths]
    procs = []
    try:
        for log, path in zip(logs, paths):
            procs.append(spawn(command, env, log))
            wait_until(lambda: b'schedule clock every 5s' in path.read_bytes(), timeout=30,
                       message='the consumer\'s schedule clock')
        # The first minute that comes after both are up: their start-up ticks
        # (which catch up a slot that passed) are no part of it.
        slot = (utcnow() + datetime.timedelta(minutes=1)).replace(second=0, microsecond=0)

        def started():
            runs = list(Run.select().where(Run.slot_at == slot))
            return len(runs) == len(NAMES) and all(r.status == 'delivered' for r in runs)
        wait_until(started, timeout=(slot - utcnow()).total_seconds() + 30, interval=0.5,
                   message='every schedule\'s run of the slot delivered')
    finally:
        for proc in procs:
            stop(proc)
        for log in logs:
            log.close()
    for proc, path in zip(procs, paths):
        assert proc.returncode == 0, path.read_text()

    runs = list(Run.select().where(Run.schedule.in_(NAMES)))
    keys = [(r.schedule, r.slot_at) for r in runs]
    assert len(keys) == len(set(keys))  # exactly once per (schedule, slot)
    measured = [r for r in runs if r.slot_at == slot]
    assert sorted(r.schedule for r in measured) == NAMES
    late = [(r.schedule, (r.started_at - slot).total_seconds()) for r in measured
            if r.started_at - slot > datetime.timedelta(seconds=5)]
    assert late == []
    # Every email belongs to a distinct run: nothing sent twice.
    delivered = [r for r in runs if r.status == 'delivered']
    assert len(smtp_sink.messages) == len(delivered)
    ids = [m['message']['Message-ID'] for m in smtp_sink.messages]
    assert len(ids) == len(set(ids))
