"""Mailing a run's file: who still needs it, the SMTP replies recorded per
recipient, and the note to the operator when a run fails for good."""
import contextlib
import datetime
import time

import links
import runmessages
import statements
from dbhealth import DB_ERRORS
from mail import Mail, MailError, compose, compose_notice
from models import Delivery, Run, db, utcnow
from vocab import UNSENT, DeliveryStatus


def deliver(attempt, title: str, path: str, settings, mailer, *, seconds: float, run=None,
            deliveries=None):
    """Mail the file to every recipient who has not got it yet. Returns why
    nothing is sent when the run's send rule says so (the run is skipped),
    else None. Decided from the finished file's rows, the same way on every
    attempt. `run` and `deliveries` (all the run's, by id): as they are
    now, when the caller has them; the deliveries' status is kept up to date."""
    run = run or Run.get_by_id(attempt.run_id)
    skipped = runmessages.skip_reason(run)
    if skipped:
        Delivery.update(status=DeliveryStatus.SKIPPED, error=skipped) \
            .where(Delivery.run == run.id, Delivery.status.in_(UNSENT)).execute()
        return skipped
    # Typed recipients only: a split run's found ones get their own file (bursting.py).
    if deliveries is None:
        deliveries = run.deliveries.where(Delivery.part == False).order_by(Delivery.id)  # noqa: E712
    targets = [d for d in deliveries if not d.part and d.status in UNSENT]
    if not targets:
        return None
    to = [d.address for d in targets]
    message_id = runmessages.message_id(run, settings)
    date = runmessages.local_date(run, settings)
    if runmessages.sends_notice(run):
        attempt.update(sent_as='notice')
        mail = compose_notice(run, title, to, message_id=message_id, date=date)
    else:
        link = expires = None
        if run.sent_as == 'link':
            expires = utcnow() + datetime.timedelta(days=settings.retention_days)
            link = links.download_url(settings, run, expires)
        mail = compose(run, title, to, path, seconds,
                       link=link, link_expires=expires, limit_mb=settings.mail_max_mb,
                       cut_at=settings.max_rows if run.truncated else None,
                       message_id=message_id, date=date)
    ids = [d.id for d in targets]
    # Marked first, and only while the run is still this attempt's (one
    # statement, the fence its condition): a crash after the server
    # accepted shows as "sending", and the retry sends again with the same
    # Message-ID rather than not at all.
    attempt.update_rows(Delivery, {'status': DeliveryStatus.SENDING}, ('id', 'in', ids))
    try:
        replies = mailer.send(mail)
    except MailError as exc:
        statements.update(Delivery, {'status': DeliveryStatus.PENDING, 'error': str(exc)},
                          ('id', 'in', ids), ('status', '=', DeliveryStatus.SENDING))
        raise
    _record_until_it_lands(targets, replies, settings)
    temporary = {d.address: d.error for d in targets if d.status == DeliveryStatus.PENDING}
    if temporary:
        raise MailError('recipients to retry: %s' % '; '.join(
            '%s: %s' % item for item in sorted(temporary.items())), temporary=True)


def _record_until_it_lands(targets, replies, settings, clock=time.monotonic,
                           sleep=time.sleep):
    """The message is out: what the server said must be recorded, or the
    next attempt sends it again. A database that blinks (a restart, a cut
    connection) is waited for, within half of stale_after, so that the reaper
    has not taken the run back meanwhile."""
    deadline = clock() + settings.stale_after / 2
    while True:
        try:
            return record_replies(targets, replies, utcnow())
        except DB_ERRORS:
            if clock() >= deadline:
                raise
            with contextlib.suppress(Exception):
                db.close()
            sleep(0.2)


def record_replies(targets, replies, sent_at):
    """Each recipient's outcome from the server's reply to it: sent only on a
    2xx (its message accepted), pending on 4xx or no reply (tried again),
    refused on 5xx. A "sent" is a fact and always recorded; anything else
    never overwrites a "sent" another attempt recorded meanwhile."""
    for delivery in targets:
        reply = replies.get(delivery.address) or '421 no reply for this recipient'
        if reply.startswith('2'):
            statements.update(Delivery, {'status': DeliveryStatus.SENT, 'sent_at': sent_at,
                                         'error': None}, ('id', '=', delivery.id))
            delivery.status, delivery.error = DeliveryStatus.SENT, None
            continue
        delivery.status = DeliveryStatus.REFUSED if reply.startswith('5') \
            else DeliveryStatus.PENDING
        delivery.error = reply
        statements.update(Delivery, {'status': delivery.status, 'error': reply},
                          ('id', '=', delivery.id), ('status', '!=', DeliveryStatus.SENT))


def failure_notice(run, operator, settings=None):
    """The message telling the operator a run failed for good. With
    `settings` its Message-ID is the run's own, marked -failed (unique
    across installations, like the report's)."""
    body = '\n'.join([
        'Run #%d of report %s failed after %d attempt(s).' % (run.id, run.report, run.attempts),
        '',
        'Reason: %s' % run.error,
        'Trigger: %s%s' % (run.trigger, ' (schedule %s)' % run.schedule if run.schedule else ''),
        'Recipients: %s' % ', '.join(run.recipients),
    ])
    message_id = '<nightshift-run-%d-failed@nightshift>' % run.id
    if settings is not None:
        message_id = runmessages.message_id(run, settings).replace('@', '-failed@', 1)
    return Mail([operator], 'Nightshift: run #%d (%s) failed' % (run.id, run.report), body,
                None, message_id)
