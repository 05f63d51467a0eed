"""History that does not grow forever: old runs removed in batches while the
API keeps answering, charts unchanged for what is kept; downloads recorded."""
import base64
import datetime
import threading
import time
import urllib.request
import wsgiref.util

import pytest

import demo
import history
import web
from conftest import free_port, run_queued, wait_until, web_app
from models import Delivery, Run, db, utcnow
from vocab import RunStatus, Trigger

TOKEN = 'history-token-0123456789'


def old_runs(count, finished_at, status=RunStatus.DELIVERED, report='orders', **values):
    """`count` runs finished at `finished_at`, each with one delivery, inserted in bulk."""
    before = Run.select(Run.id).order_by(Run.id.desc()).scalar() or 0
    for start in range(0, count, 500):
        rows = [dict(report=report, status=status, trigger=Trigger.WEB, rows=10 + i,
                     recipients=['a@example.org'], created_at=finished_at,
                     started_at=finished_at, finished_at=finished_at, **values)
                for i in range(start, min(count, start + 500))]
        with db.atomic():
            Run.insert_many(rows).execute()
    ids = [r[0] for r in Run.select(Run.id).where(Run.id > before).tuples()]
    for start in range(0, len(ids), 500):
        with db.atomic():
            Delivery.insert_many([dict(run=i, address='a@example.org', status='sent')
                                  for i in ids[start:start + 500]]).execute()
    return ids


@pytest.mark.slow
def test_retention_removes_old_runs_in_batches_while_the_api_answers(make_jobs):
    from waitress.server import create_server
    from server import create_app, server_options
    jobs = make_jobs(history_days=30, history_batch=500)
    settings = jobs.settings
    now = utcnow()
    long_ago = now - datetime.timedelta(days=200)
    old = old_runs(30000, long_ago)
    recent = old_runs(40, now - datetime.timedelta(days=2))
    # Never removed: runs not over, and a run whose file is still kept.
    kept = [Run.create(report='orders', status=status, created_at=long_ago,
                       queued_at=long_ago).id
            for status in (RunStatus.QUEUED, RunStatus.RUNNING)]
    kept.append(Run.create(report='orders', status=RunStatus.DELIVERED, created_at=long_ago,
                           finished_at=long_ago, file_key='run-x/a1/f.csv').id)
    report = jobs.registry.get('orders')
    chart_before = web.chart_for(report)

    # One batch at a time: with no time left after the first, one batch goes.
    assert history.remove_old_runs(settings, now, budget=0) == 500

    port = free_port()
    server = create_server(create_app(settings, jobs),
                           **server_options(settings, '127.0.0.1', port))
    threading.Thread(target=server.run, daemon=True).start()
    url = 'http://127.0.0.1:%d/api/runs?limit=50' % port
    wait_until(lambda: urllib.request.urlopen(url).status == 200, message='the server')
    removed, answers = [], []
    cleaner = threading.Thread(target=lambda: removed.append(
        history.remove_old_runs(settings, now, budget=60)))
    try:
        started = time.monotonic()
        cleaner.start()
        while cleaner.is_alive():
            sent = time.monotonic()
            with urllib.request.urlopen(url, timeout=10) as answer:
                answer.read()
                answers.append((answer.status, time.monotonic() - sent))
        took = time.monotonic() - started
        cleaner.join()
    finally:
        server.close()
    assert removed == [len(old) - 500]
    assert len(answers) >= 3, 'the cleanup was over before the API was asked'
    assert {status for status, _ in answers} == {200}
    slowest = max(seconds for _, seconds in answers)
    print('removed %d runs in %.2f s; %d API answers during it, slowest %.3f s'
          % (removed[0], took, len(answers), slowest))
    assert slowest < 2.0
    left = {r.id for r in Run.select(Run.id)}
    assert left == set(recent) | set(kept)
    assert Delivery.select().count() == len(recent)
    assert web.chart_for(report) == chart_before


def test_the_tick_removes_old_runs_and_keeps_everything_when_history_days_is_0(make_jobs):
    jobs = make_jobs(history_days=30)
    now = utcnow()
    old_runs(3, now - datetime.timedelta(days=31), status=RunStatus.FAILED)
    old_runs(2, now - datetime.timedelta(days=31), status=RunStatus.CANCELLED)
    fresh = old_runs(2, now - datetime.timedelta(days=29))
    jobs.tick(now)
    assert sorted(r.id for r in Run.select()) == sorted(fresh)
    forever = make_jobs(history_days=0)
    old_runs(2, now - datetime.timedelta(days=3000))
    forever.tick(now)
    assert Run.select().count() == 4


# --- downloads ----------------------------------------------------------------

def test_a_download_is_recorded_as_a_run(make_jobs):
    demo.seed(customers=20, orders=300)
    app = web_app(make_jobs(env={'NIGHTSHIFT_API_TOKEN': TOKEN}))
    app.authorization = ('Bearer', TOKEN)
    body = app.get('/reports/orders.csv', {'status': 'paid'}).body
    [run] = app.get('/api/runs').json['runs']
    lines = body.decode('utf-8-sig').splitlines()
    assert (run['trigger'], run['status'], run['report']) == ('download', 'delivered', 'orders')
    assert run['rows'] == len(lines) - 1 > 10 and run['bytes'] == len(body)
    assert run['params']['status'] == 'paid' and run['to'] == []
    assert run['duration_seconds'] is not None and run['duration_seconds'] >= 0
    assert run['requested_by'].startswith('token 1 from ')
    assert TOKEN not in run['requested_by']
    # Shown with the others: in the page's runs and the report's chart.
    assert 'download' in app.get('/ui/runs').text
    assert 'Run #%d: delivered' % run['id'] in app.get('/ui/charts/orders').text

    app.authorization = ('Basic', ('alice', TOKEN))
    app.get('/reports/customers.csv')
    newest = app.get('/api/runs?limit=1').json['runs'][0]
    assert newest['requested_by'].startswith('alice with token 1 from ')


def test_a_failed_download_is_a_failed_run(make_jobs, tmp_path):
    (tmp_path / 'sql').mkdir()
    (tmp_path / 'sql' / 'lost.sql').write_text(
        '/*\ntitle: Lost\nsource: demo\n*/\nSELECT * FROM no_such_table\n')
    app = web_app(make_jobs(report_paths=str(tmp_path / 'sql')))
    assert app.get('/reports/lost.csv', expect_errors=True,
                   extra_environ={'REMOTE_ADDR': '10.0.0.9'}).status_int == 422
    run = Run.get()
    assert (run.trigger, run.status) == ('download', 'failed')
    assert 'no_such_table' in run.error and run.requested_by == '10.0.0.9'


def test_a_download_the_client_left_is_recorded_as_stopped(make_jobs):
    from server import create_app
    demo.seed(customers=50, orders=5000)
    jobs = make_jobs()
    wsgi = create_app(jobs.settings, jobs)
    environ = {'PATH_INFO': '/reports/orders.csv', 'REMOTE_ADDR': '10.1.2.3'}
    wsgiref.util.setup_testing_defaults(environ)
    body = wsgi(environ, lambda status, headers, exc_info=None: None)
    first = next(iter(body))
    assert first.startswith(b'\xef\xbb\xbfid,')
    assert Run.get().status == RunStatus.RUNNING
    body.close()  # what the server does when the client hangs up
    run = Run.get()
    assert run.status == RunStatus.FAILED and run.requested_by == '10.1.2.3'
    assert run.error.startswith('the download stopped after ') and 0 < run.rows < 5000


def test_a_download_does_not_count_as_a_worker_turn(make_jobs, smtp_sink):
    """A download in progress is not one of the report's worker runs
    (max_concurrent_per_report)."""
    demo.seed(customers=50, orders=5000)
    jobs = make_jobs(max_concurrent_per_report=1)
    app = web_app(jobs)
    from server import create_app
    environ = {'PATH_INFO': '/reports/orders.csv'}
    wsgiref.util.setup_testing_defaults(environ)
    body = create_app(jobs.settings, jobs)(environ, lambda *a: None)
    next(iter(body))
    app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org']})
    run_queued(jobs)
    body.close()
    assert [r.status for r in Run.select().order_by(Run.id)] == ['failed', 'delivered']


def test_who_names_the_token_by_position_never_its_value(make_jobs):
    app = web_app(make_jobs(env={'NIGHTSHIFT_API_TOKENS': 'first-token-0123456789,' + TOKEN}))
    credentials = base64.b64encode(('bob:' + TOKEN).encode()).decode()
    app.get('/reports/customers.csv', headers={'Authorization': 'Basic ' + credentials})
    assert Run.get().requested_by.startswith('bob with token 2 from ')
