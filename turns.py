"""Turns of a report: a run that finds its report's turns all taken waits,
and the next free turn is handed to it at once.

`max_concurrent_per_report` limits the runs of one report in progress; the
claim (runs.claim) is what holds that limit. A run that finds no free turn
is left queued with no task and no time set: waiting for a turn. Whoever
frees a turn hands it on: the worker that ends a run of the report enqueues
the oldest waiting runs, as many as there are free turns (`pass_turn`); the
minute's tick does the same for every report's runs that have waited a
while (`hand_free_turns`), so a run whose finisher died before handing on
is started by a later tick.

A handed turn is a hint, not a lease: the task still claims, and a run
enqueued twice (its own task was still in the queue) is claimed once, the
other task finding it no longer queued.
"""
import datetime
import logging

from peewee import fn

from logformat import run_fields
from models import Run, utcnow
from vocab import RunStatus, Trigger

logger = logging.getLogger('nightshift.turns')


def in_progress(report):
    """Runs of `report` holding a turn (a download streams in the web
    server, not a worker: it holds none)."""
    return (Run.select(fn.COUNT(Run.id))
            .where(Run.report == report, Run.status == RunStatus.RUNNING,
                   Run.trigger != Trigger.DOWNLOAD).scalar())


def _waits(now, queued_before=None):
    # Queued with no retry still to wait for; a download never queues.
    condition = ((Run.status == RunStatus.QUEUED) & (Run.trigger != Trigger.DOWNLOAD)
                 & (Run.next_attempt_at.is_null() | (Run.next_attempt_at <= now)))
    if queued_before is not None:
        condition &= (Run.queued_at < queued_before)
    return condition


def waiting(report, now=None, queued_before=None):
    """`report`'s runs a free turn goes to, the oldest first."""
    return (Run.select(Run.id)
            .where((Run.report == report) & _waits(now or utcnow(), queued_before))
            .order_by(Run.id))


def hand_turns(report, limit, enqueue, now=None, queued_before=None):
    """Enqueue the oldest waiting runs of `report` (queued before
    `queued_before`, when given), one per free turn. Returns their ids."""
    free = limit - in_progress(report)
    if free <= 0:
        return []
    handed = [run_id for run_id, in waiting(report, now, queued_before).limit(free).tuples()]
    for run_id in handed:
        logger.debug('run %d: a turn of %s is free; started', run_id, report,
                     extra=run_fields(run_id, report))
        enqueue(run_id)
    return handed


def pass_turn(run_id, settings, enqueue, now=None):
    """A run has ended (or stopped) in this worker: its turn goes to the
    report's oldest waiting run at once. Returns the ids enqueued."""
    if not settings.max_concurrent_per_report:
        return []
    report = Run.select(Run.report).where(Run.id == run_id).scalar()
    if report is None:
        return []
    return hand_turns(report, settings.max_concurrent_per_report, enqueue, now)


def hand_free_turns(settings, enqueue, now=None):
    """The tick's safety net: every report with free turns gets its runs
    that have waited at least `stale_after` started (a finisher that died
    before handing on its turn). The age spares the runs just queued, whose
    tasks are still in the queue. Returns the ids enqueued."""
    if not settings.max_concurrent_per_report:
        return []
    now = now or utcnow()
    before = now - datetime.timedelta(seconds=settings.stale_after)
    reports = [report for report, in
               Run.select(Run.report).distinct().where(_waits(now, before)).tuples()]
    handed = []
    for report in reports:
        handed += hand_turns(report, settings.max_concurrent_per_report, enqueue, now, before)
    if handed:
        logger.info('%d waiting run(s) started on free turns', len(handed))
    return handed
