"""Late slots and grouped announcements: the operator's email (parsed as it
arrived at the SMTP sink) and the webhook receiver on loopback, which checks
each POST's signature and timestamp. Time is passed in."""
import threading
from datetime import datetime as dt, timedelta

import pytest

import demo
import runs
import schedules
from conftest import demo_catalogue, run_queued
from models import Notice, Notification, Run, utcnow
from webhook_sink import WebhookSink

registry = demo_catalogue()
SECRET = 'a-webhook-secret-for-tests'
HOURLY = {'name': 'hourly-customers', 'report': 'customers', 'to': ['boss@example.org'],
          'cron': '0 * * * *', 'timezone': 'UTC'}


@pytest.fixture
def shop(database):
    demo.seed(customers=10, orders=40)


@pytest.fixture
def hook():
    sink = WebhookSink(secret=SECRET).start()
    yield sink
    sink.stop()


@pytest.fixture
def alarm_jobs(make_jobs, hook):
    def make(**values):
        values.setdefault('operator_email', 'ops@example.org')
        values.setdefault('webhook_url', hook.url())
        values.setdefault('notify_every', 30)
        return make_jobs(env={'NIGHTSHIFT_WEBHOOK_SECRET': SECRET}, **values)
    return make


def body(message):
    return message.get_body(('plain',)).get_content()


def test_a_late_slot_is_marked_and_announced_once(alarm_jobs, shop, smtp_sink, hook):
    jobs = alarm_jobs()  # late_after is an hour; this schedule says ten minutes
    schedules.create_schedule(registry, jobs.settings, dict(HOURLY, late_after=600),
                              dt(2026, 3, 2, 7, 30))
    slot = dt(2026, 3, 2, 8)
    [run] = jobs.clock_beat(slot + timedelta(seconds=1))
    # No worker takes it (every one busy with a long export, say).
    jobs.notify_beat(slot + timedelta(seconds=599))
    assert Run.get_by_id(run.id).late is None and Notice.select().count() == 0
    jobs.notify_beat(slot + timedelta(seconds=601))
    assert Run.get_by_id(run.id).late is True
    assert Notification.select().count() == 0  # waiting notify_every for others
    jobs.notify_beat(slot + timedelta(seconds=631))
    [mail] = smtp_sink.wait_for(1)
    [post] = hook.wait_for(1)

    assert mail['to'] == ['ops@example.org']
    message = mail['message']
    assert message['Subject'] == 'Nightshift: run #%d (customers) late' % run.id
    text = body(message)
    assert 'Run #%d of report customers (schedule hourly-customers, slot 2026-03-02 08:00 UTC) ' \
           'is late: still queued 10 min after its slot' % run.id in text

    assert post['verified'] is True
    assert post['headers']['X-Nightshift-Event'] == 'run.late'
    payload = post['json']
    assert payload['text'].startswith('Nightshift: run #%d (customers) late\n• Run #%d'
                                      % (run.id, run.id))
    [event] = payload['events']
    assert (event['event'], event['run_id'], event['schedule'], event['slot_at']) == \
        ('run.late', run.id, 'hourly-customers', '2026-03-02T08:00:00Z')

    # Delivered since (announced as such, stamped by the worker's clock),
    # and later beats: the late run is not announced again.
    run_queued(jobs)
    for minutes in (11, 20, 90):
        jobs.notify_beat(slot + timedelta(minutes=minutes))
    jobs.notify_beat(utcnow() + timedelta(seconds=31))
    assert len(smtp_sink.messages) == 2  # the report itself, to boss@
    assert [m['to'] for m in smtp_sink.messages][1] == ['boss@example.org']
    assert len(hook.received) == 2  # and the webhook heard it was delivered
    assert hook.received[1]['json']['events'][0]['event'] == 'run.delivered'
    assert Run.get_by_id(run.id).late is True


def test_a_slot_delivered_in_time_is_on_time_and_not_announced(alarm_jobs, shop, smtp_sink,
                                                              hook):
    jobs = alarm_jobs(webhook_events='failed,late,skipped')
    # The worker stamps finished_at by the real clock: this hour's slot.
    slot = utcnow().replace(minute=0, second=0, microsecond=0)
    schedules.create_schedule(registry, jobs.settings, HOURLY, slot - timedelta(minutes=30))
    [run] = jobs.clock_beat(slot + timedelta(seconds=1))
    run_queued(jobs)
    for minutes in (59, 61, 120):
        jobs.notify_beat(slot + timedelta(minutes=minutes))
    assert Run.get_by_id(run.id).late is False
    assert len(smtp_sink.messages) == 1 and hook.received == []


def test_a_burst_of_20_failures_is_one_email_and_one_post(alarm_jobs, shop, smtp_sink, hook):
    jobs = alarm_jobs(notify_every=60)
    smtp_sink.refuse['gone@example.org'] = '550 5.1.1 no such user'
    ids = []
    for _ in range(20):
        run = runs.create_run(registry, jobs.settings, 'customers', {}, ['gone@example.org'])
        jobs.enqueue_run(run)
        ids.append(run.id)
    assert run_queued(jobs, limit=20) == 20
    assert [r.status for r in Run.select()] == ['failed'] * 20
    first = Notice.select().order_by(Notice.created_at).first().created_at

    jobs.notify_beat(first + timedelta(seconds=59))
    assert smtp_sink.messages == [] and hook.received == []
    jobs.notify_beat(first + timedelta(seconds=61))
    jobs.notify_beat(first + timedelta(seconds=62))
    [mail] = smtp_sink.wait_for(1)
    [post] = hook.wait_for(1)
    jobs.notify_beat(first + timedelta(seconds=300))
    assert len(smtp_sink.messages) == 1 and len(hook.received) == 1

    message = mail['message']
    assert mail['to'] == ['ops@example.org']
    assert message['Subject'] == 'Nightshift: 20 runs failed'
    text = body(message)
    for run_id in ids:
        assert 'Run #%d of report customers failed: every recipient was refused' % run_id in text
    assert text.count('550 5.1.1 no such user') >= 20

    assert post['verified'] is True
    payload = post['json']
    assert payload['count'] == 20 and payload['text'].startswith('Nightshift: 20 runs failed\n')
    # In the order the runs ended: the runs share one query (batches.py),
    # whose leader is recorded last.
    assert sorted(e['run_id'] for e in payload['events']) == ids
    assert {e['event'] for e in payload['events']} == {'run.failed'}
    assert all(e['url'].endswith('/api/runs/%d' % e['run_id']) for e in payload['events'])
    assert [n.status for n in Notification.select()] == ['sent', 'sent']


def test_missed_slots_are_announced_with_the_catch_up_run_late(alarm_jobs, database, smtp_sink,
                                                              hook):
    jobs = alarm_jobs(notify_every=0)
    schedules.create_schedule(registry, jobs.settings, HOURLY, dt(2026, 3, 2, 7, 30))
    back = dt(2026, 3, 2, 11, 30)  # no consumer ran from 07:30 till now
    [run] = jobs.clock_beat(back)
    jobs.notify_beat(back)
    [mail] = smtp_sink.wait_for(1)
    assert mail['message']['Subject'] == 'Nightshift: 3 slots missed'
    text = body(mail['message'])
    for hour in (8, 9, 10):
        assert 'Slot 2026-03-02 %02d:00 UTC of schedule hourly-customers (report customers) ' \
               'was missed' % hour in text
    [post] = hook.wait_for(1)
    assert [e['event'] for e in post['json']['events']] == ['run.skipped'] * 3
    # The 11:00 run caught up is late once its grace (an hour) is over.
    jobs.notify_beat(dt(2026, 3, 2, 12, 0, 1))
    smtp_sink.wait_for(2)
    assert smtp_sink.messages[1]['message']['Subject'] == \
        'Nightshift: run #%d (customers) late' % run.id


def test_two_consumers_grouping_at_once_send_each_notice_once(alarm_jobs, database):
    from tasks import Jobs
    jobs = alarm_jobs(notify_every=0)
    other = Jobs(jobs.settings)
    for i in range(40):
        Notice.create(event='run.failed', run_id=i + 1, report='customers',
                      detail='Run #%d of report customers failed: x' % (i + 1),
                      created_at=dt(2026, 3, 2, 8))
    now = dt(2026, 3, 2, 8, 1)
    barrier = threading.Barrier(2)
    written = {}

    def group(name, alarms):
        barrier.wait()
        written[name] = alarms.group(now)

    threads = [threading.Thread(target=group, args=(name, j.alarms))
               for name, j in (('one', jobs), ('two', other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    notes = list(Notification.select())
    # One email and one POST between them, or none yet from the loser.
    assert sorted(n.channel for n in notes) == ['email', 'webhook']
    assert sum(n.events for n in notes) == 80 and Notice.select().count() == 0
    assert sorted(len(w) for w in written.values()) == [0, 2]


def test_an_upgrade_does_not_announce_the_history(tmp_path, make_settings):
    """Slots over before step 9 count as judged; a run still queued is judged as usual."""
    import migrations
    import models
    from alarms import Alarms
    path = tmp_path / 'upgraded.db'
    try:
        database = models.bind_database('sqlite:///%s' % path, create=False)
        database.create_tables(models.ALL_MODELS)
        database.execute_sql('CREATE TABLE nightshift_schema (version INTEGER PRIMARY KEY, '
                             'name TEXT, applied_at TEXT)')
        database.execute_sql("INSERT INTO nightshift_schema VALUES (1, 'x', 'y'), (2, 'x', 'y')")
        old = dt(2025, 1, 1)
        for hour, status in enumerate(['skipped', 'delivered', 'failed', 'queued']):
            Run.create(report='customers', status=status, trigger='schedule', schedule='s',
                       slot_at=old + timedelta(hours=hour), finished_at=old)
        assert 9 in migrations.migrate(database)
        assert [r.late for r in Run.select().order_by(Run.id)] == [False, False, False, None]
        settings = make_settings(operator_email='ops@example.org')
        Alarms(settings, mailer=None).judge_slots(dt(2026, 3, 2))
        assert [n.event for n in Notice.select()] == ['run.late']
    finally:
        models.db.close()
