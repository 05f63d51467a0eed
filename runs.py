"""The life of a run: create it from a request, execute it, describe it.

Plain functions: the Huey task, the web server, the command line and the
tests all call these.
"""
import contextlib
import datetime
import hashlib
import logging
import math
import os
import random
import shutil
import threading
import time
import zipfile
from typing import NamedTuple, Optional

from peewee import Case, PostgresqlDatabase, fn

import links
from sqlexport import open_query_csv
from export import write_file
from mail import Mail, MailError, check_address, compose
from models import TERMINAL, Delivery, Run, db, db_now, utcnow
from params import InputError, dump_params
from reports import BrokenReport, UnknownReport, find_report
from sources import ReportSQLError, UnknownSource

logger = logging.getLogger('nightshift.runs')


class PermanentFailure(Exception):
    """Trying again cannot help; the run is failed with this reason."""


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


def create_run(registry, settings, report, params=None, to=None, trigger='web',
               schedule=None, slot_at=None, escape_formulas=None, bom=None):
    """Validate a request and record it as a queued run (one transaction)."""
    definition = find_report(registry, report)
    typed = definition.parse(params)
    recipients = parse_recipients(to, settings)
    with db.atomic():
        run = Run.create(report=report, params=dump_params(typed), recipients=recipients,
                         trigger=trigger, schedule=schedule, slot_at=slot_at,
                         escape_formulas=definition.escape_formulas
                         if escape_formulas is None else escape_formulas,
                         bom=settings.csv_bom if bom is None else bom)
        for address in recipients:
            Delivery.create(run=run, address=address)
    return run


def mark_failed(run_id, reason, now=None):
    """Record a run that is not in a worker's hands as failed for good (its
    task could not be queued, or the reaper gave up). True if it changed."""
    return bool(Run.update(status='failed', error=reason, finished_at=now or utcnow())
                .where(Run.id == run_id, Run.status.not_in(TERMINAL)).execute())


def record_wait(run_id, next_attempt_at):
    """The run waits for a turn (not a failure): the reaper leaves it alone."""
    Run.update(next_attempt_at=next_attempt_at).where(Run.id == run_id).execute()


def retry_delay(attempts, settings, rng=random):
    """Exponential backoff with jitter: half the delay is random, so many
    runs failing together do not come back together."""
    delay = min(settings.retry_max_delay, settings.retry_delay * 2 ** max(attempts - 1, 0))
    return delay / 2 + rng.uniform(0, delay / 2)


class Busy(Exception):
    """The report already has max_concurrent_per_report runs in progress."""


class LostOwnership(Exception):
    """This attempt was taken back (its worker was silent past stale_after)
    and another attempt owns the run now: this one must not publish a file,
    send mail or record anything about the run."""


class Attempt(NamedTuple):
    """One worker's turn at a run. The attempt number is the fencing token:
    every write this worker makes to the run checks it is still the run's
    current attempt and the run is still running."""
    run_id: int
    number: int

    def owned(self):
        return ((Run.id == self.run_id) & (Run.status == 'running')
                & (Run.attempts == self.number))

    def update(self, **values):
        """A fenced write; LostOwnership when the run is no longer ours."""
        if not Run.update(**values).where(self.owned()).execute():
            raise LostOwnership('run %d: attempt %d no longer owns it'
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
    with db.atomic():
        condition = (Run.id == run_id) & (Run.status == 'queued')
        if limit:
            if isinstance(db.obj, PostgresqlDatabase):
                # Under READ COMMITTED two claims would each count the other's
                # run as not yet running: claims of one report take turns.
                db.execute_sql('SELECT pg_advisory_xact_lock(%s)', (_report_lock_key(report),))
            busy = Run.alias('busy')
            in_progress = (busy.select(fn.COUNT(busy.id))
                           .where((busy.report == report) & (busy.status == 'running')))
            condition &= (in_progress < limit)
        now = now or db_now()
        if not (Run.update(status='running', attempts=Run.attempts + 1, started_at=now,
                           heartbeat_at=now, next_attempt_at=None)
                .where(condition).execute()):
            return None
        number = Run.select(Run.attempts).where(Run.id == run_id).scalar()
    return Attempt(run_id, number)


def hand_back(run_id, reason):
    """running -> queued, when a worker stops before it could finish."""
    return bool(Run.update(status='queued', queued_at=utcnow(), error=reason)
                .where(Run.id == run_id, Run.status == 'running').execute())


def wait_while_running(run_id, seconds, sending_grace=0.0, clock=time.monotonic):
    """Wait up to `seconds` for a running run to finish (or stop running),
    and up to `sending_grace` more while it is in the middle of an SMTP
    transaction: cut there, the server may have the message with nobody
    recording it, and the retry would send a second copy."""
    deadline = clock() + seconds
    while True:
        run = Run.get_or_none(Run.id == run_id)
        if run is None or run.status != 'running':
            return
        if clock() >= deadline:
            sending = Delivery.select().where(Delivery.run == run_id,
                                              Delivery.status == 'sending').exists()
            if not sending or clock() >= deadline + sending_grace:
                return
        time.sleep(0.05)


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

    def __init__(self, attempt, every):
        self.attempt = attempt
        self.every = every
        self.rows = self.bytes = None
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name='heartbeat-%d' % attempt.run_id)

    def progress(self, rows, size):
        """The writer's progress callback: notes how far it got, and stops
        the export (LostOwnership) once another attempt owns the run."""
        if self.lost:
            raise LostOwnership('run %d: attempt %d was taken back while writing'
                                % self.attempt)
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
                    if not Run.update(values).where(self.attempt.owned()).execute():
                        self.lost = True
                        logger.warning('run %d: attempt %d was taken back by the reaper; '
                                       'this worker stops it', *self.attempt)
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


def run_folder(settings, run_id):
    return os.path.join(settings.reports_dir, 'run-%d' % run_id)


def attempt_folder(settings, attempt):
    """Each attempt writes in a folder of its own, so a taken-back attempt
    that wakes up cannot write into the file another attempt is building."""
    return os.path.join(run_folder(settings, attempt.run_id), 'a%d' % attempt.number)


def local_path(settings, key):
    """Where a stored file's working copy lives on this machine: keys are
    paths under reports_dir (the local store keeps files right there)."""
    return os.path.join(settings.reports_dir, *key.split('/'))


def open_report(definition, settings, typed, escape, bom):
    """The report's rows on its source as a CSV stream (a context manager).
    Raises ReportSQLError / SourceUnavailable from the source, and
    UnknownSource for a report that names a source nobody configured."""
    source = settings.source(definition.source)
    sql, params = definition.statement(source.engine, typed)
    return open_query_csv(source, sql, params, escape=escape, bom=bom, limit=settings.max_rows,
                          timeout=definition.timeout)


def write_report(registry, settings, run, path, on_progress=None):
    """Write the run's CSV to `path`; `on_progress(rows, bytes)` as it goes.
    Returns the finished stream (rows, bytes, truncated). A report that
    cannot work (its SQL fails, its file is broken, its source is not
    configured) is a PermanentFailure; a source that does not answer is not."""
    try:
        definition = registry.get(run.report)
        with open_report(definition, settings, definition.parse(run.params),
                         run.escape_formulas, run.bom) as stream:
            write_file(stream, path, on_progress=on_progress, every=0.1)
    except UnknownReport:
        raise PermanentFailure('report %r no longer exists' % run.report)
    except BrokenReport as exc:
        raise PermanentFailure('report %s cannot be used: %s' % (run.report, exc.error))
    except UnknownSource as exc:
        raise PermanentFailure('report %s reads source %r, which is not configured'
                               % (run.report, str(exc.args[0])))
    except ReportSQLError as exc:
        logger.warning('report %s (%s) failed on source %s: %s', run.report,
                       getattr(definition, 'path', None) or 'python', exc.source, exc.message)
        raise PermanentFailure('report %s failed on source %s: %s'
                               % (run.report, exc.source, exc.message))
    except InputError as exc:
        raise PermanentFailure('report %s: its parameters no longer fit: %s'
                               % (run.report, exc))
    return stream


def message_size(attachment_bytes):
    """Bytes an attachment takes in a message: base64 (4 per 3) in 76-character
    lines, plus room for headers and the body. Providers count this."""
    encoded = math.ceil(attachment_bytes / 3) * 4
    return encoded + math.ceil(encoded / 76) * 2 + 64 * 1024


def package(csv_path, settings):
    """(path, sent_as): the CSV as it is, zipped when large, and 'link' when
    even the zip would be over the provider's limit."""
    path, sent_as = csv_path, 'csv'
    if os.path.getsize(csv_path) > settings.zip_over_mb * 1e6:
        path, sent_as = csv_path[:-len('.csv')] + '.zip', 'zip'
        with zipfile.ZipFile(path + '.part', 'w', zipfile.ZIP_DEFLATED) as archive:
            archive.write(csv_path, os.path.basename(csv_path))
        os.replace(path + '.part', path)
        os.unlink(csv_path)
    if message_size(os.path.getsize(path)) > settings.mail_max_mb * 1e6:
        sent_as = 'link'
    return path, sent_as


def _published_copy(settings, store, run):
    """The local path of the run's finished file when one is kept, fetched
    from the store if this machine has no copy (another host built it), so a
    retry sends every recipient the same data. None if it must be rebuilt."""
    if not run.file_key or run.file_bytes is None:
        return None
    path = local_path(settings, run.file_key)
    if os.path.isfile(path) and os.path.getsize(path) == run.file_bytes:
        return path
    try:
        chunks = store.open_chunks(run.file_key)
    except (FileNotFoundError, ValueError):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.part', 'wb') as out:
        for chunk in chunks:
            out.write(chunk)
    if os.path.getsize(path + '.part') != run.file_bytes:
        os.unlink(path + '.part')
        return None
    os.replace(path + '.part', path)
    return path


def prepare_file(registry, settings, store, attempt, heartbeat=None):
    """The run's finished file: reused when a complete one is kept, else
    built from scratch in this attempt's own folder and published with a
    fenced write. Returns the local path; LostOwnership if the run was taken
    from this attempt (nothing it made is left behind)."""
    run = Run.get_by_id(attempt.run_id)
    reused = _published_copy(settings, store, run)
    if reused:
        return reused
    folder = attempt_folder(settings, attempt)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    key = None
    try:
        stamp = run.created_at.strftime('%Y%m%d-%H%M%S')
        csv_path = os.path.join(folder, '%s-%s.csv' % (run.report, stamp))
        attempt.update(rows=0, bytes=0, file_name=None, file_key=None, file_bytes=None,
                       sent_as=None)
        stream = write_report(registry, settings, run, csv_path,
                              heartbeat.progress if heartbeat else None)
        path, sent_as = package(csv_path, settings)
        key = os.path.relpath(path, settings.reports_dir).replace(os.sep, '/')
        store.save(key, path)
        attempt.update(rows=stream.rows, bytes=stream.bytes, truncated=stream.truncated,
                       file_name=os.path.basename(path), file_key=key,
                       file_bytes=os.path.getsize(path), sent_as=sent_as,
                       heartbeat_at=db_now())
    except LostOwnership:
        if key is not None:
            store.delete(key)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path


def deliver(attempt, title, path, settings, mailer, seconds):
    """Mail the file to every recipient who has not got it yet."""
    run = Run.get_by_id(attempt.run_id)
    targets = [d for d in run.deliveries.order_by(Delivery.id)
               if d.status in ('pending', 'sending')]
    if not targets:
        return
    link = expires = None
    if run.sent_as == 'link':
        expires = utcnow() + datetime.timedelta(days=settings.retention_days)
        link = links.download_url(settings, run, expires)
    mail = compose(run, title, [d.address for d in targets], path, seconds,
                   link=link, link_expires=expires, limit_mb=settings.mail_max_mb,
                   cut_at=settings.max_rows if run.truncated else None)
    ids = [d.id for d in targets]
    # Marked first, and only while the run is still this attempt's: a crash
    # after the server accepted shows as "sending", and the retry sends
    # again with the same Message-ID rather than not at all.
    with db.atomic():
        attempt.update(heartbeat_at=db_now())
        Delivery.update(status='sending').where(Delivery.id.in_(ids)).execute()
    try:
        replies = mailer.send(mail)
    except MailError as exc:
        Delivery.update(status='pending', error=str(exc)) \
            .where(Delivery.id.in_(ids), Delivery.status == 'sending').execute()
        raise
    record_replies(targets, replies, utcnow())
    temporary = {d.address: d.error for d in targets if d.status == 'pending'}
    if temporary:
        raise MailError('recipients to retry: %s' % '; '.join(
            '%s: %s' % item for item in sorted(temporary.items())), temporary=True)


def record_replies(targets, replies, sent_at):
    """Each recipient's outcome from the server's reply to it: sent only on a
    2xx (its message accepted), pending on 4xx or no reply (tried again),
    refused on 5xx. A "sent" is a fact and always recorded; anything else
    never overwrites a "sent" another attempt recorded meanwhile."""
    for delivery in targets:
        reply = replies.get(delivery.address) or '421 no reply for this recipient'
        if reply.startswith('2'):
            Delivery.update(status='sent', sent_at=sent_at, error=None) \
                .where(Delivery.id == delivery.id).execute()
            delivery.status, delivery.error = 'sent', None
            continue
        delivery.status = 'refused' if reply.startswith('5') else 'pending'
        delivery.error = reply
        Delivery.update(status=delivery.status, error=reply) \
            .where(Delivery.id == delivery.id, Delivery.status != 'sent').execute()


class Outcome(NamedTuple):
    """What became of one execution: `status` is delivered, failed (for
    good), retry (after `delay` seconds), busy (wait `delay` for a turn),
    lost (taken back; another attempt owns the run) or idle (nothing to do:
    the run is not queued)."""
    status: str
    delay: Optional[float] = None


def execute_run(run_id, registry, settings, mailer, store, clock=time.monotonic):
    """Build the run's file and deliver it, once, by whichever worker claims it.

    Idempotent: a run that is not queued is left alone; a re-run rebuilds an
    unfinished file from scratch and mails only recipients who did not get it.
    Every failure after the claim is recorded on the run (fenced by the
    attempt) and comes back as an Outcome; database errors before the claim
    propagate for the caller to retry.
    """
    run = Run.get_or_none(Run.id == run_id)
    if run is None or run.status != 'queued':
        return Outcome('idle')
    try:
        definition = registry.get(run.report)
    except (UnknownReport, BrokenReport) as exc:
        mark_failed(run.id, 'report %r no longer exists' % run.report
                    if isinstance(exc, UnknownReport)
                    else 'report %s cannot be used: %s' % (run.report, exc.error))
        return Outcome('failed')
    attempt = claim(run.id, report=run.report, limit=settings.max_concurrent_per_report)
    if attempt is None:
        if Run.select(Run.status).where(Run.id == run_id).scalar() == 'queued':
            delay = max(retry_delay(1, settings), 1.0)
            record_wait(run_id, utcnow() + datetime.timedelta(seconds=delay))
            return Outcome('busy', delay)
        return Outcome('idle')
    try:
        _attempt(attempt, definition, registry, settings, mailer, store, clock)
    except LostOwnership as exc:
        logger.warning('%s; it leaves the run to that attempt', exc)
        return Outcome('lost')
    except PermanentFailure as exc:
        return _fail(attempt, settings, store, settings.redact(str(exc)))
    except MailError as exc:
        if not exc.temporary:
            return _fail(attempt, settings, store, settings.redact(str(exc)))
        return _retry_later(attempt, settings, store, exc)
    except Exception as exc:
        return _retry_later(attempt, settings, store, exc)
    return Outcome('delivered')


def _attempt(attempt, definition, registry, settings, mailer, store, clock):
    started = clock()
    with Heartbeat(attempt, settings.progress_every) as heartbeat:
        path = prepare_file(registry, settings, store, attempt, heartbeat)
        deliver(attempt, definition.title, path, settings, mailer, clock() - started)
    deliveries = list(Delivery.select().where(Delivery.run == attempt.run_id))
    refused = [d for d in deliveries if d.status == 'refused']
    if refused and len(refused) == len(deliveries):
        raise PermanentFailure('every recipient was refused: %s' % '; '.join(
            '%s: %s' % (d.address, d.error) for d in refused))
    error = None
    if refused:
        error = 'refused: %s' % '; '.join('%s: %s' % (d.address, d.error) for d in refused)
    attempt.update(status='delivered', finished_at=utcnow(), error=error)
    _drop_working_copy(settings, store, attempt.run_id)


def _retry_later(attempt, settings, store, exc):
    reason = settings.redact('%s: %s' % (type(exc).__name__, exc))
    if attempt.number >= settings.max_attempts:
        return _fail(attempt, settings, store,
                     '%s (gave up after %d attempts)' % (reason, attempt.number))
    delay = retry_delay(attempt.number, settings)
    try:
        attempt.update(status='queued', error=reason,
                       next_attempt_at=utcnow() + datetime.timedelta(seconds=delay))
    except LostOwnership:
        return Outcome('lost')
    logger.info('run %d: attempt %d failed (%s); retrying in %.1fs',
                attempt.run_id, attempt.number, reason, delay)
    return Outcome('retry', delay)


def _fail(attempt, settings, store, reason):
    try:
        attempt.update(status='failed', error=reason, finished_at=utcnow())
    except LostOwnership:
        return Outcome('lost')
    logger.warning('run %d failed: %s', attempt.run_id, reason)
    remove_work_files(settings, store, Run.get_by_id(attempt.run_id))
    return Outcome('failed')


def _drop_working_copy(settings, store, run_id):
    # With a shared store the local copy was only for mailing it; leaving it
    # would keep it on this machine past retention (only the machine that
    # expires the run would delete its own copy).
    if store.kind != 'local':
        shutil.rmtree(run_folder(settings, run_id), ignore_errors=True)


def remove_work_files(settings, store, run):
    """Everything in the run's folder but its published file (which stays
    for download while the local store keeps it)."""
    folder = run_folder(settings, run.id)
    if not os.path.isdir(folder):
        return
    keep = None
    if run.file_key and store.kind == 'local':
        keep = os.path.abspath(local_path(settings, run.file_key))
    for parent, _, names in os.walk(folder, topdown=False):
        for name in names:
            path = os.path.join(parent, name)
            if os.path.abspath(path) != keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # only when empty


def sweep_orphans(settings, store):
    """Work folders nothing will use again: of runs that are over (their
    published file kept), or that no longer exist. Runs still queued or
    running are left alone. Returns how many folders were cleaned."""
    try:
        names = os.listdir(settings.reports_dir)
    except FileNotFoundError:
        return 0
    ids = {}
    for name in names:
        if name.startswith('run-') and name[4:].isdecimal() and name[4:].isascii():
            ids[int(name[4:])] = name
    if not ids:
        return 0
    cleaned = 0
    known = {run.id: run for run in Run.select(Run.id, Run.status, Run.file_key)
             .where(Run.id.in_(list(ids)))}
    for run_id, name in ids.items():
        run = known.get(run_id)
        if run is None:
            shutil.rmtree(os.path.join(settings.reports_dir, name), ignore_errors=True)
            cleaned += 1
        elif run.status in TERMINAL + ('skipped',):
            remove_work_files(settings, store, run)
            cleaned += 1
    return cleaned


def reap(settings, now, enqueue, on_failed=None):
    """Take back runs whose worker went silent (no heartbeat for stale_after,
    judged on the database's clock so a worker's skewed clock cannot make a
    live run look dead) and queued runs whose task was lost; give up on those
    out of attempts (`on_failed(id)`). Returns the ids queued again."""
    requeued = []
    stale = db_now() - datetime.timedelta(seconds=settings.stale_after)
    for run in Run.select().where(Run.status == 'running', Run.heartbeat_at < stale):
        if run.attempts >= settings.max_attempts:
            if mark_failed(run.id, 'worker stopped during attempt %d of %d (no heartbeat '
                           'since %s); giving up' % (run.attempts, settings.max_attempts,
                                                    run.heartbeat_at.isoformat() + 'Z'), now):
                logger.warning('run %d failed: out of attempts', run.id)
                if on_failed is not None:
                    on_failed(run.id)
            continue
        taken = (Run.update(status='queued', queued_at=now,
                            error='worker stopped during attempt %d (no heartbeat); '
                                  'running it again' % run.attempts)
                 .where(Run.id == run.id, Run.status == 'running',
                        Run.attempts == run.attempts,
                        Run.heartbeat_at == run.heartbeat_at).execute())
        if taken:
            requeued.append(run.id)
    lost = now - datetime.timedelta(seconds=settings.requeue_after)
    for run in Run.select().where(Run.status == 'queued', Run.queued_at < lost,
                                  (Run.next_attempt_at.is_null()) |
                                  (Run.next_attempt_at < lost)):
        taken = (Run.update(queued_at=now)
                 .where(Run.id == run.id, Run.status == 'queued',
                        Run.queued_at == run.queued_at).execute())
        if taken:
            requeued.append(run.id)
    for run_id in requeued:
        logger.info('run %d queued again by the reaper', run_id)
        enqueue(run_id)
    return requeued


def remove_expired_files(settings, store, now):
    """Delete report files past their retention; returns how many."""
    cutoff = now - datetime.timedelta(days=settings.retention_days)
    removed = 0
    for run in Run.select().where(Run.file_key.is_null(False), Run.finished_at < cutoff):
        store.delete(run.file_key)
        shutil.rmtree(run_folder(settings, run.id), ignore_errors=True)
        Run.update(file_key=None).where(Run.id == run.id).execute()
        removed += 1
    return removed


def failure_notice(run, operator):
    """The message telling the operator a run failed for good."""
    body = '\n'.join([
        'Run #%d of report %s failed after %d attempt(s).' % (run.id, run.report, run.attempts),
        '',
        'Reason: %s' % run.error,
        'Trigger: %s%s' % (run.trigger, ' (schedule %s)' % run.schedule if run.schedule else ''),
        'Recipients: %s' % ', '.join(run.recipients),
    ])
    return Mail([operator], 'Nightshift: run #%d (%s) failed' % (run.id, run.report), body,
                None, '<nightshift-run-%d-failed@nightshift>' % run.id)


def _iso(value):
    return value.isoformat() + 'Z' if value is not None else None


def file_ready(run):
    """True when the run is over and its complete file is kept (not past retention).
    While it is still being mailed or retried it is not offered: a re-run may
    rebuild it."""
    return run.status in TERMINAL and bool(run.file_key) \
        and run.file_bytes is not None


def run_as_dict(run, deliveries=None):
    if deliveries is None:
        deliveries = run.deliveries.order_by(Delivery.id)
    return {
        'id': run.id,
        'report': run.report,
        'params': run.params,
        'to': run.recipients,
        'status': run.status,
        'rows': run.rows,
        'bytes': run.bytes,
        'attempts': run.attempts,
        'error': run.error,
        'trigger': run.trigger,
        'schedule': run.schedule,
        'slot_at': _iso(run.slot_at),
        'created_at': _iso(run.created_at),
        'started_at': _iso(run.started_at),
        'finished_at': _iso(run.finished_at),
        'file_name': run.file_name,
        'file_bytes': run.file_bytes,
        'file_url': '/api/runs/%d/file' % run.id if file_ready(run) else None,
        'sent_as': run.sent_as,
        'duration_seconds': round((run.finished_at - run.started_at).total_seconds(), 3)
        if run.finished_at and run.started_at else None,
        'truncated': run.truncated,
        'escape_formulas': run.escape_formulas,
        'deliveries': [{'address': d.address, 'status': d.status, 'error': d.error,
                        'sent_at': _iso(d.sent_at)}
                       for d in deliveries],
        'url': '/api/runs/%d' % run.id,
    }


def runs_as_dicts(page):
    """Describe a page of runs with one query for all their deliveries."""
    page = list(page)
    by_run = {run.id: [] for run in page}
    if by_run:
        for delivery in (Delivery.select().where(Delivery.run.in_(list(by_run)))
                         .order_by(Delivery.id)):
            by_run[delivery.run_id].append(delivery)
    return [run_as_dict(run, by_run[run.id]) for run in page]
