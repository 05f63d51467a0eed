import csv
import io
import json
import re

import pytest
import webtest

import demo
from conftest import attachment, run_queued
from demo import Customer, Order
from models import Run
from server import create_app


def order_rows(status=None):
    """The orders report's rows, read straight from the database."""
    query = Order.select(Order, Customer).join(Customer).order_by(Order.id)
    if status:
        query = query.where(Order.status == status)
    return [[str(o.id), o.created_at.strftime('%Y-%m-%dT%H:%M:%S.%f'), o.customer.name,
             o.customer.email or '',
             o.status, '%.2f' % o.amount] for o in query]


def parse_csv(data):
    assert data.startswith(b'\xef\xbb\xbf')  # a BOM, for Excel
    return list(csv.reader(io.StringIO(data.decode('utf-8-sig'), newline='')))


@pytest.fixture
def shop(database):
    demo.seed(customers=40, orders=500)


def test_report_catalogue(app):
    reports = {r['name']: r for r in app.get('/api/reports').json['reports']}
    assert set(reports) == {'orders', 'customers'}
    params = {p['name']: p for p in reports['orders']['params']}
    assert params['since']['type'] == 'date' and not params['since']['required']
    assert 'paid' in params['status']['choices']
    assert reports['orders']['title'] == 'Orders' and reports['orders']['description']


def test_download_streams_the_report(app, shop):
    res = app.get('/reports/orders.csv', {'status': 'paid'})
    assert res.status_int == 200
    assert res.headers['Content-Type'] == 'text/csv; charset=utf-8'
    assert re.fullmatch(r'attachment; filename="orders-\d{8}-\d{6}\.csv"',
                        res.headers['Content-Disposition'])
    rows = parse_csv(res.body)
    assert rows[0] == ['id', 'created_at', 'customer_name', 'customer_email', 'status', 'amount']
    assert rows[1:] == order_rows('paid')
    assert len(rows) > 100


def test_post_run_emails_the_csv(app, jobs, shop, smtp_sink):
    res = app.post_json('/api/runs', {'report': 'orders', 'params': {'status': 'shipped'},
                                      'to': ['ana@example.org', 'bo@example.org']})
    assert res.status_int == 202
    run_id = res.json['id']
    assert res.json == {'id': run_id, 'status': 'queued', 'url': '/api/runs/%d' % run_id}
    assert res.headers['Location'].endswith('/api/runs/%d' % run_id)
    assert app.get('/api/runs/%d' % run_id).json['status'] == 'queued'
    assert smtp_sink.messages == []

    assert run_queued(jobs) == 1

    [sent] = smtp_sink.messages
    assert sent['to'] == ['ana@example.org', 'bo@example.org']
    assert sent['from'] == 'reports@nightshift.test'
    message = sent['message']
    assert re.fullmatch(r'<nightshift-run-%d-[0-9a-f]{12}\.[0-9a-f]{12}@%s>'
                        % (run_id, re.escape('nightshift.test')), message['Message-ID'])
    assert 'Orders' in message['Subject']
    body = message.get_body(('plain',)).get_content()
    expected = order_rows('shipped')
    assert 'Rows: {:,}'.format(len(expected)) in body and 'status=shipped' in body
    name, data = attachment(message)
    assert re.fullmatch(r'orders-\d{8}-\d{6}\.csv', name)
    assert parse_csv(data)[1:] == expected

    run = app.get('/api/runs/%d' % run_id).json
    assert run['status'] == 'delivered'
    assert (run['rows'], run['bytes'], run['attempts']) == (len(expected), len(data), 1)
    assert run['trigger'] == 'web' and run['error'] is None
    assert run['params'] == {'since': None, 'until': None, 'status': 'shipped'}
    assert run['to'] == ['ana@example.org', 'bo@example.org']
    for key in ('created_at', 'started_at', 'finished_at'):
        assert run[key].endswith('Z')
    assert [d['status'] for d in run['deliveries']] == ['sent', 'sent']
    assert run['duration_seconds'] >= 0 and run['sent_as'] == 'csv'
    assert run['file_bytes'] == len(data)

    # The same file, downloadable while it is kept.
    assert run['file_url'] == '/api/runs/%d/file' % run_id
    kept = app.get(run['file_url'])
    assert kept.headers['Content-Disposition'] == 'attachment; filename="%s"' % name
    assert kept.body == data


def test_a_run_file_is_offered_only_while_kept(app, jobs, settings, shop):
    import datetime

    import runfiles
    from models import utcnow
    run_id = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']}).json['id']
    res = app.get('/api/runs/%d/file' % run_id, expect_errors=True)
    assert (res.status_int, res.json['error']) == (409, 'not_ready')
    assert res.json['message'] == 'run %d is queued; it has no file yet' % run_id
    assert app.get('/api/runs/%d' % run_id).json['file_url'] is None
    run_queued(jobs)
    assert app.get('/api/runs/%d/file' % run_id).status_int == 200
    # Mid-retry (back in the queue with its file built) it is not offered:
    # a re-run may rebuild it.
    Run.update(status='queued').where(Run.id == run_id).execute()
    assert app.get('/api/runs/%d' % run_id).json['file_url'] is None
    assert app.get('/api/runs/%d/file' % run_id, expect_errors=True).status_int == 409
    Run.update(status='delivered').where(Run.id == run_id).execute()
    later = utcnow() + datetime.timedelta(days=settings.retention_days + 1)
    assert runfiles.remove_expired_files(settings, jobs.store, later) == 1
    assert app.get('/api/runs/%d' % run_id).json['file_url'] is None
    res = app.get('/api/runs/%d/file' % run_id, expect_errors=True)
    assert (res.status_int, res.json['error']) == (410, 'gone')
    assert app.get('/api/runs/99999/file', expect_errors=True).json['field'] == 'id'


def test_rerunning_a_delivered_run_sends_nothing(app, jobs, shop, smtp_sink):
    run_id = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']}).json['id']
    run_queued(jobs)
    jobs.execute(run_id)  # a duplicate task, e.g. after a crash
    assert len(smtp_sink.messages) == 1
    assert Run.get_by_id(run_id).attempts == 1


def test_list_runs_newest_first_with_filters(app, jobs, shop):
    for report in ('orders', 'customers', 'orders'):
        app.post_json('/api/runs', {'report': report, 'to': ['a@example.org']})
    runs = app.get('/api/runs').json['runs']
    assert [r['report'] for r in runs] == ['orders', 'customers', 'orders']
    assert runs[0]['id'] > runs[1]['id'] > runs[2]['id']
    assert len(app.get('/api/runs', {'report': 'orders'}).json['runs']) == 2
    assert len(app.get('/api/runs', {'limit': '1'}).json['runs']) == 1
    run_queued(jobs, limit=1)
    # The first orders run's query serves the other one too (batches.py).
    delivered = app.get('/api/runs', {'status': 'delivered'}).json['runs']
    assert [(r['report'], r['batch_of']) for r in delivered] == [
        ('orders', runs[2]['id']), ('orders', None)]
    assert [r['report'] for r in app.get('/api/runs', {'status': 'queued'}).json['runs']] \
        == ['customers']


@pytest.mark.parametrize('body, status, field', [
    ({'report': 'nope', 'to': ['a@example.org']}, 404, 'report'),
    ({'to': ['a@example.org']}, 400, 'report'),
    ({'report': 7, 'to': ['a@example.org']}, 400, 'report'),
    ({'report': 'orders', 'params': {'since': '2025-02-30'}, 'to': ['a@example.org']},
     400, 'params.since'),
    ({'report': 'orders', 'params': {'since': '2025-02-02', 'until': '2025-02-01'},
      'to': ['a@example.org']}, 400, 'params.until'),
    ({'report': 'orders', 'params': {'status': 'lost'}, 'to': ['a@example.org']},
     400, 'params.status'),
    ({'report': 'orders', 'params': {'colour': 'red'}, 'to': ['a@example.org']},
     400, 'params.colour'),
    ({'report': 'orders', 'params': ['x'], 'to': ['a@example.org']}, 400, 'params'),
    ({'report': 'customers', 'params': {'min_orders': -1}, 'to': ['a@example.org']},
     400, 'params.min_orders'),
    ({'report': 'customers', 'params': {'min_orders': True}, 'to': ['a@example.org']},
     400, 'params.min_orders'),
    ({'report': 'orders'}, 400, 'to'),
    ({'report': 'orders', 'to': []}, 400, 'to'),
    ({'report': 'orders', 'to': 'a@example.org'}, 400, 'to'),
    ({'report': 'orders', 'to': ['a@example.org, b@example.org']}, 400, 'to[0]'),
    ({'report': 'orders', 'to': ['ok@example.org', 'Bob <b@example.org>']}, 400, 'to[1]'),
    ({'report': 'orders', 'to': ['a@example.org\r\nBcc: c@example.org']}, 400, 'to[0]'),
    ({'report': 'orders', 'to': ['pаypal@example.org']}, 400, 'to[0]'),  # Cyrillic a
    ({'report': 'orders', 'to': ['no-at-sign']}, 400, 'to[0]'),
    ({'report': 'orders', 'to': [None]}, 400, 'to[0]'),
    ({'report': 'orders', 'to': ['a%d@example.org' % i for i in range(21)]}, 400, 'to'),
    ({'report': 'orders', 'to': ['a@example.org'], 'cc': ['b@example.org']}, 400, 'cc'),
])
def test_bad_requests_name_the_field_and_record_nothing(app, body, status, field):
    res = app.post_json('/api/runs', body, expect_errors=True)
    assert res.status_int == status
    assert res.content_type == 'application/json'
    assert res.json['field'] == field
    assert res.json['message'] and res.json['error']
    assert Run.select().count() == 0


@pytest.mark.parametrize('body, content_type, status', [
    (b'not json', 'application/json', 400),
    (b'[1, 2]', 'application/json', 400),
    (b'\xff\xfe', 'application/json', 400),
    (b'', 'application/json', 400),
    (json.dumps({'report': 'orders', 'to': ['a@example.org'],
                 'params': {'status': 'x' * 70000}}).encode(), 'application/json', 413),
])
def test_malformed_bodies(app, body, content_type, status):
    res = app.post('/api/runs', body, content_type=content_type, expect_errors=True)
    assert res.status_int == status
    assert res.json['field'] == 'body'
    assert Run.select().count() == 0


@pytest.mark.parametrize('content_type', ['text/plain', 'application/x-www-form-urlencoded',
                                          'multipart/form-data; boundary=x', ''])
def test_a_body_that_is_not_declared_json_is_refused(app, shop, content_type):
    body = json.dumps({'report': 'orders', 'to': ['a@example.org']}).encode()
    res = app.post('/api/runs', body, headers={'Content-Type': content_type},
                   expect_errors=True)
    assert res.status_int == 415
    assert res.json['field'] == 'Content-Type'
    assert Run.select().count() == 0
    res = app.post('/api/runs', body, content_type='application/json; charset=utf-8')
    assert res.status_int == 202
    assert Run.select().count() == 1


def test_output_options(app, shop):
    plain = app.get('/reports/orders.csv', {'bom': 'false', 'status': 'paid'}).body
    assert plain.startswith(b'id,created_at,')
    assert app.get('/reports/orders.csv', {'status': 'paid'}).body == b'\xef\xbb\xbf' + plain
    res = app.get('/reports/orders.csv', {'bom': 'maybe'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'bom')
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                      'escape_formulas': 'no'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'escape_formulas')
    run_id = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                         'escape_formulas': False, 'bom': False}).json['id']
    run = app.get('/api/runs/%d' % run_id).json
    assert run['escape_formulas'] is False


def test_download_bad_params(app, shop):
    res = app.get('/reports/orders.csv', {'since': 'last tuesday'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'params.since')
    res = app.get('/reports/orders.csv?status=paid&status=shipped', expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'params.status')
    res = app.get('/reports/secret.csv', expect_errors=True)
    assert (res.status_int, res.json['error']) == (404, 'unknown_report')


def test_download_parameters_can_be_checked_first(app, shop):
    res = app.get('/api/reports/orders/check', {'since': '2025-01-01', 'status': 'paid'})
    assert res.json['params'] == {'since': '2025-01-01', 'until': None, 'status': 'paid'}
    assert res.json['url'] == '/reports/orders.csv?since=2025-01-01&status=paid'
    res = app.get('/api/reports/orders/check', {'since': '2025-02-01', 'until': '2025-01-01'},
                  expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'params.until')
    res = app.get('/api/reports/nope/check', expect_errors=True)
    assert (res.status_int, res.json['error']) == (404, 'unknown_report')


def test_unknown_paths_and_runs_are_json_404(app):
    assert app.get('/nothing', expect_errors=True).json['error'] == 'not_found'
    res = app.get('/api/runs/999', expect_errors=True)
    assert (res.status_int, res.json['field']) == (404, 'id')
    res = app.get('/api/runs', {'status': 'lost'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'status')
    res = app.get('/api/runs', {'limit': '0'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'limit')
    res = app.delete('/api/runs', expect_errors=True)
    assert (res.status_int, res.json['error']) == (405, 'method_not_allowed')


def test_healthz(app):
    res = app.get('/healthz')
    core = {key: res.json[key] for key in ('status', 'database', 'queue', 'queue_backend')}
    assert core == {'status': 'ok', 'database': 'ok', 'queue': 'ok', 'queue_backend': 'redis'}
    assert res.json['problems'] == []  # the consumers' part: tests/test_consumers.py


def test_queue_down_is_503_and_the_run_is_recorded_failed(app, shop, redis_server):
    redis_server.stop()
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org']},
                        expect_errors=True)
    assert res.status_int == 503
    assert res.json['error'] == 'queue_unavailable'
    [run] = Run.select()
    assert run.status == 'failed'
    assert run.error.startswith('queue unavailable')
    assert str(run.id) in res.json['message']
    health = app.get('/healthz', expect_errors=True)
    assert health.status_int == 503 and health.json['queue'].startswith('down')


def test_internal_errors_are_json_without_traceback(settings, jobs, database):
    from reports import Registry
    broken = Registry()

    @broken.report('broken', 'Broken')
    def build():
        raise RuntimeError('secret internals')

    app = webtest.TestApp(create_app(settings, jobs, registry=broken))
    res = app.get('/reports/broken.csv', expect_errors=True)
    assert res.status_int == 500
    assert res.json == {'error': 'internal_error', 'message': 'internal error; it has been logged'}
    assert b'secret' not in res.body and b'Traceback' not in res.body


def test_database_down_is_503_everywhere(app, shop):
    from conftest import free_port
    from models import bind_database
    bind_database('postgresql://postgres@127.0.0.1:%d/gone' % free_port(), create=False)
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org']},
                        expect_errors=True)
    assert (res.status_int, res.json['error']) == (503, 'database_unavailable')
    # A download reads its source, not Nightshift's own database.
    assert app.get('/reports/orders.csv').status_int == 200
    assert app.get('/api/runs', expect_errors=True).status_int == 503
    page = app.get('/', expect_errors=True)  # a person reads this one
    assert (page.status_int, page.content_type) == (503, 'text/html')
    assert 'The database is not answering' in page.text
    health = app.get('/healthz', expect_errors=True)
    assert health.status_int == 503 and health.json['database'].startswith('down')
    assert health.json['queue'] == 'ok'


def test_a_source_that_does_not_answer_is_503_naming_it(make_jobs):
    from conftest import free_port, web_app
    gone = 'postgresql://postgres@127.0.0.1:%d/gone' % free_port()
    app = web_app(make_jobs(env={'NIGHTSHIFT_SOURCE_DEMO_URL': gone}))
    res = app.get('/reports/orders.csv', expect_errors=True)
    assert (res.status_int, res.json['error']) == (503, 'source_unavailable')
    assert 'source demo is not answering' in res.json['message']
    assert res.headers['Retry-After'] == '5'


def test_a_reports_sql_error_is_that_reports_error_not_an_outage(make_jobs, tmp_path, caplog):
    from conftest import web_app
    (tmp_path / 'sql').mkdir()
    (tmp_path / 'sql' / 'lost.sql').write_text(
        '/*\ntitle: Lost\nsource: demo\n*/\nSELECT * FROM no_such_table\n')
    app = web_app(make_jobs(report_paths=str(tmp_path / 'sql')))
    res = app.get('/reports/lost.csv', expect_errors=True)
    assert (res.status_int, res.json['error'], res.json['field']) == (422, 'report_failed',
                                                                      'report')
    assert 'report lost failed on source demo' in res.json['message']
    assert 'no_such_table' in res.json['message']
    assert any('lost.sql' in r.getMessage() for r in caplog.records)


def test_the_web_logs_a_database_outage_once_and_its_end_once(app, shop, database_url,
                                                              caplog):
    import logging
    from conftest import free_port
    from models import bind_database
    caplog.set_level(logging.DEBUG, logger='nightshift.database')
    bind_database('postgresql://postgres@127.0.0.1:%d/gone' % free_port(), create=False)
    for _ in range(5):
        assert app.get('/api/runs', expect_errors=True).status_int == 503
    assert app.get('/reports/orders.csv').status_int == 200  # no database needed: still down
    bind_database(database_url, create=False)
    assert app.get('/api/runs').status_int == 200
    assert app.get('/api/runs').status_int == 200
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in messages if 'database unavailable' in m]) == 1
    [back] = [m for m in messages if 'answers again' in m]
    assert '5 operations failed' in back
