"""Scheduled reports: validation, config sync, and the tick that turns due
slots into runs exactly once.

Every consumer ticks every minute. A tick claims a schedule's slots by
moving its `checked_through` mark with a compare-and-set, and the runs it
creates are unique on (schedule, slot_at); so two consumers, or a restart
inside the same minute, can never create a slot's run twice.
"""
import datetime
import functools
import logging
import re
from typing import NamedTuple

from peewee import IntegrityError, fn

import alarms
import batches
import bursting
import cron
import reldates
import runmessages
import runs
import slotparams
import statements
import turns
from errors import Conflict
from formats import check_format, check_split
from models import Run, Schedule, db, iso_z, utcnow
from params import InputError
from reports import find_report
from settings import SettingsError, hide_path
from vocab import RunStatus, Trigger

logger = logging.getLogger('nightshift.schedules')

NAME = re.compile(r'[a-z0-9][a-z0-9_-]{0,63}\Z')
FIELDS = ('name', 'report', 'params', 'to', 'cron', 'timezone', 'enabled', 'split_by',
          'late_after', 'webhook', 'format') + runmessages.MESSAGE_FIELDS
# Missed slots recorded one by one after downtime; older ones are summarised
# on the oldest record, and the cron walk never goes further back than this.
SKIPPED_RECORD_LIMIT = 100
MISSED = ('missed: not run at its time (no consumer was running, or the tick had '
          'reached max_runs_per_tick); only the latest missed slot is caught up')


def clean(registry, settings, data, current=None):
    """Validate a schedule definition (whole, or a change to `current`).

    Returns the stored form of every field, or raises InputError naming the
    first bad one. Checked now so that a schedule never fails every night.
    """
    if not isinstance(data, dict):
        raise InputError('body', 'must be a JSON object')
    if 'params' in data and not isinstance(data['params'], dict):
        raise InputError('params', 'must be an object of parameter values')
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InputError(unknown[0], 'unknown field; expected %s' % ', '.join(FIELDS),
                         code='unknown_field')
    merged = {}
    if current is not None:
        merged = {'name': current.name, 'report': current.report, 'params': current.params,
                  'to': current.recipients, 'cron': current.cron,
                  'timezone': current.timezone, 'enabled': current.enabled,
                  'split_by': current.split_by,
                  'late_after': current.late_after, 'webhook': current.webhook_url,
                  'format': current.format}
        if 'name' in data and data['name'] != current.name:
            raise InputError('name', 'a schedule cannot be renamed; create a new one')
        if 'report' in data and 'params' not in data:
            merged['params'] = {}
    merged.update(data)
    if current is not None and current.webhook_url \
            and merged.get('webhook') == hide_path(current.webhook_url):
        merged['webhook'] = current.webhook_url  # sent back as shown: unchanged

    name = merged.get('name')
    if not isinstance(name, str) or not NAME.match(name):
        raise InputError('name', 'use 1-64 lowercase letters, digits, - or _ '
                                 '(starting with a letter or digit)')
    try:
        definition = find_report(registry, merged.get('report'))
    except InputError as exc:
        # The schedule exists (or is being made); its report field is wrong.
        raise InputError('report', exc.message, code='invalid')
    # Relative dates stay expressions, resolved at each slot (reldates.py).
    params = reldates.stored_params(definition, merged.get('params'), cron.UTC, utcnow())
    # Split by a column, the data names the recipients: typed ones are optional.
    split_by = bursting.clean_split_by(definition, merged.get('split_by'))
    recipients = [] if split_by and not merged.get('to') \
        else runs.parse_recipients(merged.get('to'), settings)
    try:
        expression = cron.check_cron(merged.get('cron'))
    except ValueError as exc:
        raise InputError('cron', str(exc))
    timezone = merged.get('timezone') or settings.timezone
    try:
        cron.check_timezone(timezone)
    except ValueError as exc:
        raise InputError('timezone', str(exc))
    enabled = merged.get('enabled', True)
    if not isinstance(enabled, bool):
        raise InputError('enabled', 'must be true or false')
    file_format = check_format(merged.get('format'), given='format' in data)
    check_split(file_format, split_by)
    message = runmessages.clean_message(data, params, definition.title, definition.name,
                                        current=current)
    return dict({'name': name, 'report': definition.name, 'params': params,
                 'recipients': recipients, 'cron': expression, 'timezone': timezone,
                 'enabled': enabled, 'split_by': split_by, 'format': file_format}, **message,
                **alarms.schedule_options(merged, settings))


def create_schedule(registry, settings, data, now, managed_by='api'):
    fields = clean(registry, settings, data)
    check_room(settings)
    try:
        with db.atomic():
            return Schedule.create(managed_by=managed_by, checked_through=now,
                                   created_at=now, updated_at=now, **fields)
    except IntegrityError:
        raise Conflict('a schedule named %r exists already' % fields['name'], 'name')


def check_room(settings):
    """Conflict when max_schedules exist already: every schedule costs each
    tick and each listing something, so their number is bounded."""
    count = Schedule.select().count()
    if count >= settings.max_schedules:
        raise Conflict('there are %d schedules, the most allowed (max_schedules = %d); '
                       'delete one first, or raise NIGHTSHIFT_MAX_SCHEDULES'
                       % (count, settings.max_schedules), 'name')


def _check_writable(schedule):
    if schedule.managed_by == 'config':
        raise Conflict('schedule %r is declared in config.ini ([schedule:%s]); change it '
                       'there and restart the consumer' % (schedule.name, schedule.name))


def update_schedule(registry, settings, schedule, data, now):
    _check_writable(schedule)
    fields = clean(registry, settings, data, current=schedule)
    if (fields['cron'], fields['timezone']) != (schedule.cron, schedule.timezone):
        # New timing counts from now: no catching up slots of the new cron.
        schedule.checked_through = max(schedule.checked_through, now)
    if fields['enabled'] and not schedule.enabled:
        schedule.checked_through = max(schedule.checked_through, now)
    for key, value in fields.items():
        setattr(schedule, key, value)
    schedule.updated_at = now
    schedule.save()
    return schedule


def set_enabled(schedule, enabled, now):
    """Pause or resume. Slots that passed while paused are not caught up."""
    _check_writable(schedule)
    if enabled and not schedule.enabled:
        schedule.checked_through = max(schedule.checked_through, now)
    schedule.enabled = enabled
    schedule.updated_at = now
    schedule.save()
    return schedule


def delete_schedule(schedule):
    _check_writable(schedule)
    schedule.delete_instance()


def declared_schedules(registry, settings):
    """The [schedule:*] sections, validated like API input.

    Raises SettingsError naming the section, so a bad one stops start-up.
    """
    if len(settings.schedules) > settings.max_schedules:
        raise SettingsError('max_schedules: config.ini declares %d schedules, more than '
                            'max_schedules = %d' % (len(settings.schedules),
                                                    settings.max_schedules))
    declared = {}
    for spec in settings.schedules:
        data = {'name': spec['name'], 'report': spec['report'], 'params': spec['params'],
                'to': spec.get('to'), 'cron': spec['cron'], 'enabled': spec['enabled']}
        if spec.get('timezone'):
            data['timezone'] = spec['timezone']
        if spec.get('split_by'):
            data['split_by'] = spec['split_by']
        if spec.get('format'):
            data['format'] = spec['format']
        for key in runmessages.MESSAGE_FIELDS:
            if spec.get(key):
                data[key] = spec[key]
        if spec.get('webhook'):
            data['webhook'] = spec['webhook']
        if spec.get('late_after'):
            try:
                data['late_after'] = float(spec['late_after'])
            except ValueError:
                raise SettingsError('[schedule:%s] late_after: %r is not a number of seconds'
                                    % (spec['name'], spec['late_after']))
        try:
            declared[spec['name']] = clean(registry, settings, data)
        except InputError as exc:
            raise SettingsError('[schedule:%s] %s: %s' % (spec['name'], exc.field, exc.message))
    return declared


def sync_config(declared, now):
    """Make the database's config-managed schedules match `declared`."""
    with db.atomic():
        for schedule in Schedule.select().where(Schedule.managed_by == 'config'):
            if schedule.name not in declared:
                schedule.delete_instance()
        for name, fields in declared.items():
            fields = dict(fields)
            existing = Schedule.get_or_none(Schedule.name == name)
            if existing is None:
                Schedule.create(managed_by='config', checked_through=now, created_at=now,
                                updated_at=now, **fields)
                continue
            if existing.managed_by != 'config':
                raise SettingsError('[schedule:%s]: a schedule of that name was made through '
                                    'the API; delete it there or rename the section' % name)
            timing = (fields['cron'], fields['timezone'], fields['enabled'])
            if timing != (existing.cron, existing.timezone, existing.enabled):
                fields['checked_through'] = max(existing.checked_through, now)
            current = {key: getattr(existing, key) for key in fields}
            if current != fields:
                Schedule.update(updated_at=now, **fields) \
                    .where(Schedule.id == existing.id).execute()


def plan(schedule, now, window):
    """(due slot or None, skipped slots, newest slot seen) for one schedule."""
    return plan_slots(schedule, now, window)[:3]


def plan_slots(schedule, now, window):
    """plan(), and whether older missed slots were left out. The walk back is
    bounded: after long downtime only the latest SKIPPED_RECORD_LIMIT missed
    slots are looked at."""
    upcoming = schedule.checked_through and first_slot_after(
        schedule.cron, schedule.timezone, schedule.checked_through)
    if upcoming and upcoming > now:
        return None, [], None, False  # nothing since its mark: most schedules, most beats
    slots, more = _recent_slots(schedule.cron, schedule.timezone, schedule.checked_through,
                                now)
    slots = list(slots)
    if not slots:
        return None, [], None, False
    latest = slots[-1]
    if now - latest <= window:
        return latest, slots[:-1], latest, more
    return None, slots, latest, more


@functools.lru_cache(maxsize=256)
def _recent_slots(expression, timezone, mark, now):
    # Schedules of one slot share cron, timezone and mark, and a beat asks
    # at one `now`: a slot of a thousand schedules walks its cron once.
    slots, more = cron.recent_slots(expression, cron.check_timezone(timezone), mark, now,
                                    limit=SKIPPED_RECORD_LIMIT + 1)
    return tuple(slots), more


@functools.lru_cache(maxsize=4096)
def first_slot_after(expression, timezone, mark):
    """The first slot after `mark` (naive UTC), or None. The same on every
    beat until the mark moves: cached, so a clock beat over a thousand
    schedules does not walk a thousand crons each time."""
    return cron.next_slot(expression, cron.check_timezone(timezone), mark)


def claim_slots(schedule, latest, mark=None):
    """Move the schedule's mark to `latest`, only if it is still `mark`
    (default: as `schedule` was read): the one consumer that succeeds
    handles the slots."""
    mark = schedule.checked_through if mark is None else mark
    return bool(statements.update(Schedule, {'checked_through': latest},
                                  ('id', '=', schedule.id), ('checked_through', '=', mark)))


# What a beat reads of each enabled schedule to find the due ones: whole
# rows (their JSON decoded) of a thousand schedules every beat cost more
# than planning them. Due ones are then read whole, in _whole.
class _Planning(NamedTuple):
    # Read as tuples: a model instance a row cost a tenth of a slot burst.
    id: int
    name: str
    cron: str
    timezone: str
    checked_through: datetime.datetime


_PLANNING = tuple(getattr(Schedule, name) for name in _Planning._fields)


def _whole(ids, chunk=500):
    found = {}
    for start in range(0, len(ids), chunk):
        found.update((s.id, s) for s in Schedule.select().where(
            Schedule.id.in_(ids[start:start + chunk])))
    return found


# Schedules handled in one transaction by a tick (a short hold of SQLite's
# write lock: about 0.1 s).
TICK_CHUNK = 100


def tick(registry, settings, jobs, now):
    """Create the runs that are due at `now` (naive UTC). Returns them.

    At most max_runs_per_tick runs are created; the schedules left over keep
    their mark and are first in line at the next tick (the oldest mark goes
    first), so a burst of schedules at the same minute is spread, not lost.
    """
    window = datetime.timedelta(hours=settings.catchup_hours)
    budget = settings.max_runs_per_tick
    created, deferred = [], 0
    enabled = Schedule.select(*_PLANNING).where(Schedule.enabled == True)  # noqa: E712
    # Read whole before writing: on SQLite a cursor still open keeps its read
    # snapshot, and the first write after another process committed fails at
    # once ("database is locked") instead of waiting its turn.
    planned = []
    for light in [_Planning(*row) for row in
                  enabled.order_by(Schedule.checked_through, Schedule.id).tuples()]:
        plan = plan_slots(light, now, window)
        if plan[2] is not None:  # slots since its mark
            planned.append((light, plan))
    whole = _whole([light.id for light, _ in planned])
    # TICK_CHUNK schedules a transaction: a commit each was a quarter of
    # the tick's time in a slot of a thousand. Each schedule's own
    # (a savepoint) still fails alone.
    for start in range(0, len(planned), TICK_CHUNK):
        made = []
        with db.atomic():
            for light, (due, skipped, latest, more) in planned[start:start + TICK_CHUNK]:
                schedule = whole.get(light.id)
                if schedule is None:
                    continue  # deleted meanwhile
                if due is not None and budget <= 0:
                    deferred += 1  # its mark stays: the next tick takes it first
                    continue
                run = _handle_slots(registry, settings, schedule, light.checked_through,
                                    due, skipped, latest, more, now)
                if run is None:
                    continue
                budget -= 1
                if run.status == RunStatus.QUEUED:
                    made.append(run)
        created += made
        # Queued as soon as they are committed: in a big slot the first
        # batches are mailing while the tick makes the rest.
        _queue(made, settings, jobs)
    if deferred:
        logger.warning('max_runs_per_tick (%d) reached: %d due schedules wait for the '
                       'next tick', settings.max_runs_per_tick, deferred)
    return created


def _queue(made, settings, jobs):
    """Give a chunk of a tick's fresh runs to the queue. Per group that
    would get the same file, the first of them lead batches (batches.py)
    that serve the rest with one query each; those wait for a turn, with no
    task of their own."""
    queue = made
    try:
        queue, waiting = batches.tasks_for(made, settings)
        turns.wait_for_turns([run.id for run in waiting])
    except Exception:
        logger.exception('the tick could not mark runs to be served by a batch; '
                         'each gets a task of its own')
        queue = made
    for run in queue:
        try:
            jobs.enqueue_run(run)
        except Exception:
            logger.exception('schedule %s: run %d could not be queued', run.schedule, run.id)


def _handle_slots(registry, settings, schedule, mark, due, skipped, latest, more, now):
    """Claim the schedule's slots up to `latest` from its `mark` (as planned);
    record the skipped ones and create the due one's run. None when another
    consumer claimed them."""
    try:
        with db.atomic():
            if not claim_slots(schedule, latest, mark):
                return None  # another consumer handled these slots
            _record_skipped(schedule, skipped, more, now)
            return _create_slot_run(registry, settings, schedule, due, now) if due else None
    except IntegrityError:
        logger.info('schedule %s: slot already taken by another consumer', schedule.name)
        return None


def _record_skipped(schedule, skipped, more, now):
    """One row per missed slot, in one statement; when there were more than
    were walked, the oldest row says so."""
    rows = [dict(report=schedule.report, params=schedule.params,
                 recipients=schedule.recipients, status=RunStatus.SKIPPED,
                 trigger=Trigger.SCHEDULE, schedule=schedule.name, slot_at=slot,
                 finished_at=now, error=MISSED)
            for slot in skipped]
    if rows and more:
        rows[0]['error'] = MISSED + ('; earlier slots since %s UTC were missed too and are '
                                     'not listed one by one'
                                     % schedule.checked_through.strftime('%Y-%m-%d %H:%M'))
    if rows:
        Run.insert_many(rows).execute()


def _create_slot_run(registry, settings, schedule, slot, now, *, to=None,
                     trigger=Trigger.SCHEDULE):
    """The run of the schedule's `slot`. A test (trigger test, `to` one
    address) is made here too, so it covers the slot's window as the slot's
    own run will; it keeps the slot in test_slot_at, leaving slot_at (and
    the slot's place in the unique index) to the real run."""
    test = trigger == Trigger.TEST
    try:
        return runs.create_run(registry, settings, schedule.report, schedule.params,
                               schedule.recipients if to is None else to, trigger=trigger,
                               schedule=schedule.name, slot_at=None if test else slot,
                               test_slot_at=slot if test else None,
                               split_by=schedule.split_by,
                               # relative dates: in the schedule's zone at the slot
                               timezone=schedule.timezone, at=slot,
                               message=runmessages.of_schedule(schedule),
                               file_format=schedule.format)
    except InputError as exc:
        if test:
            raise  # the person asking is told at once
        # The report changed under a stored schedule; say so in the history.
        return Run.create(report=schedule.report, params=schedule.params,
                          recipients=schedule.recipients, status=RunStatus.FAILED,
                          trigger=Trigger.SCHEDULE, schedule=schedule.name, slot_at=slot,
                          finished_at=now, error='%s: %s' % (exc.field, exc.message))


def next_run(schedule, now):
    """(UTC, local aware) of the schedule's next slot; (None, None) when paused."""
    if not schedule.enabled:
        return None, None
    zone = cron.check_timezone(schedule.timezone)
    upcoming = cron.next_slot(schedule.cron, zone, max(now, schedule.checked_through))
    return upcoming, cron.to_local(upcoming, zone) if upcoming else None


_NOT_FETCHED = object()


def with_last_runs(query):
    """The schedules of `query`, each with its last run fetched beside it:
    two queries for any number of schedules, where last_run() one by one
    would make one per schedule."""
    found = list(query)
    names = [s.name for s in found]
    latest = (Run.select(fn.MAX(Run.id))
              .where(Run.schedule.in_(names), _ran())
              .group_by(Run.schedule))
    last = {run.schedule: run for run in Run.select().where(Run.id.in_(latest))} \
        if names else {}
    for schedule in found:
        schedule._last_run = last.get(schedule.name)
    return found


def last_run(schedule):
    fetched = getattr(schedule, '_last_run', _NOT_FETCHED)
    if fetched is not _NOT_FETCHED:
        return fetched
    return (Run.select().where(Run.schedule == schedule.name, _ran())
            .order_by(Run.id.desc()).first())


def _ran():
    # A missed slot is recorded skipped without an attempt; a run its send
    # rule skipped (no rows) did run, and is the schedule's last run.
    return (Run.status != RunStatus.SKIPPED) | (Run.attempts > 0)


def schedule_as_dict(schedule, now, registry=None):
    upcoming, local = next_run(schedule, now)
    last = last_run(schedule)
    return {
        'name': schedule.name,
        'report': schedule.report,
        'params': schedule.params,
        'to': schedule.recipients,
        'cron': schedule.cron,
        'timezone': schedule.timezone,
        'enabled': schedule.enabled,
        'split_by': schedule.split_by,
        'format': schedule.format,
        'managed_by': schedule.managed_by,
        **runmessages.of_schedule(schedule),
        'late_after': schedule.late_after,
        'webhook': hide_path(schedule.webhook_url) if schedule.webhook_url else None,
        'next_run_at': iso_z(upcoming),
        'next_run_local': local.isoformat() if local else None,
        'next_slot_params': slotparams.slot_params(registry, schedule, upcoming)
        if registry is not None else None,
        'last_run': None if last is None else {
            'id': last.id, 'status': last.status, 'trigger': last.trigger,
            'slot_at': iso_z(last.slot_at), 'created_at': iso_z(last.created_at),
            'url': '/api/runs/%d' % last.id},
        'created_at': iso_z(schedule.created_at),
        'updated_at': iso_z(schedule.updated_at),
        'url': '/api/schedules/%s' % schedule.name,
    }
