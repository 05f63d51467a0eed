"""At-least-once runs, no duplicate sends, big files, with real parts."""
import datetime
import io
import random
import time
import zipfile
from urllib.parse import urlparse

import pytest
import webtest

import demo
import runfiles
import runs
from conftest import attachment, run_queued
from models import Delivery, Run, utcnow
from reports import Registry
from conftest import demo_catalogue
from server import create_app

registry = demo_catalogue()


@pytest.fixture
def shop(database):
    demo.seed(customers=50, orders=3000)


def queued_run(jobs, settings, report='orders', to=('a@example.org',)):
    run = runs.create_run(registry, settings, report, {}, list(to))
    jobs.enqueue_run(run)
    return run.id


def test_a_run_is_claimed_by_one_worker_only(settings, jobs, shop, smtp_sink):
    run_id = queued_run(jobs, settings)
    assert runs.claim(run_id, utcnow())
    assert not runs.claim(run_id, utcnow())
    run_queued(jobs)  # the task finds the run in another worker's hands
    assert smtp_sink.messages == []
    assert Run.get_by_id(run_id).status == 'running'


def test_reaper_runs_again_what_a_dead_worker_held(settings, jobs, shop, smtp_sink):
    run_id = queued_run(jobs, settings)
    jobs.huey.storage.flush_queue()  # the worker took the task and died...
    runs.claim(run_id, utcnow() - datetime.timedelta(minutes=5))  # ...5 minutes ago
    assert jobs.tick() == []
    run = Run.get_by_id(run_id)
    assert run.status == 'queued' and 'no heartbeat' in run.error
    run_queued(jobs)
    [sent] = smtp_sink.messages
    run = Run.get_by_id(run_id)
    assert (run.status, run.attempts, run.error) == ('delivered', 2, None)
    assert attachment(sent['message'])[1].count(b'\n') == 3001


def test_the_last_progress_beat_does_not_overwrite_the_final_count(settings, jobs, shop):
    """The heartbeat goes on while the finished file is zipped and mailed; its
    last "rows so far" (taken mid-file) must not replace the final count."""
    run_id = queued_run(jobs, settings)
    attempt = runs.claim(run_id, utcnow())

    def beats_seen(since):
        wait_until = utcnow() + datetime.timedelta(seconds=5)
        while Run.get_by_id(run_id).heartbeat_at <= since:
            assert utcnow() < wait_until, 'no heartbeat recorded'
            time.sleep(0.005)
        return Run.get_by_id(run_id)

    with runs.Heartbeat(attempt, every=0.02) as heartbeat:
        heartbeat.progress(1200, 90000)  # mid-file
        run = beats_seen(Run.get_by_id(run_id).heartbeat_at)
        assert (run.rows, run.bytes) == (1200, 90000)
        # The file is done: its count goes in with it, as prepare_file does.
        Run.update(rows=3000, bytes=240000, file_key='run-%d/x.csv' % run_id) \
            .where(Run.id == run_id).execute()
        run = beats_seen(Run.get_by_id(run_id).heartbeat_at)
        run = beats_seen(run.heartbeat_at)
    assert (run.rows, run.bytes) == (3000, 240000)


def test_reaper_leaves_live_runs_alone(settings, jobs, shop):
    run_id = queued_run(jobs, settings)
    runs.claim(run_id, utcnow())
    assert runs.reap(settings, utcnow(), lambda run_id: None) == []
    assert Run.get_by_id(run_id).status == 'running'


def test_reaper_requeues_a_queued_run_whose_task_was_lost(settings, jobs, shop, smtp_sink):
    run_id = queued_run(jobs, settings)
    jobs.huey.storage.flush_queue()
    assert runs.reap(settings, utcnow(), jobs.run_report) == []  # too soon to tell
    later = utcnow() + datetime.timedelta(seconds=settings.requeue_after + 1)
    assert runs.reap(settings, later, jobs.run_report) == [run_id]
    run_queued(jobs)
    assert len(smtp_sink.messages) == 1
    assert Run.get_by_id(run_id).status == 'delivered'


def test_out_of_attempts_fails_and_tells_the_operator(make_jobs, smtp_sink, shop):
    jobs = make_jobs(max_attempts=2, notify_every=0,
                     operator_email='ops@example.org')
    run_id = queued_run(jobs, jobs.settings)
    for _ in range(2):  # two workers die in turn
        jobs.huey.storage.flush_queue()
        runs.claim(run_id, utcnow() - datetime.timedelta(minutes=5))
        Run.update(status='running').where(Run.id == run_id).execute()
        jobs.tick()
    run = Run.get_by_id(run_id)
    assert run.status == 'failed' and 'giving up' in run.error and run.attempts == 2
    [notice] = smtp_sink.messages
    assert notice['to'] == ['ops@example.org'] and 'giving up' in \
        notice['message'].get_body(('plain',)).get_content()


def test_permanent_failure_emails_the_operator(make_jobs, smtp_sink, shop):
    jobs = make_jobs(operator_email='ops@example.org', notify_every=0)
    smtp_sink.refuse['gone@example.org'] = '550 5.1.1 no such user'
    run_id = queued_run(jobs, jobs.settings, to=['gone@example.org'])
    run_queued(jobs)
    jobs.tick()  # the notice goes out from the tick, never from the worker's run
    [notice] = smtp_sink.messages
    assert notice['to'] == ['ops@example.org']
    body = notice['message'].get_body(('plain',)).get_content()
    assert 'Run #%d' % run_id in body and '550 5.1.1 no such user' in body


def test_a_report_over_a_missing_table_fails_at_once_with_the_databases_words(make_jobs, smtp_sink,
                                                                              database, caplog):
    """The report's own fault, not an outage: no retries, the database's
    message on the run and in the log."""
    from tasks import Jobs
    late = Registry()

    @late.report('late', 'Late table')
    def late_report():
        return 'SELECT * FROM late_table'

    jobs = make_jobs()
    jobs = Jobs(jobs.settings, registry=late)
    run = runs.create_run(late, jobs.settings, 'late', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs)
    failed = Run.get_by_id(run.id)
    assert (failed.status, failed.attempts) == ('failed', 1)
    assert 'late_table' in failed.error and 'report late failed on source default' in \
        failed.error
    assert jobs.huey.pending_count() == 0 and jobs.huey.scheduled_count() == 0
    assert any('late_table' in r.getMessage() and r.name == 'nightshift.runs'
               for r in caplog.records)
    assert smtp_sink.messages == []


def test_a_source_that_does_not_answer_is_retried(make_jobs, smtp_sink, database, tmp_path):
    """The source's fault is temporary: the run waits and goes when it answers."""
    import sqlite3
    path = tmp_path / 'later.db'
    jobs = make_jobs(env={'NIGHTSHIFT_SOURCE_LATER_URL': 'sqlite:///%s' % path})
    later = Registry()

    @later.report('later', 'Later', source='later')
    def later_report():
        return 'SELECT n FROM t'

    from tasks import Jobs
    jobs = Jobs(jobs.settings, registry=later)
    run = runs.create_run(later, jobs.settings, 'later', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs, limit=1)
    waiting = Run.get_by_id(run.id)
    assert waiting.status == 'queued' and 'SourceUnavailable' in waiting.error
    conn = sqlite3.connect(str(path))
    conn.execute('CREATE TABLE t (n INTEGER)')
    conn.execute('INSERT INTO t VALUES (7)')
    conn.commit()
    conn.close()
    run_queued(jobs, limit=1)
    done = Run.get_by_id(run.id)
    assert (done.status, done.attempts, done.rows) == ('delivered', 2, 1)
    assert attachment(smtp_sink.messages[0]['message'])[1] == b'\xef\xbb\xbfn\n7\n'


def test_a_recipient_in_sending_state_gets_it_again_with_the_same_message_id(
        settings, jobs, shop, smtp_sink):
    """The crash between 'accepted' and 'recorded': sent again, recognisably."""
    run_id = queued_run(jobs, settings, to=['a@example.org', 'b@example.org'])
    run_queued(jobs)
    Delivery.update(status='sending').where(Delivery.address == 'b@example.org').execute()
    Run.update(status='queued').where(Run.id == run_id).execute()
    jobs.execute(run_id)
    first, again = smtp_sink.messages
    assert again['to'] == ['b@example.org']
    assert first['message']['Message-ID'] == again['message']['Message-ID']
    # The retry reused the finished file: both got the same bytes.
    assert attachment(first['message'])[1] == attachment(again['message'])[1]


def test_backoff_grows_and_is_jittered(settings):
    from dataclasses import replace
    settings = replace(settings, retry_delay=10, retry_max_delay=300)
    rng = random.Random(7)
    delays = [runs.retry_delay(n, settings, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        full = min(300, 10 * 2 ** (n - 1))
        assert full / 2 <= delay <= full
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_large_reports_are_zipped(make_jobs, smtp_sink, shop):
    jobs = make_jobs(zip_over_mb=0.05)
    run_id = queued_run(jobs, jobs.settings)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    name, data = attachment(sent['message'])
    assert name.endswith('.zip')
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [inner] = archive.namelist()
        csv_bytes = archive.read(inner)
    assert inner == name[:-4] + '.csv'
    app = webtest.TestApp(create_app(jobs.settings, jobs))
    assert csv_bytes == app.get('/reports/orders.csv').body
    run = Run.get_by_id(run_id)
    assert (run.sent_as, run.bytes) == ('zip', len(csv_bytes))
    assert 'attached (zipped)' in sent['message'].get_body(('plain',)).get_content()


@pytest.mark.parametrize('file_store', ['local', 'database'])
def test_over_the_provider_limit_goes_as_a_signed_link(make_jobs, smtp_sink, shop, file_store):
    jobs = make_jobs(zip_over_mb=0.05,
                     mail_max_mb=0.1, file_store=file_store,
                     public_url='https://reports.example')
    run_id = queued_run(jobs, jobs.settings)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    message = sent['message']
    assert [p for p in message.walk() if p.get_filename()] == []
    body = message.get_body(('plain',)).get_content()
    assert 'too large to attach' in body
    [link] = [line for line in body.splitlines() if line.startswith('https://reports.example/')]
    url = urlparse(link)
    app = webtest.TestApp(create_app(jobs.settings, jobs))
    res = app.get(url.path + '?' + url.query)
    assert res.headers['Content-Type'] == 'application/zip'
    with zipfile.ZipFile(io.BytesIO(res.body)) as archive:
        csv_bytes = archive.read(archive.namelist()[0])
    assert csv_bytes == app.get('/reports/orders.csv').body
    assert Run.get_by_id(run_id).sent_as == 'link'

    # Tampered, expired, pointed at another run: 403, saying nothing more.
    query = dict(p.split('=') for p in url.query.split('&'))
    for path in ['%s?expires=%s&sig=%s' % (url.path, query['expires'], '0' * 64),
                 '%s?expires=%d&sig=%s' % (url.path, int(query['expires']) + 1, query['sig']),
                 '/files/%d?expires=%s&sig=%s' % (run_id + 1, query['expires'], query['sig']),
                 url.path]:
        res = app.get(path, expect_errors=True)
        assert res.status_int == 403 and res.json['error'] == 'forbidden'
    import links
    run = Run.get_by_id(run_id)
    assert not links.check(jobs.settings, run, query['expires'], query['sig'],
                           now=int(query['expires']) + 1)

    # After retention the file is gone and the link with it.
    later = utcnow() + datetime.timedelta(days=jobs.settings.retention_days + 1)
    assert runfiles.remove_expired_files(jobs.settings, jobs.store, later) == 1
    assert not jobs.store.exists(run.file_key)
    assert app.get(url.path + '?' + url.query, expect_errors=True).status_int == 403


def test_message_size_counts_base64():
    assert runfiles.message_size(3 * 1000) > 4000
    assert runfiles.message_size(30 * 10 ** 6) > 40 * 10 ** 6
