"""A run as the API and the page show it (JSON-ready dicts)."""
from models import Delivery, iso_z
from vocab import TERMINAL


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
        # The relative dates asked for; `params` holds what they resolved to.
        'asked_params': run.asked_params or {},
        'params_timezone': run.params_timezone,
        'to': run.recipients,
        'status': run.status,
        'rows': run.rows,
        'bytes': run.bytes,
        'attempts': run.attempts,
        'error': run.error,
        'trigger': run.trigger,
        'schedule': run.schedule,
        'slot_at': iso_z(run.slot_at),
        'created_at': iso_z(run.created_at),
        'started_at': iso_z(run.started_at),
        'finished_at': iso_z(run.finished_at),
        'file_name': run.file_name,
        'file_bytes': run.file_bytes,
        'file_url': '/api/runs/%d/file' % run.id if file_ready(run) else None,
        'sent_as': run.sent_as,
        'duration_seconds': round((run.finished_at - run.started_at).total_seconds(), 3)
        if run.finished_at and run.started_at else None,
        'truncated': run.truncated,
        'late': run.late,
        'escape_formulas': run.escape_formulas,
        'rerun_of': run.rerun_of,
        # Served by that run's query and file (a burst of the same report
        # and parameters, batches.py).
        'batch_of': run.batch_of,
        'requested_by': run.requested_by,
        # Bursting: the split column and what the split found (refused rows
        # and their addresses among it); a test's slot.
        'split_by': run.split_by,
        'split': run.split_report,
        'test_slot_at': iso_z(run.test_slot_at),
        'subject': run.subject,
        'body': run.body,
        'attachment_name': run.attachment_name,
        'send_rule': run.send_rule,
        'format': run.format,
        'deliveries': [{'address': d.address, 'status': d.status, 'error': d.error,
                        'sent_at': iso_z(d.sent_at), 'part': d.part, 'rows': d.rows}
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
