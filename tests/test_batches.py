"""A burst of runs of one report with the same parameters is served by one
query (batches.py): one file, shared; each run still its own message,
Message-ID, file copy, delivery records and outcome. Shown against real
SQLite/PostgreSQL state, a real source and a real SMTP sink: the report
below returns a random nonce, so equal nonces in two attachments prove
they came from one execution of the query."""
import logging

import pytest

import batches
import control
import demo
import runs
from conftest import attachment, catalogue_of, run_queued
from loopback import SmtpSink
from models import Delivery, Run, db
from test_faults import consumers, fault_env, silent_past_stale_after  # noqa: F401 (fixtures)
from vocab import DeliveryStatus, Ending, RunStatus

NONCE_REPORT = """/*
title: Nonce
description: The customers, and a number drawn once per execution of the query.
source: demo
params:
  min_id: {type: int, default: 0}
*/
SELECT c.id, c.name, (SELECT abs(random()) FROM customer LIMIT 1) AS nonce
FROM customer c
WHERE c.id >= :min_id
ORDER BY c.id
"""


@pytest.fixture
def catalogue(tmp_path):
    return catalogue_of(tmp_path / 'team-reports', {'nonce.sql': NONCE_REPORT})


@pytest.fixture
def shop(database):
    demo.seed(customers=12, orders=30)


def queue(jobs, to, params=None, **options):
    run = runs.create_run(jobs.registry, jobs.settings, 'nonce', params or {}, [to], **options)
    jobs.enqueue_run(run)
    return run.id


def nonces(message):
    name, data = attachment(message)
    lines = data.decode('utf-8-sig').splitlines()[1:]
    return {line.rsplit(',', 1)[1] for line in lines}, name


def by_recipient(sink):
    return {m['to'][0]: m['message'] for m in sink.messages}


def test_a_burst_of_one_report_is_served_by_one_query_each_run_its_own_message(
        make_jobs, catalogue, shop, smtp_sink):
    jobs = make_jobs(registry=catalogue)
    ids = [queue(jobs, 'p%d@example.org' % i,
                 message={'subject': 'For p%d: {{ rows }} rows' % i} if i == 3 else None)
           for i in range(6)]
    other = queue(jobs, 'other@example.org', {'min_id': 5})
    run_queued(jobs, limit=20)

    done = {r.id: r for r in Run.select()}
    assert all(r.status == RunStatus.DELIVERED for r in done.values())
    # The first run led; the other five rode on its query; the run with
    # other parameters had its own.
    assert [done[i].batch_of for i in ids] == [None] + [ids[0]] * 5
    assert done[other].batch_of is None
    messages = by_recipient(smtp_sink)
    assert len(smtp_sink.messages) == 7
    seen = {address: nonces(message) for address, message in messages.items()}
    shared = {frozenset(values) for address, (values, _) in seen.items()
              if address != 'other@example.org'}
    assert len(shared) == 1 and len(next(iter(shared))) == 1
    assert seen['other@example.org'][0] != next(iter(shared))
    # Each its own Message-ID and template; the same rows in every file.
    assert len({m['Message-ID'] for m in messages.values()}) == 7
    assert messages['p3@example.org']['Subject'] == 'For p3: 12 rows'
    assert all(done[i].rows == 12 for i in ids)
    # Each run keeps its own file: deleting one leaves the others.
    keys = {done[i].file_key for i in ids}
    assert len(keys) == 6
    assert all(jobs.store.exists(key) for key in keys)
    jobs.store.delete(done[ids[1]].file_key)
    assert jobs.store.exists(done[ids[2]].file_key)
    # Every delivery recorded sent, once.
    assert Delivery.select().where(Delivery.status == DeliveryStatus.SENT).count() == 7


def test_a_batch_holds_one_turn_of_its_report(make_jobs, catalogue, shop, smtp_sink):
    jobs = make_jobs(registry=catalogue, max_concurrent_per_report=1)
    first, second, third = (queue(jobs, '%s@example.org' % n) for n in 'abc')
    jobs.huey.dequeue()
    attempt = runs.claim(first, report='nonce', limit=1)
    companions = batches.claim_companions(attempt, Run.get_by_id(first), 10)
    assert [c.run_id for c in companions] == [second, third]
    import turns
    assert turns.in_progress('nonce') == 1
    # Given back unserved: queued as never tried, no batch, tasks again.
    assert sorted(batches.release(first, 'its worker stopped')) == [second, third]
    for run_id in (second, third):
        run = Run.get_by_id(run_id)
        assert (run.status, run.attempts, run.batch_of) == (RunStatus.QUEUED, 0, None)
    assert turns.in_progress('nonce') == 1


def test_a_companion_refused_for_now_retries_alone_with_the_same_file(
        make_jobs, catalogue, shop, smtp_sink):
    jobs = make_jobs(registry=catalogue)
    smtp_sink.refuse['b@example.org'] = '451 4.3.0 try again later'
    ids = [queue(jobs, '%s@example.org' % n) for n in 'abc']
    run_queued(jobs, limit=1)  # the first run's task: the whole batch
    late = Run.get_by_id(ids[1])
    assert late.status == RunStatus.QUEUED and late.batch_of == ids[0]
    assert '451' in late.error and late.file_key
    assert [Run.get_by_id(i).status for i in (ids[0], ids[2])] == [RunStatus.DELIVERED] * 2
    # Its retry is queued (delay 0 in tests) and sends the file it had.
    del smtp_sink.refuse['b@example.org']
    run_queued(jobs, limit=5)
    assert Run.get_by_id(ids[1]).status == RunStatus.DELIVERED
    messages = by_recipient(smtp_sink)
    assert nonces(messages['b@example.org'])[0] == nonces(messages['a@example.org'])[0]
    assert len(smtp_sink.messages) == 3


def test_a_421_in_the_middle_of_a_batch_holds_back_one_run_and_the_rest_go_on(
        make_jobs, catalogue, shop, smtp_sink):
    """The server says 421 and hangs up at the second run's RCPT: that run
    is pending (not sent, not refused) and retried alone later; the batch
    goes on over a new connection, and nobody is mailed twice. One sender:
    the sink's replies go to RCPTs in the order they come."""
    jobs = make_jobs(registry=catalogue, batch_senders=1)
    smtp_sink.rcpt_replies = [None, '421 4.3.2 closing for maintenance']
    ids = [queue(jobs, '%s@example.org' % n) for n in 'abcd']
    run_queued(jobs, limit=1)  # the first run's task: the whole batch
    held = Run.get_by_id(ids[1])
    assert held.status == RunStatus.QUEUED and '421' in held.error
    assert [Run.get_by_id(i).status for i in (ids[0], ids[2], ids[3])] == \
        [RunStatus.DELIVERED] * 3
    assert sorted(m['to'][0] for m in smtp_sink.messages) == \
        ['a@example.org', 'c@example.org', 'd@example.org']
    assert len(smtp_sink.greeted) == 2  # a new session after the hang-up
    run_queued(jobs, limit=5)
    assert Run.get_by_id(ids[1]).status == RunStatus.DELIVERED
    assert sorted(m['to'][0] for m in smtp_sink.messages) == \
        ['a@example.org', 'b@example.org', 'c@example.org', 'd@example.org']


def test_a_421_on_one_of_a_batchs_connections_holds_back_that_run_alone(
        make_jobs, catalogue, shop, smtp_sink):
    """Four senders at once, and the server says 421 and hangs up at one
    RCPT: that run is pending (its file kept) and retried alone; the other
    senders go on over their own connections; nobody is mailed twice."""
    jobs = make_jobs(registry=catalogue, batch_senders=4)
    smtp_sink.data_delay = 0.05  # the senders' transactions overlap
    # The leader's own message first, then one of the companions' RCPTs.
    smtp_sink.rcpt_replies = [None, None, '421 4.3.2 closing for maintenance']
    addresses = ['p%d@example.org' % i for i in range(9)]
    ids = [queue(jobs, address) for address in addresses]
    run_queued(jobs, limit=1)  # the first run's task: the whole batch
    done = list(Run.select().where(Run.id.in_(ids)))
    [held] = [r for r in done if r.status != RunStatus.DELIVERED]
    assert held.status == RunStatus.QUEUED and '421' in held.error and held.file_key
    assert held.batch_of == ids[0] and held.recipients[0] not in \
        [m['to'][0] for m in smtp_sink.messages]
    assert len(smtp_sink.messages) == 8 and len(smtp_sink.greeted) >= 4
    run_queued(jobs, limit=20)
    assert Run.get_by_id(held.id).status == RunStatus.DELIVERED
    assert sorted(m['to'][0] for m in smtp_sink.messages) == sorted(addresses)


def test_a_leader_whose_query_fails_fails_alone_and_its_companions_are_queued_again(
        make_jobs, catalogue, shop, smtp_sink, tmp_path):
    jobs = make_jobs(registry=catalogue)
    ids = [queue(jobs, '%s@example.org' % n) for n in 'abc']
    # The table the report reads is gone: each run fails, for good, alone.
    db.execute_sql('DROP TABLE "order"')
    db.execute_sql('DROP TABLE customer')
    run_queued(jobs, limit=10)
    done = [Run.get_by_id(i) for i in ids]
    assert [r.status for r in done] == [RunStatus.FAILED] * 3
    assert all('customer' in r.error for r in done)
    assert all(r.attempts == 1 for r in done)
    assert smtp_sink.messages == []


def test_a_companion_cancelled_while_the_batch_mails_is_not_sent(
        make_jobs, catalogue, shop):
    """Cancelled at the moment the leader's own message is handed over: the
    companion is found cancelled at its fenced write, sends nothing, keeps
    nothing; the rest of the batch goes on."""
    ids = []

    class CancellingSink(SmtpSink):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address == 'a@example.org':
                control.cancel_run(jobs.settings, jobs.store, ids[1], by='test')
            return await super().handle_RCPT(server, session, envelope, address,
                                              rcpt_options)
    sink = CancellingSink()
    sink.start()
    try:
        jobs = make_jobs(registry=catalogue, env={'SMTP_PORT': str(sink.port)})
        ids.extend(queue(jobs, '%s@example.org' % n) for n in 'abc')
        run_queued(jobs, limit=5)
        cancelled = Run.get_by_id(ids[1])
        assert cancelled.status == RunStatus.CANCELLED and cancelled.file_key is None
        assert Run.get_by_id(ids[2]).status == RunStatus.DELIVERED
        assert sorted(m['to'][0] for m in sink.messages) == ['a@example.org', 'c@example.org']
    finally:
        sink.stop()


def test_runs_that_cannot_share_a_file_are_not_batched(make_jobs, catalogue, shop, smtp_sink):
    jobs = make_jobs(registry=catalogue)
    lead = queue(jobs, 'a@example.org')
    other_format = queue(jobs, 'b@example.org', file_format='csv.gz')
    no_escape = queue(jobs, 'c@example.org', escape_formulas=False)
    split = runs.create_run(jobs.registry, jobs.settings, 'nonce', {}, None, split_by='name')
    test_send = runs.create_run(jobs.registry, jobs.settings, 'nonce', {}, ['d@example.org'],
                                trigger='test')
    # Recorded by the command line, which runs it in its own process.
    cli = runs.create_run(jobs.registry, jobs.settings, 'nonce', {}, ['e@example.org'],
                          trigger='cli')
    attempt = runs.claim(lead, report='nonce', limit=2)
    assert batches.claim_companions(attempt, Run.get_by_id(lead), 10) == []
    for run_id in (other_format, no_escape, split.id, test_send.id, cli.id):
        assert Run.get_by_id(run_id).status == RunStatus.QUEUED


def test_with_batch_runs_1_every_run_queries_alone(make_jobs, catalogue, shop, smtp_sink):
    jobs = make_jobs(registry=catalogue, batch_runs=1)
    ids = [queue(jobs, '%s@example.org' % n) for n in 'ab']
    run_queued(jobs, limit=5)
    assert [Run.get_by_id(i).batch_of for i in ids] == [None, None]
    first, second = (nonces(m['message'])[0] for m in smtp_sink.messages)
    assert first != second


def test_the_batch_size_is_a_checked_setting(make_settings):
    from settings import SettingsError
    for bad in ('0', '1001', 'many'):
        with pytest.raises(SettingsError, match='batch_runs'):
            make_settings({'NIGHTSHIFT_BATCH_RUNS': bad})


def test_companion_outcomes_reach_the_task_layer(make_jobs, catalogue, shop, smtp_sink):
    """execute_run tells each companion's outcome; without a listener (the
    command line) a run serves itself only."""
    jobs = make_jobs(registry=catalogue)
    ids = [queue(jobs, '%s@example.org' % n) for n in 'ab']
    assert runs.execute_run(ids[0], jobs.registry, jobs.settings, jobs.mailer,
                            jobs.store).status == Ending.DELIVERED
    assert Run.get_by_id(ids[1]).status == RunStatus.QUEUED
    told = []
    third = queue(jobs, 'c@example.org')
    runs.execute_run(ids[1], jobs.registry, jobs.settings, jobs.mailer, jobs.store,
                     on_companion=lambda run_id, outcome, run: told.append(
                         (run_id, outcome.status)))
    assert told == [(third, Ending.DELIVERED)]


# --- a batch's consumer killed or stopped mid-mail (real processes) -------------

def _post_burst(app, count):
    return [app.post_json('/api/runs', {'report': 'customers',
                                        'to': ['k%d@example.org' % i]}).json['id']
            for i in range(count)]


@pytest.mark.parametrize('senders', [1, 4])
def test_a_batch_is_mailed_over_batch_senders_connections_at_once(
        make_jobs, catalogue, shop, smtp_sink, senders):
    """A mail server that takes a while to accept each message: a batch's
    runs go out over `batch_senders` connections at once (messages accepted
    less than the server's delay apart, which one connection cannot do),
    each run still once, with its own Message-ID; the extra connections
    say goodbye when the batch is done, one kept for the next message."""
    jobs = make_jobs(registry=catalogue, batch_senders=senders)
    smtp_sink.data_delay = 0.15
    ids = [queue(jobs, 'p%d@example.org' % i) for i in range(9)]
    run_queued(jobs, limit=1)  # the first run's task: the whole batch

    done = list(Run.select().where(Run.id.in_(ids)))
    assert all(r.status == RunStatus.DELIVERED for r in done)
    assert sorted(r.batch_of or r.id for r in done) == [ids[0]] * 9
    assert sorted(m['to'][0] for m in smtp_sink.messages) == sorted(
        'p%d@example.org' % i for i in range(9))
    assert len({m['message']['Message-ID'] for m in smtp_sink.messages}) == 9
    assert Delivery.select().where(Delivery.status == DeliveryStatus.SENT).count() == 9
    arrivals = sorted(m['at'] for m in smtp_sink.messages)
    closest = min(b - a for a, b in zip(arrivals, arrivals[1:]))
    if senders == 1:
        # One after another: each DATA waits for the last one's reply.
        assert closest >= smtp_sink.data_delay
        assert (len(smtp_sink.greeted), smtp_sink.quits) == (1, 0)
    else:
        assert closest < smtp_sink.data_delay
        # The leader's own connection and three more; those three closed.
        assert (len(smtp_sink.greeted), smtp_sink.quits) == (4, 3)
    # The leader's connection carries the next run's message.
    queue(jobs, 'later@example.org', {'min_id': 3})
    run_queued(jobs, limit=1)
    assert len(smtp_sink.greeted) == (1 if senders == 1 else 4)


def test_in_threads_does_each_item_once_and_stops_at_the_first_error():
    import contextvars
    import threading
    import time
    tag = contextvars.ContextVar('tag')
    tag.set('batch 7')
    seen, ended, lock = [], [], threading.Lock()

    def work(item):
        with lock:
            seen.append((item, threading.current_thread().name, tag.get()))
        time.sleep(0.01)
    runs.in_threads(list(range(40)), work, 4,
                    thread_ended=lambda: ended.append(threading.current_thread().name))
    assert sorted(item for item, _, _ in seen) == list(range(40))
    threads = {name for _, name, _ in seen}
    assert len(threads) == 4 and threading.current_thread().name in threads
    assert sorted(ended) == sorted(threads - {threading.current_thread().name})
    assert {value for _, _, value in seen} == {'batch 7'}

    # A thread for two items at least: one item, no other thread; five, two.
    ended.clear()
    runs.in_threads([1], work, 4, thread_ended=lambda: ended.append(1))
    assert ended == []
    runs.in_threads(list(range(5)), work, 4, thread_ended=lambda: ended.append(1))
    assert ended == [1]

    # The first error: every thread finishes the item in hand, none takes
    # another. The others wait in their item until the error is recorded.
    started, failed = [], threading.Event()

    def failing(item):
        with lock:
            started.append(item)
        if item == 5:
            failed.set()
            raise RuntimeError('database gone')
        failed.wait(10)
    with pytest.raises(RuntimeError, match='database gone'):
        runs.in_threads(list(range(100)), failing, 3)
    assert 5 in started and len(started) <= 5 + 1 + 3


def test_in_threads_starts_with_first_threads_and_adds_the_rest_when_grow_says_so():
    import threading
    import time
    lock = threading.Lock()

    def run(answers, threads=4):
        seen, asked = [], []

        def work(item):
            with lock:
                seen.append((item, threading.current_thread().name))
            time.sleep(0.005)

        def grow():
            asked.append(threading.current_thread().name)
            return answers.pop(0) if answers else False
        runs.in_threads(list(range(40)), work, threads, first=2, grow=grow)
        assert sorted(item for item, _ in seen) == list(range(40))
        return seen, asked
    # Never told to: two threads all along, the caller asking after each of its items.
    seen, asked = run([])
    assert len({name for _, name in seen}) == 2
    assert set(asked) == {threading.current_thread().name}
    # Told to after the caller's third item: the other two start then, and
    # nobody is asked again.
    seen, asked = run([False, False, True])
    names = [name for _, name in seen]
    assert len(set(names)) == 4 and len(asked) == 3
    late = set(names) - set(names[:4])
    assert len(late) == 2  # neither of the two late threads took one of the first items
    # No more threads than threads, nor one for fewer than two items.
    seen, asked = run([True], threads=2)
    assert len({name for _, name in seen}) == 2 and asked == []


def test_pace_wants_more_senders_while_the_process_waits_not_while_it_works():
    import time
    # On the real clocks: a process whose threads all wait (on a far mail
    # server) uses next to no CPU.
    pace = runs.Pace()
    time.sleep(0.1)
    assert pace.more()
    # A process that works: the CPU it got is given here, not burnt, since
    # on a loaded machine a burning thread gets less than a core and the
    # process then rightly counts as waiting (for the CPU).
    now, used = [100.0], [5.0]
    pace = runs.Pace(clock=lambda: now[0], cpu=lambda: used[0])
    now[0] += 0.1
    used[0] += 0.09  # 0.9 of a core
    assert not pace.more()
    now[0] += 0.1
    used[0] += 0.01  # 0.1 of a core: its senders mostly wait
    assert pace.more()
    # Too soon to judge: no answer from a look shorter than Pace.LOOK, and
    # the next look still counts from the last one.
    now[0] += runs.Pace.LOOK / 2
    assert not pace.more()
    now[0] += runs.Pace.LOOK / 2
    assert pace.more()


def test_in_threads_raises_an_interruption_first_then_the_callers_own_error():
    import threading
    caller = threading.current_thread()
    both, lock = threading.Barrier(2), threading.Lock()
    taken = []

    def work(kind):
        with lock:
            taken.append(kind)
        # Both threads have an item before either fails.
        both.wait(10)
        if threading.current_thread() is caller:
            raise kind('the caller')
        raise RuntimeError('a sender')
    for kind in (KeyboardInterrupt, ValueError):
        taken.clear()
        with pytest.raises(kind, match='the caller'):
            runs.in_threads([kind] * 4, work, 2)
        assert len(taken) == 2  # neither took another


def test_a_batch_given_back_starts_no_more_runs_and_its_stale_claims_are_fenced(
        make_jobs, catalogue, shop):
    jobs = make_jobs(registry=catalogue)
    first, second, third = (queue(jobs, '%s@example.org' % n) for n in 'abc')
    attempt = runs.claim(first, report='nonce', limit=2)
    companions = batches.claim_companions(attempt, Run.get_by_id(first), 10)
    assert [c.batch_of for c in companions] == [first, first]
    done = []
    with batches.serving(first) as stop:
        def work(member):
            done.append(member.run_id)
            # Given back (its consumer stopping) while the first is in hand.
            batches.release(first, 'its worker stopped')
        runs.in_threads(companions, work, 1, stop=stop)
    assert done == [second]
    # Both given back, as never tried; one claimed anew, as attempt 1 again.
    assert runs.claim(second) == runs.Attempt(second, 1)
    # The batch's claim of it, still held by a sender, no longer owns it.
    with pytest.raises(runs.LostOwnership):
        companions[0].update(error='a stale sender')
    assert Run.get_by_id(second).error != 'a stale sender'
    runs.Attempt(second, 1).update(error='its own claim')
    # A companion of a batch mid-SMTP counts for its leader's stop grace.
    assert not runs.sending(first)
    Delivery.update(status=DeliveryStatus.SENDING).where(Delivery.run == third).execute()
    Run.update(batch_of=first).where(Run.id == third).execute()
    assert runs.sending(first) and runs.sending(third) and not runs.sending(second)


def test_a_sender_that_cannot_start_sits_out_and_the_others_do_the_work():
    done = []

    def cannot():
        raise ConnectionError('too many connections')
    runs.in_threads(list(range(8)), done.append, 4, thread_started=cannot)
    assert sorted(done) == list(range(8))


def test_a_big_file_is_mailed_by_fewer_senders(make_settings):
    settings = make_settings({}, batch_senders=4)
    assert runs.senders_for(settings, 2_500) == 4
    assert runs.senders_for(settings, 4 * 1024 * 1024) == 3
    assert runs.senders_for(settings, 20 * 1024 * 1024) == 1
    assert runs.senders_for(make_settings({}, batch_senders=1), 100) == 1


# Messages one batch may have in flight at once: the default batch_senders,
# and one more as before them (a cut as one is handed over).
IN_FLIGHT = 4 + 1


def _each_delivered(ids, sink, addresses, timeout, extra_copies):
    """Wait for every run of `ids` delivered; each address mailed, and no
    more than `extra_copies` second copies (messages in flight at a cut)."""
    from conftest import wait_until
    wait_until(lambda: Run.select().where(Run.id.in_(ids),
                                          Run.status == RunStatus.DELIVERED).count() == len(ids),
               timeout=timeout, message='all %d runs delivered' % len(ids))
    recipients = [m['to'][0] for m in sink.messages]
    assert set(recipients) == addresses
    assert len(recipients) - len(addresses) <= extra_copies, sorted(
        r for r in recipients if recipients.count(r) > 1)


def _batch_mailing(ids):
    runs = list(Run.select().where(Run.id.in_(ids)))
    served = sum(r.batch_of is not None for r in runs)
    sent = sum(r.status == RunStatus.DELIVERED for r in runs)
    return served >= len(ids) // 2 and 5 <= sent < len(ids) - 5


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['sqlite'], indirect=True)
@pytest.mark.parametrize('stop_with', ['SIGKILL', 'SIGTERM'])
def test_a_batch_whose_consumer_dies_or_stops_mid_mail_loses_nothing(
        app, consumers, smtp_sink, stop_with):  # noqa: F811 (the fixture)
    """kill -9 while the batch mails: the reaper takes each silent run back
    and the next consumer sends what was not recorded sent. SIGTERM: the
    batch's unserved runs are handed back at once. Every run delivered,
    every recipient mailed; a second copy only for a message in flight."""
    import os
    import signal
    from conftest import wait_until
    demo.seed(customers=20, orders=50)
    # Each message takes a while: the batch is caught mailing, and mails for
    # longer than a stopping consumer waits for it (tasks.HAND_BACK_GRACE),
    # over its batch_senders (4) connections at once.
    smtp_sink.data_delay = 1.5
    first = consumers.start()
    ids = _post_burst(app, 32)
    wait_until(lambda: _batch_mailing(ids), timeout=60, message='a batch part-way mailed')
    os.kill(first.pid, getattr(signal, stop_with))
    first.wait(30)
    unfinished = [r.id for r in Run.select().where(Run.id.in_(ids),
                                                   Run.status != RunStatus.DELIVERED)]
    assert unfinished
    if stop_with == 'SIGKILL':
        # Silent past stale_after (on the database's clock): the next
        # consumer's reaper takes them back as it starts.
        wait_until(lambda: all(silent_past_stale_after(i) for i in unfinished
                               if Run.get_by_id(i).status == RunStatus.RUNNING),
                   timeout=30, message='the batch silent past stale_after')
    smtp_sink.data_delay = 0
    consumers.start()
    # Killed: a second copy for each message in flight, one per sender.
    # Stopped: the batch starts no more runs, and those in hand finish.
    _each_delivered(ids, smtp_sink, {'k%d@example.org' % i for i in range(32)},
                    timeout=90, extra_copies=IN_FLIGHT if stop_with == 'SIGKILL' else 0)
    assert Delivery.select().where(Delivery.status != DeliveryStatus.SENT).count() == 0


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['sqlite'], indirect=True)
def test_a_batch_paused_past_stale_after_mails_nothing_more_when_it_wakes(
        app, consumers, smtp_sink):  # noqa: F811 (the fixture)
    """SIGSTOP while a batch mails over its senders, past stale_after:
    another consumer takes its runs back and delivers them. The paused one,
    woken, must mail none of them again: only the messages its senders had
    in flight at the pause may arrive twice."""
    import os
    import signal
    from conftest import wait_until
    demo.seed(customers=20, orders=50)
    smtp_sink.data_delay = 0.8
    paused = consumers.start()
    ids = _post_burst(app, 32)
    wait_until(lambda: _batch_mailing(ids), timeout=60, message='a batch part-way mailed')
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        unfinished = [r.id for r in Run.select().where(Run.id.in_(ids),
                                                       Run.status == RunStatus.RUNNING)]
        assert unfinished
        wait_until(lambda: all(silent_past_stale_after(i) for i in unfinished
                               if Run.get_by_id(i).status == RunStatus.RUNNING),
                   timeout=30, message='the batch silent past stale_after')
        smtp_sink.data_delay = 0
        consumers.start()  # its first tick takes the batch's runs back
        _each_delivered(ids, smtp_sink, {'k%d@example.org' % i for i in range(32)},
                        timeout=90, extra_copies=IN_FLIGHT)
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    before = len(smtp_sink.messages)
    # Woken, and stopped gracefully: whatever it still meant to send is in
    # the sink by the time it has exited.
    consumers.stop_all()
    assert paused.poll() is not None
    assert len(smtp_sink.messages) - before <= IN_FLIGHT
    _each_delivered(ids, smtp_sink, {'k%d@example.org' % i for i in range(32)},
                    timeout=10, extra_copies=IN_FLIGHT)
    # Each run the pause held was delivered by the second consumer's claim.
    assert all(Run.get_by_id(i).attempts == 2 for i in unfinished)


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_a_batch_whose_state_database_connections_are_cut_mid_mail_loses_nothing(
        app, consumers, smtp_sink, postgres_url):  # noqa: F811 (the fixture)
    """Every connection to the state database cut, again and again for two
    seconds, while a batch mails: whatever the batch could not record is
    taken back (reaper) or retried, and every run is delivered, every
    recipient mailed, a second copy only for a message whose record was cut."""
    import time
    import psycopg
    from conftest import wait_until
    demo.seed(customers=20, orders=50)
    smtp_sink.data_delay = 0.2
    consumers.start()
    ids = _post_burst(app, 32)
    wait_until(lambda: _batch_mailing(ids), timeout=60, message='a batch part-way mailed')
    cut, deadline = 0, time.monotonic() + 2
    while time.monotonic() < deadline:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            cut += admin.execute(
                'SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity '
                'WHERE datname = current_database() AND pid <> pg_backend_pid()').fetchone()[0]
        time.sleep(0.2)
    assert cut > 0  # the consumer's connections were there to cut
    smtp_sink.data_delay = 0
    _each_delivered(ids, smtp_sink, {'k%d@example.org' % i for i in range(32)},
                    timeout=120, extra_copies=3)


def test_a_slot_queues_a_task_per_batch_and_its_other_runs_wait_for_them(
        make_jobs, catalogue, shop, smtp_sink):
    """A slot of runs that would get one file makes one task per batch (no
    more than the report's turns); the rest wait with no task, and are
    served by those batches or handed a turn after."""
    import datetime

    import schedules
    import turns
    jobs = make_jobs(registry=catalogue, batch_runs=3, max_concurrent_per_report=2)
    made = datetime.datetime(2025, 1, 10, 12)
    for i in range(7):
        schedules.create_schedule(catalogue, jobs.settings, {
            'name': 'same-%d' % i, 'report': 'nonce', 'to': ['p%d@example.org' % i],
            'cron': '0 2 * * *', 'timezone': 'UTC'}, made)
    schedules.create_schedule(catalogue, jobs.settings, {
        'name': 'other', 'report': 'nonce', 'params': {'min_id': 5},
        'to': ['other@example.org'], 'cron': '0 2 * * *', 'timezone': 'UTC'}, made)
    created = jobs.tick(datetime.datetime(2025, 1, 11, 2, 0, 3))
    assert len(created) == 8
    # 7 runs, 3 a batch, 2 turns: 2 tasks; the other parameters: 1.
    assert jobs.huey.pending_count() == 3
    assert Run.select().where(turns.waiting_for_turn()).count() == 5
    run_queued(jobs, limit=50)
    done = list(Run.select())
    assert all(r.status == RunStatus.DELIVERED for r in done)
    assert sorted(m['to'][0] for m in smtp_sink.messages) == sorted(
        ['other@example.org'] + ['p%d@example.org' % i for i in range(7)])
    groups = {frozenset(nonces(m['message'])[0]) for m in smtp_sink.messages
              if m['to'][0] != 'other@example.org'}
    assert len(groups) <= 3  # 7 runs served by at most 3 queries
    assert Delivery.select().where(Delivery.status == DeliveryStatus.SENT).count() == 8


def test_a_big_slot_queues_each_chunk_as_the_tick_commits_it(
        make_jobs, catalogue, shop, smtp_sink, monkeypatch):
    """The tick makes a slot's runs TICK_CHUNK schedules at a time and
    queues each chunk's leaders once it commits: a slot of a thousand starts
    mailing while the rest are made. Every run still goes out once."""
    import datetime

    import schedules
    import turns
    monkeypatch.setattr(schedules, 'TICK_CHUNK', 3)
    jobs = make_jobs(registry=catalogue, max_concurrent_per_report=2)
    made = datetime.datetime(2025, 1, 10, 12)
    for i in range(7):
        schedules.create_schedule(catalogue, jobs.settings, {
            'name': 'same-%d' % i, 'report': 'nonce', 'to': ['p%d@example.org' % i],
            'cron': '0 2 * * *', 'timezone': 'UTC'}, made)
    queued_while_making = []
    real = runs.create_run

    def noting_the_queue(*args, **kwargs):
        queued_while_making.append(jobs.huey.pending_count())
        return real(*args, **kwargs)
    monkeypatch.setattr(runs, 'create_run', noting_the_queue)
    created = jobs.tick(datetime.datetime(2025, 1, 11, 2, 0, 3))
    assert len(created) == 7
    # Chunks of 3, 3 and 1: nothing queued while the first is made, its
    # leader while the second is, both leaders while the last one is.
    assert queued_while_making == [0, 0, 0, 1, 1, 1, 2]
    assert jobs.huey.pending_count() == 3
    assert Run.select().where(turns.waiting_for_turn()).count() == 4
    run_queued(jobs, limit=50)
    assert all(r.status == RunStatus.DELIVERED for r in Run.select())
    assert sorted(m['to'][0] for m in smtp_sink.messages) == sorted(
        'p%d@example.org' % i for i in range(7))
    assert Delivery.select().where(Delivery.status == DeliveryStatus.SENT).count() == 7


@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_a_tick_whose_connection_is_cut_after_a_chunk_loses_and_doubles_nothing(
        make_jobs, catalogue, shop, smtp_sink, postgres_url, monkeypatch):
    """The tick's own connection to PostgreSQL terminated (pg_terminate_backend)
    while it makes the second chunk of a slot: the first chunk, committed, is
    queued and mailed; the cut chunk's runs and marks are undone, and the
    next beat makes them. Every schedule's slot is mailed once."""
    import datetime

    import psycopg

    import schedules
    from models import db
    monkeypatch.setattr(schedules, 'TICK_CHUNK', 3)
    jobs = make_jobs(registry=catalogue)
    made = datetime.datetime(2025, 1, 10, 12)
    for i in range(7):
        schedules.create_schedule(catalogue, jobs.settings, {
            'name': 'cut-%d' % i, 'report': 'nonce', 'to': ['c%d@example.org' % i],
            'cron': '0 2 * * *', 'timezone': 'UTC'}, made)
    real, calls = runs.create_run, []

    def cut_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the second chunk's second schedule
            pid = db.execute_sql('SELECT pg_backend_pid()').fetchone()[0]
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                assert admin.execute('SELECT pg_terminate_backend(%s)', (pid,)).fetchone()[0]
        return real(*args, **kwargs)
    monkeypatch.setattr(runs, 'create_run', cut_on_the_fifth)
    slot_time = datetime.datetime(2025, 1, 11, 2, 0, 3)
    assert jobs.clock_beat(slot_time) == []  # the beat saw the database go
    db.close()
    assert Run.select().count() == 3  # the first chunk only
    run_queued(jobs, limit=20)
    assert sorted(m['to'][0] for m in smtp_sink.messages) == ['c0@example.org',
                                                             'c1@example.org', 'c2@example.org']
    # The next beat makes the four the cut gave back, once each.
    assert len(jobs.clock_beat(slot_time + datetime.timedelta(seconds=5))) == 4
    run_queued(jobs, limit=20)
    done = list(Run.select())
    assert len(done) == 7 and all(r.status == RunStatus.DELIVERED for r in done)
    assert sorted(r.schedule for r in done) == ['cut-%d' % i for i in range(7)]
    assert sorted(m['to'][0] for m in smtp_sink.messages) == sorted(
        'c%d@example.org' % i for i in range(7))


def test_a_batch_reads_its_schedules_once_each_run_still_its_own_zone_and_webhook(
        make_jobs, catalogue, shop, smtp_sink, caplog):
    """A batch reads its runs' schedules once (runmessages.read_once), not
    per run: each message still dates the slot in its own schedule's
    timezone, and only the schedule with a webhook of its own has its
    delivery announced."""
    import datetime

    import schedules
    from models import Notice
    jobs = make_jobs(registry=catalogue, webhook_private=True)
    made = datetime.datetime(2025, 1, 10, 12)
    # One instant, 02:00 UTC on 11 January, in three zones.
    for name, cron, zone in (('utc', '0 2 * * *', 'UTC'),
                             ('new-york', '0 21 * * *', 'America/New_York'),
                             ('tokyo', '0 11 * * *', 'Asia/Tokyo')):
        schedules.create_schedule(catalogue, jobs.settings, dict({
            'name': name, 'report': 'nonce', 'to': ['%s@example.org' % name], 'cron': cron,
            'timezone': zone, 'subject': 'Nonce for {{ date }}'},
            **({'webhook': 'http://127.0.0.1:9/hook'} if name == 'tokyo' else {})), made)
    created = jobs.tick(datetime.datetime(2025, 1, 11, 2, 0, 3))
    assert len(created) == 3
    with caplog.at_level(logging.DEBUG, logger='peewee'):
        run_queued(jobs, limit=10)
    # Peewee logs each statement as (sql, params): one schedule looked up by
    # name is the leader's own (its timezone, its webhook), none for the two
    # runs it serves.
    by_name = [record.msg for record in caplog.records if record.name == 'peewee'
               and isinstance(record.msg, tuple) and 'FROM "nightshift_schedule"' in
               record.msg[0] and '"name" = ' in record.msg[0]]
    assert {params[0] for _, params in by_name} == {'utc'}
    done = list(Run.select().order_by(Run.id))
    assert all(r.status == RunStatus.DELIVERED for r in done)
    assert sorted(r.batch_of is None for r in done) == [False, False, True]
    subjects = {m['to'][0]: m['message']['Subject'] for m in smtp_sink.messages}
    assert subjects == {'utc@example.org': 'Nonce for 2025-01-11',
                        'new-york@example.org': 'Nonce for 2025-01-10',
                        'tokyo@example.org': 'Nonce for 2025-01-11'}
    # (A slot this old is also judged late: announced for tokyo alone too.)
    notices = [(n.event, n.schedule) for n in Notice.select()]
    assert ('run.delivered', 'tokyo') in notices
    assert {schedule for _, schedule in notices} == {'tokyo'}


def test_tasks_for_a_slot(make_settings):
    import types
    settings = make_settings({}, batch_runs=500, max_concurrent_per_report=2)

    def run(i, **values):
        fields = dict(id=i, report='orders', params={'a': 1}, format='csv',
                      escape_formulas=True, bom=True, split_by=None, trigger='schedule')
        fields.update(values)
        return types.SimpleNamespace(**fields)
    same = [run(i) for i in range(1000)]
    split = run(2000, split_by='email')
    other = run(3000, params={'a': 2})
    queue, wait = batches.tasks_for(same + [split, other], settings)
    assert [r.id for r in queue] == [0, 1, 2000, 3000]
    assert [r.id for r in wait] == list(range(2, 1000))
    no_limit = make_settings({}, batch_runs=300, max_concurrent_per_report=0)
    queue, wait = batches.tasks_for(same, no_limit)
    assert [r.id for r in queue] == [0, 1, 2, 3] and len(wait) == 996
    alone = make_settings({}, batch_runs=1)
    assert batches.tasks_for(same, alone) == (same, [])


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['sqlite'], indirect=True)
def test_a_slots_waiting_runs_are_all_delivered_when_the_consumer_dies_mid_batch(
        settings, consumers, smtp_sink):  # noqa: F811 (the fixture)
    """A slot queues a task per batch and leaves the rest waiting with no
    task (batches.tasks_for). kill -9 while the batches mail: the next
    consumer reaps the batches' silent runs and hands the waiting ones
    their turns. Every run delivered, every recipient mailed."""
    import datetime
    import os
    import signal

    import schedules
    import turns
    from conftest import demo_catalogue, wait_until
    from models import utcnow
    demo.seed(customers=20, orders=50)
    slot = utcnow().replace(second=0, microsecond=0)
    for i in range(24):
        schedules.create_schedule(demo_catalogue(), settings, {
            'name': 'slot-%02d' % i, 'report': 'customers', 'to': ['s%d@example.org' % i],
            'cron': '%d %d * * *' % (slot.minute, slot.hour), 'timezone': 'UTC'},
            slot - datetime.timedelta(seconds=1))  # marked before the slot: due
    # Batches of 8, two turns: 2 tasks, 22 runs waiting with no task.
    consumers.env = dict(consumers.env, NIGHTSHIFT_BATCH_RUNS='8')
    smtp_sink.data_delay = 0.8
    first = consumers.start()
    of_slot = Run.select(Run.id).where(Run.slot_at == slot)
    wait_until(lambda: of_slot.count() == 24, timeout=60, message='the slot made 24 runs')
    ids = [r.id for r in of_slot]
    # 2 tasks: the other 22 runs wait with no task, or are already claimed by
    # one of the two batches (7 each).
    assert Run.select().where(turns.waiting_for_turn() | Run.batch_of.is_null(False)) \
        .count() == 22
    wait_until(lambda: 3 <= Run.select().where(Run.id.in_(ids), Run.status ==
                                               RunStatus.DELIVERED).count() < 12,
               timeout=60, message='the batches part-way mailed')
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    running = [r.id for r in Run.select().where(Run.id.in_(ids),
                                                Run.status == RunStatus.RUNNING)]
    assert running  # the batches' runs the dead consumer held
    wait_until(lambda: all(silent_past_stale_after(i) for i in running
                           if Run.get_by_id(i).status == RunStatus.RUNNING),
               timeout=30, message='the batches silent past stale_after')
    smtp_sink.data_delay = 0
    consumers.start()  # its start-up tick reaps, and hands the free turns out
    _each_delivered(ids, smtp_sink, {'s%d@example.org' % i for i in range(24)},
                    timeout=90, extra_copies=2 * IN_FLIGHT)
