"""Acting on runs: cancel (queued, and during a 1M-row export), re-run,
backfill a schedule's past slots; through the API and the command line."""
import datetime
import json
import os
import subprocess
import sys
import time
import zoneinfo

import pytest

import cron
import demo
import runs
from conftest import REPORTS_DIR, ROOT, run_queued, wait_until, web_app
from models import Delivery, Run, Schedule, utcnow
from test_e2e import spawn, stop
from vocab import DeliveryStatus, RunStatus

MILLION = """/*
title: A million rows
source: demo
*/
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
SELECT i AS id, 'row number ' || i AS label FROM n
"""


@pytest.fixture
def million_folder(tmp_path):
    folder = tmp_path / 'sql'
    folder.mkdir()
    (folder / 'million.sql').write_text(MILLION)
    return '%s,%s' % (REPORTS_DIR, folder)


@pytest.mark.slow
def test_cancel_during_a_million_row_export_sends_nothing_and_frees_the_worker(
        make_jobs, million_folder, consumer_env, smtp_sink, tmp_path):
    demo.seed(customers=20, orders=50)
    jobs = make_jobs(report_paths=million_folder)
    app = web_app(jobs)
    env = dict(consumer_env, NIGHTSHIFT_REPORT_PATHS=million_folder)
    with open(tmp_path / 'consumer.log', 'wb') as log:
        # One worker thread: the next run can only start once the cancelled one let go.
        consumer = spawn(['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '1',
                          '-k', 'thread'], env, log)
        try:
            big = app.post_json('/api/runs', {'report': 'million',
                                              'to': ['big@example.org']}).json['id']
            small = app.post_json('/api/runs', {'report': 'customers',
                                                'to': ['small@example.org']}).json['id']
            wait_until(lambda: Run.get_by_id(big).rows > 0, timeout=60,
                       message='the export to be under way')
            cancelled_at = time.monotonic()
            res = app.post_json('/api/runs/%d/cancel' % big, {})
            assert res.status_int == 200 and res.json['status'] == 'cancelled'
            wait_until(lambda: Run.get_by_id(small).status == RunStatus.DELIVERED,
                       timeout=30, message='the next run to be delivered')
            freed = time.monotonic() - cancelled_at
            [mail] = smtp_sink.wait_for(1)
            time.sleep(1.5)  # the cancelled attempt had every chance to write again
        finally:
            stop(consumer)
    log_text = (tmp_path / 'consumer.log').read_text()
    assert 'Traceback' not in log_text, log_text[-3000:]
    # The worker learns of the cancel from its fenced write or from the run's
    # status, whichever it meets first; either way attempt 1 stops.
    assert ('run %d: attempt 1 no longer owns it' % big in log_text
            or 'run %d: cancelled; attempt 1 stopped and sent nothing' % big in log_text), log_text
    assert len(smtp_sink.messages) == 1 and mail['to'] == ['small@example.org'], \
        [m['to'] for m in smtp_sink.messages]
    run = app.get('/api/runs/%d' % big).json
    assert run['status'] == 'cancelled' and run['file_url'] is None
    assert 0 < run['rows'] < 1000000
    assert [{k: d[k] for k in ('address', 'status', 'sent_at')}
            for d in run['deliveries']] == [{'address': 'big@example.org', 'status': 'pending',
                                             'sent_at': None}]
    assert not os.path.exists(os.path.join(jobs.settings.reports_dir, 'run-%d' % big))
    # The worker took the next run at once: the small report itself takes well
    # under a second, the heartbeat notices a cancel within progress_every.
    assert freed < 5, freed
    print('cancel -> next run delivered: %.2f s' % freed)


def test_cancel_a_queued_run(app, jobs, smtp_sink):
    run_id = app.post_json('/api/runs', {'report': 'customers',
                                         'to': ['a@example.org']}).json['id']
    res = app.post_json('/api/runs/%d/cancel' % run_id, {})
    assert res.status_int == 200
    assert res.json['status'] == 'cancelled' and res.json['error'].startswith('cancelled by')
    assert res.json['finished_at'] is not None
    run_queued(jobs)  # its task finds nothing to do
    assert Run.get_by_id(run_id).status == RunStatus.CANCELLED
    assert smtp_sink.messages == []
    again = app.post_json('/api/runs/%d/cancel' % run_id, {}, expect_errors=True)
    assert (again.status_int, again.json['error'], again.json['field']) == \
        (409, 'not_cancellable', 'id')
    assert 'cancelled' in again.json['message']
    missing = app.post_json('/api/runs/999/cancel', {}, expect_errors=True)
    assert (missing.status_int, missing.json['field']) == (404, 'id')
    assert app.get('/api/runs?status=cancelled').json['runs'][0]['id'] == run_id


def test_a_delivered_run_or_one_sending_cannot_be_cancelled(app, jobs, smtp_sink):
    done = app.post_json('/api/runs', {'report': 'customers',
                                       'to': ['a@example.org']}).json['id']
    run_queued(jobs)
    res = app.post_json('/api/runs/%d/cancel' % done, {}, expect_errors=True)
    assert (res.status_int, res.json['error']) == (409, 'not_cancellable')
    assert 'delivered' in res.json['message']

    # A worker has marked its recipient "sending": the mail may be out.
    sending = app.post_json('/api/runs', {'report': 'customers',
                                          'to': ['b@example.org']}).json['id']
    attempt = runs.claim(sending)
    Delivery.update(status=DeliveryStatus.SENDING).where(Delivery.run == sending).execute()
    res = app.post_json('/api/runs/%d/cancel' % sending, {}, expect_errors=True)
    assert (res.status_int, res.json['error'], res.json['field']) == \
        (409, 'already_sending', 'id')
    assert Run.get_by_id(sending).status == RunStatus.RUNNING  # nothing changed
    attempt.update(status=RunStatus.DELIVERED)  # still its worker's


def test_a_cancelled_run_is_never_marked_delivered_by_its_attempt(app, jobs):
    from errors import LostOwnership
    run_id = app.post_json('/api/runs', {'report': 'customers',
                                         'to': ['a@example.org']}).json['id']
    attempt = runs.claim(run_id)
    assert app.post_json('/api/runs/%d/cancel' % run_id, {}).json['status'] == 'cancelled'
    with pytest.raises(LostOwnership):
        attempt.update(status=RunStatus.DELIVERED, finished_at=utcnow())
    assert runs.mark_failed(run_id, 'late failure') is False
    assert Run.get_by_id(run_id).status == RunStatus.CANCELLED


def test_rerun_makes_a_new_run_linked_to_the_old(app, jobs, smtp_sink):
    first = app.post_json('/api/runs', {'report': 'orders',
                                        'params': {'since': '2025-06-01', 'status': 'paid'},
                                        'to': ['a@example.org', 'b@example.org'],
                                        'bom': False}).json['id']
    runs.mark_failed(first, 'the source was down for good')
    res = app.post_json('/api/runs/%d/rerun' % first, {})
    assert res.status_int == 202 and res.json['rerun_of'] == first
    second = res.json['id']
    assert res.headers['Location'] == '/api/runs/%d' % second
    run_queued(jobs)
    old, new = (app.get('/api/runs/%d' % i).json for i in (first, second))
    assert new['status'] == 'delivered' and new['rerun_of'] == first
    assert (new['params'], new['to'], new['escape_formulas']) == \
        (old['params'], old['to'], old['escape_formulas'])
    assert Run.get_by_id(second).bom is False
    assert old['status'] == 'failed' and old['rerun_of'] is None
    assert sorted(r for m in smtp_sink.messages for r in m['to']) == \
        ['a@example.org', 'b@example.org']

    # Delivered: nothing to do again. Cancelled: may be run again.
    res = app.post_json('/api/runs/%d/rerun' % second, {}, expect_errors=True)
    assert (res.status_int, res.json['error']) == (409, 'not_rerunnable')
    third = app.post_json('/api/runs', {'report': 'customers',
                                        'to': ['c@example.org']}).json['id']
    app.post_json('/api/runs/%d/cancel' % third, {})
    assert app.post_json('/api/runs/%d/rerun' % third, {}).json['rerun_of'] == third


# --- backfill -------------------------------------------------------------------

def daily_schedule(app, name='morning', zone='Europe/Lisbon'):
    return app.post_json('/api/schedules', {
        'name': name, 'report': 'orders', 'params': {'status': 'paid'},
        'to': ['team@example.org'], 'cron': '0 7 * * *', 'timezone': zone}).json


def days_ago(days, zone='Europe/Lisbon'):
    return (datetime.datetime.now(zoneinfo.ZoneInfo(zone)).date()
            - datetime.timedelta(days=days))


def test_backfill_of_three_past_daily_slots_makes_three_runs_once(app, jobs, smtp_sink):
    daily_schedule(app)
    zone = zoneinfo.ZoneInfo('Europe/Lisbon')
    first, last = days_ago(4), days_ago(2)
    res = app.post_json('/api/schedules/morning/backfill',
                        {'from': first.isoformat(), 'to': last.isoformat()})
    assert res.status_int == 200
    created = res.json['created']
    expected = [cron.to_utc(datetime.datetime.combine(first + datetime.timedelta(days=n),
                                                      datetime.time(7)), zone)
                for n in range(3)]
    assert [c['slot_at'] for c in created] == [e.isoformat() + 'Z' for e in expected]
    assert [c['status'] for c in created] == ['queued'] * 3 and res.json['skipped'] == []
    stored = list(Run.select().where(Run.schedule == 'morning').order_by(Run.slot_at))
    assert [r.slot_at for r in stored] == expected
    assert {r.trigger for r in stored} == {'backfill'}
    assert all(r.params['status'] == 'paid' and r.recipients == ['team@example.org']
               for r in stored)

    again = app.post_json('/api/schedules/morning/backfill',
                          {'from': first.isoformat(), 'to': last.isoformat()}).json
    assert again['created'] == []
    assert [s['reason'] for s in again['skipped']] == ['in_progress'] * 3
    run_queued(jobs)
    assert len(smtp_sink.wait_for(3)) == 3
    again = app.post_json('/api/schedules/morning/backfill',
                          {'from': first.isoformat(), 'to': last.isoformat()}).json
    assert again['created'] == [] and [s['run'] for s in again['skipped']] == \
        [r.id for r in stored]
    assert {s['reason'] for s in again['skipped']} == {'delivered'}
    assert Run.select().where(Run.schedule == 'morning').count() == 3

    # A slot whose run failed for good is left, and said so: re-run is for that.
    runs_by_slot = {r.slot_at: r for r in stored}
    Run.update(status=RunStatus.FAILED).where(Run.id == runs_by_slot[expected[1]].id).execute()
    again = app.post_json('/api/schedules/morning/backfill',
                          {'from': first.isoformat(), 'to': last.isoformat()}).json
    assert [s['reason'] for s in again['skipped']] == ['delivered', 'failed', 'delivered']
    assert '/rerun' in again['skipped'][1]['message']


def test_backfill_runs_the_slots_the_tick_recorded_as_missed(app, jobs):
    daily_schedule(app, zone='UTC')
    now = utcnow()
    # Down for five days: the tick records the missed slots and runs the latest.
    Schedule.update(checked_through=now - datetime.timedelta(days=5)).execute()
    jobs.tick(now)
    missed = list(Run.select().where(Run.status == RunStatus.SKIPPED).order_by(Run.slot_at))
    assert len(missed) >= 3
    res = app.post_json('/api/schedules/morning/backfill',
                        {'from': missed[0].slot_at.date().isoformat(),
                         'to': days_ago(0, 'UTC').isoformat()}).json
    assert [c['slot_at'] for c in res['created']] == \
        [r.slot_at.isoformat() + 'Z' for r in missed]
    assert Run.select().where(Run.status == RunStatus.SKIPPED).count() == 0
    assert [s['reason'] for s in res['skipped']] == ['in_progress']  # the caught-up one


def test_backfill_leaves_slots_its_tick_has_not_reached(app, jobs):
    daily_schedule(app, zone='UTC')
    # The tick has handled slots until a week ago only (it is about to catch up).
    Schedule.update(checked_through=utcnow() - datetime.timedelta(days=7)).execute()
    res = app.post_json('/api/schedules/morning/backfill',
                        {'from': days_ago(3, 'UTC').isoformat(),
                         'to': days_ago(2, 'UTC').isoformat()}).json
    assert res['created'] == [] and {s['reason'] for s in res['skipped']} == {'not_reached'}
    # Paused, its tick makes no run of them: backfill may.
    app.post_json('/api/schedules/morning/pause', {})
    res = app.post_json('/api/schedules/morning/backfill',
                        {'from': days_ago(3, 'UTC').isoformat(),
                         'to': days_ago(2, 'UTC').isoformat()}).json
    assert len(res['created']) == 2


def test_backfill_refuses_bad_ranges_naming_the_field(make_jobs):
    app = web_app(make_jobs(max_backfill_slots=2))
    daily_schedule(app)

    def refused(body, name='morning'):
        res = app.post_json('/api/schedules/%s/backfill' % name, body, expect_errors=True)
        return res.status_int, res.json.get('field'), res.json['error']

    today = days_ago(0).isoformat()
    assert refused({'from': days_ago(5).isoformat(), 'to': days_ago(2).isoformat()}) == \
        (400, 'to', 'too_many')
    assert refused({'from': 'last week', 'to': today}) == (400, 'from', 'invalid')
    assert refused({'to': today}) == (400, 'from', 'required')
    assert refused({'from': today, 'to': days_ago(3).isoformat()}) == (400, 'to', 'invalid')
    assert refused({'from': (days_ago(-3)).isoformat(), 'to': days_ago(-4).isoformat()})[1] \
        in ('from', 'to')
    assert refused({'from': today, 'to': today, 'at': 1}) == (400, 'at', 'unknown_field')
    assert refused({'from': today, 'to': today}, name='nope') == (404, 'name', 'not_found')
    assert Run.select().count() == 0


# --- the command line ---------------------------------------------------------

def control(env, *args):
    done = subprocess.run([sys.executable, 'scripts/control.py'] + list(args), cwd=ROOT,
                          env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=60)
    return done.returncode, (json.loads(done.stdout) if done.returncode == 0
                             else done.stderr.strip())


@pytest.mark.slow
def test_a_rerun_keeps_the_format_and_the_message_of_the_run_it_repeats(app, jobs, smtp_sink):
    first = app.post_json('/api/runs', {
        'report': 'orders', 'to': ['a@example.org'], 'format': 'csv.gz',
        'subject': 'Orders again: {{ rows }} rows', 'attachment_name': 'orders-again',
        'send_rule': 'always'}).json['id']
    runs.mark_failed(first, 'the source was down for good')
    second = app.post_json('/api/runs/%d/rerun' % first, {}).json['id']
    run_queued(jobs)
    new = Run.get_by_id(second)
    assert (new.status, new.format, new.subject, new.attachment_name, new.send_rule) == \
        ('delivered', 'csv.gz', 'Orders again: {{ rows }} rows', 'orders-again', 'always')
    [sent] = smtp_sink.messages
    assert sent['message']['Subject'].startswith('Orders again: ')
    [part] = [p for p in sent['message'].walk() if p.get_filename()]
    assert part.get_filename() == 'orders-again.csv.gz'


def test_the_command_line_cancels_reruns_and_backfills(app, jobs, consumer_env):
    daily_schedule(app)
    run_id = app.post_json('/api/runs', {'report': 'customers',
                                         'to': ['a@example.org']}).json['id']
    code, answer = control(consumer_env, 'cancel', str(run_id))
    assert code == 0 and answer['status'] == 'cancelled'
    assert 'the command line' in answer['error']
    code, answer = control(consumer_env, 'cancel', str(run_id))
    assert code == 1 and 'only a queued or running run can be cancelled' in answer
    code, answer = control(consumer_env, 'rerun', str(run_id))
    assert code == 0 and answer['rerun_of'] == run_id
    assert Run.get_by_id(answer['id']).trigger == 'cli'
    code, answer = control(consumer_env, 'backfill', 'morning', '--from',
                           days_ago(3).isoformat(), '--to', days_ago(2).isoformat())
    assert code == 0 and len(answer['created']) == 2
    run_queued(jobs)  # the cancelled run's task (which does nothing), and the three new
    assert [r.status for r in Run.select().order_by(Run.id)] == \
        ['cancelled', 'delivered', 'delivered', 'delivered']


def test_a_run_cancelled_after_its_file_was_made_sends_nothing_and_keeps_nothing(
        app, jobs, smtp_sink):
    import delivery
    import runfiles
    from errors import LostOwnership
    run_id = app.post_json('/api/runs', {'report': 'customers',
                                         'to': ['a@example.org']}).json['id']
    attempt = runs.claim(run_id)
    path = runfiles.prepare_file(jobs.registry, jobs.settings, jobs.store, attempt)
    key = Run.get_by_id(run_id).file_key
    assert key and os.path.exists(path)
    assert app.post_json('/api/runs/%d/cancel' % run_id, {}).json['status'] == 'cancelled'
    with pytest.raises(LostOwnership):  # marking the recipient "sending" is fenced
        delivery.deliver(attempt, 'Customers', path, jobs.settings, jobs.mailer, seconds=1)
    assert smtp_sink.messages == []
    assert Delivery.get().status == DeliveryStatus.PENDING
    runfiles.discard_files(jobs.settings, jobs.store, run_id)  # what its worker does next
    assert Run.get_by_id(run_id).file_key is None and not os.path.exists(path)
    with pytest.raises(FileNotFoundError):
        jobs.store.open_chunks(key)
