"""What /healthz says about the work beside "the database and the queue
answer": the consumers, and whether anyone is doing the work.

Degraded, not down: the web itself still answers and its health check
must not take it out of a load balancer for a consumer's fault. So the
status is `degraded` with the reasons, and `/healthz?strict=1` answers 503
for monitors that read only the status code.
"""
import datetime

from peewee import fn

import consumers
from models import Consumer, Run, Schedule, db_now, utcnow
from vocab import RunStatus


def _span(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return '%d s' % seconds
    if seconds < 7200:
        return '%d min' % (seconds // 60)
    return '%d h' % (seconds // 3600)


def problems(settings, db_time=None, now=None):
    """Reasons the work is not being done, as sentences; [] when all is well.

    `db_time` is the database's clock (heartbeats and ticks are written on
    it); `now` the web's, on which runs are queued."""
    db_time = db_time or db_now()
    now = now or utcnow()
    found = []
    enabled = Schedule.select().where(Schedule.enabled == True).count()  # noqa: E712
    live = list(Consumer.select().where(
        Consumer.heartbeat_at >= consumers.live_after(settings, db_time)))
    if enabled:
        window = datetime.timedelta(seconds=settings.tick_alarm_after)
        last_tick = Consumer.select(fn.MAX(Consumer.last_tick_at)).scalar()
        if last_tick is None or db_time - last_tick > window:
            since = ('never (no consumer has registered a tick)' if last_tick is None
                     else 'last %s ago' % _span((db_time - last_tick).total_seconds()))
            if not live:
                why = 'no consumer is running'
            elif not any(c.periodic for c in live):
                why = ('every running consumer (%d) was started without periodic tasks '
                       '(huey_consumer -n); start one without -n' % len(live))
            else:
                why = 'the consumers that should tick did not'
            found.append('schedules: %d enabled but no consumer has ticked them for %s '
                         '(tick_alarm_after); %s: %s'
                         % (enabled, _span(settings.tick_alarm_after), since, why))
    if not live:
        waiting = datetime.timedelta(seconds=settings.queue_alarm_after)
        old = Run.select().where(Run.status == RunStatus.QUEUED,
                                 Run.queued_at <= now - waiting)
        count = old.count()
        if count:
            found.append('queue: %d runs queued for more than %s (queue_alarm_after) and no '
                         'consumer is alive to run them' % (count,
                                                            _span(settings.queue_alarm_after)))
    return found


def report(settings):
    """The fields /healthz adds: live consumers, the list, the problems."""
    db_time = db_now()
    listed = consumers.listing(settings, db_time)
    return {'consumers_live': sum(1 for c in listed if c['live']),
            'consumers': listed,
            'problems': problems(settings, db_time)}
