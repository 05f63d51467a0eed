"""What a run promises under attack: a recipient is "sent" only when the
server accepted a message that carried it; one SMTP transaction per attempt;
an attempt that was taken back can neither publish nor mail; work files do
not outlive their run; the database coming back is noticed by itself."""
import datetime
import logging
import os
import threading

import pytest

import demo
import delivery
import runfiles
import runs
from conftest import attachment, run_queued
from demo import Order
from models import Delivery, Run, db, db_now, utcnow
from conftest import demo_catalogue

registry = demo_catalogue()

THREE = ['a@example.org', 'b@example.org', 'c@example.org']


@pytest.fixture
def shop(database):
    demo.seed(customers=20, orders=300)


def queued(jobs, to=THREE, report='customers'):
    run = runs.create_run(registry, jobs.settings, report, {}, list(to))
    jobs.enqueue_run(run)
    return run.id


def outcome(run_id):
    return {d.address: d.status for d in Delivery.select().where(Delivery.run == run_id)}


# --- SMTP: what counts as sent ---------------------------------------------

def test_a_421_at_rcpt_marks_nobody_sent(settings, jobs, shop, smtp_sink):
    smtp_sink.rcpt_replies = ['421 4.7.0 too busy, closing']
    run_id = queued(jobs)
    run_queued(jobs, limit=1)
    assert smtp_sink.messages == []
    run = Run.get_by_id(run_id)
    assert run.status == 'queued' and '421' in run.error
    assert outcome(run_id) == dict.fromkeys(THREE, 'pending')

    run_queued(jobs, limit=1)  # the retry: everyone, once, in one message
    [sent] = smtp_sink.messages
    assert sorted(sent['to']) == THREE
    assert Run.get_by_id(run_id).status == 'delivered'
    assert outcome(run_id) == dict.fromkeys(THREE, 'sent')


def test_a_421_after_some_rcpts_were_accepted_sends_nobody(settings, jobs, shop, smtp_sink):
    smtp_sink.rcpt_replies = [None, '421 4.7.0 closing']  # a@ accepted, then the hang-up
    run_id = queued(jobs)
    run_queued(jobs, limit=1)
    assert smtp_sink.messages == []
    assert outcome(run_id) == dict.fromkeys(THREE, 'pending')


def test_no_reply_after_data_is_not_sent_and_goes_once_more(make_jobs, smtp_sink, shop):
    """The reply to DATA never comes: the message may have arrived, so it goes
    again with the same Message-ID, once per attempt (yagmail would have
    resent it up to three times inside the attempt)."""
    jobs = make_jobs(smtp_timeout=1)
    smtp_sink.data_delay = 3
    run_id = queued(jobs, to=['a@example.org'])
    run_queued(jobs, limit=1)
    assert len(smtp_sink.messages) == 1  # it did arrive; the reply was lost
    run = Run.get_by_id(run_id)
    assert run.status == 'queued' and 'no reply after the message was sent' in run.error
    assert outcome(run_id) == {'a@example.org': 'pending'}

    smtp_sink.data_delay = 0
    run_queued(jobs, limit=1)
    first, again = smtp_sink.messages
    assert first['message']['Message-ID'] == again['message']['Message-ID']
    assert attachment(first['message'])[1] == attachment(again['message'])[1]
    assert Run.get_by_id(run_id).status == 'delivered'


def test_a_hang_up_right_after_accepting_counts_as_sent(settings, jobs, shop, smtp_sink):
    smtp_sink.hang_up_after_data = True
    run_id = queued(jobs)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    assert sorted(sent['to']) == THREE
    assert Run.get_by_id(run_id).status == 'delivered'
    assert outcome(run_id) == dict.fromkeys(THREE, 'sent')


@pytest.mark.parametrize('reply, status', [('451 4.3.0 queue full', 'queued'),
                                           ('554 5.6.0 content rejected', 'failed')])
def test_a_refused_data_is_each_recipients_answer(settings, jobs, shop, smtp_sink, reply,
                                                  status):
    smtp_sink.data_reply = reply
    run_id = queued(jobs)
    run_queued(jobs, limit=1)
    run = Run.get_by_id(run_id)
    assert run.status == status and reply in run.error
    assert set(outcome(run_id).values()) == {'pending' if status == 'queued' else 'refused'}


@pytest.mark.parametrize('security, hint', [('starttls', 'does not offer STARTTLS'),
                                            ('ssl', 'TLS failed')])
def test_wrong_smtp_security_fails_at_once_with_the_hint(make_jobs, shop, security, hint):
    """MailHog-style plain server on its port, security set to TLS: a setting
    to fix, not an outage to retry for minutes."""
    jobs = make_jobs(env={'NIGHTSHIFT_SMTP_SECURITY': security}, smtp_timeout=5)
    run_id = queued(jobs, to=['a@example.org'])
    run_queued(jobs)
    run = Run.get_by_id(run_id)
    assert (run.status, run.attempts) == ('failed', 1)
    assert hint in run.error and 'NIGHTSHIFT_SMTP_SECURITY' in run.error
    assert jobs.huey.pending_count() == 0 and jobs.huey.scheduled_count() == 0


# --- fencing: an attempt that was taken back -------------------------------

def take_back(run_id, settings):
    """What the reaper does to a worker silent past stale_after."""
    Run.update(heartbeat_at=db_now() - datetime.timedelta(seconds=settings.stale_after + 5)) \
        .where(Run.id == run_id).execute()
    assert runs.reap(settings, utcnow(), lambda run_id: None) == [run_id]


def test_a_taken_back_attempt_can_neither_publish_nor_mail(settings, jobs, shop, smtp_sink):
    run_id = queued(jobs)
    stale = runs.claim(run_id)
    take_back(run_id, settings)
    run_queued(jobs)  # the second attempt does the work
    [sent] = smtp_sink.messages
    done = Run.get_by_id(run_id)
    assert (done.status, done.attempts) == ('delivered', 2)
    assert '/a2/' in done.file_key

    # The first worker wakes up and carries on where it was.
    with pytest.raises(runs.LostOwnership):
        stale.update(rows=0)
    assert Run.get_by_id(run_id).rows == done.rows
    Delivery.update(status='pending').where(Delivery.run == run_id).execute()
    with pytest.raises(runs.LostOwnership):
        delivery.deliver(stale, 'Customers', runfiles.local_path(settings, done.file_key),
                         settings, jobs.mailer, seconds=1.0)
    assert len(smtp_sink.messages) == 1
    assert set(outcome(run_id).values()) == {'pending'}  # not marked "sending" by it either


def test_a_taken_back_attempt_does_not_publish_its_file(settings, jobs, shop, smtp_sink):
    run_id = queued(jobs)
    stale = runs.claim(run_id)
    take_back(run_id, settings)
    fresh = runs.claim(run_id)
    assert fresh.number == stale.number + 1
    with pytest.raises(runs.LostOwnership):
        runfiles.prepare_file(registry, settings, jobs.store, stale)
    assert not os.path.exists(runfiles.attempt_folder(settings, stale))
    path = runfiles.prepare_file(registry, settings, jobs.store, fresh)
    run = Run.get_by_id(run_id)
    assert run.file_key.startswith('run-%d/a%d/' % (run_id, fresh.number))
    assert os.path.getsize(path) == run.file_bytes and run.rows == 20


def test_the_heartbeat_notices_the_loss_and_stops_the_export(settings, jobs, shop):
    run_id = queued(jobs)
    attempt = runs.claim(run_id)
    with runs.Heartbeat(attempt, every=0.02) as heartbeat:
        heartbeat.progress(10, 100)
        take_back(run_id, settings)
        runs_wait(lambda: heartbeat.lost)
        with pytest.raises(runs.LostOwnership):
            heartbeat.progress(20, 200)
    run = Run.get_by_id(run_id)
    assert run.status == 'queued'  # the beat did not write over the reaper's decision


def runs_wait(predicate, timeout=10):
    from conftest import wait_until
    wait_until(predicate, timeout=timeout, message='the heartbeat to notice')


def test_a_worker_clock_ahead_does_not_reap_a_live_run(settings, jobs, shop):
    """Staleness is read on the database's clock: a consumer whose clock runs
    90 s ahead ticks, and the run another worker is beating for stays put."""
    run_id = queued(jobs)
    runs.claim(run_id)
    skewed = utcnow() + datetime.timedelta(seconds=90)
    assert runs.reap(settings, skewed, lambda run_id: None) == []
    assert jobs.tick(skewed) == []
    assert Run.get_by_id(run_id).status == 'running'


def test_claims_of_one_report_hold_the_limit_under_races(make_jobs, shop):
    """max_concurrent_per_report=1, two workers claiming two runs at the same
    instant, 20 times: never both."""
    jobs = make_jobs(max_concurrent_per_report=1)
    for trial in range(20):
        ids = [queued(jobs, to=['a@example.org']) for _ in range(2)]
        barrier = threading.Barrier(2)
        won = []

        def worker(run_id):
            barrier.wait()
            try:
                if runs.claim(run_id, report='customers', limit=1):
                    won.append(run_id)
            finally:
                db.close()
        threads = [threading.Thread(target=worker, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, 'trial %d: %d runs claimed' % (trial, len(won))
        Run.update(status='delivered').where(Run.id.in_(ids)).execute()


# --- work files -------------------------------------------------------------

def test_a_failed_run_leaves_no_work_files(make_jobs, database):
    from peewee import SQL

    from demo import Customer
    from reports import Registry
    broken = Registry()

    @broken.report('broken', 'Broken')
    def broken_report():
        return Customer.select(SQL('*')).from_(SQL('no_such_table'))

    jobs = make_jobs(registry=broken, max_attempts=2)
    run = runs.create_run(broken, jobs.settings, 'broken', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs)
    assert Run.get_by_id(run.id).status == 'failed'
    assert not os.path.exists(runfiles.run_folder(jobs.settings, run.id))


def test_the_tick_sweeps_orphaned_work_folders(settings, jobs, shop, smtp_sink):
    run_id = queued(jobs)
    run_queued(jobs)
    run = Run.get_by_id(run_id)
    published = runfiles.local_path(settings, run.file_key)
    stray = os.path.join(runfiles.run_folder(settings, run_id), 'a9', 'half.csv.part')
    gone = os.path.join(settings.reports_dir, 'run-999999', 'a1', 'x.csv')
    for path in (stray, gone):
        os.makedirs(os.path.dirname(path))
        with open(path, 'wb') as f:
            f.write(b'x' * 1000)
    in_progress = queued(jobs)
    runs.claim(in_progress)
    live = os.path.join(runfiles.run_folder(settings, in_progress), 'a1', 'writing.csv.part')
    os.makedirs(os.path.dirname(live))
    open(live, 'wb').close()

    jobs.tick()
    assert os.path.isfile(published)  # still offered for download
    assert not os.path.exists(stray)
    assert not os.path.exists(os.path.dirname(gone)) and not os.path.exists(
        os.path.join(settings.reports_dir, 'run-999999'))
    assert os.path.exists(live)  # a run in progress is left alone


def test_with_the_database_store_no_local_copy_outlives_the_run(make_jobs, shop):
    jobs = make_jobs(file_store='database')
    run_id = queued(jobs)
    run_queued(jobs)
    assert Run.get_by_id(run_id).status == 'delivered'
    assert not os.path.exists(runfiles.run_folder(jobs.settings, run_id))
    assert jobs.store.exists(Run.get_by_id(run_id).file_key)


def test_a_retry_on_another_host_sends_the_same_file(make_jobs, smtp_sink, shop, tmp_path):
    """With the shared store, a mail-only retry on a machine that did not
    build the file fetches it from the store: the data changed meanwhile, the
    second recipient still gets exactly what the first got."""
    smtp_sink.refuse['b@example.org'] = '451 4.3.0 try later'
    first = make_jobs(file_store='database')
    run_id = queued(first, to=['a@example.org', 'b@example.org'], report='orders')
    run_queued(first, limit=1)
    assert Run.get_by_id(run_id).status == 'queued'
    Order.delete().where(Order.id > 100).execute()  # the data moves on
    assert Order.select().count() == 100

    del smtp_sink.refuse['b@example.org']
    other_host = make_jobs(file_store='database', reports_dir=str(tmp_path / 'host-b'))
    run_queued(other_host, limit=1)
    to_a, to_b = smtp_sink.messages
    assert to_b['to'] == ['b@example.org']
    assert attachment(to_a['message'])[1] == attachment(to_b['message'])[1]
    assert attachment(to_b['message'])[1].count(b'\n') == 301
    assert Run.get_by_id(run_id).attempts == 2


# --- the database going away and coming back ---------------------------------

@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_a_terminated_connection_is_replaced_by_itself(settings, jobs, shop, smtp_sink,
                                                       postgres_url):
    import psycopg
    first = queued(jobs, to=['a@example.org'])
    run_queued(jobs)
    assert Run.get_by_id(first).status == 'delivered'
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        killed = admin.execute(
            'SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity '
            'WHERE datname = current_database() AND pid <> pg_backend_pid()').fetchone()[0]
    assert killed >= 1
    second = queued(jobs, to=['b@example.org'])
    run_queued(jobs)
    run = Run.get_by_id(second)
    assert (run.status, run.attempts) == ('delivered', 1)
    assert jobs.tick() == []


def test_an_outage_is_logged_once_and_the_tick_survives(make_jobs, database, caplog):
    from conftest import free_port
    from models import bind_database
    url = 'postgresql://nobody@127.0.0.1:%d/none' % free_port()  # nothing listens
    jobs = make_jobs(env={'DATABASE_URL': url, 'NIGHTSHIFT_SOURCE_DEMO_URL': url})
    bind_database(url, create=False)
    caplog.set_level(logging.DEBUG, logger='nightshift.tasks')
    for _ in range(5):
        assert jobs.tick() == []
    from huey.exceptions import RetryTask
    with pytest.raises(RetryTask):
        jobs.execute(1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and 'database unavailable' in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert jobs.database.failures == 6

    jobs.database.up()  # the next thing that works says so, once
    back = [r for r in caplog.records if 'answers again' in r.getMessage()]
    assert len(back) == 1 and '6 operations failed' in back[0].getMessage()


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_the_record_of_a_sent_mail_waits_out_a_blinking_database(settings, jobs, shop,
                                                                 postgres_url):
    """Between "the server accepted" and "recorded", the database refuses
    writes for a moment (another session holds the table): the record is
    retried rather than leaving the recipient "sending", which would mail
    them again."""
    import threading
    import psycopg
    import delivery
    from models import Delivery as D
    run_id = queued(jobs, to=['a@example.org'])
    targets = list(D.select().where(D.run == run_id))
    db.execute_sql("SET lock_timeout = '200ms'")
    blocker = psycopg.connect(postgres_url)
    blocker.execute('LOCK TABLE nightshift_delivery IN ACCESS EXCLUSIVE MODE')
    release = threading.Timer(1.0, blocker.commit)
    release.start()
    try:
        delivery._record_until_it_lands(targets, {'a@example.org': '250 ok'}, settings)
    finally:
        release.join()
        blocker.close()
        db.execute_sql('RESET lock_timeout')
    assert D.get(D.run == run_id).status == 'sent'
