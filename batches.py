"""Runs that share one query: a burst of runs of the same report with the
same parameters (a slot of many schedules, many POSTs at once) is served by
one query and one file, each run still mailed, recorded and fenced on its own.

The worker that claims a fresh run (the leader) also claims, in one
statement, up to `batch_runs - 1` other fresh runs whose file would be the
same bytes: same report, parameters, format, formula escaping and BOM, not
split, never tried, with no file yet. Those companions are marked
`batch_of = leader`; together they hold one turn of the report (one query
on its source), which is what `max_concurrent_per_report` protects.

Each companion gets its own copy of the file (a hard link where the store
keeps files locally), named by its own attachment template, and its own
message, Message-ID and delivery records, through the same functions a lone
run uses. Data is never older than the run: the query starts after every
member of the batch was created.

A companion the leader could not serve (the leader failed before mailing
it, or its worker is stopping) is released: queued again as never tried,
keeping any file published for it so that its next attempt sends the same
data. A worker that dies leaves the batch's runs silent; the reaper queues
each again like any other run.

A companion whose mail must be tried again later (a 4xx) is queued with
its backoff and a task for then; its own task from the burst, if still in
the queue, may try it once before that (at-least-once, as ever).
"""
import contextlib
import json
import logging
import math
import threading
from typing import List, Tuple

import turns
from models import Run, db, db_now, utcnow
from vocab import RunStatus, Trigger

logger = logging.getLogger('nightshift.runs')

# Runs executed by whoever made them, not by a worker's task: a download
# streams in the web server, scripts/export.py runs its run in-process; a
# test send is one person's check of one message.
_ALONE = (Trigger.DOWNLOAD, Trigger.CLI, Trigger.TEST)


def can_lead(run, attempt) -> bool:
    """A run just claimed by `attempt` whose file other runs may share:
    fresh (its first attempt, no file yet) and one file for all its
    recipients (a split run makes one per person)."""
    return (not run.split_by and attempt.number == 1 and run.file_key is None
            and run.trigger not in _ALONE)


def _file_key(run):
    # What _same_file_as compares, for runs in hand.
    return (run.report, json.dumps(run.params, sort_keys=True), run.format,
            run.escape_formulas, run.bom)


def tasks_for(runs, settings) -> Tuple[List, List]:
    """(to queue, to wait): of fresh runs made together (a slot's tick),
    those whose own task starts them, and those that wait for a turn with
    no task (turns.py), to be served by a batch one of the first leads.

    Per group that would get the same file, one run leads each batch_runs
    runs, no more than the report's turns (max_concurrent_per_report): a
    tick's chunk of 100 such runs makes 1 task rather than 100, of which 99
    would find their run served already. A run a batch does not take gets
    its turn when one frees (turns.hand_turns), or from the tick's
    hand_free_turns, as any run waiting for a turn."""
    if settings.batch_runs <= 1:
        return list(runs), []
    groups = {}
    for run in runs:
        if not (run.split_by or run.trigger in _ALONE):
            groups.setdefault(_file_key(run), []).append(run)
    limit = settings.max_concurrent_per_report
    waiting = set()
    for group in groups.values():
        leaders = math.ceil(len(group) / settings.batch_runs)
        if limit:
            leaders = min(leaders, limit)
        waiting.update(id(run) for run in group[leaders:])
    # In the order they were made.
    return ([run for run in runs if id(run) not in waiting],
            [run for run in runs if id(run) in waiting])


def _same_file_as(run):
    return ((Run.report == run.report) & (Run.params == run.params)
            & (Run.format == run.format) & (Run.escape_formulas == run.escape_formulas)
            & (Run.bom == run.bom) & Run.split_by.is_null())


def _fresh():
    # Queued and never tried: its task not run yet, or waiting for a turn
    # (turns.py). A retry waits for its own delay, with its own file.
    return ((Run.status == RunStatus.QUEUED) & (Run.attempts == 0) & Run.file_key.is_null()
            & Run.trigger.not_in(_ALONE)
            & (Run.next_attempt_at.is_null() | turns.waiting_for_turn()))


def claim_companions(leader, run, limit, now=None) -> List:
    """Claim up to `limit` fresh runs that `run` (claimed as attempt
    `leader`) can serve with its file: their Attempts (number 1), those
    waiting for a turn first, then the oldest. A run claimed meanwhile by
    anyone else is not among them."""
    from runs import Attempt
    if limit < 1:
        return []
    # Runs waiting for a turn first: they have no task of their own (a
    # slot's, batches.tasks_for), where a run taken from the queue's hands
    # leaves its task to find it served.
    wanted = [run_id for run_id, in Run.select(Run.id)
              .where(_same_file_as(run) & _fresh() & (Run.id != run.id))
              .order_by(Run.next_attempt_at.is_null(), Run.id).limit(limit).tuples()]
    if not wanted:
        return []
    now = now or db_now()
    with db.atomic():
        Run.update(status=RunStatus.RUNNING, attempts=Run.attempts + 1, started_at=now,
                   heartbeat_at=now, next_attempt_at=None, batch_of=leader.run_id) \
            .where(Run.id.in_(wanted) & _fresh()).execute()
        # The update's count alone would not say which: another leader (or a
        # run's own task) may have claimed some between the two statements.
        mine = [run_id for run_id, in Run.select(Run.id)
                .where(Run.id.in_(wanted), Run.batch_of == leader.run_id,
                       Run.status == RunStatus.RUNNING, Run.attempts == 1)
                .order_by(Run.id).tuples()]
    if mine:
        logger.info('run %d: serves %d more run(s) of %s with the same parameters',
                    leader.run_id, len(mine), run.report)
    return [Attempt(run_id, 1, leader.run_id) for run_id in mine]


def _serving(leader_id):
    # The leader's companions it has not finished with.
    return ((Run.batch_of == leader_id) & (Run.status == RunStatus.RUNNING)
            & (Run.id != leader_id))


def beat(leader_id, now):
    """The batch's companions still running are alive (the leader's own beat
    is fenced by its attempt, runs.Heartbeat)."""
    return Run.update(heartbeat_at=now).where(_serving(leader_id)).execute()


# Batches this process is mailing: leader run id -> set to stop taking runs.
_stops = {}
_stops_lock = threading.Lock()


@contextlib.contextmanager
def serving(leader_id):
    """While the leader mails its batch: an Event that stop_serving sets."""
    stop = threading.Event()
    with _stops_lock:
        _stops[leader_id] = stop
    try:
        yield stop
    finally:
        with _stops_lock:
            if _stops.get(leader_id) is stop:
                del _stops[leader_id]


def stop_serving(leader_id):
    """The batch of `leader_id`, if this process mails it, starts no more of
    its runs; those in hand finish (a cut mid-DATA would send them twice)."""
    with _stops_lock:
        stop = _stops.get(leader_id)
    if stop is not None:
        stop.set()


def release(leader_id, reason) -> List[int]:
    """Give the leader's unserved companions back to the queue, as never
    tried (their attempt was the leader's, not theirs). A file published for
    one stays: its next attempt mails that. Returns their ids, to enqueue."""
    # Its senders first, or one might start a run given back meanwhile.
    stop_serving(leader_id)
    ids = [run_id for run_id, in Run.select(Run.id).where(_serving(leader_id)).tuples()]
    if not ids:
        return []
    released, now = [], utcnow()
    for run_id in ids:
        # One by one, each checked still running in this batch: a companion
        # cancelled or reaped meanwhile is left to whoever has it.
        if Run.update(status=RunStatus.QUEUED, attempts=Run.attempts - 1, batch_of=None,
                      started_at=None, queued_at=now, next_attempt_at=None, error=reason) \
                .where((Run.id == run_id) & _serving(leader_id)).execute():
            released.append(run_id)
    if released:
        logger.info('run %d: %d run(s) it was serving queued again (%s)', leader_id,
                    len(released), reason)
    return released
