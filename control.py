"""Acting on runs: cancel one, run one again, run a schedule's past slots.

Plain functions: the API (controlapi.py), the page (through the API) and
scripts/control.py call these.

Cancelling is a compare-and-set on the run's status, like every other move a
run makes: a worker's writes are fenced by its attempt (runs.Attempt), which
only holds while the run is `running`, so the attempt of a cancelled run
finds at its next heartbeat or write that the run is no longer its own and
stops, sending nothing; it can never mark the run delivered afterwards.
"""
import datetime
import logging

from peewee import IntegrityError

import cron
import runmessages
import runs
import schedules
from errors import Conflict, InputError, NotFound
from logformat import run_fields
from models import Delivery, Run, Schedule, db, iso_z, utcnow
from runfiles import discard_files
from vocab import DeliveryStatus, RunStatus, Trigger

logger = logging.getLogger('nightshift.control')

CANCELLABLE = (RunStatus.QUEUED, RunStatus.RUNNING)
RERUNNABLE = (RunStatus.FAILED, RunStatus.CANCELLED)
# Recipients who have (or may have) the message: past this, cancel is refused.
STARTED_SENDING = (DeliveryStatus.SENDING, DeliveryStatus.SENT)


def find_run(run_id):
    run = Run.get_or_none(Run.id == run_id) if 0 < run_id < 2 ** 63 else None
    if run is None:
        raise NotFound('no run %d' % run_id, 'id')
    return run


def cancel_run(settings, store, run_id, by=None, now=None) -> Run:
    """queued or running -> cancelled, before any mail went out.

    Conflict (409) when the run is over already, or its mail is being sent
    or was sent to someone. A queued run's files are removed at once; a
    running one's by its worker, when it stops (runs.execute_run)."""
    now = now or utcnow()
    run = find_run(run_id)
    reason = 'cancelled by %s' % by if by else 'cancelled'
    was = None
    with db.atomic():
        # The status moves first: the UPDATE takes the run's row, so a worker
        # marking its recipients "sending" (delivery.deliver does that in one
        # transaction with a fenced write to the same row) has either
        # committed before (seen just below) or will find the run not its own.
        # One status at a time, to know which it was: a worker may have
        # claimed the run since it was read.
        for status in CANCELLABLE:
            if (Run.update(status=RunStatus.CANCELLED, finished_at=now, error=reason,
                           next_attempt_at=None)
                    .where(Run.id == run_id, Run.status == status).execute()):
                was = status
                break
        if was is not None:
            sending = (Delivery.select()
                       .where(Delivery.run == run_id, Delivery.status.in_(STARTED_SENDING))
                       .exists())
            if sending:
                # Raised inside the transaction: the status change is undone.
                raise Conflict('run %d is sending its mail or has sent it to some '
                               'recipients; it can no longer be cancelled' % run_id, 'id',
                               code='already_sending')
    if was is None:
        status = Run.select(Run.status).where(Run.id == run_id).scalar()
        raise Conflict('run %d is %s; only a queued or running run can be cancelled'
                       % (run_id, status), 'id', code='not_cancellable')
    if was == RunStatus.QUEUED:
        # No worker holds it: whatever an earlier attempt left goes now.
        discard_files(settings, store, run_id)
    logger.info('run %d (%s, %s) %s', run_id, run.report, was, reason,
                extra=run_fields(run_id, run.report))
    return Run.get_by_id(run_id)


def rerun(registry, settings, run_id, trigger=Trigger.WEB, by=None) -> Run:
    """A new queued run of a failed or cancelled run's report, with the same
    parameters, recipients, output options, format, split column and message
    templates, linked to it by `rerun_of`.
    Not yet queued: the caller enqueues it after the commit."""
    old = find_run(run_id)
    if old.status not in RERUNNABLE:
        raise Conflict('run %d is %s; only a failed or cancelled run can be run again'
                       % (run_id, old.status), 'id', code='not_rerunnable')
    if old.trigger == Trigger.DOWNLOAD:
        raise Conflict('run %d was a download, which has no recipients: download the report '
                       'again' % run_id, 'id', code='not_rerunnable')
    with db.atomic():
        # Validated again: the report or the allowed domains may have changed.
        new = runs.create_run(registry, settings, old.report, old.params, old.recipients,
                              trigger=trigger, schedule=old.schedule,
                              escape_formulas=old.escape_formulas, bom=old.bom,
                              split_by=old.split_by, file_format=old.format,
                              message=runmessages.of_schedule(old))
        Run.update(rerun_of=old.id, requested_by=by).where(Run.id == new.id).execute()
    new.rerun_of, new.requested_by = old.id, by
    logger.info('run %d runs run %d again', new.id, old.id,
                extra=run_fields(new.id, new.report))
    return new


# --- backfill ----------------------------------------------------------------

def parse_bound(value, zone, field, end):
    """A backfill bound as naive UTC. A date is a whole day in the schedule's
    timezone (`from` its first moment, `to` its last); a date and time
    without an offset is a wall time there; with an offset (or Z) it is that
    instant."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(field, 'give a date (2026-11-20) or a date and time '
                         '(2026-11-20T07:00) in the schedule\'s timezone', code='required')
    text = value.strip()
    try:
        if len(text) == 10:
            day = datetime.date.fromisoformat(text)
            wall = datetime.datetime.combine(day, datetime.time())
            if end:
                # The day's last moment: its slots up to midnight, not beyond.
                return (cron.to_utc(wall + datetime.timedelta(days=1), zone)
                        - datetime.timedelta(microseconds=1))
            return cron.to_utc(wall, zone)
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(field, '%r is not a date (YYYY-MM-DD) or a date and time '
                         '(YYYY-MM-DDTHH:MM)' % value)
    if moment.tzinfo is not None:
        return moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return cron.to_utc(moment, zone)


def _why_not(run):
    """Why a slot that has a run gets no other."""
    if run.status == RunStatus.DELIVERED:
        return 'delivered', 'run %d delivered this slot' % run.id
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        return str(run.status), (
            'run %d of this slot is %s; re-run it (POST /api/runs/%d/rerun) to try again'
            % (run.id, run.status, run.id))
    if run.status == RunStatus.SKIPPED:
        return 'skipped', 'run %d skipped this slot: %s' % (run.id, run.error)
    return 'in_progress', 'run %d of this slot is %s' % (run.id, run.status)


def backfill(registry, settings, schedule_name, start, end, now=None):
    """Create one run per slot of the schedule from `start` to `end` (both
    included, see parse_bound) that has none yet, each for its own slot.

    Returns (created runs, report) where the report lists what was created
    and every slot skipped with why. The runs are not queued yet: the caller
    enqueues them after the commit. Slots that the schedule's tick missed
    (recorded as `skipped`, missed) are run; slots whose run delivered,
    failed, was cancelled or is under way are left (re-run is the tool for a
    failed one); slots of an enabled schedule that its tick has not reached
    are left to the tick.
    """
    now = now or utcnow()
    schedule = Schedule.get_or_none(Schedule.name == schedule_name)
    if schedule is None:
        raise NotFound('no schedule named %r' % schedule_name, 'name')
    zone = cron.check_timezone(schedule.timezone)
    first = parse_bound(start, zone, 'from', end=False)
    last = parse_bound(end, zone, 'to', end=True)
    if last < first:
        raise InputError('to', 'must not be before from')
    if first > now:
        raise InputError('from', 'must be in the past: backfill runs slots that have passed')
    cap = settings.max_backfill_slots
    slots, more = cron.recent_slots(schedule.cron, zone, first - datetime.timedelta(
        microseconds=1), min(last, now), limit=cap)
    if more:
        raise InputError('to', 'the range holds more than %d slots (max_backfill_slots); '
                         'backfill a shorter range at a time' % cap, code='too_many')
    existing = {run.slot_at: run for run in Run.select().where(
        Run.schedule == schedule.name, Run.slot_at.in_(slots))} if slots else {}
    created, skipped = [], []
    for slot in slots:
        run = existing.get(slot)
        if run is not None and not _missed(run):
            reason, message = _why_not(run)
            skipped.append({'slot_at': iso_z(slot), 'reason': reason, 'message': message,
                            'run': run.id})
            continue
        if schedule.enabled and slot > schedule.checked_through:
            skipped.append({'slot_at': iso_z(slot), 'reason': 'not_reached',
                            'message': "the schedule's tick has not reached this slot yet; "
                                       "it runs it", 'run': None})
            continue
        try:
            created.append(_create(registry, settings, schedule, slot, run, now))
        except IntegrityError:
            skipped.append({'slot_at': iso_z(slot), 'reason': 'exists',
                            'message': 'another run of this slot was made meanwhile',
                            'run': None})
    report = {
        'schedule': schedule.name,
        'from': iso_z(first), 'to': iso_z(min(last, now)),
        'created': [{'id': run.id, 'slot_at': iso_z(run.slot_at), 'status': run.status,
                     'error': run.error, 'url': '/api/runs/%d' % run.id} for run in created],
        'skipped': skipped,
    }
    logger.info('schedule %s: backfill from %s to %s created %d runs, skipped %d slots',
                schedule.name, report['from'], report['to'], len(created), len(skipped))
    return created, report


def _missed(run):
    """A slot the tick recorded as missed (no consumer was running): the
    very case backfill is for."""
    return run.status == RunStatus.SKIPPED and (run.error or '').startswith(schedules.MISSED)


def _create(registry, settings, schedule, slot, missed, now):
    """The slot's run, made by the same function the tick uses, so the slot
    decides what it covers exactly as a run made on time."""
    with db.atomic():
        if missed is not None:
            Run.delete().where(Run.id == missed.id, Run.status == RunStatus.SKIPPED).execute()
        run = schedules._create_slot_run(registry, settings, schedule, slot, now)
        Run.update(trigger=Trigger.BACKFILL).where(Run.id == run.id).execute()
    run.trigger = Trigger.BACKFILL
    return run
