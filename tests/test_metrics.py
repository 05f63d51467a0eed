"""GET /metrics: Prometheus' text format, every value read from the database
at scrape time, so it is right whichever process is asked. Each test parses
the exposition with prometheus_client's own parser and compares it with the
rows in the database."""
import collections
import datetime
import json
import math
import os
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, wait_until, web_app
from consumers import ProcessInfo, record_tick, register
from metrics import DURATION_BUCKETS, ROW_BUCKETS
from models import Consumer, Delivery, Run, Schedule, db_now, utcnow
from test_e2e import spawn, stop
from vocab import TERMINAL, DeliveryStatus, RunStatus

API_TOKEN = 'metrics-test-api-token-0123456789'
SCRAPE_TOKEN = 'metrics-test-scrape-token-987654'


def samples(text):
    """{(sample name, ((label, value), ...)): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def labelled(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))))


def assert_matches_database(found, now, beating=False):
    """Every family that counts rows, compared with the rows themselves
    (`beating`: consumers are running and their heartbeats move on)."""
    runs = list(Run.select())
    by_report_status = collections.Counter((r.report, r.status) for r in runs)
    for (report, status), count in by_report_status.items():
        assert labelled(found, 'nightshift_runs', report=report, status=status) == count
    reported = {labels: value for (name, labels), value in found.items()
                if name == 'nightshift_runs'}
    assert sum(reported.values()) == len(runs)

    sizes = collections.Counter()
    for run in runs:
        sizes[run.report] += run.bytes
    for report, size in sizes.items():
        assert labelled(found, 'nightshift_export_bytes', report=report) == size

    deliveries = collections.Counter(d.status for d in Delivery.select())
    for status in DeliveryStatus:
        assert labelled(found, 'nightshift_deliveries', status=status) == deliveries[status]

    queued = [r for r in runs if r.status == RunStatus.QUEUED]
    assert labelled(found, 'nightshift_queue_depth') == len(queued)
    oldest = max(((now - r.queued_at).total_seconds() for r in queued), default=0)
    assert abs(labelled(found, 'nightshift_oldest_queued_run_age_seconds') - oldest) < 5

    durations = collections.defaultdict(list)
    rows = collections.defaultdict(list)
    for run in runs:
        if run.status in TERMINAL and run.started_at and run.finished_at:
            durations[(run.report, run.status)].append(
                (run.finished_at - run.started_at).total_seconds())
        if run.status == RunStatus.DELIVERED:
            rows[run.report].append(run.rows)
    for (report, status), values in durations.items():
        check_histogram(found, 'nightshift_run_duration_seconds', values, DURATION_BUCKETS,
                        report=report, status=status)
    for report, values in rows.items():
        check_histogram(found, 'nightshift_run_rows', values, ROW_BUCKETS, report=report)
    histogram_series = {dict(labels).get('report') for (name, labels) in found
                        if name == 'nightshift_run_rows_count'}
    assert histogram_series == set(rows)

    consumers = list(Consumer.select())
    for consumer in consumers:
        keys = dict(consumer=str(consumer.id), host=consumer.host, pid=str(consumer.pid))
        assert labelled(found, 'nightshift_consumer_workers', **keys) == consumer.workers
        assert labelled(found, 'nightshift_consumer_periodic', **keys) == consumer.periodic
        beat = labelled(found, 'nightshift_consumer_last_heartbeat_timestamp_seconds', **keys)
        tick = labelled(found, 'nightshift_consumer_last_tick_timestamp_seconds', **keys)
        if beating:
            # Live consumers beat on after the scrape: the value read is an
            # earlier beat of the same row.
            assert 0 <= _epoch(consumer.heartbeat_at) - beat < 5
            assert (tick is None) == (consumer.last_tick_at is None)
            continue
        assert beat == pytest.approx(_epoch(consumer.heartbeat_at), abs=1e-3)
        assert tick == (None if consumer.last_tick_at is None
                        else pytest.approx(_epoch(consumer.last_tick_at), abs=1e-3))


def check_histogram(found, name, values, buckets, **labels):
    for bound in buckets:
        count = labelled(found, name + '_bucket', le=str(float(bound)), **labels)
        assert count == sum(1 for v in values if v <= bound), (name, bound, labels)
    assert labelled(found, name + '_bucket', le='+Inf', **labels) == len(values)
    assert labelled(found, name + '_count', **labels) == len(values)
    assert math.isclose(labelled(found, name + '_sum', **labels), sum(values),
                        rel_tol=1e-6, abs_tol=1e-3)


def _epoch(moment):
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def _run(report, status, seconds=None, rows=0, size=0, queued_ago=0, **fields):
    now = utcnow()
    started = now - datetime.timedelta(seconds=seconds + 1) if seconds is not None else None
    finished = started + datetime.timedelta(seconds=seconds) if seconds is not None else None
    return Run.create(report=report, status=status, started_at=started, finished_at=finished,
                      rows=rows, bytes=size, queued_at=now - datetime.timedelta(
                          seconds=queued_ago), recipients=['a@example.org'], **fields)


@pytest.mark.parametrize('database_url', ['sqlite', 'postgres', 'mariadb'], indirect=True)
def test_metrics_are_the_database_at_scrape_time(make_jobs):
    jobs = make_jobs(tick_alarm_after=120)
    app = web_app(jobs)
    # History: durations and rows across the buckets, on both sides of a bound.
    delivered = [_run('customers', RunStatus.DELIVERED, s, rows=r, size=r * 40)
                 for s, r in ((0.25, 5), (1.0, 10), (1.000001, 11), (4.5, 999), (70.125, 5000),
                              (4000, 2000000))]
    _run('orders', RunStatus.DELIVERED, 12.5, rows=123456, size=4000000)
    failed = _run('orders', RunStatus.FAILED, 31, rows=7, error='boom')
    _run('orders', RunStatus.FAILED, None, error='queue unavailable')  # never started
    _run('customers', RunStatus.SKIPPED)
    _run('customers', RunStatus.RUNNING, rows=300, size=12000)
    _run('customers', RunStatus.QUEUED, queued_ago=95)
    _run('orders', RunStatus.QUEUED, queued_ago=5)
    for run, status in ((delivered[0], 'sent'), (delivered[1], 'sent'),
                        (failed, 'refused'), (failed, 'pending')):
        Delivery.create(run=run, address='%s-%d@example.org' % (status, run.id), status=status)
    # Schedules: one paused; one whose slot 10 minutes ago no tick handled
    # (due, and late past tick_alarm_after); one handled up to now.
    now = utcnow()
    for name, cron, enabled, mark in (('paused', '* * * * *', False, now),
                                      ('stuck', '* * * * *', True,
                                       now - datetime.timedelta(minutes=10)),
                                      ('fine', '0 3 * * *', True, now)):
        Schedule.create(name=name, report='customers', cron=cron, timezone='UTC',
                        enabled=enabled, checked_through=mark, recipients=['a@example.org'])
    ticking = register(ProcessInfo(2, 'thread', True))
    record_tick(ticking)
    register(ProcessInfo(4, 'process', False), db_now() - datetime.timedelta(minutes=5))

    res = app.get('/metrics')
    assert res.content_type == 'text/plain'
    found = samples(res.text)
    assert_matches_database(found, utcnow())

    # The same, spelt out for what the buckets must say.
    assert labelled(found, 'nightshift_runs', report='customers', status='delivered') == 6
    assert labelled(found, 'nightshift_runs', report='orders', status='queued') == 1
    assert labelled(found, 'nightshift_deliveries', status='sending') == 0
    assert labelled(found, 'nightshift_queue_depth') == 2
    assert 94 < labelled(found, 'nightshift_oldest_queued_run_age_seconds') < 100
    bucket = {bound: labelled(found, 'nightshift_run_duration_seconds_bucket', le=bound,
                              report='customers', status='delivered')
              for bound in ('1.0', '5.0', '60.0', '3600.0', '7200.0', '+Inf')}
    assert bucket == {'1.0': 2, '5.0': 4, '60.0': 4, '3600.0': 5, '7200.0': 6, '+Inf': 6}
    assert labelled(found, 'nightshift_run_duration_seconds_count', report='orders',
                    status='failed') == 1  # the one that never started is not timed
    assert labelled(found, 'nightshift_run_rows_bucket', le='10.0', report='customers') == 2
    states = {state: labelled(found, 'nightshift_schedules', state=state)
              for state in ('enabled', 'paused', 'due', 'late')}
    assert states == {'enabled': 2, 'paused': 1, 'due': 1, 'late': 1}
    assert labelled(found, 'nightshift_consumers_live') == 1
    assert labelled(found, 'nightshift_consumer_up', consumer=str(ticking),
                    host=os.uname().nodename, pid=str(os.getpid())) == 1

    # Scraped again after a change: the new rows, no process memory.
    Run.update(status=RunStatus.DELIVERED).where(Run.status == RunStatus.QUEUED).execute()
    found = samples(app.get('/metrics').text)
    assert labelled(found, 'nightshift_queue_depth') == 0
    assert labelled(found, 'nightshift_oldest_queued_run_age_seconds') == 0
    assert_matches_database(found, utcnow())


def test_an_empty_history_still_names_every_report_and_status(make_jobs):
    app = web_app(make_jobs())
    found = samples(app.get('/metrics').text)
    for report in ('customers', 'orders'):
        for status in RunStatus:
            assert labelled(found, 'nightshift_runs', report=report, status=status) == 0
    assert labelled(found, 'nightshift_consumers_live') == 0
    assert not [name for name, _ in found if name.startswith('nightshift_run_rows')]


def test_metrics_take_an_api_token_or_the_scrape_token(make_jobs):
    jobs = make_jobs(env={'NIGHTSHIFT_API_TOKEN': API_TOKEN,
                          'NIGHTSHIFT_METRICS_TOKEN': SCRAPE_TOKEN})
    app = web_app(jobs)
    res = app.get('/metrics', expect_errors=True)
    assert (res.status_int, res.json['error']) == (401, 'unauthorized')
    wrong = app.get('/metrics', headers={'Authorization': 'Bearer ' + 'x' * 32},
                    expect_errors=True)
    assert wrong.status_int == 401
    for token in (API_TOKEN, SCRAPE_TOKEN):
        res = app.get('/metrics', headers={'Authorization': 'Bearer ' + token})
        assert 'nightshift_queue_depth 0.0' in res.text
    # Prometheus' basic_auth: any user name, the token as password.
    app.authorization = ('Basic', ('prometheus', SCRAPE_TOKEN))
    assert app.get('/metrics').status_int == 200
    # The scrape token opens /metrics only.
    app.authorization = None
    res = app.get('/api/runs', headers={'Authorization': 'Bearer ' + SCRAPE_TOKEN},
                  expect_errors=True)
    assert res.status_int == 401
    assert SCRAPE_TOKEN not in jobs.settings.describe()


def test_a_short_scrape_token_stops_start_up(make_settings):
    from settings import SettingsError
    with pytest.raises(SettingsError, match='metrics_token'):
        make_settings({'NIGHTSHIFT_METRICS_TOKEN': 'short'})


# --- two real consumers and the web, as processes ----------------------------

def _http(url, token=None, data=None):
    headers = {'Content-Type': 'application/json'}
    if token:
        headers['Authorization'] = 'Bearer ' + token
    request = urllib.request.Request(url, data=None if data is None else
                                     json.dumps(data).encode(), headers=headers,
                                     method='POST' if data is not None else 'GET')
    try:
        with urllib.request.urlopen(request, timeout=10) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, None


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_scraped_while_two_consumers_and_the_web_run_the_values_match_the_database(
        consumer_env, smtp_sink, tmp_path):
    import demo
    demo.seed(customers=40, orders=500)
    smtp_sink.refuse['nobody@example.org'] = '550 5.1.1 no such user'
    env = dict(consumer_env, NIGHTSHIFT_API_TOKEN=API_TOKEN,
               NIGHTSHIFT_METRICS_TOKEN=SCRAPE_TOKEN, NIGHTSHIFT_CONSUMER_HEARTBEAT='1')
    port = free_port()
    base = 'http://127.0.0.1:%d' % port
    procs = []
    logs = []
    try:
        for index in range(2):
            logs.append(open(tmp_path / ('consumer-%d.log' % index), 'wb'))
            procs.append(spawn(['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2',
                                '-k', 'thread'], env, logs[-1]))
        # Two web processes: Prometheus may ask either.
        other_port = free_port()
        for name, listen in (('web', port), ('web-2', other_port)):
            logs.append(open(tmp_path / ('%s.log' % name), 'wb'))
            procs.append(spawn(['server.py', '--port', str(listen)], env, logs[-1]))
        for url in (base, 'http://127.0.0.1:%d' % other_port):
            wait_until(lambda: _http(url + '/healthz')[0] == 200, timeout=30,
                       message='the web')
        posted = []
        for report, to in (('customers', 'a@example.org'), ('orders', 'b@example.org'),
                           ('customers', 'c@example.org'), ('orders', 'nobody@example.org')):
            status, body = _http(base + '/api/runs', API_TOKEN, {'report': report, 'to': [to]})
            assert status == 202, body
            posted.append(json.loads(body)['id'])
        status, _ = _http(base + '/api/schedules', API_TOKEN, {
            'name': 'nightly', 'report': 'customers', 'cron': '0 3 * * *',
            'to': ['a@example.org'], 'enabled': False})
        assert status == 201
        wait_until(lambda: all(Run.get_by_id(i).status in TERMINAL for i in posted),
                   timeout=60, message='the four runs to end')
        health = wait_until(lambda: _consumers_healthy(base), timeout=30,
                            message='both consumers in /healthz')
        assert {c['pid'] for c in health['consumers']} == {p.pid for p in procs[:2]}
        assert all(c['live'] and c['periodic'] and c['workers'] == 2
                   for c in health['consumers'])

        assert _http(base + '/metrics')[0] == 401
        status, text = _http(base + '/metrics', SCRAPE_TOKEN)
        assert status == 200
        found = samples(text)
        assert_matches_database(found, utcnow(), beating=True)
        statuses = [Run.get_by_id(i).status for i in posted]
        assert statuses == ['delivered', 'delivered', 'delivered', 'failed']
        assert labelled(found, 'nightshift_runs', report='customers', status='delivered') == 2
        assert labelled(found, 'nightshift_deliveries', status='refused') == 1
        assert labelled(found, 'nightshift_run_rows_count', report='orders') == 1
        assert labelled(found, 'nightshift_schedules', state='paused') == 1
        assert labelled(found, 'nightshift_consumers_live') == 2
        ticked = [value for (name, _), value in found.items()
                  if name == 'nightshift_consumer_last_tick_timestamp_seconds']
        assert len(ticked) == 2  # each ticked as it started
        # The other web process answers the same: nothing is per process
        # (but the clocks: heartbeats, ticks and ages move between scrapes).
        status, text = _http('http://127.0.0.1:%d/metrics' % other_port, API_TOKEN)
        assert status == 200
        moving = ('timestamp_seconds', 'age_seconds')
        assert {k: v for k, v in samples(text).items() if not k[0].endswith(moving)} == \
            {k: v for k, v in found.items() if not k[0].endswith(moving)}
    finally:
        for proc in procs:
            stop(proc)
        for log in logs:
            log.close()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], \
        (tmp_path / 'consumer-0.log').read_text()


def _consumers_healthy(base):
    status, body = _http(base + '/healthz', API_TOKEN)
    if status != 200:
        return None
    health = json.loads(body)
    live = [c for c in health.get('consumers', []) if c['live']]
    return health if health['status'] == 'ok' and len(live) == 2 else None
