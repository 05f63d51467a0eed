"""Every consumer is visible: it registers and beats in nightshift_consumer;
/healthz and the page list them, and /healthz says `degraded` (with the
reason) when nobody ticks the enabled schedules, or when old runs wait in
the queue with no consumer alive."""
import datetime
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, wait_until, web_app
from consumers import Presence, ProcessInfo, beat, record_tick, register
from loopback import stop_gracefully
from models import Consumer, Run, db_now, utcnow
from settings import Settings

TOKEN = 'consumers-test-token-0123456789'
SCHEDULE = {'name': 'every-minute', 'report': 'customers', 'cron': '* * * * *',
            'to': ['ops@example.org']}


def test_the_tick_alarm_waits_two_minutes_by_default(make_settings):
    assert Settings().tick_alarm_after == 120.0
    assert make_settings().tick_alarm_after == 120.0
    assert make_settings(tick_alarm_after=5).tick_alarm_after == 5.0


def test_a_consumer_registers_beats_and_goes_away_when_stopped(make_jobs):
    jobs = make_jobs(consumer_heartbeat=0.05)
    presence = Presence(jobs.settings, ProcessInfo(3, 'thread', False)).start()
    try:
        row = Consumer.get_by_id(presence.id)
        assert (row.host, row.pid, row.workers, row.worker_type, row.periodic) == \
            (os.uname().nodename, os.getpid(), 3, 'thread', False)
        first = row.heartbeat_at
        wait_until(lambda: Consumer.get_by_id(presence.id).heartbeat_at > first, timeout=5,
                   message='a heartbeat')
        presence.ticked()
        assert Consumer.get_by_id(presence.id).last_tick_at is not None
    finally:
        presence.stop(remove=True)
    assert not Consumer.select().exists()


def test_a_row_forgotten_while_the_consumer_slept_is_made_again(database):
    info = ProcessInfo(1, 'thread', True)
    started = db_now()
    old = register(info, started - datetime.timedelta(hours=2))
    other = register(info, started)
    # Silent for two hours: removed at the next beat of anyone, and made again
    # by its own consumer's beat.
    assert beat(other, info, started) == other
    assert Consumer.get_or_none(Consumer.id == old) is None
    again = beat(old, info, started)
    assert again != old and Consumer.get_by_id(again).started_at == started


def _health(app, **params):
    return app.get('/healthz', params, expect_errors=True)


def test_healthz_lists_the_consumers_and_is_ok_while_one_ticks(make_jobs):
    jobs = make_jobs(tick_alarm_after=60)
    app = web_app(jobs)
    app.post_json('/api/schedules', SCHEDULE)
    ticking = register(ProcessInfo(2, 'thread', True))
    record_tick(ticking)
    register(ProcessInfo(1, 'process', False))
    res = _health(app)
    assert res.status_int == 200 and res.json['status'] == 'ok', res.json
    assert res.json['problems'] == [] and res.json['consumers_live'] == 2
    listed = {c['id']: c for c in res.json['consumers']}
    assert listed[ticking]['periodic'] is True and listed[ticking]['last_tick_at']
    assert {c['worker_type'] for c in listed.values()} == {'thread', 'process'}
    assert all(c['live'] and c['pid'] == os.getpid() for c in listed.values())
    page = app.get('/').text
    assert 'id="consumers"' in page and 'no (-n)' in page and 'Degraded' not in page


def test_healthz_is_degraded_when_no_consumer_ticked_the_enabled_schedules(make_jobs):
    jobs = make_jobs(tick_alarm_after=60)
    app = web_app(jobs)
    # No schedule: nothing to tick, nothing wrong.
    assert _health(app).json['status'] == 'ok'
    app.post_json('/api/schedules', SCHEDULE)
    res = _health(app)
    assert res.status_int == 200 and res.json['status'] == 'degraded'
    [problem] = res.json['problems']
    assert problem.startswith('schedules: 1 enabled but no consumer has ticked them')
    assert 'no consumer is running' in problem
    # Only -n consumers, the last tick (their start) longer ago than the window.
    for _ in range(2):
        consumer = register(ProcessInfo(2, 'thread', False))
        Consumer.update(last_tick_at=db_now() - datetime.timedelta(seconds=61)) \
            .where(Consumer.id == consumer).execute()
    [problem] = _health(app).json['problems']
    assert 'every running consumer (2) was started without periodic tasks' in problem
    assert 'huey_consumer -n' in problem and 'last 61 s ago' in problem
    assert _health(app, strict='1').status_int == 503
    assert 'Degraded' in app.get('/').text and 'huey_consumer -n' in app.get('/').text
    # A paused schedule needs no tick.
    app.post_json('/api/schedules/every-minute/pause', {})
    assert _health(app).json['status'] == 'ok'
    assert _health(app, strict='1').status_int == 200


def test_healthz_is_degraded_when_old_runs_wait_and_no_consumer_is_alive(make_jobs):
    jobs = make_jobs(queue_alarm_after=30, consumer_heartbeat=10)
    app = web_app(jobs)
    run = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']}).json
    assert _health(app).json['status'] == 'ok'  # queued just now
    Run.update(queued_at=utcnow() - datetime.timedelta(seconds=31)) \
        .where(Run.id == run['id']).execute()
    [problem] = _health(app).json['problems']
    assert problem == ('queue: 1 runs queued for more than 30 s (queue_alarm_after) and no '
                       'consumer is alive to run them')
    # A consumer silent for three heartbeats is not alive...
    silent = register(ProcessInfo(1, 'thread', True), db_now() - datetime.timedelta(seconds=31))
    assert _health(app).json['status'] == 'degraded'
    listed = _health(app).json['consumers']
    assert [(c['id'], c['live']) for c in listed] == [(silent, False)]
    # ...one beating is: the run will be taken.
    register(ProcessInfo(1, 'thread', True))
    assert _health(app).json['status'] == 'ok'


def test_with_tokens_only_a_token_sees_who_runs_where(make_jobs):
    jobs = make_jobs(env={'NIGHTSHIFT_API_TOKEN': TOKEN})
    app = web_app(jobs)
    register(ProcessInfo(2, 'thread', True))
    anonymous = _health(app).json
    assert anonymous['consumers_live'] == 1 and 'consumers' not in anonymous
    shown = app.get('/healthz', headers={'Authorization': 'Bearer ' + TOKEN}).json
    assert [c['host'] for c in shown['consumers']] == [os.uname().nodename]


# --- real consumer processes -----------------------------------------------

def spawn_consumer(env, log, *options):
    return subprocess.Popen(
        [sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '1', '-k',
         'thread'] + list(options), cwd=ROOT, env=dict(os.environ, **env), stdout=log,
        stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_consumers_started_with_n_make_healthz_degraded_with_the_reason(
        make_jobs, consumer_env, tmp_path):
    """huey_consumer -n on every consumer: nobody enqueues the minute tick.
    Each ticks once as it starts; after tick_alarm_after (shortened here from
    its 120 s default) /healthz says degraded and why."""
    jobs = make_jobs(tick_alarm_after=4)
    app = web_app(jobs)
    app.post_json('/api/schedules', SCHEDULE)
    env = dict(consumer_env, NIGHTSHIFT_CONSUMER_HEARTBEAT='1')
    procs = []
    try:
        for index in range(2):
            log = open(tmp_path / ('consumer-%d.log' % index), 'wb')
            procs.append(spawn_consumer(env, log, '-n'))
        listed = wait_until(
            lambda: len([c for c in _health(app).json['consumers']
                         if c['live'] and c['last_tick_at']]) == 2 and
            _health(app).json['consumers'], timeout=30, message='two consumers registered')
        assert {c['pid'] for c in listed} == {p.pid for p in procs}
        assert [c['periodic'] for c in listed] == [False, False]
        assert _health(app).json['status'] == 'ok'  # they ticked as they started
        started = utcnow()
        res = wait_until(lambda: _degraded(app), timeout=30, message='degraded')
        waited = (utcnow() - started).total_seconds()
        assert waited < 10, waited
        [problem] = res['problems']
        assert 'schedules: 1 enabled but no consumer has ticked them for 4 s' in problem
        assert 'every running consumer (2) was started without periodic tasks' in problem
        assert res['consumers_live'] == 2
    finally:
        for proc in procs:
            stop_gracefully(proc)
    assert [p.returncode for p in procs] == [0, 0]
    # Stopped cleanly, they take their rows away.
    assert _health(app).json['consumers'] == []


def _degraded(app):
    body = _health(app).json
    return body if body['status'] == 'degraded' else None


def _children(pid):
    """Processes whose parent is `pid`, from /proc."""
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/%s/stat' % name) as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def _alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='prctl is Linux')
@pytest.mark.parametrize('database_url', ['sqlite'], indirect=True)
def test_process_workers_end_with_their_consumer_even_killed(database, consumer_env, tmp_path):
    """huey_consumer -k process, killed with SIGKILL: its worker processes
    would go on taking tasks, orphans that ignore the stop signal while idle.
    Each dies with its consumer."""
    import signal
    log = open(tmp_path / 'consumer.log', 'wb')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2', '-k',
         'process'], cwd=ROOT, env=dict(os.environ, **consumer_env), stdout=log,
        stderr=subprocess.STDOUT)
    workers = []
    try:
        # Each worker process registers as it starts (the scheduler is a
        # process of its own too).
        wait_until(lambda: Consumer.select().where(Consumer.pid.in_(_children(proc.pid)))
                   .count() == 2, timeout=30, message='its 2 worker processes registered')
        workers = _children(proc.pid)
        assert len(workers) == 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=10,
                   message='its worker processes gone')
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        stop_gracefully(proc)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='prctl is Linux')
def test_a_process_forked_by_a_worker_process_lives_while_that_worker_does(tmp_path):
    """The request to end with the parent is inherited: a worker process
    that forks in turn must not see its own child exit at once for having
    another parent than the consumer. Real forks, in a process of its own."""
    mark = tmp_path / 'grandchild'
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, %r)
        import consumers
        consumers.children_end_with_this_process()
        worker = os.fork()
        if worker == 0:
            child = os.fork()
            if child == 0:
                open(%r, 'w').write('alive')
                os._exit(0)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1]))
    """) % (ROOT, str(mark))
    done = subprocess.run([sys.executable, '-c', script], timeout=30)
    assert done.returncode == 0
    assert mark.read_text() == 'alive'
