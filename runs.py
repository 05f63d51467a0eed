"""The life of a run: create it from a request, claim it, execute it, take
it back when its worker goes silent, retry it or give up.

Its files are runfiles.py's, its mail delivery.py's, its JSON runviews.py's.

Plain functions: the Huey task, the web server, the command line and the
tests all call these.
"""
import contextlib
import contextvars
import datetime
import hashlib
import logging
import os
import random
import threading
import time
from typing import NamedTuple, Optional

from peewee import Case, PostgresqlDatabase

import batches
import bursting
import reldates
import runmessages
import statements
import turns
from delivery import deliver
from errors import InputError, LostOwnership, PermanentFailure
from formats import check_format, check_split
from logformat import about_run, note, run_fields
from mail import MailError, check_address
from models import Delivery, Run, db, db_now, utcnow
from params import dump_params
from reports import BrokenReport, UnknownReport, find_report
from runfiles import (discard_files, drop_working_copy, prepare_file, publish_shared,
                      remove_work_files, shared_source)
from vocab import FINAL, DeliveryStatus, Ending, RunStatus, Trigger


logger = logging.getLogger('nightshift.runs')


def parse_recipients(to, settings):
    """A list of checked addresses, or InputError naming the bad entry.

    Exactly one plain address per entry, at most `max_recipients`, and only
    at `allowed_domains` when that is set: no open relay.
    """
    if to is None or to == []:
        raise InputError('to', 'give at least one recipient address', code='required')
    if not isinstance(to, list):
        raise InputError('to', 'must be a list of email addresses')
    if len(to) > settings.max_recipients:
        raise InputError('to', 'at most %d recipients per run' % settings.max_recipients,
                         code='too_many')
    seen = []
    for i, address in enumerate(to):
        try:
            # Only spaces are trimmed: a line break anywhere is refused.
            address = check_address(address.strip(' ') if isinstance(address, str) else address)
        except ValueError as exc:
            raise InputError('to[%d]' % i, str(exc))
        domain = address.rsplit('@', 1)[1].lower()
        if settings.domains and domain not in settings.domains:
            raise InputError('to[%d]' % i, 'mail to %s is not allowed here; allowed domains: %s'
                             % (domain, ', '.join(settings.domains)), code='domain_not_allowed')
        if address.lower() not in (a.lower() for a in seen):
            seen.append(address)
    return seen


def create_run(registry, settings, report: str, params: Optional[dict] = None,
               to: Optional[list] = None, *, trigger: Trigger = Trigger.WEB,
               schedule: Optional[str] = None, slot_at: Optional[datetime.datetime] = None,
               escape_formulas: Optional[bool] = None, bom: Optional[bool] = None,
               timezone: Optional[str] = None, at: Optional[datetime.datetime] = None,
               split_by: Optional[str] = None,
               test_slot_at: Optional[datetime.datetime] = None,
               message: Optional[dict] = None,
               file_format: Optional[str] = None) -> Run:
    """Validate a request and record it as a queued run (one transaction).

    Relative dates in `params` are resolved here, once, in `timezone`
    (default: the timezone setting) at naive UTC `at` (a schedule's slot;
    default: now): every attempt of the run uses the same values. With
    `split_by` typed recipients are optional: the data names them.
    `message`: subject, body, attachment_name templates and send_rule
    (runmessages.clean_message), each optional."""
    definition = find_report(registry, report)
    if timezone is not None and not isinstance(timezone, str):
        raise InputError('timezone', 'give an IANA timezone such as Europe/Lisbon')
    timezone = timezone or settings.timezone
    params, asked = reldates.resolve_params(definition.params, params,
                                            reldates.check_zone(timezone), at or utcnow())
    typed = definition.parse(params)
    split_by = bursting.clean_split_by(definition, split_by)
    recipients = [] if split_by and not to else parse_recipients(to, settings)
    file_format = check_format(file_format)
    check_split(file_format, split_by)
    stored = dump_params(typed)
    message = runmessages.clean_message(message or {}, stored, definition.title, definition.name)
    with db.atomic():
        run = statements.insert(Run(
            report=report, params=stored, recipients=recipients, trigger=trigger,
            schedule=schedule, slot_at=slot_at, split_by=split_by, test_slot_at=test_slot_at,
            **message, escape_formulas=definition.escape_formulas
            if escape_formulas is None else escape_formulas,
            bom=settings.csv_bom if bom is None else bom, asked_params=asked or None,
            params_timezone=timezone if asked else None, format=file_format))
        for address in recipients:
            statements.insert(Delivery(run=run, address=address))
    return run


def mark_failed(run_id, reason, now=None, *, only_queued=False):
    """Record a run that is not in a worker's hands as failed for good (its
    task could not be queued, or the reaper gave up). True if it changed.
    `only_queued`: unless a worker has it meanwhile (a batch, batches.py)."""
    unfinished = (Run.status == RunStatus.QUEUED) if only_queued else Run.status.not_in(FINAL)
    return bool(Run.update(status=RunStatus.FAILED, error=reason, finished_at=now or utcnow())
                .where((Run.id == run_id) & unfinished).execute())


def retry_delay(attempts, settings, rng=random):
    """Exponential backoff with jitter: half the delay is random, so many
    runs failing together do not come back together."""
    delay = min(settings.retry_max_delay, settings.retry_delay * 2 ** max(attempts - 1, 0))
    return delay / 2 + rng.uniform(0, delay / 2)


class Attempt(NamedTuple):
    """One worker's turn at a run. The attempt number is the fencing token:
    every write this worker makes to the run checks it is still the run's
    current attempt and the run is still running."""
    run_id: int
    number: int
    # A run served by a batch (batches.py): its leader's run id. A batch
    # given back makes its runs never tried again, so a run claimed anew
    # is attempt 1 once more; the leader tells the two claims apart.
    batch_of: Optional[int] = None

    def _fence(self):
        fence = (('id', '=', self.run_id), ('status', '=', RunStatus.RUNNING),
                 ('attempts', '=', self.number))
        return fence if self.batch_of is None else fence + (('batch_of', '=', self.batch_of),)

    def owned(self):
        return statements.where(Run, self._fence())

    def update(self, **values):
        """A fenced write; LostOwnership when the run is no longer ours."""
        if not statements.update(Run, values, *self._fence()):
            raise self._lost()

    def update_rows(self, model, values, *conditions):
        """A write to rows of another table (the run's deliveries), fenced
        in the same statement; LostOwnership when the run is no longer ours
        or no row meets `conditions`."""
        if not statements.update_owned(model, values, conditions, Run, self._fence()):
            raise self._lost()

    def _lost(self):
        return LostOwnership('run %d: attempt %d no longer owns it'
                             % (self.run_id, self.number))


def _report_lock_key(report):
    # A signed 64-bit key for PostgreSQL's advisory locks, stable across processes.
    digest = hashlib.blake2b(('nightshift-report:' + report).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'big', signed=True)


def claim(run_id, now=None, report=None, limit=None):
    """queued -> running, for one worker only: the Attempt, or None if the
    run is not queued or (with `limit`) `report` already has `limit` runs in
    progress. `now` defaults to the database's clock, the one every
    heartbeat and the reaper use."""
    if limit and turns.in_progress(report) >= limit:
        # Read first, without taking the write lock (SQLite has one for the
        # whole database): in a burst most runs find every turn taken.
        return None
    with db.atomic():
        condition = (Run.id == run_id) & (Run.status == RunStatus.QUEUED)
        if limit:
            if isinstance(db.obj, PostgresqlDatabase):
                # Under READ COMMITTED two claims would each count the other's
                # run as not yet running: claims of one report take turns.
                db.execute_sql('SELECT pg_advisory_xact_lock(%s)', (_report_lock_key(report),))
            condition &= (turns.holding(report, Run.alias('busy')) < limit)
        now = now or db_now()
        if not (Run.update(status=RunStatus.RUNNING, attempts=Run.attempts + 1, started_at=now,
                           heartbeat_at=now, next_attempt_at=None, batch_of=None)
                .where(condition).execute()):
            return None
        number = Run.select(Run.attempts).where(Run.id == run_id).scalar()
    return Attempt(run_id, number)


def hand_back(run_id, reason):
    """running -> queued, when a worker stops before it could finish."""
    return bool(Run.update(status=RunStatus.QUEUED, queued_at=utcnow(), error=reason)
                .where(Run.id == run_id, Run.status == RunStatus.RUNNING).execute())


def wait_while_running(run_id, seconds, sending_grace=0.0, clock=time.monotonic):
    """Wait up to `seconds` for a running run to finish (or stop running),
    and up to `sending_grace` more while it (or a run of its batch) is in
    the middle of an SMTP transaction: cut there, the server may have the
    message with nobody recording it, and the retry would send a second
    copy."""
    deadline = clock() + seconds
    while True:
        run = Run.get_or_none(Run.id == run_id)
        if run is None or run.status != RunStatus.RUNNING:
            return
        if clock() >= deadline:
            if not sending(run_id) or clock() >= deadline + sending_grace:
                return
        time.sleep(0.05)


def sending(run_id):
    """Whether the run, or a run of the batch it leads, is in the middle of
    an SMTP transaction."""
    return Delivery.select().join(Run, on=(Delivery.run == Run.id)).where(
        ((Run.id == run_id) | (Run.batch_of == run_id))
        & (Delivery.status == DeliveryStatus.SENDING)).exists()


class Heartbeat:
    """While an attempt is in hand, record that it is alive, and how far it
    has got, from a side thread with its own connection.

    The writing thread only sets `rows`/`bytes` in memory: it holds a read
    cursor open for the whole export, and a write on that connection would
    wait for the read to end (PostgreSQL: invisible inside its transaction;
    SQLite: refused as a stale snapshot). A killed worker stops beating and
    the reaper takes the run back; a paused one finds, at its next beat or
    progress step, that the run is no longer its own (`lost`), and stops.
    """

    def __init__(self, attempt, every, batch=False):
        self.attempt = attempt
        self.every = every
        # The attempt leads a batch: its companions are beaten with it.
        self.batch = batch
        self.rows = self.bytes = None
        self.lost = False
        self._stop = threading.Event()
        # In the run's logging context, so its lines carry the run's fields.
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._beat,), daemon=True,
                                        name='heartbeat-%d' % attempt.run_id)

    def progress(self, rows, size):
        """The writer's progress callback: notes how far it got, and stops
        the export (LostOwnership) once another attempt owns the run."""
        if self.lost:
            raise LostOwnership('run %d: attempt %d was taken back while writing'
                                % (self.attempt.run_id, self.attempt.number))
        self.rows, self.bytes = rows, size

    def _beat(self):
        try:
            while not self._stop.wait(self.every):
                values = {Run.heartbeat_at: db_now()}
                if self.rows is not None:
                    # Only while the file is unfinished: the beat goes on while
                    # the file is zipped and mailed, and its last "so far" must
                    # not overwrite the final count recorded with the file.
                    writing = Run.file_key.is_null()
                    values.update({Run.rows: Case(None, [(writing, self.rows)], Run.rows),
                                   Run.bytes: Case(None, [(writing, self.bytes)], Run.bytes)})
                try:
                    if self.batch:
                        batches.beat(self.attempt.run_id, values[Run.heartbeat_at])
                    if not Run.update(values).where(self.attempt.owned()).execute():
                        self.lost = True
                        logger.warning('run %d: attempt %d no longer owns it (taken back '
                                       'by the reaper, or cancelled); this worker stops it',
                                       self.attempt.run_id, self.attempt.number)
                        return
                except Exception:
                    logger.warning('heartbeat of run %d not recorded', self.attempt.run_id,
                                   exc_info=True)
        finally:
            db.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Outcome(NamedTuple):
    """What became of one execution: `status` says how it ended (see
    vocab.Ending); `delay` is the wait before a retry."""
    status: Ending
    delay: Optional[float] = None


def execute_run(run_id: int, registry, settings, mailer, store, *,
                clock=time.monotonic, on_companion=None) -> Outcome:
    """Build the run's file and deliver it, once, by whichever worker claims it.

    Idempotent: a run that is not queued is left alone; a re-run rebuilds an
    unfinished file from scratch and mails only recipients who did not get it.
    Every failure after the claim is recorded on the run (fenced by the
    attempt) and comes back as an Outcome; database errors before the claim
    propagate for the caller to retry.

    With `on_companion(run_id, outcome, run)` a fresh run also serves other
    fresh runs of its report with the same parameters (batches.py); each
    one's outcome is told there (a released one as a retry with no delay,
    and no row).
    """
    # The status and report alone until the run is claimed: in a burst most
    # tasks find their run served already by another's query (batches.py)
    # or every turn taken, and reading the whole row costs more than that.
    row = statements.select_one(Run, ('status', 'report'), ('id', '=', run_id))
    if row is None or row[0] != RunStatus.QUEUED:
        return Outcome(Ending.IDLE)
    report = row[1]
    note(report=report)
    try:
        definition = registry.get(report)
    except (UnknownReport, BrokenReport) as exc:
        mark_failed(run_id, 'report %r no longer exists' % report
                    if isinstance(exc, UnknownReport)
                    else 'report %s cannot be used: %s' % (report, exc.error))
        return Outcome(Ending.FAILED)
    attempt = claim(run_id, report=report, limit=settings.max_concurrent_per_report)
    if attempt is None:
        # No free turn: wait for one (turns.py), with no task; the next run
        # of the report to end hands it its turn. Then claim again: a run
        # that ended between the two may have looked before this one waited.
        if not turns.wait_for_turn(run_id):
            return Outcome(Ending.IDLE)  # not queued: someone else has it
        attempt = claim(run_id, report=report, limit=settings.max_concurrent_per_report)
        if attempt is None:
            return Outcome(Ending.BUSY)
    companions = []
    if on_companion is not None and settings.batch_runs > 1:
        run = Run.get_by_id(run_id)  # as this attempt claimed it
        if batches.can_lead(run, attempt):
            companions = batches.claim_companions(attempt, run, settings.batch_runs - 1)
    try:
        return _settle(attempt, settings, store, lambda: _attempt(
            attempt, definition, registry, settings, mailer, store, clock,
            companions, on_companion))
    finally:
        if companions:
            for released in batches.release(attempt.run_id, 'run %d, which was to serve '
                                            'it, stopped first' % attempt.run_id):
                on_companion(released, Outcome(Ending.RETRY, 0), None)


def _settle(attempt, settings, store, work) -> Outcome:
    """Do `work` for the attempt; what became of it, recorded on the run."""
    try:
        work()
    except LostOwnership as exc:
        if Run.select(Run.status).where(Run.id == attempt.run_id).scalar() \
                == RunStatus.CANCELLED:
            # Cancelled (control.cancel_run): nothing was sent; nothing is kept.
            discard_files(settings, store, attempt.run_id)
            logger.info('run %d: cancelled; attempt %d stopped and sent nothing',
                        attempt.run_id, attempt.number)
            return Outcome(Ending.CANCELLED)
        logger.warning('%s; it leaves the run to that attempt', exc)
        return Outcome(Ending.LOST)
    except PermanentFailure as exc:
        return _fail(attempt, settings, store, settings.redact(str(exc)))
    except MailError as exc:
        if not exc.temporary:
            return _fail(attempt, settings, store, settings.redact(str(exc)))
        return _retry_later(attempt, settings, store, exc)
    except Exception as exc:
        return _retry_later(attempt, settings, store, exc)
    return Outcome(Ending.DELIVERED)


def _attempt(attempt, definition, registry, settings, mailer, store, clock,
             companions=(), on_companion=None):
    started = clock()
    split = Run.select(Run.split_by).where(Run.id == attempt.run_id).scalar()
    with Heartbeat(attempt, settings.progress_every, batch=bool(companions)) as heartbeat:
        if split:
            # Each recipient found in the data gets their own rows (bursting.py).
            path = bursting.prepare_split(registry, settings, store, attempt,
                                          heartbeat=heartbeat)
            skipped = bursting.deliver_split(attempt, definition.title, path, settings, mailer,
                                             seconds=clock() - started)
        else:
            path = prepare_file(registry, settings, store, attempt, heartbeat=heartbeat,
                                share=bool(companions))
            built = clock() - started
            skipped = deliver(attempt, definition.title, path, settings, mailer,
                              seconds=built)
            if companions:
                # The leader's own recipients first; the leader is recorded
                # last, so its heartbeat covers the whole batch.
                _serve_companions(attempt, companions, definition, settings, mailer, store,
                                  built, on_companion)
    _finish(attempt, settings, store, skipped)


def _serve_companions(leader, companions, definition, settings, mailer, store, built,
                      on_companion):
    """Each companion its own copy of the leader's file, its own message and
    records; its outcome told to `on_companion` as it is known. Mailed over
    up to `batch_senders` connections at once: the file is made, so only
    the mail server and the state database are waited on, and with a mail
    server further than loopback a run's SMTP round trips are most of its
    time."""
    source = shared_source(settings, leader)
    written = Run.select(Run.rows, Run.bytes, Run.truncated) \
        .where(Run.id == leader.run_id).get()
    # Their rows and deliveries read once for the batch, not per run: each
    # is only this batch's to change while it runs (fenced writes say so).
    ids = [member.run_id for member in companions]
    rows = {run.id: run for run in Run.select().where(Run.id.in_(ids))}
    deliveries = {run_id: [] for run_id in ids}
    for delivery in Delivery.select().where(Delivery.run.in_(ids)).order_by(Delivery.id):
        deliveries[delivery.run_id].append(delivery)

    def serve(member, run):
        path = publish_shared(settings, store, member, run, source, definition.title, written)
        skipped = deliver(member, definition.title, path, settings, mailer, seconds=built,
                          run=run, deliveries=deliveries[run.id])
        _finish(member, settings, store, skipped, deliveries[run.id])

    def serve_one(member):
        with about_run(member.run_id, definition.name):
            run = rows[member.run_id]
            outcome = _settle(member, settings, store, lambda: serve(member, run))
            on_companion(member.run_id, outcome, run)
    try:
        with runmessages.read_once(run.schedule for run in rows.values()), \
                batches.serving(leader.run_id) as stop:
            # Two senders to begin with; all of batch_senders once the
            # process turns out to be waiting rather than working (Pace).
            in_threads(companions, serve_one, senders_for(settings, os.path.getsize(source)),
                       stop=stop, thread_started=_connect, thread_ended=lambda: _let_go(mailer),
                       first=2, grow=Pace().more)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)


# What a batch's senders may hold at once: each has its message whole, the
# attachment several times over (the file, its base64, the text on the
# wire). A bigger file is mailed by fewer senders, down to one.
SENDING_BUDGET = 64 * 1024 * 1024


def senders_for(settings, file_bytes):
    return max(1, min(settings.batch_senders, SENDING_BUDGET // max(5 * file_bytes, 1)))


def in_threads(items, work, threads, thread_ended=None, thread_started=None, stop=None,
               first=None, grow=None):
    """work(item) for each of `items`, from up to `threads` threads at once
    (no more than one for two items), the calling one among them.

    `first` threads at the start (all of them by default); after each item
    of its own the calling thread starts the rest once `grow()` says so.
    In each other thread `thread_started()` first (one that raises sits the
    work out, logged) and `thread_ended()` last. No thread takes another
    item once `stop` (a threading.Event) is set, nor after the first
    exception; once all are done that is raised here: an interruption
    (KeyboardInterrupt, SystemExit) before the calling thread's own error,
    and that before another thread's."""
    stop = stop or threading.Event()
    pending = iter(items)
    taking = threading.Lock()
    errors = []
    # A thread for two items at least: each opens its own connections.
    most = max(1, min(threads, len(items) // 2))
    helpers = []

    def take():
        with taking:
            return None if stop.is_set() else next(pending, None)

    def start_helpers(count):
        # Each in a copy of the caller's context: its log fields and the
        # batch's installation id and schedules (runmessages.read_once).
        for _ in range(count):
            thread = threading.Thread(
                target=contextvars.copy_context().run, args=(helper,), daemon=True,
                name='%s-%d' % (threading.current_thread().name, len(helpers) + 1))
            helpers.append(thread)
            thread.start()

    def loop(caller):
        try:
            while (item := take()) is not None:
                work(item)
                if caller and len(helpers) < most - 1 and grow is not None and grow():
                    start_helpers(most - 1 - len(helpers))
        except BaseException as exc:
            errors.append((not isinstance(exc, Exception), caller, exc))
            stop.set()

    def helper():
        try:
            if _logged_if_it_fails(thread_started, 'a sender could not start; '
                                   'the others go on'):
                loop(False)
        finally:
            _logged_if_it_fails(thread_ended, 'a sender did not close cleanly')
    try:
        start_helpers(min(most, first or most) - 1)
        loop(True)
    finally:
        # Interrupted here (a worker stopping): the others take no more.
        stop.set()
        for thread in helpers:
            if thread.ident is not None:
                thread.join()
    if errors:
        raise max(errors, key=lambda error: error[:2])[2]


class Pace:
    """Whether a batch would gain from more senders: yes while its process
    is not busy (under BUSY of a core since the last look), so its senders
    mostly wait, for a mail server further away or the database. A busy
    process gains nothing: on a near mail server the CPU, or in thread
    workers the GIL, is the limit, and more threads only contend for it
    (0.5-0.9 ms more CPU a run with four senders than with one, measured)."""

    BUSY = 0.7
    # Shorter looks are mostly noise of the scheduler.
    LOOK = 0.02

    def __init__(self, clock=time.monotonic, cpu=time.process_time):
        self.clock, self.cpu = clock, cpu
        self.since, self.used = clock(), cpu()

    def more(self):
        now, used = self.clock(), self.cpu()
        if now - self.since < self.LOOK:
            return False
        busy = (used - self.used) / (now - self.since)
        self.since, self.used = now, used
        return busy < self.BUSY


def _logged_if_it_fails(call, failure):
    """call() if there is one; False (and `failure` logged) if it raised."""
    try:
        if call is not None:
            call()
        return True
    except Exception:
        logger.warning(failure, exc_info=True)
        return False


def _connect():
    # A sender's own state-database connection, before it takes a run: one
    # that cannot connect costs no run an attempt.
    db.connect(reuse_if_open=True)


def _let_go(mailer):
    # A sender's own connections: its kept SMTP session, its database one.
    try:
        mailer.close()
    finally:
        db.close()


def _finish(attempt, settings, store, skipped, deliveries=None):
    """Record how the attempt ended once its mail went out (or was not to).
    `deliveries`: all the run's, as deliver() left them, when the caller has them."""
    if skipped:
        # The send rule said no (no rows): a recorded run, nothing sent.
        attempt.update(status=RunStatus.SKIPPED, finished_at=utcnow(), error=skipped)
        drop_working_copy(settings, store, attempt.run_id)
        return
    if deliveries is None:
        deliveries = list(Delivery.select().where(Delivery.run == attempt.run_id))
    refused = [d for d in deliveries if d.status == DeliveryStatus.REFUSED]
    if refused and len(refused) == len(deliveries):
        raise PermanentFailure('every recipient was refused: %s' % '; '.join(
            '%s: %s' % (d.address, d.error) for d in refused))
    error = None
    if refused:
        error = 'refused: %s' % '; '.join('%s: %s' % (d.address, d.error) for d in refused)
    attempt.update(status=RunStatus.DELIVERED, finished_at=utcnow(), error=error)
    drop_working_copy(settings, store, attempt.run_id)


def _retry_later(attempt, settings, store, exc):
    reason = settings.redact('%s: %s' % (type(exc).__name__, exc))
    if attempt.number >= settings.max_attempts:
        return _fail(attempt, settings, store,
                     '%s (gave up after %d attempts)' % (reason, attempt.number))
    delay = retry_delay(attempt.number, settings)
    try:
        attempt.update(status=RunStatus.QUEUED, error=reason,
                       next_attempt_at=utcnow() + datetime.timedelta(seconds=delay))
    except LostOwnership:
        return Outcome(Ending.LOST)
    logger.info('run %d: attempt %d failed (%s); retrying in %.1fs',
                attempt.run_id, attempt.number, reason, delay, extra=run_fields(attempt.run_id))
    return Outcome(Ending.RETRY, delay)


def _fail(attempt, settings, store, reason):
    try:
        attempt.update(status=RunStatus.FAILED, error=reason, finished_at=utcnow())
    except LostOwnership:
        return Outcome(Ending.LOST)
    logger.warning('run %d failed: %s', attempt.run_id, reason, extra=run_fields(attempt.run_id))
    remove_work_files(settings, store, Run.get_by_id(attempt.run_id))
    return Outcome(Ending.FAILED)


def reap(settings, now, enqueue, on_failed=None):
    """Take back runs whose worker went silent (no heartbeat for stale_after,
    judged on the database's clock so a worker's skewed clock cannot make a
    live run look dead) and queued runs whose task was lost; give up on those
    out of attempts (`on_failed(id)`). Returns the ids queued again."""
    requeued = []
    stale = db_now() - datetime.timedelta(seconds=settings.stale_after)
    # Read whole first: on SQLite a write while a cursor is open can fail
    # with 'database is locked' under another process's write.
    for run in list(Run.select().where(Run.status == RunStatus.RUNNING,
                                       Run.heartbeat_at < stale)):
        if run.attempts >= settings.max_attempts:
            if mark_failed(run.id, 'worker stopped during attempt %d of %d (no heartbeat '
                           'since %s); giving up' % (run.attempts, settings.max_attempts,
                                                    run.heartbeat_at.isoformat() + 'Z'), now):
                logger.warning('run %d failed: out of attempts', run.id,
                               extra=run_fields(run.id, run.report))
                if on_failed is not None:
                    on_failed(run.id)
            continue
        taken = (Run.update(status=RunStatus.QUEUED, queued_at=now,
                            error='worker stopped during attempt %d (no heartbeat); '
                                  'running it again' % run.attempts)
                 .where(Run.id == run.id, Run.status == RunStatus.RUNNING,
                        Run.attempts == run.attempts,
                        Run.heartbeat_at == run.heartbeat_at).execute())
        if taken:
            requeued.append(run.id)
            logger.info('run %d: its worker went silent; queued again', run.id,
                        extra=run_fields(run.id, run.report))
    lost = now - datetime.timedelta(seconds=settings.requeue_after)
    # A run waiting for a turn (next attempt = queued_at) has no task by
    # design: turns.py hands it one, the tick's hand_free_turns included.
    for run in list(Run.select().where(Run.status == RunStatus.QUEUED, Run.queued_at < lost,
                                       (Run.next_attempt_at.is_null()) |
                                       ((Run.next_attempt_at < lost) &
                                        ~turns.waiting_for_turn()))):
        taken = (Run.update(queued_at=now)
                 .where(Run.id == run.id, Run.status == RunStatus.QUEUED,
                        Run.queued_at == run.queued_at).execute())
        if taken:
            requeued.append(run.id)
    for run_id in requeued:
        logger.info('run %d queued again by the reaper', run_id, extra=run_fields(run_id))
        enqueue(run_id)
    return requeued


