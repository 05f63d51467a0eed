"""Schedules: the API, config sync, and ticks with time passed in."""
from datetime import datetime as dt, timedelta

import pytest
from peewee import IntegrityError

import demo
import schedules
from conftest import attachment, run_queued
from models import Run, Schedule
from conftest import demo_catalogue
from settings import SettingsError

registry = demo_catalogue()

NIGHTLY = {'name': 'nightly-orders', 'report': 'orders', 'params': {'status': 'paid'},
           'to': ['boss@example.org'], 'cron': '0 2 * * *', 'timezone': 'Europe/Lisbon'}


@pytest.fixture
def shop(database):
    demo.seed(customers=10, orders=80)


def make(settings, created, **changes):
    return schedules.create_schedule(registry, settings, dict(NIGHTLY, **changes), created)


def slot_runs(name='nightly-orders'):
    return list(Run.select().where(Run.schedule == name).order_by(Run.slot_at))


# --- ticks ------------------------------------------------------------------

def test_a_due_slot_becomes_one_run_and_one_email(settings, jobs, shop, smtp_sink):
    make(settings, dt(2025, 1, 10, 12))
    assert jobs.tick(dt(2025, 1, 11, 1, 59)) == []
    [run] = jobs.tick(dt(2025, 1, 11, 2, 0, 3))
    assert (run.trigger, run.schedule, run.slot_at) == ('schedule', 'nightly-orders',
                                                       dt(2025, 1, 11, 2))
    # The same minute again, and a second consumer's tick: nothing more.
    from tasks import Jobs
    assert jobs.tick(dt(2025, 1, 11, 2, 0, 40)) == []
    assert Jobs(settings).tick(dt(2025, 1, 11, 2, 0, 50)) == []
    run_queued(jobs)
    [sent] = smtp_sink.messages
    assert sent['to'] == ['boss@example.org']
    name, data = attachment(sent['message'])
    assert name.startswith('orders-')
    assert all(',paid,' in line for line in data.decode().splitlines()[1:])
    assert Run.get_by_id(run.id).status == 'delivered'


def test_the_database_refuses_a_second_run_for_a_slot(settings, database):
    make(settings, dt(2025, 1, 10))
    Run.create(report='orders', schedule='nightly-orders', slot_at=dt(2025, 1, 11, 2))
    with pytest.raises(IntegrityError):
        Run.create(report='orders', schedule='nightly-orders', slot_at=dt(2025, 1, 11, 2))


def test_a_stale_claim_creates_nothing(settings, jobs, database):
    """Two consumers plan the same slot; only the first claim counts."""
    schedule = make(settings, dt(2025, 1, 10, 12))
    stale = Schedule.get_by_id(schedule.id)  # what a slower consumer read
    assert len(jobs.tick(dt(2025, 1, 11, 2, 0, 1))) == 1
    due, skipped, latest = schedules.plan(stale, dt(2025, 1, 11, 2, 0, 2), timedelta(hours=24))
    assert due == dt(2025, 1, 11, 2)  # it would run it...
    assert not schedules.claim_slots(stale, latest)  # ...but cannot claim it
    assert len(slot_runs()) == 1


def test_downtime_across_one_slot_catches_it_up_once(settings, jobs, database):
    make(settings, dt(2025, 1, 10, 12))
    [run] = jobs.tick(dt(2025, 1, 11, 9, 30))  # back 7.5 hours late
    assert run.slot_at == dt(2025, 1, 11, 2)
    assert jobs.tick(dt(2025, 1, 11, 9, 31)) == []
    assert [r.status for r in slot_runs()] == ['queued']


def test_several_missed_slots_run_the_latest_and_record_the_rest(settings, jobs, database):
    make(settings, dt(2025, 1, 10, 12))
    [run] = jobs.tick(dt(2025, 1, 14, 3))
    assert run.slot_at == dt(2025, 1, 14, 2)
    runs = slot_runs()
    assert [(r.slot_at.day, r.status) for r in runs] == \
        [(11, 'skipped'), (12, 'skipped'), (13, 'skipped'), (14, 'queued')]
    assert 'missed' in runs[0].error and runs[0].trigger == 'schedule'


def test_missed_slots_older_than_the_window_are_only_recorded(make_jobs):
    jobs = make_jobs(catchup_hours=2)
    make(jobs.settings, dt(2025, 1, 10, 12))
    assert jobs.tick(dt(2025, 1, 12, 9)) == []
    assert [(r.slot_at.day, r.status) for r in slot_runs()] == [(11, 'skipped'), (12, 'skipped')]
    assert jobs.huey.pending_count() == 0


def test_paused_schedules_do_not_run_or_catch_up(settings, jobs, database):
    schedule = make(settings, dt(2025, 1, 10, 12))
    schedules.set_enabled(schedule, False, dt(2025, 1, 10, 13))
    assert jobs.tick(dt(2025, 1, 12, 3)) == []
    schedules.set_enabled(Schedule.get_by_id(schedule.id), True, dt(2025, 1, 12, 3))
    assert jobs.tick(dt(2025, 1, 12, 3, 1)) == []
    [run] = jobs.tick(dt(2025, 1, 13, 2, 0, 5))
    assert run.slot_at == dt(2025, 1, 13, 2) and len(slot_runs()) == 1


def test_a_report_removed_under_a_schedule_fails_its_slot_visibly(settings, jobs, database):
    schedule = make(settings, dt(2025, 1, 10, 12))
    Schedule.update(params={'status': 'vanished'}).where(Schedule.id == schedule.id).execute()
    assert jobs.tick(dt(2025, 1, 11, 2, 1)) == []
    [run] = slot_runs()
    assert run.status == 'failed' and 'params.status' in run.error


def test_dst_gap_day_runs_once(settings, jobs, database):
    make(settings, dt(2025, 3, 29, 12), cron='30 1 * * *')  # 01:30 is skipped on 03-30
    created = [r for minute in range(0, 24 * 60, 7)
               for r in jobs.tick(dt(2025, 3, 29, 12) + timedelta(minutes=minute))]
    assert [r.slot_at for r in created] == [dt(2025, 3, 30, 1, 30)]


def test_dst_overlap_day_runs_once(settings, jobs, database):
    make(settings, dt(2025, 10, 25, 12), cron='30 1 * * *')  # 01:30 happens twice on 10-26
    created = [r for minute in range(0, 24 * 60, 7)
               for r in jobs.tick(dt(2025, 10, 25, 12) + timedelta(minutes=minute))]
    assert [r.slot_at for r in created] == [dt(2025, 10, 26, 0, 30)]


# --- config.ini ---------------------------------------------------------------

CONFIG_SCHEDULE = """
[schedule:nightly]
report = orders
param.status = shipped
to = a@example.org, b@example.org
cron = @daily
timezone = America/New_York
"""


@pytest.fixture
def config_jobs(make_settings, service_env, tmp_path):
    from tasks import Jobs

    def start(extra=CONFIG_SCHEDULE, **values):
        settings = make_settings(service_env, **values)
        path = tmp_path / 'with-schedules.ini'
        lines = ['[nightshift]'] + ['%s = %s' % (k, getattr(settings, k))
                                   for k in ('reports_dir', 'queue_path', 'outbox_dir',
                                             'report_paths')]
        path.write_text('\n'.join(lines) + '\n' + extra)
        from settings import load_settings
        settings = load_settings(path, environ=service_env)
        jobs = Jobs(settings)
        jobs.startup()
        return jobs
    return start


def test_config_schedules_are_synced_at_consumer_start(config_jobs):
    config_jobs()
    schedule = Schedule.get(Schedule.name == 'nightly')
    assert (schedule.report, schedule.params, schedule.recipients) == \
        ('orders', {'since': None, 'until': None, 'status': 'shipped'},
         ['a@example.org', 'b@example.org'])
    assert (schedule.cron, schedule.timezone, schedule.managed_by) == \
        ('@daily', 'America/New_York', 'config')
    config_jobs(CONFIG_SCHEDULE.replace('@daily', '0 6 * * 1-5'))
    assert Schedule.get(Schedule.name == 'nightly').cron == '0 6 * * 1-5'
    config_jobs('')
    assert Schedule.select().count() == 0


@pytest.mark.parametrize('change, words', [
    (('report = orders', 'report = nope'), 'report'),
    (('param.status = shipped', 'param.status = lost'), 'params.status'),
    (('to = a@example.org, b@example.org', 'to = a@example.org b@example.org'), 'to[0]'),
])
def test_bad_config_schedules_stop_start_up(config_jobs, change, words):
    with pytest.raises(SettingsError) as info:
        config_jobs(CONFIG_SCHEDULE.replace(*change))
    assert '[schedule:nightly]' in str(info.value) and words in str(info.value)


@pytest.mark.parametrize('change, words', [
    (('cron = @daily', 'cron = 99 * * * *'), 'cron'),
    (('timezone = America/New_York', 'timezone = Moon/Base'), 'timezone'),
    (('cron = @daily', 'colour = red'), "unknown key 'colour'"),
])
def test_bad_config_schedules_are_settings_errors(tmp_path, change, words):
    from settings import load_settings
    path = tmp_path / 'c.ini'
    path.write_text('[nightshift]\n' + CONFIG_SCHEDULE.replace(*change))
    with pytest.raises(SettingsError, match=words):
        load_settings(path, environ={})


def test_config_schedules_are_read_only_through_the_api(config_jobs, settings, shop, smtp_sink):
    import webtest
    from server import create_app
    jobs = config_jobs()
    app = webtest.TestApp(create_app(jobs.settings, jobs))
    for method, path in [('put', '/api/schedules/nightly'), ('delete', '/api/schedules/nightly'),
                         ('post', '/api/schedules/nightly/pause'),
                         ('post', '/api/schedules/nightly/resume')]:
        if method == 'put':
            res = app.put_json(path, {'cron': '@hourly'}, expect_errors=True)
        else:
            res = getattr(app, method)(path, content_type='application/json',
                                       expect_errors=True)
        assert res.status_int == 409, path
        assert res.json['error'] == 'conflict' and 'config.ini' in res.json['message']
    # A test send is still allowed.
    assert app.post('/api/schedules/nightly/run', content_type='application/json').status_int == 202
    run_queued(jobs)
    assert smtp_sink.messages[0]['to'] == ['a@example.org', 'b@example.org']


# --- HTTP API ---------------------------------------------------------------

def test_schedule_api_round_trip(app, jobs, shop, smtp_sink):
    res = app.post_json('/api/schedules', NIGHTLY)
    assert res.status_int == 201
    assert res.headers['Location'].endswith('/api/schedules/nightly-orders')
    body = res.json
    assert body['enabled'] and body['managed_by'] == 'api' and body['last_run'] is None
    # Stored in UTC, shown in both: 02:00 Lisbon.
    assert body['next_run_at'].endswith('Z')
    assert body['next_run_local'][11:19] == '02:00:00'
    assert body['next_run_local'][19:] in ('+00:00', '+01:00')

    assert [s['name'] for s in app.get('/api/schedules').json['schedules']] == ['nightly-orders']
    res = app.put_json('/api/schedules/nightly-orders', {'cron': '15 7 * * 1-5',
                                                         'timezone': 'America/Sao_Paulo'})
    assert (res.json['cron'], res.json['timezone']) == ('15 7 * * 1-5', 'America/Sao_Paulo')
    assert res.json['next_run_local'][11:] == '07:15:00-03:00'
    assert res.json['params'] == {'since': None, 'until': None, 'status': 'paid'}

    as_json = 'application/json'  # every write says JSON, a body or not
    assert app.post('/api/schedules/nightly-orders/pause', content_type=as_json).json['enabled'] \
        is False
    assert app.get('/api/schedules/nightly-orders').json['next_run_at'] is None
    assert app.post('/api/schedules/nightly-orders/resume', content_type=as_json).json['enabled'] \
        is True

    res = app.post('/api/schedules/nightly-orders/run', content_type=as_json)
    assert res.status_int == 202
    run_queued(jobs)
    assert len(smtp_sink.messages) == 1
    last = app.get('/api/schedules/nightly-orders').json['last_run']
    assert (last['id'], last['status']) == (res.json['id'], 'delivered')
    assert app.get(res.headers['Location']).json['schedule'] == 'nightly-orders'

    assert app.delete('/api/schedules/nightly-orders', content_type=as_json).status_int == 204
    assert app.get('/api/schedules/nightly-orders', expect_errors=True).status_int == 404


@pytest.mark.parametrize('changes, field', [
    ({'cron': '0 25 * * *'}, 'cron'),
    ({'cron': '* * * * * *'}, 'cron'),
    ({'timezone': 'Europe/Atlantis'}, 'timezone'),
    ({'report': 'nope'}, 'report'),
    ({'params': {'since': 'tomorrow'}}, 'params.since'),
    ({'params': {'color': 'red'}}, 'params.color'),
    ({'to': ['x@example.org, y@example.org']}, 'to[0]'),
    ({'to': []}, 'to'),
    ({'name': 'Nightly Orders'}, 'name'),
    ({'name': ''}, 'name'),
    ({'enabled': 'yes'}, 'enabled'),
    ({'owner': 'me'}, 'owner'),
])
def test_bad_schedules_are_400_naming_the_field(app, changes, field):
    res = app.post_json('/api/schedules', dict(NIGHTLY, **changes), expect_errors=True)
    assert res.status_int == 400
    assert res.json['field'] == field
    assert Schedule.select().count() == 0


def test_duplicate_names_conflict_and_names_are_immutable(app):
    app.post_json('/api/schedules', NIGHTLY)
    res = app.post_json('/api/schedules', NIGHTLY, expect_errors=True)
    assert (res.status_int, res.json['field']) == (409, 'name')
    res = app.put_json('/api/schedules/nightly-orders', {'name': 'other'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'name')
    res = app.put_json('/api/schedules/nightly-orders', {'cron': 'soon'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'cron')
    assert Schedule.get().cron == '0 2 * * *'
    assert app.get('/api/schedules/missing', expect_errors=True).status_int == 404


def test_scheduled_runs_show_in_the_run_history(settings, jobs, app, database):
    make(settings, dt(2025, 1, 10, 12))
    jobs.tick(dt(2025, 1, 13, 2, 0, 30))
    runs = app.get('/api/runs').json['runs']
    assert [(r['trigger'], r['status'], r['slot_at']) for r in runs] == [
        ('schedule', 'queued', '2025-01-13T02:00:00Z'),
        ('schedule', 'skipped', '2025-01-12T02:00:00Z'),
        ('schedule', 'skipped', '2025-01-11T02:00:00Z')]
    assert len(app.get('/api/runs', {'status': 'skipped'}).json['runs']) == 2
