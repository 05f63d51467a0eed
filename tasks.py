"""Huey: the queue and its thin tasks.

`huey_consumer tasks.huey` builds the Huey instance from settings the first
time `tasks.huey` is read (PEP 562), so importing this module has no side
effects and tests build their own with `Jobs(settings)`.
"""
import logging
import os
import threading

from huey import crontab
from huey.exceptions import RetryTask
from huey.signals import SIGNAL_INTERRUPTED
from peewee import IntegrityError

from alarms import Alarms
import batches
from clock import Beat, ClockedRedisHuey, ClockedSqliteHuey
import consumers
import history
from dbhealth import DB_ERRORS, DatabaseHealth
import runfiles
import runs
import schedules
import turns
from errors import QueueUnavailable
from filestore import create_file_store
from logformat import about_run, install_logging, run_fields
from mail import create_mailer
from models import bind_database, utcnow
from queueconf import redis_options
from reports import create_catalogue
from settings import install_log_redaction
from vocab import Ending

logger = logging.getLogger('nightshift.tasks')


# Seconds a stopping consumer gives a run in hand before handing it back.
HAND_BACK_GRACE = 5.0
# Seconds between a consumer's looks at late slots and notifications to send.
NOTIFY_BEAT = 2.0


def create_huey(settings):
    # results=False: a run's outcome lives in the database, not in the queue.
    if settings.queue == 'redis':
        # No silent fallback: a Redis that is configured but down is an error.
        return ClockedRedisHuey(settings.queue_name, results=False, **redis_options(settings))
    os.makedirs(os.path.dirname(settings.queue_path), exist_ok=True)
    return ClockedSqliteHuey(settings.queue_name, filename=settings.queue_path, results=False)


class Jobs:
    """The Huey instance with Nightshift's tasks registered on it."""

    def __init__(self, settings, registry=None, mailer=None, store=None):
        self.settings = settings
        self.registry = registry = registry or create_catalogue(settings)
        self.mailer = mailer or create_mailer(settings)
        self.store = store or create_file_store(settings)
        self.declared_schedules = schedules.declared_schedules(registry, settings)
        self.huey = huey = create_huey(settings)
        self.database = DatabaseHealth()
        self.alarms = Alarms(settings, self.mailer)
        self._started = threading.Lock()
        self._startup_done = False
        # Set when a consumer is made from this Huey (huey_consumer, or
        # server.py --worker): what it says about itself, and its row.
        self.consumer = self.presence = None
        make_consumer = huey.create_consumer

        def create_consumer(**options):
            consumer = make_consumer(**options)
            if consumer.worker_type == 'process':
                consumers.children_end_with_this_process()
            self.consumer = consumer
            install_logging(settings)
            return consumer
        huey.create_consumer = create_consumer
        self._bound = False
        # The consumer's own clock (clock.py): slots seen on time, whatever
        # the consumer's start time; notices sent without waiting a minute.
        beats = [Beat('notifier', NOTIFY_BEAT, self.notify_beat)]
        if settings.tick_every > 0:
            beats.insert(0, Beat('schedule clock', settings.tick_every, self.clock_beat))
        huey.beats = tuple(beats)

        @huey.on_startup()
        def start_worker():
            install_log_redaction(settings)
            install_logging(settings)
            bind_database(settings.database_url, auto=settings.auto_migrate)
            self.startup()

        # Retries are decided in execute() from the run's own attempt count,
        # which the reaper's re-runs share; Huey only carries them out.
        @huey.task(retry_delay=0)
        def run_report(run_id):
            self.execute(run_id)

        # Every consumer ticks; schedules.tick and runs.reap make that safe.
        @huey.periodic_task(crontab(), retries=0)
        def tick_schedules():
            self.tick()

        @huey.signal(SIGNAL_INTERRUPTED)
        def hand_back(signal, task):
            # The consumer is stopping without waiting (SIGTERM by default):
            # give the run back so another worker takes it in a moment.
            if isinstance(task, run_report.task_class):
                run_id = task.args[0]
                # A batch it mails starts no more runs: those in hand finish.
                batches.stop_serving(run_id)
                # The worker thread is still going until this process exits,
                # and killing it mid-SMTP would send the report twice (the
                # server accepted, nothing recorded it). A short grace lets
                # a run that is nearly done finish.
                runs.wait_while_running(run_id, HAND_BACK_GRACE,
                                        sending_grace=settings.smtp_timeout + 1)
                reason = 'worker stopped during the run; running it again'
                handed = [run_id] if runs.hand_back(run_id, reason) else []
                # The runs it was serving with its file go back too (batches.py).
                handed += batches.release(run_id, reason)
                for handed_id in handed:
                    # Straight into the schedule, not the queue: a worker thread
                    # of this dying process could pop it from the queue and die
                    # with it. By the time it is due, this process is gone.
                    huey.add_schedule(run_report.s(handed_id, delay=2))

        @huey.on_shutdown()
        def stop_worker():
            # Called as each worker thread ends: its kept SMTP connection
            # goes with it. Only a consumer that is stopping takes its row
            # away (a worker that died is restarted).
            if self.presence is not None and self.consumer.stop_flag.is_set():
                self.presence.stop(remove=True)
            self.mailer.close()

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
            if self.consumer is not None:
                self.presence = consumers.Presence(
                    self.settings, consumers.info_of(self.consumer)).start()
            self._startup_done = True
        self.tick_schedules.call_local()

    def tick(self, now=None):
        """Every minute: reap lost runs, start due schedule slots, judge late
        slots and send notices (alarms.py), expire files.
        A database that does not answer skips the tick (logged once per
        outage); the next minute tries again."""
        now = now or utcnow()
        try:
            runs.reap(self.settings, now, self.run_report, self.notify_failed)
            # Turns a finisher did not hand on (it died first) go out here.
            turns.hand_free_turns(self.settings, self.run_report)
            created = schedules.tick(self.registry, self.settings, self, now)
            # After the reap and the slots, whose notices are stamped later than `now`.
            self.alarms.tick(max(now, utcnow()))
            runfiles.remove_expired_files(self.settings, self.store, now)
            runfiles.sweep_orphans(self.settings, self.store)
            history.remove_old_runs(self.settings, now)
            if self.presence is not None:
                self.presence.ticked()
        except DB_ERRORS as exc:
            self.database.down(exc)
            return []
        self.database.up()
        return created

    def _bind(self):
        # A beat may come before any worker's start-up hook bound the database.
        if not self._bound:
            bind_database(self.settings.database_url, auto=self.settings.auto_migrate)
            self._bound = True

    def clock_beat(self, now=None):
        """Every tick_every seconds: start the slots that are due, and only
        that (the rest of the tick stays on the minute)."""
        self._bind()
        try:
            created = schedules.tick(self.registry, self.settings, self, now or utcnow())
        except DB_ERRORS as exc:
            self.database.down(exc)
            return []
        self.database.up()
        return created

    def notify_beat(self, now=None):
        """Every few seconds: judge late slots, group notices, send what is due."""
        self._bind()
        try:
            return self.alarms.tick(now or utcnow())
        except DB_ERRORS as exc:
            self.database.down(exc)
            return []

    def execute(self, run_id):
        """Run one report. Temporary failures come back through Huey after a
        backoff; permanent ones, or running out of attempts, fail the run."""
        try:
            with about_run(run_id):
                outcome = runs.execute_run(run_id, self.registry, self.settings, self.mailer,
                                           self.store, on_companion=self.companion_ended)
                # A run waiting for its turn is handed one later (turns.py).
                quiet = outcome.status in (Ending.IDLE, Ending.BUSY)
                if not quiet:
                    # First of all: the turn this run held goes to a waiting run.
                    self.pass_turn(run_id)
                logger.log(logging.DEBUG if quiet else logging.INFO, 'run %d: %s', run_id,
                           outcome.status)
        except DB_ERRORS as exc:
            # The state database is what failed, before anything was claimed
            # or while recording: nothing to count an attempt against. Try
            # again later; a run left "running" is handed back by the reaper.
            self.database.down(exc)
            raise RetryTask(delay=self.database.retry_in(self.settings))
        self.database.up()
        if outcome.status == Ending.DELIVERED:
            self._announce(self.alarms.delivered, run_id)
        if outcome.status == Ending.FAILED:
            self.notify_failed(run_id)
        elif outcome.status == Ending.RETRY:
            raise RetryTask(delay=outcome.delay) if outcome.delay else RetryTask()
        return outcome.status.value

    def companion_ended(self, run_id, outcome, run=None):
        """A run served with another run's file (batches.py) ended: told as
        its own task would have been; a retry or a release is queued anew."""
        if outcome.status == Ending.DELIVERED:
            self._announce(lambda run_id: self.alarms.delivered(run_id, run=run), run_id)
        elif outcome.status == Ending.FAILED:
            self.notify_failed(run_id)
        elif outcome.status == Ending.RETRY:
            try:
                self.run_report.schedule((run_id,), delay=outcome.delay or 0)
            except Exception:
                # Recorded as queued already: the reaper queues it again.
                logger.exception('could not queue run %s again', run_id,
                                 extra=run_fields(run_id))

    def pass_turn(self, run_id):
        """Enqueue the oldest runs of `run_id`'s report waiting for a turn,
        one per free turn. Best effort: the run's outcome is recorded
        already, and the minute's tick hands out any turn missed here."""
        try:
            turns.pass_turn(run_id, self.settings, self.run_report)
        except Exception:
            logger.exception('could not hand on the turn of run %s', run_id,
                             extra=run_fields(run_id))

    def notify_failed(self, run_id):
        """Announce that a run failed for good (to the operator, if one is
        set, and webhooks): into the outbox, grouped and sent by the tick."""
        self._announce(self.alarms.failed, run_id)

    def _announce(self, record, run_id):
        # The run's outcome is recorded already; a notice that cannot be
        # written must not make Huey run it again.
        try:
            record(run_id)
        except Exception:
            logger.exception('could not record the notice of run %s', run_id,
                             extra=run_fields(run_id))

    def enqueue_run(self, run):
        """Hand a committed run to the queue; a queue that is down marks the
        run failed (the user is told at once) and raises QueueUnavailable."""
        try:
            self.run_report(run.id)
        except Exception as exc:
            reason = 'queue unavailable: %s' % type(exc).__name__
            runs.mark_failed(run.id, reason, only_queued=True)
            raise QueueUnavailable(reason) from exc

    def queue_ok(self):
        """Raises when the queue's storage does not answer. A ping, not a
        count: health checks come often and must stay cheap."""
        storage = self.huey.storage
        if self.settings.queue == 'redis':
            storage.conn.ping()
        else:
            storage.sql('SELECT 1', results=True)
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
