"""Relative dates: the grammar, DST in Lisbon and Sao Paulo, and runs that
resolve them at their own slot (caught up, retried, reaped), shown in the
API, the page and the email. Every test that runs a report runs it on
SQLite and on PostgreSQL (the `database` fixture)."""
import csv
import datetime
import io
import os
import subprocess
import sys
from datetime import date as d, datetime as dt, timedelta
from zoneinfo import ZoneInfo

import pytest

import demo
import reldates
import runs
import schedules
from conftest import ROOT, attachment, catalogue_of, demo_catalogue
from models import Delivery, Run, Schedule, db_now
from params import Param
from reports import Registry

LISBON = ZoneInfo('Europe/Lisbon')
SAO_PAULO = ZoneInfo('America/Sao_Paulo')

WINDOW_SQL = '''/*
title: Orders in a window
source: demo
params:
  since: {type: datetime, required: true, help: First instant included.}
  until: {type: datetime, required: true, after: since, help: First instant not included.}
*/
SELECT o.id FROM "order" o
WHERE o.created_at >= :since AND o.created_at < :until
ORDER BY o.id
'''


# --- the grammar ------------------------------------------------------------------

@pytest.mark.parametrize('text, canonical', [
    ('today', 'today'),
    ('  Yesterday ', 'yesterday'),
    ('-7d', 'today - 7 days'),
    ('today-7d', 'today - 7 days'),
    ('today - 1 DAY', 'today - 1 day'),
    ('start of last month', 'start of last month'),
    ('start   of this quarter - 1 year', 'start of this quarter - 1 year'),
    ('start of next week + 2w', 'start of next week + 2 weeks'),
    ('yesterday - 1 month + 3 days', 'yesterday - 1 month + 3 days'),
])
def test_expressions_have_one_canonical_spelling(text, canonical):
    assert reldates.parse(text).text == canonical
    assert reldates.parse(canonical).text == canonical


@pytest.mark.parametrize('text', [
    'tomorrow', 'last tuesday', 'start of', 'start of last decade', 'start of past month',
    'today 7', 'today - 7', 'today - 7 fortnights', '7d', 'today - 123456 days', '',
    'today; drop table', 'yesterday' * 20])
def test_anything_else_is_refused_with_a_reason(text):
    with pytest.raises(ValueError) as info:
        reldates.parse(text)
    assert str(info.value)


MONDAY_31_MARCH = d(2025, 3, 31)


@pytest.mark.parametrize('text, today, expected', [
    ('today', MONDAY_31_MARCH, d(2025, 3, 31)),
    ('yesterday', MONDAY_31_MARCH, d(2025, 3, 30)),
    ('-7d', MONDAY_31_MARCH, d(2025, 3, 24)),
    ('start of this week', d(2025, 4, 6), d(2025, 3, 31)),  # a Sunday: weeks start Monday
    ('start of this week', MONDAY_31_MARCH, d(2025, 3, 31)),
    ('start of last week', MONDAY_31_MARCH, d(2025, 3, 24)),
    ('start of next week', MONDAY_31_MARCH, d(2025, 4, 7)),
    ('start of this month', MONDAY_31_MARCH, d(2025, 3, 1)),
    ('start of last month', d(2025, 1, 15), d(2024, 12, 1)),
    ('start of next month', d(2025, 12, 15), d(2026, 1, 1)),
    ('start of this quarter', d(2025, 8, 20), d(2025, 7, 1)),
    ('start of last quarter', d(2025, 2, 20), d(2024, 10, 1)),
    ('start of this year', MONDAY_31_MARCH, d(2025, 1, 1)),
    ('start of last year', MONDAY_31_MARCH, d(2024, 1, 1)),
    ('today - 1 month', MONDAY_31_MARCH, d(2025, 2, 28)),  # the 31st lands on the last day
    ('today - 1 year', d(2024, 2, 29), d(2023, 2, 28)),
    ('start of this month - 1 day', MONDAY_31_MARCH, d(2025, 2, 28)),
])
def test_dates_from_a_local_today(text, today, expected):
    assert reldates.resolve_date(reldates.parse(text), today) == expected


def test_past_the_calendar_is_an_error_not_a_crash():
    with pytest.raises(ValueError, match='past the calendar'):
        reldates.resolve_date(reldates.parse('today - 3000 years'), d(2025, 1, 1))


# --- DST: local midnight as UTC -------------------------------------------------

def window(zone, slot_utc):
    """(since, until) for yesterday..today at `slot_utc`, as a run stores them."""
    declared = [Param('since', 'datetime'), Param('until', 'datetime')]
    values, asked = reldates.resolve_params(declared, {'since': 'yesterday', 'until': 'today'},
                                            zone, slot_utc)
    assert asked == {'since': 'yesterday', 'until': 'today'}
    return values['since'], values['until']


def hours(since, until):
    parse = datetime.datetime.fromisoformat
    return (parse(until) - parse(since)) / timedelta(hours=1)


def test_lisbon_days_across_both_changes():
    # 2025-03-30: 01:00 UTC jumps to 02:00 local (WET -> WEST), a 23-hour day.
    assert window(LISBON, dt(2025, 3, 31, 6)) == ('2025-03-30 00:00:00', '2025-03-30 23:00:00')
    assert hours(*window(LISBON, dt(2025, 3, 31, 6))) == 23
    assert window(LISBON, dt(2025, 4, 1, 6)) == ('2025-03-30 23:00:00', '2025-03-31 23:00:00')
    # 2025-10-26: 02:00 local goes back to 01:00, a 25-hour day.
    assert window(LISBON, dt(2025, 10, 27, 7)) == ('2025-10-25 23:00:00', '2025-10-27 00:00:00')
    assert hours(*window(LISBON, dt(2025, 10, 27, 7))) == 25
    # A slot at 00:30 local on the 10th is still the 9th in UTC: the 10th counts.
    assert window(LISBON, dt(2025, 6, 9, 23, 30)) == ('2025-06-08 23:00:00',
                                                      '2025-06-09 23:00:00')


def test_sao_paulo_days_when_it_still_had_dst():
    # 2018-11-04: midnight did not exist (00:00 -03 became 01:00 -02): the
    # day starts at 01:00 local, 03:00 UTC, and lasts 23 hours.
    assert window(SAO_PAULO, dt(2018, 11, 5, 10)) == ('2018-11-04 03:00:00',
                                                      '2018-11-05 02:00:00')
    assert hours(*window(SAO_PAULO, dt(2018, 11, 4, 10))) == 24
    # 2019-02-16 lasted 25 hours (23:00-24:00 twice); the 17th 24 again.
    assert window(SAO_PAULO, dt(2019, 2, 17, 10)) == ('2019-02-16 02:00:00',
                                                      '2019-02-17 03:00:00')
    assert hours(*window(SAO_PAULO, dt(2019, 2, 18, 10))) == 24
    # Since 2019 no DST: every day is 24 hours at -03.
    assert window(SAO_PAULO, dt(2024, 11, 4, 10)) == ('2024-11-03 03:00:00',
                                                      '2024-11-04 03:00:00')


def test_a_date_parameter_gets_the_local_date_of_the_slot():
    declared = [Param('day', 'date')]
    # 23:30 UTC on 31 March is already 1 April in Lisbon (summer time).
    values, _ = reldates.resolve_params(declared, {'day': 'today'}, LISBON, dt(2025, 3, 31, 23, 30))
    assert values == {'day': '2025-04-01'}
    values, _ = reldates.resolve_params(declared, {'day': 'today'}, SAO_PAULO,
                                        dt(2025, 3, 31, 23, 30))
    assert values == {'day': '2025-03-31'}


# --- scheduled runs: resolved at their own slot ----------------------------------

@pytest.fixture
def window_registry(tmp_path):
    return catalogue_of(tmp_path / 'window-reports', {'window.sql': WINDOW_SQL})


def add_orders(*moments):
    """Orders at the given naive UTC moments; their ids in order."""
    customer = demo.Customer.create(name='Ana', email='ana@example.org')
    return [demo.Order.create(customer=customer, status='paid', amount='1.00',
                              created_at=moment).id for moment in moments]


def ids_in(message):
    _, data = attachment(message)
    return [int(row[0]) for row in csv.reader(io.StringIO(data.decode('utf-8-sig')))
            if row and row[0] != 'id']


def body_of(message):
    return message.get_body(('plain',)).get_content()


def window_schedule(registry, settings, created, zone='Europe/Lisbon', cron='0 7 * * *'):
    return schedules.create_schedule(registry, settings, {
        'name': 'daily-window', 'report': 'window', 'to': ['boss@example.org'],
        'params': {'since': 'Yesterday', 'until': 'today'}, 'cron': cron,
        'timezone': zone}, created)


def test_a_caught_up_run_covers_its_own_slots_day_not_todays(make_jobs, database, smtp_sink,
                                                             window_registry):
    jobs = make_jobs(registry=window_registry)
    inside = add_orders(dt(2025, 3, 30, 0, 0), dt(2025, 3, 30, 22, 59, 59))
    outside = add_orders(dt(2025, 3, 29, 23, 59, 59), dt(2025, 3, 30, 23, 0),
                         dt(2025, 3, 31, 12))  # the next local day: what "now" would give
    schedule = window_schedule(window_registry, jobs.settings, dt(2025, 3, 29, 12))
    assert schedule.params == {'since': 'yesterday', 'until': 'today'}  # canonical
    # The consumers were down from before the slot (07:00 Lisbon = 06:00 UTC
    # on the 31st) until 01:30 local on 1 April: the slot is caught up then.
    [run] = jobs.tick(dt(2025, 4, 1, 0, 30))
    assert run.slot_at == dt(2025, 3, 31, 6)
    run = Run.get_by_id(run.id)
    assert run.params == {'since': '2025-03-30 00:00:00', 'until': '2025-03-30 23:00:00'}
    assert run.asked_params == {'since': 'yesterday', 'until': 'today'}
    assert run.params_timezone == 'Europe/Lisbon'
    outcome = runs.execute_run(run.id, jobs.registry, jobs.settings, jobs.mailer, jobs.store)
    assert outcome.status == 'delivered'
    [sent] = smtp_sink.messages
    assert ids_in(sent['message']) == inside and not set(outside) & set(inside)
    assert ('Parameters: since=2025-03-30 00:00:00 UTC (yesterday in Europe/Lisbon), '
            'until=2025-03-30 23:00:00 UTC (today in Europe/Lisbon)') \
        in body_of(sent['message']).splitlines()


def test_a_retry_uses_the_values_of_the_first_attempt(make_jobs, database, smtp_sink,
                                                      window_registry):
    jobs = make_jobs(registry=window_registry)
    inside = add_orders(dt(2018, 11, 4, 3), dt(2018, 11, 5, 1, 59))
    add_orders(dt(2018, 11, 4, 2, 59), dt(2018, 11, 5, 2))
    window_schedule(window_registry, jobs.settings, dt(2018, 11, 1), zone='America/Sao_Paulo')
    [run] = jobs.tick(dt(2018, 11, 5, 9, 0, 4))  # 07:00 -02, the day after the change
    smtp_sink.data_reply = '451 4.3.0 try again later'
    first = runs.execute_run(run.id, jobs.registry, jobs.settings, jobs.mailer, jobs.store)
    assert first.status == 'retry' and smtp_sink.messages == []
    smtp_sink.data_reply = None
    # Whenever the second attempt comes, it sends the slot's window.
    second = runs.execute_run(run.id, jobs.registry, jobs.settings, jobs.mailer, jobs.store)
    run = Run.get_by_id(run.id)
    assert (second.status, run.status, run.attempts) == ('delivered', 'delivered', 2)
    assert run.params == {'since': '2018-11-04 03:00:00', 'until': '2018-11-05 02:00:00'}
    [sent] = smtp_sink.messages
    assert ids_in(sent['message']) == inside
    assert 'since=2018-11-04 03:00:00 UTC (yesterday in America/Sao_Paulo)' \
        in body_of(sent['message'])


def test_a_reaped_run_is_run_again_with_its_slots_values(make_jobs, database, smtp_sink,
                                                        window_registry):
    jobs = make_jobs(registry=window_registry, stale_after=30)
    inside = add_orders(dt(2025, 10, 25, 23), dt(2025, 10, 26, 23, 59))  # the 25-hour day
    add_orders(dt(2025, 10, 25, 22, 59), dt(2025, 10, 27, 0))
    window_schedule(window_registry, jobs.settings, dt(2025, 10, 20))
    [run] = jobs.tick(dt(2025, 10, 27, 7, 0, 2))
    attempt = runs.claim(run.id)  # a worker takes it, then dies
    Run.update(heartbeat_at=db_now() - timedelta(minutes=5)).where(Run.id == run.id).execute()
    assert runs.reap(jobs.settings, db_now(), lambda run_id: None) == [run.id]
    assert attempt.number == 1
    outcome = runs.execute_run(run.id, jobs.registry, jobs.settings, jobs.mailer, jobs.store)
    assert outcome.status == 'delivered'
    assert Run.get_by_id(run.id).params == {'since': '2025-10-25 23:00:00',
                                            'until': '2025-10-27 00:00:00'}
    [sent] = smtp_sink.messages
    assert ids_in(sent['message']) == inside


def test_date_parameters_of_a_file_report_in_a_schedule(settings, jobs, database, smtp_sink):
    demo.seed(customers=10, orders=400)
    schedules.create_schedule(jobs.registry, settings, {
        'name': 'weekly', 'report': 'orders', 'to': ['a@example.org'],
        'params': {'since': 'start of last week', 'until': 'start of this week'},
        'cron': '0 6 * * 1', 'timezone': 'Europe/Lisbon'}, dt(2025, 3, 1))
    [run] = jobs.tick(dt(2025, 3, 10, 6, 0, 1))  # Monday 10 March, 06:00 Lisbon
    assert Run.get_by_id(run.id).params == {'since': '2025-03-03', 'until': '2025-03-10',
                                            'status': None}


def test_a_report_changed_under_a_relative_schedule_fails_its_slot_visibly(
        make_jobs, database, window_registry):
    jobs = make_jobs(registry=window_registry)
    schedule = window_schedule(window_registry, jobs.settings, dt(2025, 3, 29, 12))
    Schedule.update(params={'since': 'last tuesday', 'until': 'today'}) \
        .where(Schedule.id == schedule.id).execute()
    assert jobs.tick(dt(2025, 3, 30, 6, 1)) == []
    [run] = Run.select()
    assert run.status == 'failed' and run.error.startswith('params.since:')


# --- Python reports ---------------------------------------------------------------

def python_registry():
    registry = Registry()

    @registry.report('py_window', 'Orders in a window (Python)', source='demo',
                     params=[Param('since', 'datetime', required=True),
                             Param('before', 'date', required=True)])
    def py_window(since, before):
        return ('SELECT o.id FROM "order" o WHERE o.created_at >= :since '
                'AND o.created_at < :before ORDER BY o.id')
    return registry


def test_a_python_report_takes_relative_dates_on_demand(make_jobs, database, smtp_sink):
    registry = python_registry()
    jobs = make_jobs(registry=registry)
    inside = add_orders(dt(2019, 2, 16, 2), dt(2019, 2, 16, 23, 59))
    add_orders(dt(2019, 2, 16, 1, 59), dt(2019, 2, 17, 0))
    at = dt(2019, 2, 17, 12)  # midday in Sao Paulo
    run = runs.create_run(registry, jobs.settings, 'py_window',
                          {'since': 'yesterday', 'before': 'today'}, ['a@example.org'],
                          timezone='America/Sao_Paulo', at=at)
    assert run.params == {'since': '2019-02-16 02:00:00', 'before': '2019-02-17'}
    runs.execute_run(run.id, registry, jobs.settings, jobs.mailer, jobs.store)
    [sent] = smtp_sink.messages
    assert ids_in(sent['message']) == inside


# --- the API ------------------------------------------------------------------------

def test_an_on_demand_run_resolves_in_the_zone_it_is_given(app, database):
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                      'params': {'since': '-7d', 'until': 'today'},
                                      'timezone': 'America/Sao_Paulo'})
    run = Run.get_by_id(res.json['id'])
    today = reldates.local_today(SAO_PAULO, run.created_at)
    shown = app.get(res.json['url']).json
    assert shown['params'] == {'since': str(today - timedelta(days=7)), 'until': str(today),
                               'status': None}
    assert shown['asked_params'] == {'since': 'today - 7 days', 'until': 'today'}
    assert shown['params_timezone'] == 'America/Sao_Paulo'
    # Without a zone: the timezone setting (UTC here); fixed values are not "asked".
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                      'params': {'since': '2025-01-01', 'until': 'yesterday'}})
    shown = app.get(res.json['url']).json
    assert shown['asked_params'] == {'until': 'yesterday'}
    assert shown['params_timezone'] == 'UTC'
    assert shown['params']['since'] == '2025-01-01'


@pytest.mark.parametrize('body, field', [
    ({'params': {'since': 'yesterdy'}}, 'params.since'),
    ({'params': {'until': 'start of last decade'}}, 'params.until'),
    ({'params': {'since': 'today - 3000 years'}}, 'params.since'),
    ({'timezone': 'Europe/Atlantis'}, 'timezone'),
    ({'timezone': 7}, 'timezone'),
    ({'timezone': {}}, 'timezone'),
    ({'timezone': None}, 'timezone'),
])
def test_bad_relative_dates_are_400_naming_the_field(app, database, body, field):
    res = app.post_json('/api/runs', dict({'report': 'orders', 'to': ['a@example.org']}, **body),
                        expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field), res.json
    assert Run.select().count() == 0
    if field.startswith('params'):
        res = app.post_json('/api/schedules', {
            'name': 'x', 'report': 'orders', 'to': ['a@example.org'], 'cron': '@daily',
            'params': body['params']}, expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, field)
        res = app.get('/api/reports/orders/check', body['params'], expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, field)


def test_downloads_take_relative_dates_too(app, database):
    res = app.get('/api/reports/orders/check', {'since': 'start of this year'})
    this_year = reldates.local_today(datetime.timezone.utc, schedules.utcnow()).year
    assert res.json['params']['since'] == '%d-01-01' % this_year


def test_schedules_show_their_next_slots_values_and_preview_them(app, database):
    res = app.post_json('/api/schedules', {
        'name': 'nightly', 'report': 'orders', 'to': ['a@example.org'], 'cron': '0 7 * * *',
        'timezone': 'Europe/Lisbon', 'params': {'since': 'yesterday', 'until': 'today'}})
    shown = res.json
    assert shown['params'] == {'since': 'yesterday', 'until': 'today', 'status': None}
    slot = dt.fromisoformat(shown['next_run_at'].rstrip('Z'))
    local = reldates.local_today(LISBON, slot)
    assert shown['next_slot_params'] == {'since': str(local - timedelta(days=1)),
                                         'until': str(local), 'status': None}
    assert app.get('/api/schedules').json['schedules'][0]['next_slot_params'] == \
        shown['next_slot_params']
    # The form's preview, for a schedule not saved yet.
    preview = app.post_json('/api/schedule-preview', {
        'report': 'orders', 'cron': '0 7 * * *', 'timezone': 'Europe/Lisbon',
        'params': {'since': 'yesterday', 'until': 'today', 'status': 'paid'}}).json
    assert preview['slot_at'] == shown['next_run_at']
    assert preview['params'] == dict(shown['next_slot_params'], status='paid')
    assert preview['asked'] == {'since': 'yesterday', 'until': 'today'}
    assert '(yesterday in Europe/Lisbon)' in preview['text']


@pytest.mark.parametrize('body, field', [
    ({'cron': 'every day'}, 'cron'),
    ({'timezone': 'Mars/Olympus'}, 'timezone'),
    ({'params': {'since': 'the other day'}}, 'params.since'),
    ({'params': {'colour': 'red'}}, 'params.colour'),
    ({'report': 'nope'}, 'report'),
    ({'to': ['a@example.org']}, 'to'),
    ({'timezone': {}}, 'timezone'),
    ({'timezone': None}, 'timezone'),
    ({'params': None}, 'params'),
])
def test_a_preview_of_bad_input_names_the_field(app, database, body, field):
    good = {'report': 'orders', 'cron': '@daily', 'timezone': 'UTC', 'params': {}}
    res = app.post_json('/api/schedule-preview', dict(good, **body), expect_errors=True)
    assert res.status_int in (400, 404) and res.json['field'] == field


# --- the page ---------------------------------------------------------------------

def test_the_runs_table_shows_the_values_used_and_what_was_asked(app, settings, database):
    run = runs.create_run(demo_catalogue(), settings, 'orders',
                          {'since': 'yesterday', 'status': 'paid'}, ['a@example.org'],
                          timezone='Europe/Lisbon', at=dt(2025, 7, 1, 12))
    html = app.get('/ui/runs').text
    assert ('id="run-%d-params">since=2025-06-30 (yesterday in Europe/Lisbon), status=paid<'
            % run.id) in html
    assert Delivery.select().count() == 1


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_a_postgres_timestamptz_column_compares_with_the_bound_utc_value(
        make_jobs, database, smtp_sink):
    """The bound value is a naive UTC timestamp; source sessions run in UTC,
    so a `timestamptz` column compares with it at the right instant."""
    database.execute_sql('DROP TABLE IF EXISTS tz_event')
    database.execute_sql('CREATE TABLE tz_event (id int PRIMARY KEY, at timestamptz)')
    try:
        # Event 2 is 00:30 on the 31st in Lisbon, 23:30 UTC on the 30th: the
        # next local day, left out.
        database.execute_sql("INSERT INTO tz_event VALUES (1, '2025-03-30 23:30:00+01'), "
                             "(2, '2025-03-31 00:30:00+01'), (3, '2025-03-30 00:30:00+00')")
        registry = Registry()
        registry.report('tz_window', 'Events', source='demo',
                        params=[Param('since', 'datetime'), Param('until', 'datetime')])(
            lambda since, until: 'SELECT id FROM tz_event WHERE at >= :since AND at < :until '
                                 'ORDER BY id')
        jobs = make_jobs(registry=registry)
        run = runs.create_run(registry, jobs.settings, 'tz_window',
                              {'since': 'yesterday', 'until': 'today'}, ['a@example.org'],
                              timezone='Europe/Lisbon', at=dt(2025, 3, 31, 6))
        runs.execute_run(run.id, registry, jobs.settings, jobs.mailer, jobs.store)
        [sent] = smtp_sink.messages
        assert ids_in(sent['message']) == [1, 3]
    finally:
        database.execute_sql('DROP TABLE tz_event')


def test_run_now_on_a_schedule_resolves_in_the_schedules_timezone(app, database):
    app.post_json('/api/schedules', {
        'name': 'sp', 'report': 'orders', 'to': ['a@example.org'], 'cron': '@daily',
        'timezone': 'America/Sao_Paulo', 'params': {'since': 'start of this month'}})
    res = app.post_json('/api/schedules/sp/run', {})
    run = Run.get_by_id(res.json['id'])
    today = reldates.local_today(SAO_PAULO, run.created_at)
    assert (run.params['since'], run.asked_params, run.params_timezone) == (
        str(today.replace(day=1)), {'since': 'start of this month'}, 'America/Sao_Paulo')


def test_the_command_line_export_takes_relative_dates(app, consumer_env, tmp_path):
    demo.seed(customers=20, orders=700)
    out = tmp_path / 'last-year.csv'
    done = subprocess.run([sys.executable, 'scripts/export.py', 'orders', '-p',
                           'since=start of last year', '-p', 'until=start of this year',
                           '-o', str(out)], cwd=ROOT, env=dict(os.environ, **consumer_env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    year = reldates.local_today(datetime.timezone.utc, schedules.utcnow()).year
    fixed = app.get('/reports/orders.csv', {'since': '%d-01-01' % (year - 1),
                                            'until': '%d-01-01' % year}).body
    assert out.read_bytes() == fixed and fixed.count(b'\n') > 1


# --- the bound value on each engine --------------------------------------------

EVENTS = [(1, '2025-03-29 23:59:59'), (2, '2025-03-30 00:00:00'), (3, '2025-03-30 22:59:59'),
          (4, '2025-03-30 23:00:00')]  # UTC; Lisbon's 30 March is [00:00, 23:00) UTC
EVENT_DDL = {
    'sqlite': 'CREATE TABLE tz_event (id INTEGER PRIMARY KEY, at TEXT, stamp TEXT)',
    'postgres': 'CREATE TABLE tz_event (id int PRIMARY KEY, at timestamp, stamp timestamptz)',
    'mysql': 'CREATE TABLE tz_event (id int PRIMARY KEY, at DATETIME, stamp TIMESTAMP NULL)',
}


def _event_source(engine, url, fill=True):
    """A source holding tz_event, `at` and `stamp` both the UTC instants above
    (with fill=False: the table dropped again)."""
    import sources
    if engine == 'sqlite':
        import sqlite3
        conn = sqlite3.connect(url[len('sqlite:///'):])
        marker = '?'
    elif engine == 'postgres':
        import psycopg
        conn = psycopg.connect(url)
        conn.execute("SET TimeZone = 'America/Sao_Paulo'")  # literals carry their zone
        marker = '%s'
    else:
        import pymysql
        import urllib.parse
        parts = urllib.parse.urlsplit(url)
        conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                               user=parts.username or 'root', password=parts.password or '',
                               database=parts.path.lstrip('/'))
        marker = '%s'
    cursor = conn.cursor()
    cursor.execute('DROP TABLE IF EXISTS tz_event')
    if not fill:
        conn.commit()
        conn.close()
        return None
    cursor.execute(EVENT_DDL[engine])
    if engine == 'mysql':
        cursor.execute("SET time_zone = '+00:00'")
    zone = '+00' if engine == 'postgres' else ''
    cursor.executemany('INSERT INTO tz_event VALUES (%s, %s, %s)' % ((marker,) * 3),
                       [(i, at, at + zone) for i, at in EVENTS])
    conn.commit()
    conn.close()
    return sources.Source(engine, url, 10)


@pytest.mark.parametrize('engine', ['sqlite', 'postgres', 'mysql'])
@pytest.mark.parametrize('column', ['at', 'stamp'])
def test_yesterday_in_lisbon_selects_the_same_rows_on_every_engine(
        engine, column, tmp_path, request):
    import sqlexport
    url = {'sqlite': lambda: 'sqlite:///%s' % (tmp_path / 'events.db'),
           'postgres': lambda: request.getfixturevalue('postgres_url'),
           'mysql': lambda: request.getfixturevalue('mariadb_url')}[engine]()
    source = _event_source(engine, url)
    registry = Registry()
    registry.report('events', 'Events', params=[Param('since', 'datetime'),
                                                Param('until', 'datetime')])(
        lambda since, until: 'SELECT id FROM tz_event WHERE %s >= :since AND %s < :until '
                             'ORDER BY id' % (column, column))
    definition = registry.get('events')
    values, _ = reldates.resolve_params(definition.params, {'since': 'yesterday', 'until': 'today'},
                                        LISBON, dt(2025, 3, 31, 6))
    sql, params = definition.statement(engine, definition.parse(values))
    try:
        with sqlexport.open_query_csv(source, sql, params) as stream:
            assert b''.join(stream).split() == [b'id', b'2', b'3']
    finally:
        _event_source(engine, url, fill=False)


# --- config.ini schedules ----------------------------------------------------------

def start_with_config(make_settings, service_env, tmp_path, section):
    from settings import load_settings
    from tasks import Jobs
    base = make_settings(service_env)
    path = tmp_path / 'reldates.ini'
    lines = ['[nightshift]'] + ['%s = %s' % (k, getattr(base, k))
                               for k in ('reports_dir', 'queue_path', 'outbox_dir',
                                         'report_paths')]
    path.write_text('\n'.join(lines) + '\n' + section)
    jobs = Jobs(load_settings(path, environ=service_env))
    jobs.startup()
    return jobs


CONFIG = '''
[schedule:weekly]
report = orders
param.since = -7D
param.until = today
to = a@example.org
cron = 0 6 * * 1
timezone = Europe/Lisbon
'''


def test_config_schedules_take_relative_dates(make_settings, service_env, tmp_path, database):
    from settings import SettingsError
    jobs = start_with_config(make_settings, service_env, tmp_path, CONFIG)
    schedule = Schedule.get(Schedule.name == 'weekly')
    assert schedule.params == {'since': 'today - 7 days', 'until': 'today', 'status': None}
    slot, local = schedules.next_run(schedule, schedule.checked_through)  # a Monday, 06:00
    [run] = jobs.tick(slot + timedelta(seconds=2))
    monday = local.date()
    assert Run.get_by_id(run.id).params == {'since': str(monday - timedelta(days=7)),
                                            'until': str(monday), 'status': None}
    with pytest.raises(SettingsError) as info:
        start_with_config(make_settings, service_env, tmp_path,
                          CONFIG.replace('-7D', 'a week ago'))
    assert '[schedule:weekly] params.since' in str(info.value)
