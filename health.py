"""What /healthz says about the work beside "the database and the queue
answer": the consumers, and whether anyone is doing the work.

Degraded, not down: the web itself still answers and its health check
must not take it out of a load balancer for a consumer's fault. So the
status is `degraded` with the reasons, and `/healthz?strict=1` answers 503
for monitors that read only the status code.

Health checks come often, so this is two plain SQL statements: the
consumers (they are few), and two counts in one. Built by Peewee they cost
ten times as much: building the SQL, not running it, is most of the time.
"""
import datetime

import consumers
from models import Run, Schedule, db, db_now, quote_name, utcnow
from vocab import RunStatus


def _span(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return '%d s' % seconds
    if seconds < 7200:
        return '%d min' % (seconds // 60)
    return '%d h' % (seconds // 3600)


def problems(settings, rows=None, db_time=None, now=None):
    """Reasons the work is not being done, as sentences; [] when all is well.

    `rows` are the registered consumers (read here when not given);
    `db_time` is the database's clock (heartbeats and ticks are written on
    it); `now` the web's, on which runs are queued."""
    db_time = db_time or db_now()
    now = now or utcnow()
    rows = consumers.registered() if rows is None else rows
    since = consumers.live_after(settings, db_time)
    live = [row for row in rows if row.heartbeat_at >= since]
    found = []
    waiting = datetime.timedelta(seconds=settings.queue_alarm_after)
    enabled, old_runs = _counts(now - waiting)
    if enabled:
        window = datetime.timedelta(seconds=settings.tick_alarm_after)
        last_tick = max((row.last_tick_at for row in rows if row.last_tick_at), default=None)
        if last_tick is None or db_time - last_tick > window:
            since_tick = ('never (no consumer has registered a tick)' if last_tick is None
                          else 'last %s ago' % _span((db_time - last_tick).total_seconds()))
            if not live:
                why = 'no consumer is running'
            elif not any(row.periodic for row in live):
                why = ('every running consumer (%d) was started without periodic tasks '
                       '(huey_consumer -n); start one without -n' % len(live))
            else:
                why = 'the consumers that should tick did not'
            found.append('schedules: %d enabled but no consumer has ticked them for %s '
                         '(tick_alarm_after); %s: %s'
                         % (enabled, _span(settings.tick_alarm_after), since_tick, why))
    if not live and old_runs:
        found.append('queue: %d runs queued for more than %s (queue_alarm_after) and no '
                     'consumer is alive to run them' % (old_runs,
                                                        _span(settings.queue_alarm_after)))
    return found


def _counts(queued_before):
    """(enabled schedules, runs queued since before `queued_before`)."""
    param, _quote = db.obj.param, quote_name
    return db.execute_sql(
        'SELECT (SELECT COUNT(*) FROM %s WHERE %s = %s), '
        '(SELECT COUNT(*) FROM %s WHERE %s = %s AND %s <= %s)' % (
            _quote(Schedule._meta.table_name), _quote('enabled'), param,
            _quote(Run._meta.table_name), _quote('status'), param, _quote('queued_at'),
            param),
        (Schedule.enabled.db_value(True), str(RunStatus.QUEUED),
         Run.queued_at.db_value(queued_before))).fetchone()


def report(settings, db_time=None):
    """The fields /healthz adds: live consumers, the list, the problems.
    `db_time` is the database's clock, when the caller has just read it."""
    db_time = db_time or db_now()
    rows = consumers.registered()
    listed = consumers.listing(settings, db_time, rows)
    return {'consumers_live': sum(1 for c in listed if c['live']),
            'consumers': listed,
            'problems': problems(settings, rows, db_time)}
