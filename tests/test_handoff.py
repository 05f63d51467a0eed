"""Turns of a report are handed on, not waited for: a run that finds every
turn of its report taken waits with no task and no time set, the run that
ends hands its turn to the oldest waiting one at once, and the minute's tick
starts a waiting run whose finisher died before handing on. The limit
(`max_concurrent_per_report`) holds throughout."""
import datetime
import signal
import threading
import time

import pytest

import demo
import runs
import turns
from conftest import demo_catalogue, run_queued, wait_until
from loopback import idle_turn_gaps
from models import Run, db, db_now, utcnow
from vocab import Ending, RunStatus

registry = demo_catalogue()


@pytest.fixture
def shop(database):
    demo.seed(customers=20, orders=100)


def create(jobs, to='a@example.org'):
    return runs.create_run(registry, jobs.settings, 'customers', {}, [to])


def queued(jobs, to='a@example.org'):
    run = create(jobs, to)
    jobs.enqueue_run(run)
    return run.id


def queue_empty(jobs):
    return jobs.huey.pending_count() == 0 and jobs.huey.scheduled_count() == 0


def test_a_run_with_no_free_turn_waits_without_a_timer_and_is_handed_the_next_turn(
        make_jobs, shop, smtp_sink):
    jobs = make_jobs(max_concurrent_per_report=1, retry_delay=30)
    first, second = queued(jobs), queued(jobs, 'b@example.org')
    # Another worker holds the report's only turn.
    jobs.huey.dequeue()
    held = runs.claim(first, report='customers', limit=1)
    jobs.huey.dequeue()  # the second run's task, carried out here
    assert runs.execute_run(second, jobs.registry, jobs.settings, jobs.mailer,
                            jobs.store).status == Ending.BUSY
    # Waiting: queued, due since it was queued, no task in the queue or its schedule.
    waiting = Run.get_by_id(second)
    assert waiting.status == RunStatus.QUEUED
    assert waiting.next_attempt_at == waiting.queued_at
    assert queue_empty(jobs) and waiting.attempts == 0
    # The turn ends: handed on at once, to the waiting run.
    held.update(status=RunStatus.DELIVERED, finished_at=utcnow())
    jobs.pass_turn(first)
    assert jobs.huey.pending_count() == 1
    assert run_queued(jobs) == 1
    assert Run.get_by_id(second).status == RunStatus.DELIVERED
    assert [m['to'] for m in smtp_sink.messages] == [['b@example.org']]


def test_a_busy_task_is_not_retried_by_huey(make_jobs, shop, smtp_sink):
    """Through the task: the BUSY run's task ends, nothing comes back on a timer."""
    jobs = make_jobs(max_concurrent_per_report=1, retry_delay=30)
    first, second = queued(jobs), queued(jobs, 'b@example.org')
    jobs.huey.dequeue()
    runs.claim(first, report='customers', limit=1)
    assert run_queued(jobs) == 1
    assert queue_empty(jobs)
    assert Run.get_by_id(second).status == RunStatus.QUEUED


@pytest.mark.parametrize('ending', ['delivered', 'failed', 'retried'])
def test_every_ending_hands_on_its_turn(make_jobs, shop, smtp_sink, ending):
    """Delivered, failed for good, or to be retried later: the worker that
    ends the run starts the report's waiting run at once."""
    jobs = make_jobs(max_concurrent_per_report=1, max_attempts=3, retry_delay=30)
    if ending == 'failed':
        smtp_sink.refuse['a@example.org'] = '550 5.1.1 no such user'
    elif ending == 'retried':
        smtp_sink.rcpt_replies = ['451 4.3.0 try again later']
    first, second = queued(jobs), queued(jobs, 'b@example.org')
    task = jobs.huey.dequeue()
    runs.claim(first, report='customers', limit=1)  # the first run holds the turn
    assert run_queued(jobs) == 1  # the second waits
    runs.hand_back(first, 'let its own task run it')
    jobs.huey.execute(task)
    expected = {'delivered': 'delivered', 'failed': 'failed', 'retried': 'queued'}
    assert Run.get_by_id(first).status == expected[ending]
    assert jobs.huey.pending_count() == 1  # the waiting run, handed the turn
    assert run_queued(jobs) == 1
    assert Run.get_by_id(second).status == RunStatus.DELIVERED
    assert smtp_sink.messages[-1]['to'] == ['b@example.org']


def test_a_waiting_run_whose_finisher_died_is_started_by_the_tick(make_jobs, shop, smtp_sink):
    jobs = make_jobs(max_concurrent_per_report=1)
    first, second = queued(jobs), queued(jobs, 'b@example.org')
    jobs.huey.dequeue()
    held = runs.claim(first, report='customers', limit=1)
    assert run_queued(jobs) == 1  # the second run: no turn, waits
    # Its finisher records the run delivered and dies before handing on.
    held.update(status=RunStatus.DELIVERED, finished_at=utcnow())
    assert queue_empty(jobs)
    jobs.tick()
    assert run_queued(jobs) == 1
    assert Run.get_by_id(second).status == RunStatus.DELIVERED
    assert len(smtp_sink.messages) == 1


def test_a_waiting_run_behind_a_dead_worker_runs_after_the_reaper(make_jobs, shop, smtp_sink):
    """The worker holding the turn dies mid-run: the reaper queues its run
    again, that run takes the turn, and its end hands it to the waiting one.
    Each recipient gets exactly one message; never two runs at once."""
    jobs = make_jobs(max_concurrent_per_report=1)
    first, second = queued(jobs), queued(jobs, 'b@example.org')
    jobs.huey.dequeue()  # the dead worker's task
    runs.claim(first, report='customers', limit=1)
    assert run_queued(jobs) == 1
    Run.update(heartbeat_at=utcnow() - datetime.timedelta(minutes=5)) \
        .where(Run.id == first).execute()
    jobs.tick()
    run_queued(jobs, limit=10)
    assert [Run.get_by_id(i).status for i in (first, second)] == ['delivered', 'delivered']
    assert sorted(m['to'][0] for m in smtp_sink.messages) == [
        'a@example.org', 'b@example.org']
    first_run, second_run = Run.get_by_id(first), Run.get_by_id(second)
    assert second_run.started_at >= first_run.finished_at - datetime.timedelta(seconds=0.01)


def test_the_tick_leaves_reports_without_free_turns_alone(make_jobs, shop):
    jobs = make_jobs(max_concurrent_per_report=1)
    first, second = queued(jobs), queued(jobs)
    jobs.huey.dequeue()
    runs.claim(first, report='customers', limit=1)
    assert run_queued(jobs) == 1
    assert Run.get_by_id(second).next_attempt_at is not None  # waiting
    jobs.tick()
    assert queue_empty(jobs)


def test_a_long_wait_is_not_taken_for_a_lost_task(make_jobs, shop):
    """Past requeue_after a waiting run is still waiting, not re-queued by
    the reaper at every tick (a long backlog would flood the queue)."""
    jobs = make_jobs(max_concurrent_per_report=1)
    first, second = queued(jobs), queued(jobs)
    jobs.huey.dequeue()
    runs.claim(first, report='customers', limit=1)
    assert run_queued(jobs) == 1
    later = utcnow() + datetime.timedelta(seconds=jobs.settings.requeue_after + 60)
    Run.update(heartbeat_at=db_now()).where(Run.id == first).execute()
    jobs.tick(later)
    assert queue_empty(jobs)
    assert Run.get_by_id(second).next_attempt_at == Run.get_by_id(second).queued_at


def test_runs_waiting_when_the_limit_is_lifted_are_started_by_the_tick(make_jobs, shop,
                                                                     smtp_sink):
    jobs = make_jobs(max_concurrent_per_report=1)
    first, second = queued(jobs), queued(jobs, 'b@example.org')
    jobs.huey.dequeue()
    runs.claim(first, report='customers', limit=1)
    assert run_queued(jobs) == 1
    unlimited = make_jobs(max_concurrent_per_report=0)
    unlimited.tick()
    assert run_queued(unlimited) == 1
    assert Run.get_by_id(second).status == RunStatus.DELIVERED


def test_a_run_never_tried_is_not_handed_a_turn(make_jobs, shop, smtp_sink):
    """A run recorded but not queued (its creator enqueues it after the
    commit, or chose not to) is not started by someone else's turn. (Only a
    batch takes such a run along, tests/test_batches.py; here runs query alone.)"""
    jobs = make_jobs(max_concurrent_per_report=1, batch_runs=1)
    first = queued(jobs)
    recorded = create(jobs, 'b@example.org').id
    assert run_queued(jobs) == 1
    jobs.tick()
    assert queue_empty(jobs)
    assert Run.get_by_id(recorded).status == RunStatus.QUEUED
    assert Run.get_by_id(first).status == RunStatus.DELIVERED


# --- a burst through a real consumer ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['sqlite', 'postgres'], indirect=True)
@pytest.mark.parametrize('batch_runs', [1, 500])
def test_a_burst_of_one_report_keeps_its_turns_busy(make_jobs, shop, smtp_sink, batch_runs):
    """Runs alone (batch_runs 1): never more than the limit running, no turn
    left idle. Batched (the default, batches.py): the runs share queries, and
    never more than the limit of queries (batches) run at once."""
    # max_concurrent_per_report at its default
    jobs = make_jobs(batch_runs=batch_runs)
    limit = jobs.settings.max_concurrent_per_report
    assert limit == 2
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer = jobs.huey.create_consumer(workers=4, periodic=False, worker_type='thread')
    seen, stop = [], threading.Event()

    def sample():
        try:
            while not stop.is_set():
                seen.append(turns.in_progress('customers'))
                time.sleep(0.005)
        finally:
            db.close()
    sampler = threading.Thread(target=sample)
    try:
        consumer.start()
        sampler.start()
        ids = [create(jobs, 'r%d@example.org' % i).id for i in range(30)]
        for run_id in ids:
            jobs.run_report(run_id)
        wait_until(lambda: Run.select().where(Run.status == RunStatus.DELIVERED).count() == 30,
                   timeout=60, interval=0.1, message='all 30 runs delivered')
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        consumer.stop(graceful=True)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    rows = list(Run.select().where(Run.id.in_(ids)))
    assert all(r.status == RunStatus.DELIVERED and r.attempts == 1 for r in rows)
    assert len(smtp_sink.messages) == 30
    # Sampled, not read from the recorded times: a claim reads the clock
    # before its UPDATE, which counts the finisher's commit, so those can
    # overlap by a few milliseconds while the limit held.
    if batch_runs > 1:
        assert len(seen) > 10 and 1 <= max(seen) <= limit
        assert sum(r.batch_of is not None for r in rows) >= 15
        return
    assert len(seen) > 50 and max(seen) == limit
    gaps = idle_turn_gaps(rows, limit)
    print('longest idle turn: %.3f s' % max(gaps, default=0))
    assert max(gaps, default=0) < 1.5, sorted(gaps)[-5:]
