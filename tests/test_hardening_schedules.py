"""Hardening: schedule limits, DST intervals, source-routed addresses, TLS
Redis as Heroku sets it up, export to standard output, the oversize mail."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime as dt, timedelta
from pathlib import Path

import pytest
import webtest

import demo
import runs
import schedules
import turns
from conftest import ROOT, free_port, run_queued, wait_until, web_app
from cron import check_timezone, next_slot, slots_between
from loopback import call
from mail import check_address, compose
from demo import Customer, Order
from models import Run, Schedule
from conftest import REPORTS_DIR, demo_catalogue
from settings import SettingsError, load_settings

registry = demo_catalogue()

# --- addresses (issue item 15) ----------------------------------------------


@pytest.fixture
def fenced(make_jobs):
    """An app that only mails example.org."""
    jobs = make_jobs(allowed_domains='example.org')
    return jobs.settings, web_app(jobs)


@pytest.mark.parametrize('address, words', [
    ('victim%evil.org@example.org', 'routes mail through another host'),
    ('evil.org!victim@example.org', 'routes mail through another host'),
    ('a!b@example.org', 'routes mail through another host'),
    ('x' * 65 + '@example.org', 'longer than 64'),
])
def test_source_routed_and_overlong_addresses_do_not_pass_allowed_domains(
        fenced, address, words):
    settings, app = fenced
    res = app.post_json('/api/runs', {'report': 'customers',
                                      'to': ['ok@example.org', address]}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'to[1]')
    assert words in res.json['message']
    assert Run.select().count() == 0


def test_ordinary_addresses_still_pass(fenced):
    settings, app = fenced
    to = ['x' * 64 + '@example.org', "o'brien+reports@example.org", 'a.b-c_d@EXAMPLE.org']
    res = app.post_json('/api/runs', {'report': 'customers', 'to': to})
    assert res.status_int == 202
    assert Run.get_by_id(res.json['id']).recipients == to


@pytest.mark.parametrize('key, value', [
    ('operator_email', 'ops%evil.org@example.org'),
    ('operator_email', 'ops@example.org, boss@example.org'),
    ('operator_email', 'x' * 65 + '@example.org'),
    ('mail_from', 'reports!evil@example.org'),
    ('mail_from', 'Reports <reports@example.org>'),
])
def test_operator_and_sender_addresses_follow_the_recipient_rule(make_settings, key, value):
    with pytest.raises(SettingsError, match=key):
        make_settings(**{key: value})


def test_a_development_sender_on_localhost_is_still_fine(make_settings):
    assert make_settings(mail_from='nightshift@localhost').mail_from == 'nightshift@localhost'
    assert check_address('ops@example.org') == 'ops@example.org'


# --- the oversize message ----------------------------------------------------

def test_the_link_email_compares_the_encoded_size_with_the_limit(tmp_path, database):
    path = tmp_path / 'orders-20250101-000000.zip'
    path.write_bytes(b'x' * 372_800)
    run = Run.create(report='orders', recipients=['a@example.org'], rows=9000, bytes=2_000_000)
    mail = compose(run, 'Orders', ['a@example.org'], str(path), 3.0,
                   link='https://reports.example/files/1', link_expires=dt(2025, 1, 8),
                   limit_mb=0.5)
    [line] = [li for li in mail.body.splitlines() if li.startswith('File:')]
    # 372,800 bytes are 497,068 in base64 and 510,150 with line breaks.
    assert line == ("File: orders-20250101-000000.zip is 372.8 KB: too large to attach. "
                    "As an attachment it would take 510.1 KB after base64 encoding, plus "
                    "headers, over the mail provider's 0.5 MB limit.")
    assert mail.attachment is None


# --- scripts/export.py -o - ------------------------------------------------------

def test_export_dash_writes_to_standard_output(app, consumer_env, tmp_path):
    demo.seed(customers=20, orders=700)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'export.py'), 'orders',
         '-p', 'status=paid', '-o', '-'],
        cwd=tmp_path, env=dict(os.environ, **consumer_env),
        capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == app.get('/reports/orders.csv', {'status': 'paid'}).body
    assert b'rows' in done.stderr  # the summary, out of the data's way
    assert not (tmp_path / '-').exists()


# --- DST: intervals keep their interval (issue item 14) -----------------------

LISBON = check_timezone('Europe/Lisbon')
NEW_YORK = check_timezone('America/New_York')
SYDNEY = check_timezone('Australia/Sydney')


def every(minutes, first, last):
    out, slot = [], first
    while slot <= last:
        out.append(slot)
        slot += timedelta(minutes=minutes)
    return out


@pytest.mark.parametrize('zone, after, until', [
    # Lisbon falls back 2025-10-26 at 01:00 UTC: wall 01:00-02:00 happens twice.
    (LISBON, dt(2025, 10, 25, 23, 50), dt(2025, 10, 26, 2, 30)),
    # Sydney falls back 2025-04-06 at 16:00 UTC (03:00 AEDT -> 02:00 AEST).
    (SYDNEY, dt(2025, 4, 5, 14, 50), dt(2025, 4, 5, 17, 30)),
    # New York falls back 2025-11-02 at 06:00 UTC.
    (NEW_YORK, dt(2025, 11, 2, 4, 50), dt(2025, 11, 2, 7, 30)),
])
def test_intervals_run_through_the_repeated_hour(zone, after, until):
    first = after + timedelta(minutes=10)  # the next quarter and hour after `after`
    assert slots_between('*/15 * * * *', zone, after, until) == every(15, first, until)
    assert slots_between('0 * * * *', zone, after, until) == every(60, first, until)
    assert slots_between('@hourly', zone, after, until) == every(60, first, until)


@pytest.mark.parametrize('zone, after, until', [
    (LISBON, dt(2025, 3, 29, 23, 50), dt(2025, 3, 30, 2, 30)),  # 01:00 UTC: 01:00 -> 02:00
    (SYDNEY, dt(2025, 10, 4, 14, 50), dt(2025, 10, 4, 17, 30)),  # 16:00 UTC: 02:00 -> 03:00
])
def test_intervals_through_the_spring_gap_have_no_hole_and_no_double(zone, after, until):
    first = after + timedelta(minutes=10)
    assert slots_between('*/15 * * * *', zone, after, until) == every(15, first, until)
    assert slots_between('0 * * * *', zone, after, until) == every(60, first, until)


@pytest.mark.parametrize('expression, zone, day, expected', [
    # A named hour inside the repeated hour runs once, at its first occurrence.
    ('30 1 * * *', LISBON, dt(2025, 10, 26), [dt(2025, 10, 26, 0, 30)]),
    ('30 2 * * *', SYDNEY, dt(2025, 4, 6), [dt(2025, 4, 5, 15, 30)]),
    ('*/30 1 * * *', NEW_YORK, dt(2025, 11, 2), [dt(2025, 11, 2, 5), dt(2025, 11, 2, 5, 30)]),
    # One in the spring gap runs once, an hour later on the new clock.
    ('30 2 * * *', SYDNEY, dt(2025, 10, 5), [dt(2025, 10, 4, 16, 30)]),
    ('0 7 * * *', LISBON, dt(2025, 10, 26), [dt(2025, 10, 26, 7)]),
])
def test_named_hours_run_once_a_day_across_the_change(expression, zone, day, expected):
    assert slots_between(expression, zone, day - timedelta(hours=14),
                         day + timedelta(hours=14)) == expected


def test_the_next_slot_inside_the_repeated_hour():
    # 05:45 UTC is 01:45 EDT; the next quarter is 01:00 EST, not 02:00 EST.
    assert next_slot('*/15 * * * *', NEW_YORK, dt(2025, 11, 2, 5, 45)) == dt(2025, 11, 2, 6)
    assert next_slot('0 * * * *', NEW_YORK, dt(2025, 11, 2, 5, 30)) == dt(2025, 11, 2, 6)
    assert next_slot('0 * * * *', NEW_YORK, dt(2025, 11, 2, 6)) == dt(2025, 11, 2, 7)
    assert next_slot('30 1 * * *', NEW_YORK, dt(2025, 11, 2, 5, 45)) == dt(2025, 11, 3, 6, 30)
    assert next_slot('0 3 * * *', SYDNEY, dt(2025, 10, 4, 15, 30)) == dt(2025, 10, 4, 16)


def test_a_quarter_hourly_schedule_ticks_through_the_lisbon_fall_back(settings, jobs, database):
    schedules.create_schedule(registry, settings, dict(
        name='quarterly', report='customers', to=['a@example.org'], cron='*/15 * * * *',
        timezone='Europe/Lisbon'), dt(2025, 10, 25, 23, 50))
    start = dt(2025, 10, 25, 23, 50, 5)
    created = [run for minute in range(0, 161)
               for run in jobs.tick(start + timedelta(minutes=minute))]
    assert [run.slot_at for run in created] == \
        every(15, dt(2025, 10, 26), dt(2025, 10, 26, 2, 30))
    assert Run.select().where(Run.status == 'skipped').count() == 0


# --- limits on schedules (issue item 8) ----------------------------------------

@pytest.fixture
def limited(make_jobs):
    """Settings, jobs and app with the schedule limits given."""
    def build(**values):
        jobs = make_jobs(**values)
        return jobs.settings, jobs, web_app(jobs)
    return build


def hourly(name, **changes):
    return dict({'name': name, 'report': 'customers', 'to': ['a@example.org'],
                 'cron': '0 * * * *', 'timezone': 'UTC'}, **changes)


def test_one_schedule_over_max_schedules_is_refused(limited):
    settings, jobs, app = limited(max_schedules=3)
    for i in range(3):
        assert app.post_json('/api/schedules', hourly('s%d' % i)).status_int == 201
    res = app.post_json('/api/schedules', hourly('s3'), expect_errors=True)
    assert (res.status_int, res.json['error'], res.json['field']) == (409, 'conflict', 'name')
    assert 'max_schedules = 3' in res.json['message']
    assert Schedule.select().count() == 3
    app.delete('/api/schedules/s0', content_type='application/json')
    assert app.post_json('/api/schedules', hourly('s3')).status_int == 201


def test_config_declaring_more_than_max_schedules_stops_start_up(make_settings, tmp_path):
    from tasks import Jobs
    sections = ''.join('[schedule:s%d]\nreport = customers\nto = a@example.org\n'
                       'cron = @daily\n\n' % i for i in range(3))
    config = tmp_path / 'many.ini'
    for limit in (3, 2):
        config.write_text('[nightshift]\nmax_schedules = %d\nqueue_path = %s\n'
                          'report_paths = %s\n\n%s'
                          % (limit, tmp_path / 'q.db', REPORTS_DIR, sections))
        if limit == 3:
            assert len(Jobs(load_settings(config, environ={})).declared_schedules) == 3
            continue
        with pytest.raises(SettingsError, match='max_schedules = 2'):
            Jobs(load_settings(config, environ={}))


def test_a_tick_creates_at_most_max_runs_per_tick_and_the_rest_wait(limited):
    settings, jobs, app = limited(max_runs_per_tick=3)
    created = dt(2025, 1, 10, 10, 0, 30)
    for i in range(7):
        schedules.create_schedule(registry, settings, hourly('s%d' % i), created)
    first = jobs.tick(dt(2025, 1, 10, 11, 0, 5))
    assert [r.schedule for r in first] == ['s0', 's1', 's2']
    # The others' marks did not move over the slot they did not run.
    waiting = Schedule.select().where(Schedule.checked_through == created)
    assert sorted(s.name for s in waiting) == ['s3', 's4', 's5', 's6']
    second = jobs.tick(dt(2025, 1, 10, 11, 1, 5))
    third = jobs.tick(dt(2025, 1, 10, 11, 2, 5))
    assert [r.schedule for r in second + third] == ['s3', 's4', 's5', 's6']
    assert jobs.tick(dt(2025, 1, 10, 11, 3, 5)) == []
    every_run = list(Run.select().order_by(Run.id))
    assert [(r.slot_at, r.status) for r in every_run] == [(dt(2025, 1, 10, 11), 'queued')] * 7
    # Each run has a task, or waits for a turn (a batch of its report, one
    # of those tasks, serves it; turns.py hands it one if not): none is lost.
    tasks = {jobs.huey.dequeue().args[0] for _ in range(jobs.huey.pending_count())}
    waiting = {run_id for run_id, in Run.select(Run.id).where(turns.waiting_for_turn()).tuples()}
    assert tasks | waiting == {r.id for r in every_run}
    assert tasks - waiting  # and some runs lead


def test_a_tick_that_fails_midway_queues_only_the_runs_it_committed(limited, monkeypatch):
    """The tick commits TICK_CHUNK schedules at a time: an error in a chunk
    undoes that chunk's runs and marks, and only committed runs are queued
    (or wait for a batch); the next tick makes the rest."""
    monkeypatch.setattr(schedules, 'TICK_CHUNK', 4)
    settings, jobs, app = limited(max_runs_per_tick=50)
    created = dt(2025, 1, 10, 10, 0, 30)
    for i in range(10):
        schedules.create_schedule(registry, settings, hourly('s%d' % i), created)
    real, calls = runs.create_run, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # the second chunk's second schedule
            raise OSError('disk full')
        return real(*args, **kwargs)
    monkeypatch.setattr(runs, 'create_run', failing_once)
    with pytest.raises(OSError):
        jobs.tick(dt(2025, 1, 10, 11, 0, 5))
    made = {r.id for r in Run.select()}
    assert len(made) == 4  # the first chunk only
    tasks = {jobs.huey.dequeue().args[0] for _ in range(jobs.huey.pending_count())}
    waiting = {run_id for run_id, in Run.select(Run.id).where(turns.waiting_for_turn()).tuples()}
    assert tasks <= made and tasks | waiting == made
    assert Schedule.select().where(Schedule.checked_through == created).count() == 6
    # The next tick makes the six the failed chunk gave back.
    again = jobs.tick(dt(2025, 1, 10, 11, 0, 10))
    assert len(again) == 6
    assert Run.select().count() == 10


def test_catching_up_a_long_outage_walks_a_bounded_number_of_slots(settings, jobs, database):
    """An every-minute schedule last checked twenty years ago: ten million
    slots. The tick looks at the latest hundred, and says there were more."""
    schedules.create_schedule(registry, settings, hourly('busy', cron='* * * * *'),
                              dt(2005, 1, 1))
    done = {}
    worker = threading.Thread(
        target=lambda: done.update(runs=jobs.tick(dt(2025, 1, 1, 12, 0, 5))), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), 'the tick walked every missed slot'
    [run] = done['runs']
    assert run.slot_at == dt(2025, 1, 1, 12)
    skipped = list(Run.select().where(Run.status == 'skipped').order_by(Run.slot_at))
    assert len(skipped) == schedules.SKIPPED_RECORD_LIMIT
    assert skipped[0].slot_at == dt(2025, 1, 1, 10, 20)
    assert 'earlier slots since 2005-01-01 00:00 UTC were missed too' in skipped[0].error
    assert 'earlier slots' not in skipped[1].error
    assert Schedule.get(Schedule.name == 'busy').checked_through == dt(2025, 1, 1, 12)


def count_queries(call):
    queries = []
    handler = logging.Handler()
    handler.emit = queries.append
    logger = logging.getLogger('peewee')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        call()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return len(queries)


def test_the_schedule_list_takes_the_same_queries_for_5_and_50(limited):
    settings, jobs, app = limited()
    counts = []
    for total in (5, 50):
        for i in range(Schedule.select().count(), total):
            schedules.create_schedule(registry, settings, hourly('s%02d' % i, cron='* * * * *'),
                                      dt(2025, 1, 1))
            Run.create(report='customers', schedule='s%02d' % i, slot_at=dt(2025, 1, 1, 0, 1),
                       status='delivered', trigger='schedule')
        listed = []
        api = count_queries(lambda: listed.append(app.get('/api/schedules').json))
        page = count_queries(lambda: app.get('/ui/schedules'))
        counts.append((api, page))
        assert len(listed[0]['schedules']) == total
        assert all(s['last_run']['status'] == 'delivered' for s in listed[0]['schedules'])
        assert all(s['next_run_at'] for s in listed[0]['schedules'])
    assert counts[0] == counts[1]
    assert counts[0][0] <= 4


# --- Redis over TLS with a self-signed certificate (Heroku Redis) ------------

@pytest.fixture(scope='module')
def tls_redis(tmp_path_factory):
    """A redis-server speaking only TLS, with a self-signed certificate, as
    Heroku Redis does. Yields its rediss:// URL, with no options in it."""
    from conftest import missing
    if not (shutil.which('redis-server') and shutil.which('openssl')):
        missing('redis-server and openssl')
    folder = tmp_path_factory.mktemp('tls-redis')
    cert, key = folder / 'cert.pem', folder / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=localhost', '-keyout', str(key), '-out', str(cert)],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    server = subprocess.Popen(
        ['redis-server', '--port', '0', '--tls-port', str(port), '--bind', '127.0.0.1',
         '--tls-cert-file', str(cert), '--tls-key-file', str(key),
         '--tls-ca-cert-file', str(cert), '--tls-auth-clients', 'no',
         '--save', '', '--appendonly', 'no', '--dir', str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import redis
        client = redis.Redis(port=port, ssl=True, ssl_cert_reqs='none')

        def pings():
            if server.poll() is not None:
                missing('redis-server with TLS (%s)' % server.stdout.read().decode()[-300:])
            try:
                return client.ping()
            except redis.ConnectionError:
                return False
        wait_until(pings, timeout=15, message='redis-server with TLS to start')
        yield 'rediss://127.0.0.1:%d/0' % port
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def tls_env(service_env, tls_redis):
    return dict(service_env, REDIS_URL=tls_redis)


def test_tls_redis_with_a_self_signed_certificate_queues_and_runs(make_jobs, tls_env,
                                                                  smtp_sink):
    jobs = make_jobs(env=dict(tls_env, NIGHTSHIFT_REDIS_SSL_CERT_REQS='none'))
    jobs.huey.flush()
    app = web_app(jobs)
    assert app.get('/healthz').json['queue'] == 'ok'
    run_id = app.post_json('/api/runs', {'report': 'customers',
                                         'to': ['a@example.org']}).json['id']
    assert jobs.huey.pending_count() == 1
    assert run_queued(jobs) == 1
    assert Run.get_by_id(run_id).status == 'delivered'
    assert [m['to'] for m in smtp_sink.messages] == [['a@example.org']]


def test_a_certificate_that_does_not_verify_is_named_in_healthz_and_logged_once(
        make_settings, tls_env, caplog):
    from server import create_app
    from tasks import Jobs
    settings = make_settings(tls_env)
    assert settings.redis_ssl_cert_reqs == 'required'  # the default: verify
    app = webtest.TestApp(create_app(settings, Jobs(settings)))
    caplog.set_level(logging.INFO, logger='nightshift.queue')
    for _ in range(3):
        res = app.get('/healthz', expect_errors=True)
        assert res.status_int == 503
        assert res.json['queue'] == 'down: certificate verify failed: self-signed certificate'
    said = [r.getMessage() for r in caplog.records if r.name == 'nightshift.queue']
    assert len(said) == 1 and 'certificate verify failed: self-signed certificate' in said[0]
    # A server nobody health-checks says it when the first run is refused.
    caplog.clear()
    app = webtest.TestApp(create_app(settings, Jobs(settings)))
    for _ in range(2):
        res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                            expect_errors=True)
        assert res.status_int == 503
    said = [r.getMessage() for r in caplog.records if r.name == 'nightshift.queue']
    assert len(said) == 1 and 'certificate verify failed: self-signed certificate' in said[0]


def test_an_ssl_cert_reqs_in_the_url_still_wins(make_settings, tls_redis):
    import redis
    from queueconf import redis_options
    settings = make_settings({'REDIS_URL': tls_redis + '?ssl_cert_reqs=none'})
    assert settings.redis_ssl_cert_reqs == 'required'
    pool = redis_options(settings)['connection_pool']
    assert redis.Redis(connection_pool=pool).ping()


@pytest.mark.slow
def test_the_procfile_runs_on_heroku_redis_as_the_platform_sets_it_up(
        tls_env, smtp_sink, tmp_path):
    """Both Procfile lines through bash, as the platform runs them, with the
    environment it gives: a bare rediss:// REDIS_URL and PORT."""
    token = 'heroku-token-0123456789'
    config = tmp_path / 'deploy.ini'
    config.write_text('[nightshift]\nreports_dir = %s\n' % (tmp_path / 'reports'))
    port = free_port()
    env = dict(os.environ, **tls_env)
    env.update(PORT=str(port), NIGHTSHIFT_API_TOKEN=token, NIGHTSHIFT_CONFIG=str(config),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    env.pop('NIGHTSHIFT_REDIS_SSL_CERT_REQS', None)
    lines = dict(line.split(': ', 1) for line in
                 (Path(ROOT) / 'Procfile').read_text().splitlines() if line.strip())
    processes = []
    try:
        for name in ('web', 'worker'):
            log = open(tmp_path / ('%s.log' % name), 'wb')
            processes.append(subprocess.Popen(['bash', '-c', lines[name]], cwd=ROOT, env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
        base = 'http://127.0.0.1:%d' % port
        wait_until(lambda: call('GET', base + '/healthz')[0] == 200, timeout=30,
                   message='the web process to be healthy')
        request = urllib.request.Request(
            base + '/api/runs', method='POST', headers={
                'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token},
            data=json.dumps({'report': 'customers', 'to': ['a@example.org']}).encode())
        with urllib.request.urlopen(request, timeout=10) as res:
            assert res.status == 202
        smtp_sink.wait_for(1, timeout=60)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    logs = ''.join((tmp_path / ('%s.log' % n)).read_text() for n in ('web', 'worker'))
    assert [m['to'] for m in smtp_sink.messages] == [['a@example.org']], logs
    assert Run.get().status == 'delivered', logs


# --- scripts/seed.py on a seeded database ----------------------------------------

def test_seeding_a_seeded_database_says_why_not(consumer_env):
    env = dict(os.environ, **consumer_env)
    seed = [sys.executable, os.path.join(ROOT, 'scripts', 'seed.py'),
            '--customers', '20', '--orders', '50']
    first = subprocess.run(seed, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(seed, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert 'already has 20 customers and 50 orders' in again.stderr
    assert 'Traceback' not in again.stderr
    quiet = subprocess.run(seed + ['--if-empty'], env=env, capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 0 and 'leaving it alone' in quiet.stdout
    assert (Customer.select().count(), Order.select().count()) == (20, 50)
