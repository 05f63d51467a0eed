"""The consumer's own clock: work done every few seconds on the wall clock's
beat, beside Huey's scheduler.

Huey checks its periodic tasks once a minute counted from the consumer's
start (consumer.Scheduler: `_next_periodic` starts at the start time and
steps by 60 s), so a minute's schedule slot was seen anywhere from 0 to 60 s
after it, depending on when each consumer happened to start. A periodic task
cannot run more often than each minute. So each consumer runs its beats in
threads of its own: a beat every `every` seconds at whole multiples of it on
the wall clock (every 5 s: at :00, :05, ...), so a slot on the minute is
seen at once, whatever the consumer's start time, and a long export in every
worker thread does not hold the schedules up.

Beats run only in consumers that run periodic tasks: `huey_consumer -n`
turns them off with Huey's own.
"""
import logging
import math
import threading
import time
from typing import Callable, NamedTuple

from huey import RedisHuey, SqliteHuey
from huey.consumer import Consumer

logger = logging.getLogger('nightshift.clock')

# Past the beat, so a slot exactly on it is already in the past.
OFFSET = 0.02


class Beat(NamedTuple):
    """Call `work()` every `every` seconds, on the wall clock's beat."""
    name: str
    every: float
    work: Callable[[], object]


def next_beat(now, every, offset=OFFSET):
    """The first beat strictly after `now` (seconds since the epoch)."""
    return (math.floor((now - offset) / every) + 1) * every + offset


def run_beat(beat, stop, clock=time.time):
    """Until `stop` (an Event) is set. An error is logged with its traceback
    and the next beat tries again: a clock that dies silently would stop
    every schedule."""
    while True:
        delay = next_beat(clock(), beat.every) - clock()
        if stop.wait(max(delay, 0)):
            return
        try:
            beat.work()
        except Exception:
            logger.exception('%s failed; trying again at the next beat', beat.name)


class ClockedConsumer(Consumer):
    """Huey's consumer with beats: started with it, stopped with it."""

    def __init__(self, huey, beats=(), **options):
        super().__init__(huey, **options)
        self.beats = tuple(beats)
        self._stop_beats = threading.Event()
        self.beat_threads = []

    def start(self):
        super().start()
        if not self.periodic:
            if self.beats:
                logger.info('periodic tasks are off: no %s', ', '.join(b.name for b in self.beats))
            return
        for beat in self.beats:
            thread = threading.Thread(target=run_beat, args=(beat, self._stop_beats),
                                      name=beat.name, daemon=True)
            thread.start()
            self.beat_threads.append(thread)
            logger.info('%s every %gs', beat.name, beat.every)

    def stop(self, graceful=False):
        # None starts after this; one in progress gets a moment to finish
        # (a POST cut short is claimed again by a consumer after its lease).
        self._stop_beats.set()
        super().stop(graceful=graceful)
        for thread in self.beat_threads:
            thread.join(5)


class Clocked:
    """A Huey whose consumers run `beats` (set by tasks.Jobs)."""
    beats = ()

    def create_consumer(self, **options):
        return ClockedConsumer(self, self.beats, **options)


class NoRevokes:
    """A Huey whose tasks are never revoked. Nightshift cancels a run in the
    database, where its worker's fenced writes find it (runs.Attempt); a
    task is only ever "run this run". Huey reads each task's revoke flags
    before running it and deletes its flag after: two queue round trips per
    task, about a fifth of a consumer's CPU in a burst of small runs
    (docs/benchmarks.md). So there are no flags to read or delete, and
    revoking says so rather than being silently ignored."""

    def is_revoked(self, task, timestamp=None, peek=True):
        return False

    def delete(self, key):
        # Huey._execute clears the task's revoke flag (Task.revoke_id, "r:<id>").
        if isinstance(key, str) and key.startswith('r:'):
            return False
        return super().delete(key)

    def _no_revokes(self, *args, **kwargs):
        raise NotImplementedError('Nightshift does not revoke Huey tasks: cancel the run '
                                  '(POST /api/runs/<id>/cancel)')

    revoke = revoke_all = revoke_by_id = _no_revokes


class ClockedRedisHuey(NoRevokes, Clocked, RedisHuey):
    pass


class ClockedSqliteHuey(NoRevokes, Clocked, SqliteHuey):
    pass
