"""Slots start on time: two real huey_consumer processes, started apart, run
their schedule clocks every 5 s on the wall clock's beat. Each slot of
several every-minute schedules becomes exactly one run, started within
seconds of its minute (Huey's periodic tick alone starts it up to 60 s
late, depending on when each consumer started)."""
import datetime
import signal
import threading
import time

import pytest

import clock
import demo
from conftest import wait_until
from models import Run, utcnow
from test_e2e import spawn, stop

NAMES = ['minute-%d' % i for i in range(4)]


def test_beats_fall_on_the_wall_clock():
    # Every 5 s: at :00.02, :05.02, ... whatever the time asked at.
    assert clock.next_beat(100.0, 5) == pytest.approx(100.02)
    assert clock.next_beat(100.02, 5) == pytest.approx(105.02)
    assert clock.next_beat(1764374399.99, 5) == pytest.approx(1764374400.02)
    assert clock.next_beat(7.0, 2) == pytest.approx(8.02)


def test_a_beat_that_fails_is_logged_and_beats_on(caplog):
    calls = []
    stop = threading.Event()

    def work():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError('database gone for a moment')
        if len(calls) == 3:
            stop.set()

    thread = threading.Thread(target=clock.run_beat,
                              args=(clock.Beat('test beat', 0.05, work), stop))
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and len(calls) == 3
    assert 'test beat failed; trying again at the next beat' in caplog.text
    assert 'database gone for a moment' in caplog.text


def test_beats_run_only_in_consumers_with_periodic_tasks(tmp_path):
    """`huey_consumer -n` turns Huey's periodic tasks off, and the beats with them."""
    huey = clock.ClockedSqliteHuey('beats', filename=str(tmp_path / 'q.db'), results=False)
    calls = []
    huey.beats = (clock.Beat('test beat', 0.05, lambda: calls.append(1)),)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        seen = {}
        for periodic in (False, True):
            calls.clear()
            consumer = huey.create_consumer(workers=1, periodic=periodic, worker_type='thread')
            assert isinstance(consumer, clock.ClockedConsumer)
            consumer.start()
            time.sleep(0.4)
            consumer.stop(graceful=True)
            seen[periodic] = (len(calls), len(consumer.beat_threads))
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert seen[False] == (0, 0)
    assert seen[True][0] >= 3 and seen[True][1] == 1


@pytest.mark.slow
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
            # Its beats start with it (huey_consumer logs only huey's own lines).
            wait_until(lambda: b'consumer started' in path.read_bytes(), timeout=30,
                       message='the consumer to start')
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
