"""Try before you schedule: "send a test to me" runs a schedule's next slot
for one address, recorded as a test, and the slot itself still runs."""
from datetime import datetime as dt

import pytest

import demo
import schedules
import testsend
from conftest import attachment, demo_catalogue, run_queued, web_app
from models import Run, Schedule

registry = demo_catalogue()

NIGHTLY = {'name': 'nightly-orders', 'report': 'orders', 'params': {'status': 'paid'},
           'to': ['boss@example.org'], 'cron': '0 2 * * *', 'timezone': 'Europe/Lisbon'}


@pytest.fixture
def shop(database):
    demo.seed(customers=10, orders=80)


def test_a_test_goes_to_one_address_and_the_slot_still_runs(settings, jobs, shop, smtp_sink):
    schedule = schedules.create_schedule(registry, settings, NIGHTLY, dt(2025, 1, 10, 12))
    test = testsend.send_test(registry, settings, schedule, ' me@example.org',
                              dt(2025, 1, 10, 13))
    assert (test.trigger, test.schedule, test.slot_at, test.test_slot_at, test.recipients) == \
        ('test', 'nightly-orders', None, dt(2025, 1, 11, 2), ['me@example.org'])
    assert test.params == Schedule.get_by_id(schedule.id).params
    # A second test of the same slot is as welcome as the first.
    again = testsend.send_test(registry, settings, schedule, 'me@example.org',
                               dt(2025, 1, 10, 14))
    jobs.enqueue_run(test)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    assert sent['to'] == ['me@example.org']
    assert sent['message']['To'] == 'me@example.org'
    data = attachment(sent['message'])[1].decode('utf-8-sig').splitlines()
    assert len(data) > 1 and all(',paid,' in line for line in data[1:])
    assert Run.get_by_id(test.id).status == 'delivered'
    # The slot's mark is untouched: the real run comes at its time, to its people.
    assert Schedule.get_by_id(schedule.id).checked_through == dt(2025, 1, 10, 12)
    [real] = jobs.tick(dt(2025, 1, 11, 2, 0, 3))
    assert (real.trigger, real.slot_at) == ('schedule', dt(2025, 1, 11, 2))
    run_queued(jobs)
    assert [m['to'] for m in smtp_sink.messages] == [['me@example.org'], ['boss@example.org']]
    assert Run.get_by_id(real.id).status == 'delivered'
    assert Run.get_by_id(again.id).status == 'queued'  # never queued: only recorded


def test_the_api_sends_a_test_and_checks_the_address(make_jobs, shop, smtp_sink):
    jobs = make_jobs(allowed_domains='example.org')
    app = web_app(jobs)
    schedule = app.post_json('/api/schedules', NIGHTLY).json
    res = app.post_json('/api/schedules/nightly-orders/test', {'to': 'me@example.org'},
                        status=202)
    run = app.get(res.headers['Location']).json
    assert (run['trigger'], run['to'], run['slot_at']) == ('test', ['me@example.org'], None)
    assert run['test_slot_at'] == schedule['next_run_at']
    run_queued(jobs)
    assert [m['to'] for m in smtp_sink.messages] == [['me@example.org']]
    assert app.get('/api/runs/%d' % run['id']).json['status'] == 'delivered'

    for body, code in (({'to': 'me@elsewhere.net'}, 'domain_not_allowed'),
                       ({'to': 'not an address'}, 'invalid'), ({}, 'required'),
                       ({'to': ['me@example.org']}, 'invalid'),
                       ({'to': 'a@example.org\r\nBcc: x@example.org'}, 'invalid')):
        res = app.post_json('/api/schedules/nightly-orders/test', body, status=400)
        assert (res.json['field'], res.json['error']) == ('to', code), body
    res = app.post_json('/api/schedules/nightly-orders/test',
                        {'to': 'me@example.org', 'cc': 'x'}, status=400)
    assert res.json['field'] == 'cc'
    app.post_json('/api/schedules/nope/test', {'to': 'me@example.org'}, status=404)
    assert Run.select().count() == 1


def test_a_split_schedule_is_tried_on_the_tester_alone(settings, jobs, shop, smtp_sink):
    schedule = schedules.create_schedule(
        registry, settings, dict(NIGHTLY, to=[], split_by='customer_email'),
        dt(2025, 1, 10, 12))
    test = testsend.send_test(registry, settings, schedule, 'me@example.org',
                              dt(2025, 1, 10, 13))
    jobs.enqueue_run(test)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    assert sent['to'] == ['me@example.org']
    run = Run.get_by_id(test.id)
    assert run.status == 'delivered' and run.split_by == 'customer_email'
    would = run.split_report['would_send']
    lines = attachment(sent['message'])[1].decode('utf-8-sig').splitlines()
    assert sum(w['rows'] for w in would) + run.split_report['refused_rows'] == len(lines) - 1
    assert all(w['address'].endswith('@example.org') for w in would) and len(would) > 3
    assert [d.address for d in run.deliveries] == ['me@example.org']
