"""Alarms: late slots, and telling people about runs delivered, failed, late
or skipped, by email to the operator and by webhook.

Three steps, each safe with any number of consumers doing them at once:

1. **Record.** What happens goes into an outbox (`Notice` rows) at once; a
   worker's run never waits for a mail server or a slow webhook.
2. **Group.** Once the oldest notice has waited `notify_every`, the tick
   takes every pending notice (deleting them, all or none, so two consumers
   cannot both take one) and writes one message per target into the
   notification log (`Notification`): one email to the operator, one POST
   per webhook URL. A burst of twenty failures is one message listing them.
3. **Send.** Pending notifications are tried, each claimed by one consumer,
   and retried with backoff up to `webhook_attempts`; the log keeps how each
   went (GET /api/notifications).

Late slots are judged in the same tick: a scheduled run not delivered
`late_after` seconds after its slot (the schedule's own `late_after`, else
the setting) is marked late (`Run.late`) and announced once; one delivered
in time is marked on time, so each run is judged once. Slots a schedule
missed (recorded as `skipped` when a consumer came back) are announced too.
"""
import datetime
import json
import logging
from typing import Dict, List

from peewee import fn

import webhooks
from delivery import failure_notice
from mail import Mail, MailError
from models import Notice, Notification, Run, Schedule, db, iso_z
from runmessages import installation_id, schedule_facts
from runs import retry_delay
from settings import hide_path
from vocab import Event, RunStatus, SendStatus, Trigger

logger = logging.getLogger('nightshift.alarms')

# Events the operator is emailed about: trouble, not deliveries.
OPERATOR_EVENTS = (Event.FAILED, Event.LATE, Event.SKIPPED)
# Notices taken into one group at most, runs judged and messages sent per tick.
GROUP_LIMIT = 1000
JUDGE_LIMIT = 1000
SEND_LIMIT = 50
# Lines of a message that list events one by one; the rest are counted.
LISTED = 50
WORDS = {Event.DELIVERED: 'delivered', Event.FAILED: 'failed', Event.LATE: 'late',
         Event.SKIPPED: 'missed'}


def _minute(value):
    return value.strftime('%Y-%m-%d %H:%M UTC')


class Alarms:
    def __init__(self, settings, mailer):
        self.settings = settings
        self.mailer = mailer

    # --- 1. record ------------------------------------------------------

    def _wanted(self, event, schedule_name):
        settings = self.settings
        if settings.operator_email and event in OPERATOR_EVENTS:
            return True
        if settings.webhook_url and event.split('.', 1)[1] in settings.webhook_event_names:
            return True
        # Asked for every scheduled run that ends (a slot's burst: each one,
        # its schedule read once for the batch).
        facts = schedule_facts(schedule_name) if schedule_name else None
        return bool(facts and facts[1])

    def record(self, event, run, detail, now=None):
        """Put one event in the outbox if anyone is to hear of it."""
        if not self._wanted(event, run.schedule):
            return None
        return Notice.create(event=event, run_id=run.id, report=run.report,
                             schedule=run.schedule, slot_at=run.slot_at, detail=detail,
                             **({'created_at': now} if now else {}))

    def failed(self, run_id, now=None):
        run = Run.get_by_id(run_id)
        first = 'Run #%d of report %s failed: %s' % (run.id, run.report,
                                                    _first_line(run.error))
        notice = failure_notice(run, self.settings.operator_email or 'operator@invalid',
                                self.settings)
        return self.record(Event.FAILED, run, first + '\n\n' + notice.body, now)

    def delivered(self, run_id, now=None, run=None):
        run = run or Run.get_by_id(run_id)
        return self.record(Event.DELIVERED, run, 'Run #%d of report %s delivered: %d rows to %d '
                           'recipient(s)' % (run.id, run.report, run.rows,
                                             len(run.recipients)), now)

    # --- the tick -------------------------------------------------------

    def tick(self, now):
        """Judge slots, group what waited long enough, send what is due."""
        self.judge_slots(now)
        self.group(now)
        return self.send_due(now)

    def judge_slots(self, now):
        """Mark scheduled runs late or on time once their grace is over, and
        announce late runs and missed slots. Returns the runs found late."""
        default = self.settings.late_after
        overrides = {s.name: s.late_after for s in
                     Schedule.select(Schedule.name, Schedule.late_after)
                     .where(Schedule.late_after.is_null(False))}
        graces = [g for g in [default] + list(overrides.values()) if g > 0]
        due = Run.status == RunStatus.SKIPPED
        if graces:
            due |= Run.slot_at <= now - datetime.timedelta(seconds=min(graces))
        query = (Run.select().where(Run.late.is_null(), Run.slot_at.is_null(False),
                                    Run.trigger == Trigger.SCHEDULE, due)
                 .order_by(Run.id).limit(JUDGE_LIMIT))
        late = []
        for run in list(query):  # read whole before writing (see schedules.tick)
            grace = overrides.get(run.schedule, default)
            verdict = _verdict(run, grace, now)
            if verdict is None:
                continue
            is_late, event, detail = verdict
            with db.atomic():
                if not Run.update(late=is_late).where(Run.id == run.id,
                                                      Run.late.is_null()).execute():
                    continue  # another consumer judged it
                if event is not None:
                    self.record(event, run, detail, now)
            if is_late:
                late.append(run.id)
        return late

    def group(self, now):
        """One message per target for every notice pending, once the oldest
        has waited notify_every. Returns the notifications written."""
        oldest = Notice.select(fn.MIN(Notice.created_at)).scalar()
        wait = datetime.timedelta(seconds=self.settings.notify_every)
        if oldest is None or oldest > now - wait:
            return []
        notices = list(Notice.select().order_by(Notice.id).limit(GROUP_LIMIT))
        messages = self._messages(notices, now)
        with db.atomic() as transaction:
            ids = [n.id for n in notices]
            if Notice.delete().where(Notice.id.in_(ids)).execute() != len(ids):
                # Another consumer took some of them: it sends those; these
                # stay for the next tick, as they were.
                transaction.rollback()
                return []
            written = [Notification.create(created_at=now, next_attempt_at=now, **message)
                       for message in messages]
        return written

    def _messages(self, notices, now):
        settings = self.settings
        messages = []
        if settings.operator_email:
            trouble = [n for n in notices if n.event in OPERATOR_EVENTS]
            if trouble:
                subject, body = email_text(trouble)
                messages.append(dict(channel='email', target=settings.operator_email,
                                     subject=subject, body=body, events=len(trouble),
                                     message_id=self._single_failure_id(trouble)))
        for url, chosen in self._webhook_targets(notices).items():
            messages.append(dict(channel='webhook', target=url, subject=None,
                                 body=json.dumps(payload(chosen, settings, now)),
                                 events=len(chosen)))
        return messages

    def _single_failure_id(self, trouble):
        """A lone failure's message is the one it always was: its run's Message-ID."""
        if len(trouble) != 1 or trouble[0].event != Event.FAILED:
            return None
        run = Run.get_or_none(Run.id == trouble[0].run_id)
        return None if run is None else \
            failure_notice(run, self.settings.operator_email, self.settings).message_id

    def _webhook_targets(self, notices) -> Dict[str, List[Notice]]:
        settings = self.settings
        targets = {}
        if settings.webhook_url:
            chosen = [n for n in notices
                      if n.event.split('.', 1)[1] in settings.webhook_event_names]
            if chosen:
                targets[settings.webhook_url] = chosen
        names = {n.schedule for n in notices if n.schedule}
        urls = {s.name: s.webhook_url for s in
                Schedule.select(Schedule.name, Schedule.webhook_url)
                .where(Schedule.name.in_(list(names)), Schedule.webhook_url.is_null(False))} \
            if names else {}
        for notice in notices:
            url = urls.get(notice.schedule)
            if url:
                chosen = targets.setdefault(url, [])
                if notice not in chosen:
                    chosen.append(notice)
        for chosen in targets.values():
            chosen.sort(key=lambda n: n.id)
        return targets

    def send_due(self, now):
        """Try each notification that is due, once. Returns (id, status) pairs."""
        settings = self.settings
        lease = datetime.timedelta(seconds=max(settings.webhook_timeout,
                                               settings.smtp_timeout) + 30)
        done = []
        due = (Notification.select()
               .where(Notification.status == SendStatus.PENDING,
                      Notification.next_attempt_at <= now)
               .order_by(Notification.id).limit(SEND_LIMIT))
        for note in list(due):
            # Claimed by moving its next try past the send: one consumer only.
            if not (Notification.update(attempts=note.attempts + 1,
                                        next_attempt_at=now + lease)
                    .where(Notification.id == note.id, Notification.attempts == note.attempts,
                           Notification.status == SendStatus.PENDING).execute()):
                continue
            note.attempts += 1
            status, error, final = self._send(note, now)
            done.append((note.id, self._record(note, status, error, final, now)))
        return done

    def _send(self, note, now):
        if note.channel == 'email':
            mail = Mail([note.target], note.subject, note.body, None, self._message_id(note))
            try:
                reply = self.mailer.send(mail).get(note.target) or '421 no reply'
            except MailError as exc:
                return None, self.settings.redact(str(exc)), not exc.temporary
            if reply.startswith('2'):
                return None, None, False
            return None, reply, reply.startswith('5')
        events = json.loads(note.body)['events']
        kinds = sorted({e['event'] for e in events})
        reply = webhooks.post(
            note.target, note.body.encode(), secret=self.settings.webhook_secret,
            timeout=self.settings.webhook_timeout, delivery_id=note.id,
            event=kinds[0] if len(kinds) == 1 else 'mixed',
            allow_private=self.settings.webhook_private or note.target == self.settings.webhook_url)
        return reply

    def _message_id(self, note):
        # The same on every try; unique across installations, as the reports' are.
        if note.message_id:
            return note.message_id
        return '<nightshift-notification-%d-%s@%s>' % (
            note.id, installation_id(), self.settings.mail_from.rsplit('@', 1)[1])

    def _record(self, note, status, error, final, now):
        if error is None:
            Notification.update(status=SendStatus.SENT, sent_at=now, response_status=status,
                                error=None).where(Notification.id == note.id).execute()
            return SendStatus.SENT
        if final or note.attempts >= self.settings.webhook_attempts:
            Notification.update(status=SendStatus.FAILED, response_status=status, error=error) \
                .where(Notification.id == note.id).execute()
            logger.warning('notification %d (%s to %s) failed after %d tries: %s', note.id,
                           note.channel, shown_target(note), note.attempts, error)
            return SendStatus.FAILED
        delay = retry_delay(note.attempts, self.settings)
        Notification.update(response_status=status, error=error,
                            next_attempt_at=now + datetime.timedelta(seconds=delay)) \
            .where(Notification.id == note.id).execute()
        logger.info('notification %d (%s to %s): try %d failed (%s); again in %.1fs', note.id,
                    note.channel, shown_target(note), note.attempts, error, delay)
        return SendStatus.PENDING


def _first_line(text):
    line = (text or '').strip().splitlines()[0] if (text or '').strip() else 'no reason given'
    return line if len(line) <= 300 else line[:297] + '...'


def _verdict(run, grace, now):
    """(late, event to announce or None, its text) once `run` can be judged,
    else None."""
    where = 'schedule %s, slot %s' % (run.schedule, _minute(run.slot_at))
    if run.status == RunStatus.CANCELLED or (run.status == RunStatus.SKIPPED and run.attempts):
        # Stopped by someone, or run and skipped by its send rule (no rows):
        # as meant, not late.
        return False, None, None
    if run.status == RunStatus.SKIPPED:
        return True, Event.SKIPPED, 'Slot %s of schedule %s (report %s) was missed: %s' % (
            _minute(run.slot_at), run.schedule, run.report, _first_line(run.error))
    if grace <= 0:
        return False, None, None
    deadline = run.slot_at + datetime.timedelta(seconds=grace)
    if run.status == RunStatus.DELIVERED:
        if run.finished_at is None or run.finished_at <= deadline:
            return False, None, None
        return True, Event.LATE, 'Run #%d of report %s (%s) is late: delivered %s, more than ' \
            '%s after its slot' % (run.id, run.report, where, _minute(run.finished_at),
                                   _duration(grace))
    if run.status == RunStatus.FAILED:
        # Its failure is announced as such.
        late = run.finished_at is None or run.finished_at > deadline
        return late, None, None
    if now < deadline:
        return None
    return True, Event.LATE, 'Run #%d of report %s (%s) is late: still %s %s after its slot' % (
        run.id, run.report, where, run.status, _duration(grace))


def _duration(seconds):
    if seconds % 3600 == 0:
        return '%d h' % (seconds // 3600)
    if seconds % 60 == 0:
        return '%d min' % (seconds // 60)
    return '%g s' % seconds


def headline(notices):
    """'Nightshift: 20 runs failed', 'Nightshift: 2 runs failed, 1 run late'."""
    if len(notices) == 1:
        [notice] = notices
        if notice.event == Event.SKIPPED:
            return 'Nightshift: a slot of schedule %s was missed' % notice.schedule
        return 'Nightshift: run #%d (%s) %s' % (notice.run_id, notice.report,
                                                WORDS[notice.event])
    counts = {}
    for notice in notices:
        counts[notice.event] = counts.get(notice.event, 0) + 1
    phrases = ['%d %s%s %s' % (counts[e], 'slot' if e == Event.SKIPPED else 'run',
                               '' if counts[e] == 1 else 's', WORDS[e])
               for e in Event if e in counts]
    return 'Nightshift: ' + ', '.join(phrases)


def email_text(notices):
    """(subject, body) of the operator's message about `notices`."""
    subject = headline(notices)
    blocks = [n.detail for n in notices[:LISTED]]
    if len(notices) > LISTED:
        blocks.append('... and %d more (GET /api/runs lists them all).'
                      % (len(notices) - LISTED))
    return subject, (subject + '\n\n' + '\n\n---\n\n'.join(blocks) + '\n')


def payload(notices, settings, now):
    """The webhook body: `text` for Slack and Teams, the events structured beside it."""
    title = headline(notices)
    lines = ['• ' + n.detail.splitlines()[0] for n in notices[:LISTED]]
    if len(notices) > LISTED:
        lines.append('… and %d more' % (len(notices) - LISTED))
    base = settings.public_url.rstrip('/')
    return {
        'text': '\n'.join([title] + lines),
        'source': 'nightshift',
        'sent_at': iso_z(now),
        'count': len(notices),
        'events': [{'event': n.event, 'run_id': n.run_id, 'report': n.report,
                    'schedule': n.schedule, 'slot_at': iso_z(n.slot_at),
                    'at': iso_z(n.created_at), 'summary': n.detail.splitlines()[0],
                    'url': '%s/api/runs/%d' % (base, n.run_id) if n.run_id else None}
                   for n in notices],
    }


def shown_target(note):
    return hide_path(note.target) if note.channel == 'webhook' else note.target


def notification_as_dict(note):
    text = note.subject if note.channel == 'email' else json.loads(note.body).get('text', '')
    return {'id': note.id, 'channel': note.channel, 'target': shown_target(note),
            'status': note.status, 'events': note.events, 'attempts': note.attempts,
            'response_status': note.response_status, 'error': note.error,
            'text': text, 'created_at': iso_z(note.created_at), 'sent_at': iso_z(note.sent_at),
            'next_attempt_at': iso_z(note.next_attempt_at)
            if note.status == SendStatus.PENDING else None}


def schedule_options(data, settings):
    """A schedule's `late_after` and `webhook` fields, checked: the stored
    form {'late_after': seconds or None, 'webhook_url': URL or None}, or
    InputError naming the field."""
    from params import InputError
    late_after = data.get('late_after')
    if late_after is not None:
        if isinstance(late_after, bool) or not isinstance(late_after, (int, float)) \
                or not 0 <= late_after <= 366 * 86400:
            raise InputError('late_after', 'must be a number of seconds from 0 to 31622400 '
                                           '(0: never late), or null for the setting')
        late_after = float(late_after)
    url = data.get('webhook') or None
    if url is not None:
        try:
            webhooks.check_url(url, allow_private=settings.webhook_private)
        except ValueError as exc:
            raise InputError('webhook', str(exc))
    return {'late_after': late_after, 'webhook_url': url}
