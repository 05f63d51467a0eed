"""Huey: the queue and its thin tasks.

`huey_consumer tasks.huey` builds the Huey instance from settings the first
time `tasks.huey` is read (PEP 562), so importing this module has no side
effects and tests build their own with `create_jobs(settings)`.
"""
import logging
import os

import threading

from huey import RedisHuey, SqliteHuey, crontab
from huey.exceptions import CancelExecution
from peewee import IntegrityError

import runs
import schedules
from mail import MailError, create_mailer
from models import bind_database, utcnow
from reports import registry as default_registry

logger = logging.getLogger('nightshift.tasks')


class QueueUnavailable(Exception):
    """The queue could not take a task (e.g. Redis is down)."""


def create_huey(settings):
    # results=False: a run's outcome lives in the database, not in the queue.
    if settings.queue == 'redis':
        # No silent fallback: a Redis that is configured but down is an error.
        return RedisHuey(settings.queue_name, url=settings.redis_url, results=False)
    os.makedirs(os.path.dirname(settings.queue_path), exist_ok=True)
    return SqliteHuey(settings.queue_name, filename=settings.queue_path, results=False)


class Jobs:
    """The Huey instance with Nightshift's tasks registered on it."""

    def __init__(self, settings, registry=default_registry, mailer=None):
        self.settings = settings
        self.registry = registry
        self.mailer = mailer or create_mailer(settings)
        self.declared_schedules = schedules.declared_schedules(registry, settings)
        self.huey = huey = create_huey(settings)
        self._started = threading.Lock()
        self._startup_done = False

        @huey.on_startup()
        def start_worker():
            bind_database(settings.database_url)
            self.startup()

        @huey.task(retries=settings.task_retries, retry_delay=settings.retry_delay,
                   retry_backoff=2, context=True)
        def run_report(run_id, task=None):
            self.execute(run_id, final=not task or task.retries == 0)

        # Every consumer ticks; schedules.tick makes that safe.
        @huey.periodic_task(crontab(), retries=0)
        def tick_schedules():
            self.tick()

        self.run_report = run_report
        self.tick_schedules = tick_schedules

    def startup(self):
        """Once per consumer process: sync config schedules, catch up now."""
        with self._started:
            if self._startup_done:
                return
            try:
                schedules.sync_config(self.declared_schedules, utcnow())
            except IntegrityError:
                # Another consumer starting at the same moment inserted first.
                schedules.sync_config(self.declared_schedules, utcnow())
            self._startup_done = True
        self.tick_schedules.call_local()

    def tick(self, now=None):
        return schedules.tick(self.registry, self.settings, self, now or utcnow())

    def execute(self, run_id, final=True):
        """Run one report; record the outcome so Huey's retries can act on it."""
        try:
            runs.execute_run(run_id, self.registry, self.settings, self.mailer)
        except runs.PermanentFailure as exc:
            runs.mark_failed(run_id, str(exc))
            raise CancelExecution(retry=False)
        except MailError as exc:
            if not exc.temporary:
                runs.mark_failed(run_id, str(exc))
                raise CancelExecution(retry=False)
            self._record(run_id, exc, final)
            raise
        except Exception as exc:
            self._record(run_id, exc, final)
            raise

    @staticmethod
    def _record(run_id, exc, final):
        reason = '%s: %s' % (type(exc).__name__, exc)
        try:
            if final:
                runs.mark_failed(run_id, reason)
            else:
                runs.record_retry(run_id, reason)
        except Exception:
            # The database itself may be what failed; Huey still retries.
            logger.exception('could not record the failure of run %s', run_id)

    def enqueue_run(self, run):
        """Hand a committed run to the queue; a queue that is down marks the
        run failed (the user is told at once) and raises QueueUnavailable."""
        try:
            self.run_report(run.id)
        except Exception as exc:
            reason = 'queue unavailable: %s' % type(exc).__name__
            runs.mark_failed(run.id, reason)
            raise QueueUnavailable(reason) from exc

    def queue_ok(self):
        self.huey.storage.queue_size()
        return True


_default = None


def default_jobs():
    global _default
    if _default is None:
        from settings import load_settings
        _default = Jobs(load_settings())
    return _default


def __getattr__(name):
    if name == 'huey':
        return default_jobs().huey
    raise AttributeError(name)
