"""Fault drills with real processes: kill -9, SIGTERM, SIGINT, Redis and SMTP
outages. Each run must end delivered exactly once."""
import datetime
import os
import signal
import time

import pytest

import demo
from conftest import faketime_library, free_port, missing, wait_until
from loopback import call, stop_gracefully as stop
from models import Run
from test_e2e import spawn

pytestmark = pytest.mark.slow
CONSUMER = ['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2', '-k', 'thread']
STALE_AFTER = 2  # seconds without a heartbeat before a run is taken back
MAX_ATTEMPTS = 20


@pytest.fixture
def fault_env(settings, service_env, tmp_path):
    config = tmp_path / 'faults.ini'
    config.write_text('\n'.join([
        '[nightshift]', 'reports_dir = %s' % settings.reports_dir,
        'retry_delay = 0.3', 'retry_max_delay = 2', 'max_attempts = %d' % MAX_ATTEMPTS,
        'stale_after = %d' % STALE_AFTER, 'progress_every = 0.1', '']))
    return dict(service_env, NIGHTSHIFT_CONFIG=str(config))


class Consumers:
    def __init__(self, env, tmp_path):
        self.env, self.tmp_path, self.procs = env, tmp_path, []

    def start(self):
        log = open(self.tmp_path / ('consumer-%d.log' % len(self.procs)), 'wb')
        proc = spawn(CONSUMER, self.env, log)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in self.procs:
            stop(proc)


@pytest.fixture
def consumers(fault_env, tmp_path):
    pool = Consumers(fault_env, tmp_path)
    yield pool
    pool.stop_all()


def writing(run_id):
    run = Run.get_by_id(run_id)
    return run.status == 'running' and run.rows > 0


def delivered(run_id):
    return Run.get_by_id(run_id).status == 'delivered'


def silent_past_stale_after(run_id):
    """The run's last heartbeat is older than stale_after on the database's
    clock: what the reaper of the next consumer to tick goes by."""
    from models import db_now
    stale = db_now() - datetime.timedelta(seconds=STALE_AFTER)
    return Run.get_by_id(run_id).heartbeat_at < stale


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_killed_terminated_and_stopped_consumers_lose_nothing(app, consumers, smtp_sink):
    demo.seed(customers=2000, orders=400000)

    def post():
        return app.post_json('/api/runs', {'report': 'orders',
                                           'to': ['ops@example.org']}).json['id']

    # kill -9 in the middle of writing: the heartbeat stops, the next
    # consumer's reaper runs it again from scratch.
    first = consumers.start()
    killed = post()
    wait_until(lambda: writing(killed), timeout=30, message='run to be writing')
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    wait_until(lambda: silent_past_stale_after(killed), timeout=30,
               message='the killed run to be silent past stale_after')
    second = consumers.start()
    wait_until(lambda: delivered(killed), timeout=60, message='killed run to complete')

    # SIGTERM (interrupt): the run gets a few seconds' grace, then is handed
    # back; either way it is sent once.
    terminated = post()
    wait_until(lambda: writing(terminated), timeout=30, message='second run to be writing')
    second.send_signal(signal.SIGTERM)
    second.wait(20)
    run = Run.get_by_id(terminated)
    assert run.status == 'delivered' or (run.status == 'queued' and
                                         'worker stopped' in run.error)
    third = consumers.start()
    wait_until(lambda: delivered(terminated), timeout=60, message='handed-back run')

    # SIGINT (graceful) finishes the run in hand before exiting.
    graceful = post()
    wait_until(lambda: writing(graceful), timeout=30, message='third run to be writing')
    third.send_signal(signal.SIGINT)
    third.wait(60)
    assert third.returncode == 0
    assert delivered(graceful)

    # Every consumer has exited (killed, terminated, stopped): all that was
    # ever sent is in the sink.
    assert [proc.poll() is not None for proc in consumers.procs] == [True] * 3
    smtp_sink.wait_for(3)
    ids = sorted(m['message']['Message-ID'].split('-')[2] for m in smtp_sink.messages)
    assert ids == sorted(str(i) for i in (killed, terminated, graceful))  # one message each
    attempts = {i: Run.get_by_id(i).attempts for i in (killed, terminated, graceful)}
    assert attempts[killed] == 2 and attempts[graceful] == 1
    assert attempts[terminated] in (1, 2)
    for message in smtp_sink.messages:
        body = message['message'].get_body(('plain',)).get_content()
        assert 'Rows: 400,000' in body


def test_smtp_outage_then_back_delivers_once(app, consumers, smtp_sink):
    demo.seed(customers=10, orders=100)
    consumers.start()
    smtp_sink.stop()
    run_id = app.post_json('/api/runs', {'report': 'customers',
                                         'to': ['ops@example.org']}).json['id']
    wait_until(lambda: 'unreachable' in (Run.get_by_id(run_id).error or ''), timeout=30,
               message='a failed attempt')
    # An outage is waited out, not failed: attempt after attempt stays in play.
    wait_until(lambda: Run.get_by_id(run_id).attempts >= 3, timeout=30,
               message='more attempts while the SMTP server is down')
    assert Run.get_by_id(run_id).status in ('queued', 'running')
    smtp_sink.start()
    smtp_sink.wait_for(1, timeout=30)
    wait_until(lambda: delivered(run_id), timeout=10, message='delivery')
    consumers.stop_all()  # anything still to send goes before they exit
    assert len(smtp_sink.messages) == 1
    assert Run.get_by_id(run_id).attempts >= 3


def _request(url, body=None):
    return call('POST' if body else 'GET', url, body)


def test_redis_outage_under_running_web_and_consumer(consumers, fault_env, redis_server,
                                                     smtp_sink, tmp_path, database):
    demo.seed(customers=10, orders=100)
    port = free_port()
    base = 'http://127.0.0.1:%d' % port
    with open(tmp_path / 'web.log', 'wb') as log:
        web = spawn(['server.py', '--port', str(port)], fault_env, log)
    try:
        consumer = consumers.start()
        wait_until(lambda: _healthy(base), timeout=20, message='web server')
        status, body = _request(base + '/api/runs', {'report': 'customers', 'to': ['a@x.org']})
        assert status == 202
        smtp_sink.wait_for(1)

        redis_server.stop()
        status, body = _request(base + '/api/runs', {'report': 'customers', 'to': ['b@x.org']})
        assert status == 503 and body['error'] == 'queue_unavailable'
        refused_id = Run.select().order_by(Run.id.desc()).get().id
        assert Run.get_by_id(refused_id).status == 'failed'
        status, body = _request(base + '/healthz')
        assert status == 503 and body['queue'].startswith('down')
        # Both worker threads of the consumer find Redis gone, and try again.
        log = tmp_path / 'consumer-0.log'
        wait_until(lambda: log.read_text(errors='replace').count('Error reading from queue') >= 4,
                   timeout=30, message='the consumer to keep polling the dead Redis')

        redis_server.start()
        wait_until(lambda: _healthy(base), timeout=20, message='health after Redis is back')
        status, body = _request(base + '/api/runs', {'report': 'customers', 'to': ['c@x.org']})
        assert status == 202
        smtp_sink.wait_for(2, timeout=30)
        assert consumer.poll() is None, 'the consumer died with Redis'
        assert [m['to'] for m in smtp_sink.messages] == [['a@x.org'], ['c@x.org']]
        # The message is accepted a moment before the run is marked delivered.
        wait_until(lambda: [r.status for r in Run.select().order_by(Run.id)] ==
                   ['delivered', 'failed', 'delivered'], timeout=10, message='statuses')
    finally:
        stop(web)


def _healthy(base):
    return _request(base + '/healthz')[0] == 200


def _zip_rows(message):
    import io
    import zipfile
    from conftest import attachment
    name, data = attachment(message)
    assert name.endswith('.zip'), name
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        [inner] = archive.namelist()
        return archive.read(inner).count(b'\n') - 1


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_a_paused_worker_that_wakes_up_publishes_and_mails_nothing(app, consumers, fault_env,
                                                                    smtp_sink):
    """SIGSTOP past stale_after in the middle of writing: another consumer
    takes the run back and delivers it; the first one, resumed while the
    second is still writing, must not publish its file or send a mail."""
    demo.seed(customers=2000, orders=300000)
    consumers.env = dict(fault_env, NIGHTSHIFT_ZIP_OVER_MB='1')
    paused = consumers.start()
    run_id = app.post_json('/api/runs', {'report': 'orders',
                                         'to': ['ops@example.org']}).json['id']
    wait_until(lambda: writing(run_id), timeout=30, message='run to be writing')
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: silent_past_stale_after(run_id), timeout=30,
                   message='the paused run to be silent past stale_after')
        consumers.start()  # its first tick takes the run back
        wait_until(lambda: Run.get_by_id(run_id).attempts == 2 and writing(run_id),
                   timeout=30, message='the second attempt to be writing')
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    wait_until(lambda: delivered(run_id), timeout=90, message='delivery')
    assert paused.poll() is None  # it went on serving
    # Stopped gracefully, each finishes what it holds: a wrongly sent second
    # copy would be in the sink by the time they have exited.
    consumers.stop_all()
    [sent] = smtp_sink.messages
    assert _zip_rows(sent['message']) == 300000
    assert 'Rows: 300,000' in sent['message'].get_body(('plain',)).get_content()
    run = Run.get_by_id(run_id)
    assert (run.status, run.attempts, run.rows) == ('delivered', 2, 300000)
    assert '/a2/' in run.file_key


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_a_consumer_with_its_clock_ahead_leaves_a_live_run_alone(app, consumers, fault_env,
                                                                 smtp_sink):
    lib = faketime_library()
    if lib is None:
        missing('libfaketime (Debian package faketime)')
    demo.seed(customers=2000, orders=300000)
    consumers.start()
    run_id = app.post_json('/api/runs', {'report': 'orders',
                                         'to': ['ops@example.org']}).json['id']
    wait_until(lambda: writing(run_id), timeout=30, message='run to be writing')
    consumers.env = dict(fault_env, LD_PRELOAD=lib, FAKETIME='+90s',
                         FAKETIME_DONT_FAKE_MONOTONIC='1')
    started = datetime.datetime.now()
    consumers.start()
    log = consumers.tmp_path / 'consumer-1.log'
    first = wait_until(lambda: log.exists() and log.read_text().split(']', 1)[0][1:],
                       timeout=20, message='the skewed consumer to log')
    ahead = datetime.datetime.strptime(first, '%Y-%m-%d %H:%M:%S,%f') - started
    assert ahead.total_seconds() > 60, 'the consumer\'s clock is not ahead: %s' % ahead
    wait_until(lambda: delivered(run_id), timeout=90, message='delivery')
    consumers.stop_all()  # a second copy, if any, is sent before they exit
    [sent] = smtp_sink.messages
    body = sent['message'].get_body(('plain',)).get_content()
    assert 'Rows: 300,000' in body
    assert _zip_rows(sent['message']) == 300000
    assert Run.get_by_id(run_id).attempts == 1


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_consumers_and_web_come_back_after_connections_are_terminated(
        app, consumers, smtp_sink, postgres_url, tmp_path):
    import psycopg
    demo.seed(customers=10, orders=100)
    consumers.start()

    def post(to):
        return app.post_json('/api/runs', {'report': 'customers', 'to': [to]}).json['id']

    def terminate_all():
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                          'WHERE datname = current_database() AND pid <> pg_backend_pid()')

    first = post('a@example.org')
    try:
        wait_until(lambda: delivered(first), timeout=60, message='first delivery')
    except AssertionError:
        raise AssertionError((tmp_path / 'consumer-0.log').read_text(errors='replace')[-4000:])
    # A restart, as the consumer and the web see it: every connection cut,
    # again and again for a few seconds.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        terminate_all()
        time.sleep(0.2)
    second = post('b@example.org')  # the web's own connection was cut too
    wait_until(lambda: delivered(second), timeout=30, message='delivery after the restart')
    assert len(smtp_sink.messages) == 2
    log = (tmp_path / 'consumer-0.log').read_text(errors='replace')
    assert log.count('Traceback') <= 2, log[-3000:]
