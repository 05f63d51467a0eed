"""Turns of a report: a run that finds its report's turns all taken waits,
and the next free turn is handed to it at once.

`max_concurrent_per_report` limits the runs of one report in progress; the
claim (runs.claim) is what holds that limit. A run that finds no free turn
is left queued with no task, its next attempt set to the moment it was
queued: waiting for a turn. Whoever frees a turn hands it on: the worker
that ends a run of the report enqueues the oldest waiting runs, as many as
there are free turns (`pass_turn`); the minute's tick does the same for
every report (`hand_free_turns`), so a run whose finisher died before
handing on is started by the next tick.

A handed turn is a hint, not a lease: the task still claims, and a run
enqueued twice (its own task was still in the queue) is claimed once, the
other task finding it no longer queued.
"""
import functools
import logging

from peewee import fn

import statements
from logformat import run_fields
from models import Run, db
from vocab import RunStatus, Trigger

logger = logging.getLogger('nightshift.turns')


def holding(report, model=Run):
    """The query counting the turns of `report` held (runs.claim counts them
    in its UPDATE, through an alias of Run as `model`). A batch (batches.py)
    is one query on the source: one turn. A download streams in the web
    server, not a worker: it holds none."""
    return (model.select(fn.COUNT(fn.DISTINCT(fn.COALESCE(model.batch_of, model.id))))
            .where((model.report == report) & (model.status == RunStatus.RUNNING)
                   & (model.trigger != Trigger.DOWNLOAD)))


def in_progress(report):
    """How many turns of `report` are held. Every task of a burst asks
    (runs.claim): holding()'s text is made once (statements.py says why)."""
    database = db.obj
    return database.execute_sql(_in_progress_sql(database),
                                (report, RunStatus.RUNNING, Trigger.DOWNLOAD)).fetchone()[0]


@functools.lru_cache(maxsize=16)
def _in_progress_sql(database):
    sql, params = holding('\0report').sql()
    # Its values, in the order in_progress passes them.
    assert params == ['\0report', RunStatus.RUNNING, Trigger.DOWNLOAD], params
    return sql


def waiting_for_turn():
    """A queued run waiting for a turn: its next attempt is the moment it
    was queued (wait_for_turn). A run never tried has none (its task is in
    the queue, or its creator's hands); a retry's is its own time, and its
    own task comes then."""
    return Run.next_attempt_at == Run.queued_at


def wait_for_turn(run_id):
    """Record that the queued run waits for a turn, with no task; False
    when it is no longer queued (another worker has it, or it ended)."""
    # Most tasks of a burst of posted runs come here: statements.py says why.
    return bool(statements.update(Run, {'next_attempt_at': statements.Column('queued_at')},
                                  ('id', '=', run_id), ('status', '=', RunStatus.QUEUED)))


def wait_for_turns(run_ids, chunk=500):
    """wait_for_turn for many runs made together, a statement per `chunk`."""
    for start in range(0, len(run_ids), chunk):
        Run.update(next_attempt_at=Run.queued_at).where(
            Run.id.in_(run_ids[start:start + chunk]), Run.status == RunStatus.QUEUED).execute()


def _waits():
    return ((Run.status == RunStatus.QUEUED) & (Run.trigger != Trigger.DOWNLOAD)
            & waiting_for_turn())


def waiting(report):
    """`report`'s runs a free turn goes to, the oldest first."""
    return Run.select(Run.id).where((Run.report == report) & _waits()).order_by(Run.id)


def hand_turns(report, limit, enqueue):
    """Enqueue the oldest waiting runs of `report`, one per free turn (all
    of them with no limit: it was lifted while they waited). Returns their ids."""
    query = waiting(report)
    # The waiting runs first: usually there are none, and no count is needed.
    handed = [run_id for run_id, in (query.limit(limit) if limit else query).tuples()]
    if handed and limit:
        handed = handed[:max(limit - in_progress(report), 0)]
    for run_id in handed:
        logger.debug('run %d: a turn of %s is free; started', run_id, report,
                     extra=run_fields(run_id, report))
        enqueue(run_id)
    return handed


def pass_turn(run_id, settings, enqueue):
    """A run has ended (or stopped) in this worker: its turn goes to the
    report's oldest waiting run at once. Returns the ids enqueued."""
    report = Run.select(Run.report).where(Run.id == run_id).scalar()
    if report is None:
        return []
    return hand_turns(report, settings.max_concurrent_per_report, enqueue)


def hand_free_turns(settings, enqueue):
    """The tick's safety net: every report with waiting runs and free turns
    gets them started (a finisher that died before handing on its turn).
    Returns the ids enqueued."""
    reports = [report for report, in Run.select(Run.report).distinct().where(_waits()).tuples()]
    handed = []
    for report in reports:
        handed += hand_turns(report, settings.max_concurrent_per_report, enqueue)
    if handed:
        logger.info('%d waiting run(s) started on free turns', len(handed))
    return handed
