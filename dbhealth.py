"""Whether Nightshift's own database answers, as one process sees it, so an
outage is logged when it starts and when it ends instead of once per task or
request (a few hundred tracebacks a minute hide everything else)."""
import logging
import threading
import time

from peewee import DatabaseError, InterfaceError, OperationalError

logger = logging.getLogger('nightshift.database')

DB_ERRORS = (OperationalError, InterfaceError, DatabaseError)


class DatabaseHealth:
    """Whether the state database answers, as this process last saw it.

    An outage is logged once when it starts and once when it ends (with how
    many operations failed meanwhile), not once per task: a few hundred
    tracebacks a minute hide everything else in the log.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.failures = 0
        self.since = None
        self._lock = threading.Lock()

    def down(self, exc):
        with self._lock:
            self.failures += 1
            first = self.since is None
            if first:
                self.since = self.clock()
        if first:
            logger.error('database unavailable (%s: %s); runs wait and are retried until '
                         'it answers', type(exc).__name__, str(exc).strip().splitlines()[0]
                         if str(exc).strip() else '')
        else:
            logger.debug('database still unavailable: %s', type(exc).__name__)

    def up(self):
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            failures, lasted = self.failures, self.clock() - self.since
            self.failures, self.since = 0, None
        logger.warning('database answers again after %.0f s (%d operations failed meanwhile)',
                       lasted, failures)

    def retry_in(self, settings):
        """Seconds before a task that met the outage tries again: grows with
        the outage, at most retry_max_delay, and at least a second."""
        lasted = 0 if self.since is None else self.clock() - self.since
        return max(1.0, min(settings.retry_max_delay, max(settings.retry_delay, lasted / 2)))
