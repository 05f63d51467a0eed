"""The life of a run: create it from a request, execute it, describe it.

Plain functions: the Huey task, the web server, the command line and the
tests all call these.
"""
import datetime
import logging
import math
import os
import random
import shutil
import threading
import time
import zipfile

from peewee import Case, fn

import links
from export import open_csv, write_file
from mail import Mail, MailError, check_address, compose
from models import Delivery, Run, db, utcnow
from params import InputError, dump_params
from reports import UnknownReport

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
    if not isinstance(report, str) or not report:
        raise InputError('report', 'give the name of a report', code='required')
    try:
        definition = registry.get(report)
    except UnknownReport:
        raise InputError('report', 'no report named %r' % report, code='unknown_report')
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
    """Record a run as failed for good, with its reason. True if it changed."""
    return bool(Run.update(status='failed', error=reason, finished_at=now or utcnow())
                .where(Run.id == run_id, Run.status.not_in(('delivered', 'failed')))
                .execute())


def record_retry(run_id, reason, next_attempt_at):
    """A try failed but another will come: back to queued, keep the reason."""
    Run.update(status='queued', error=reason, next_attempt_at=next_attempt_at) \
        .where(Run.id == run_id, Run.status.not_in(('delivered', 'failed'))).execute()


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


def claim(run_id, now, report=None, limit=None):
    """queued -> running, for one worker only. False if someone else has it.

    With `limit`, the claim also needs fewer than `limit` runs of `report` in
    progress, checked in the same statement.
    """
    condition = (Run.id == run_id) & (Run.status == 'queued')
    if limit:
        busy = Run.alias('busy')
        in_progress = (busy.select(fn.COUNT(busy.id))
                       .where((busy.report == report) & (busy.status == 'running')))
        condition &= (in_progress < limit)
    return bool(Run.update(status='running', attempts=Run.attempts + 1, started_at=now,
                           heartbeat_at=now, next_attempt_at=None)
                .where(condition).execute())


def hand_back(run_id, reason):
    """running -> queued, when a worker stops before it could finish."""
    return bool(Run.update(status='queued', queued_at=utcnow(), error=reason)
                .where(Run.id == run_id, Run.status == 'running').execute())


def wait_while_running(run_id, seconds, clock=time.monotonic):
    """Wait up to `seconds` for a running run to finish (or stop running)."""
    deadline = clock() + seconds
    while clock() < deadline:
        run = Run.get_or_none(Run.id == run_id)
        if run is None or run.status != 'running':
            return
        time.sleep(0.05)


class Heartbeat:
    """While a run is in hand, record that it is alive, and how far it has
    got, from a side thread with its own connection.

    The writing thread only sets `rows`/`bytes` in memory: it holds a read
    cursor open for the whole export, and a write on that connection would
    wait for the read to end (PostgreSQL: invisible inside its transaction;
    SQLite: refused as a stale snapshot). A killed worker stops beating and
    the reaper takes the run back.
    """

    def __init__(self, run_id, every):
        self.run_id = run_id
        self.every = every
        self.rows = self.bytes = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name='heartbeat-%d' % run_id)

    def progress(self, rows, size):
        self.rows, self.bytes = rows, size

    def _beat(self):
        try:
            while not self._stop.wait(self.every):
                values = {Run.heartbeat_at: utcnow()}
                if self.rows is not None:
                    # Only while the file is unfinished: the beat goes on while
                    # the file is zipped and mailed, and its last "so far" must
                    # not overwrite the final count recorded with the file.
                    writing = Run.file_key.is_null()
                    values.update({Run.rows: Case(None, [(writing, self.rows)], Run.rows),
                                   Run.bytes: Case(None, [(writing, self.bytes)], Run.bytes)})
                try:
                    Run.update(values) \
                        .where(Run.id == self.run_id, Run.status == 'running').execute()
                except Exception:
                    logger.warning('heartbeat of run %d not recorded', self.run_id,
                                   exc_info=True)
        finally:
            db.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def work_folder(settings, run):
    return os.path.join(settings.reports_dir, 'run-%d' % run.id)


def write_report(registry, settings, run, path, on_progress=None):
    """Write the run's CSV to `path`; `on_progress(rows, bytes)` as it goes.
    Returns the finished CsvStream (rows, bytes, truncated)."""
    definition = registry.get(run.report)
    query = definition.query(definition.parse(run.params))
    with open_csv(query, db.obj, escape=run.escape_formulas, bom=run.bom,
                  limit=settings.max_rows) as stream:
        write_file(stream, path, on_progress=on_progress, every=0.1)
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


def prepare_file(registry, settings, store, run, on_progress=None):
    """The run's finished file: reused when a complete one is at hand (so a
    mail-only retry sends every recipient the same data), else rebuilt from
    scratch. Returns the local path."""
    if run.file_name and run.file_bytes is not None:
        path = os.path.join(work_folder(settings, run), run.file_name)
        if os.path.isfile(path) and os.path.getsize(path) == run.file_bytes:
            return path
    folder = work_folder(settings, run)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    stamp = run.created_at.strftime('%Y%m%d-%H%M%S')
    csv_path = os.path.join(folder, '%s-%s.csv' % (run.report, stamp))
    Run.update(rows=0, bytes=0, file_name=None, file_key=None, file_bytes=None,
               sent_as=None).where(Run.id == run.id).execute()
    stream = write_report(registry, settings, run, csv_path, on_progress)
    path, sent_as = package(csv_path, settings)
    key = 'run-%d/%s' % (run.id, os.path.basename(path))
    store.save(key, path)
    Run.update(rows=stream.rows, bytes=stream.bytes, truncated=stream.truncated,
               file_name=os.path.basename(path), file_key=key,
               file_bytes=os.path.getsize(path), sent_as=sent_as,
               heartbeat_at=utcnow()).where(Run.id == run.id).execute()
    return path


def deliver(run, title, path, settings, mailer, seconds):
    """Mail the file to every recipient who has not got it yet."""
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
    # Marked first: a crash after the server accepted shows as "sending", and
    # the retry sends again with the same Message-ID rather than not at all.
    Delivery.update(status='sending').where(Delivery.id.in_([d.id for d in targets])).execute()
    try:
        refused = mailer.send(mail)
    except MailError as exc:
        Delivery.update(status='pending', error=str(exc)) \
            .where(Delivery.id.in_([d.id for d in targets])).execute()
        raise
    sent_at = utcnow()
    for delivery in targets:
        reply = refused.get(delivery.address)
        if reply is None:
            delivery.status, delivery.sent_at, delivery.error = 'sent', sent_at, None
        elif reply.startswith('4'):
            delivery.status, delivery.error = 'pending', reply
        else:
            delivery.status, delivery.error = 'refused', reply
        delivery.save()
    temporary = {a: r for a, r in refused.items() if r.startswith('4')}
    if temporary:
        raise MailError('recipients to retry: %s' % '; '.join(
            '%s: %s' % item for item in sorted(temporary.items())), temporary=True)


def execute_run(run_id, registry, settings, mailer, store, clock=time.monotonic):
    """Build the run's file and deliver it, once, by whichever worker claims it.

    Idempotent: a run that is not queued is left alone; a re-run rebuilds an
    unfinished file from scratch and mails only recipients who did not get it.
    Raises MailError / database errors for the caller to retry, and
    PermanentFailure when retrying cannot help.
    """
    run = Run.get_or_none(Run.id == run_id)
    if run is None or run.status != 'queued':
        return run
    try:
        definition = registry.get(run.report)
    except UnknownReport:
        raise PermanentFailure('report %r no longer exists' % run.report)
    if not claim(run.id, utcnow(), run.report, settings.max_concurrent_per_report):
        run = Run.get_by_id(run.id)
        if run.status == 'queued':
            raise Busy('%d runs of %s in progress already'
                       % (settings.max_concurrent_per_report, run.report))
        return run
    started = clock()
    with Heartbeat(run.id, settings.progress_every) as heartbeat:
        path = prepare_file(registry, settings, store, Run.get_by_id(run.id),
                            heartbeat.progress)
        run = Run.get_by_id(run.id)
        deliver(run, definition.title, path, settings, mailer, clock() - started)

    refused = [d for d in run.deliveries if d.status == 'refused']
    if refused and len(refused) == len(run.recipients):
        raise PermanentFailure('every recipient was refused: %s' % '; '.join(
            '%s: %s' % (d.address, d.error) for d in refused))
    error = None
    if refused:
        error = 'refused: %s' % '; '.join('%s: %s' % (d.address, d.error) for d in refused)
    Run.update(status='delivered', finished_at=utcnow(), error=error) \
        .where(Run.id == run.id).execute()
    return Run.get_by_id(run.id)


def reap(settings, now, enqueue, on_failed=None):
    """Take back runs whose worker died (heartbeat stopped) and queued runs
    whose task was lost; give up on those out of attempts (`on_failed(id)`).
    Returns the ids queued again."""
    requeued = []
    stale = now - datetime.timedelta(seconds=settings.stale_after)
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
        shutil.rmtree(work_folder(settings, run), ignore_errors=True)
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
    return run.status in ('delivered', 'failed') and bool(run.file_key) \
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
