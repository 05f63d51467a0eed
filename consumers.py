"""Every consumer is visible: each consumer process registers a row in
nightshift_consumer and beats there from a side thread, so the web (on
another machine, perhaps) can say who is working, who ticks the schedules,
and when nobody does.

Times are the database's clock (models.db_now), the one the run heartbeats
use: machines whose clocks disagree still agree on who is silent.
"""
import ctypes
import datetime
import logging
import os
import signal
import socket
import sys
import threading
from typing import NamedTuple

from models import Consumer, db, db_now, iso_z, quote_name

logger = logging.getLogger('nightshift.consumers')

_PR_SET_PDEATHSIG = 1
_asked = False
# The pid of the process about to fork (set just before each fork): a child
# checks that this one is still its parent.
_forking = None


def children_end_with_this_process():
    """Processes forked from this one from now on (huey_consumer -k
    process: its workers and its scheduler) are killed when it ends, however
    it ends; and so on down: a process forked by one of them ends with that
    one. Killed with SIGKILL, a consumer would leave them running as
    orphans that go on taking tasks and ignore the stop signal while idle.
    Linux only (prctl); elsewhere nothing changes. Once per process."""
    global _asked
    if _asked or not sys.platform.startswith('linux'):
        return
    _asked = True
    libc = ctypes.CDLL(None, use_errno=True)

    def before():
        global _forking
        _forking = os.getpid()

    def in_child():
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning('a worker process could not ask to end with its consumer '
                           '(prctl: errno %d)', ctypes.get_errno())
        elif os.getppid() != _forking:
            os._exit(1)  # its parent ended before the request was made
    # The hooks are inherited: a worker that forks makes its own child end with it.
    os.register_at_fork(before=before, after_in_child=in_child)


# A consumer silent this many heartbeats is gone; its row is kept a while
# (the page and /healthz say when it was last seen), then removed.
SILENT_BEATS = 3
FORGET_AFTER = datetime.timedelta(hours=1)


class ProcessInfo(NamedTuple):
    """What a consumer process says about itself when it registers."""
    workers: int
    worker_type: str
    # False for `huey_consumer -n`: it never enqueues the minute tick.
    periodic: bool


def info_of(consumer):
    """ProcessInfo of a huey Consumer, from its own configuration. With
    `-k process` each worker process registers itself (the startup hook runs
    in each), so each row counts one worker."""
    workers = 1 if consumer.worker_type == 'process' else int(consumer.workers)
    return ProcessInfo(workers, str(consumer.worker_type), bool(consumer.periodic))


def live_after(settings, now):
    """Heartbeats since this moment are from live consumers."""
    return now - datetime.timedelta(seconds=SILENT_BEATS * settings.consumer_heartbeat)


def register(info, now=None, started_at=None):
    """A row for this process (started at `started_at`, default now);
    returns its id."""
    now = now or db_now()
    return Consumer.create(host=socket.gethostname(), pid=os.getpid(),
                           started_at=started_at or now,
                           workers=info.workers, worker_type=info.worker_type,
                           periodic=info.periodic, heartbeat_at=now).id


def beat(consumer_id, info, started_at, now=None):
    """Say this consumer is alive; a row removed meanwhile (it was silent
    long enough to be forgotten, e.g. the machine was suspended) is made
    again. Returns the row's id. Rows silent for FORGET_AFTER are removed."""
    now = now or db_now()
    Consumer.delete().where(Consumer.heartbeat_at < now - FORGET_AFTER).execute()
    if Consumer.update(heartbeat_at=now).where(Consumer.id == consumer_id).execute():
        return consumer_id
    return register(info, now, started_at)


def record_tick(consumer_id, now=None):
    """The minute tick ran in this consumer."""
    now = now or db_now()
    Consumer.update(last_tick_at=now, heartbeat_at=now).where(Consumer.id == consumer_id) \
        .execute()


def unregister(consumer_id):
    Consumer.delete().where(Consumer.id == consumer_id).execute()


class Presence:
    """This process's row, kept alive by a daemon thread every
    `consumer_heartbeat` seconds until stop()."""

    def __init__(self, settings, info):
        self.settings = settings
        self.info = info
        self.id = None
        self.started_at = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='consumer-heartbeat')
        self._failing = False

    def start(self):
        self.started_at = db_now()
        self.id = register(self.info, self.started_at)
        self._thread.start()
        logger.info('consumer %d registered (%d %s workers, periodic tasks %s)', self.id,
                    self.info.workers, self.info.worker_type,
                    'on' if self.info.periodic
                    else 'off (-n): it ticks the schedules only as it starts')
        return self

    def ticked(self):
        if self.id is not None:
            record_tick(self.id)

    def _run(self):
        try:
            while not self._stop.wait(self.settings.consumer_heartbeat):
                try:
                    self.id = beat(self.id, self.info, self.started_at)
                except Exception as exc:
                    # The process boundary of this thread: say it once per
                    # outage, keep beating.
                    if not self._failing:
                        logger.warning('consumer heartbeat not recorded: %s',
                                       type(exc).__name__)
                    self._failing = True
                    continue
                self._failing = False
        finally:
            db.close()

    def stop(self, remove=True):
        """Stop beating; with `remove`, forget the row (a clean shutdown)."""
        if self._stop.is_set():
            return
        self._stop.set()
        # A beat under way would make the row again (it finds it gone).
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if remove and self.id is not None:
            try:
                unregister(self.id)
            except Exception as exc:
                logger.warning('consumer %s not unregistered: %s', self.id,
                               type(exc).__name__)


# --- what the web reads -------------------------------------------------------

def registered():
    """The rows, newest first. Plain SQL: /healthz reads them on every
    request, and building the query with Peewee costs more than running it."""
    return list(Consumer.raw('SELECT * FROM %s ORDER BY %s DESC, %s DESC' % (
        quote_name(Consumer._meta.table_name), quote_name('started_at'), quote_name('id'))))


def listing(settings, now=None, consumers=None):
    """Every registered consumer (`consumers`, or read) as a dict, newest
    first, with `live`."""
    now = now or db_now()
    since = live_after(settings, now)
    rows = []
    for consumer in registered() if consumers is None else consumers:
        rows.append({
            'id': consumer.id, 'host': consumer.host, 'pid': consumer.pid,
            'started_at': iso_z(consumer.started_at), 'workers': consumer.workers,
            'worker_type': consumer.worker_type, 'periodic': consumer.periodic,
            'heartbeat_at': iso_z(consumer.heartbeat_at),
            'last_tick_at': iso_z(consumer.last_tick_at),
            'live': consumer.heartbeat_at >= since,
            'seconds_since_heartbeat': round((now - consumer.heartbeat_at).total_seconds(), 1),
            'seconds_since_tick': None if consumer.last_tick_at is None
            else round((now - consumer.last_tick_at).total_seconds(), 1),
        })
    return rows
