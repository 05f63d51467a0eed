"""The life of a run: create it from a request, execute it, describe it.

Plain functions: the Huey task, the web server, the command line and the
tests all call these.
"""
import logging
import os
import time

from export import CsvStream, open_rows, write_file
from mail import MailError, check_address, compose
from models import Delivery, Run, db, utcnow
from params import InputError, dump_params
from reports import UnknownReport

logger = logging.getLogger('nightshift.runs')


class PermanentFailure(Exception):
    """Trying again cannot help; the run is failed with this reason."""


def parse_recipients(to, max_recipients, required=True):
    """A list of checked addresses, or InputError naming the bad entry."""
    if to is None or to == []:
        if required:
            raise InputError('to', 'give at least one recipient address', code='required')
        return []
    if not isinstance(to, list):
        raise InputError('to', 'must be a list of email addresses')
    if len(to) > max_recipients:
        raise InputError('to', 'at most %d recipients per run' % max_recipients,
                         code='too_many')
    seen = []
    for i, address in enumerate(to):
        try:
            address = check_address(address.strip() if isinstance(address, str) else address)
        except ValueError as exc:
            raise InputError('to[%d]' % i, str(exc))
        if address.lower() not in (a.lower() for a in seen):
            seen.append(address)
    return seen


def create_run(registry, settings, report, params=None, to=None, trigger='web',
               schedule=None, slot_at=None):
    """Validate a request and record it as a queued run (one transaction)."""
    if not isinstance(report, str) or not report:
        raise InputError('report', 'give the name of a report', code='required')
    try:
        definition = registry.get(report)
    except UnknownReport:
        raise InputError('report', 'no report named %r' % report, code='unknown_report')
    typed = definition.parse(params)
    recipients = parse_recipients(to, settings.max_recipients)
    with db.atomic():
        run = Run.create(report=report, params=dump_params(typed), recipients=recipients,
                         trigger=trigger, schedule=schedule, slot_at=slot_at)
        for address in recipients:
            Delivery.create(run=run, address=address)
    return run


def mark_failed(run_id, reason, now=None):
    """Record a run as failed for good, with its reason."""
    Run.update(status='failed', error=reason, finished_at=now or utcnow()) \
        .where(Run.id == run_id, Run.status != 'delivered').execute()


def record_retry(run_id, reason):
    """A try failed but another will come: back to queued, keep the reason."""
    Run.update(status='queued', error=reason) \
        .where(Run.id == run_id, Run.status != 'delivered').execute()


def report_path(settings, run):
    stamp = run.created_at.strftime('%Y%m%d-%H%M%S')
    folder = os.path.join(settings.reports_dir, 'run-%d' % run.id)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, '%s-%s.csv' % (run.report, stamp))


def write_report(registry, settings, run, path):
    """Write the run's CSV to `path`, updating its row count as it goes."""
    definition = registry.get(run.report)
    query = definition.query(definition.parse(run.params))

    def progress(rows, size):
        Run.update(rows=rows, bytes=size, heartbeat_at=utcnow()) \
            .where(Run.id == run.id).execute()

    with open_rows(query, db.obj) as (header, rows):
        stream = CsvStream(header, rows, escape=run.escape_formulas)
        return write_file(stream, path, on_progress=progress,
                          every=settings.progress_every)


def execute_run(run_id, registry, settings, mailer, clock=time.monotonic):
    """Build the run's file and deliver it. Idempotent: a finished run is
    left alone, and a re-run rebuilds the file and mails only recipients
    that have not got it yet.

    Raises MailError / database errors for the caller to retry, and
    PermanentFailure when retrying cannot help.
    """
    run = Run.get_or_none(Run.id == run_id)
    if run is None or run.status in ('delivered', 'failed'):
        return run
    try:
        definition = registry.get(run.report)
    except UnknownReport:
        raise PermanentFailure('report %r no longer exists' % run.report)
    started = clock()
    now = utcnow()
    Run.update(status='running', attempts=Run.attempts + 1, started_at=now,
               heartbeat_at=now, rows=0, bytes=0).where(Run.id == run.id).execute()

    path = report_path(settings, run)
    rows, size = write_report(registry, settings, run, path)
    Run.update(rows=rows, bytes=size, file_name=os.path.basename(path),
               heartbeat_at=utcnow()).where(Run.id == run.id).execute()
    run = Run.get_by_id(run.id)

    pending = [d for d in run.deliveries.order_by(Delivery.id) if d.status == 'pending']
    if pending:
        mail = compose(run, definition.title, [d.address for d in pending], path,
                       clock() - started)
        refused = mailer.send(mail)
        sent_at = utcnow()
        for delivery in pending:
            reply = refused.get(delivery.address)
            if reply is None:
                delivery.status, delivery.sent_at, delivery.error = 'sent', sent_at, None
            elif not reply.startswith('4'):
                delivery.status, delivery.error = 'refused', reply
            else:
                delivery.error = reply
            delivery.save()
        temporary = {a: r for a, r in refused.items() if r.startswith('4')}
        if temporary:
            raise MailError('recipients to retry: %s' % '; '.join(
                '%s: %s' % item for item in sorted(temporary.items())), temporary=True)

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


def _iso(value):
    return value.isoformat() + 'Z' if value is not None else None


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
