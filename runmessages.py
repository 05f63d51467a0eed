"""What a run's message is made of beyond its data: the templates and send
rule it was given (checked when given), its Message-ID, the local date its
templates see, and its attachment's name.

A Message-ID is `<nightshift-run-<id>-<installation>.<token>@<sender's
domain>>`: the installation id is made once and kept in the state database
(like the link secret), the token is made with the run and stored on it. A
resend of the run has the same one; another installation, or this one after
its database was reset, never makes it again.
"""
import contextlib
import contextvars
import os
import secrets

from peewee import chunked

import cron
import msgtemplates
import statements
from errors import InputError
from mail import human_size
from models import AppSecret, Schedule, utcnow
from vocab import SendRule

MESSAGE_FIELDS = msgtemplates.FIELDS + ('send_rule',)


def clean_message(data, params, title, report, current=None):
    """The stored form of the message fields in `data` (subject, body,
    attachment_name, send_rule), checked against the run's or schedule's
    parameter values. With `current` (a schedule being changed) the fields
    not in `data` keep its values. InputError names the bad field."""
    given = {key: data[key] for key in MESSAGE_FIELDS if key in data}
    if current is not None:
        for key in MESSAGE_FIELDS:
            given.setdefault(key, getattr(current, key))
    rule = given.pop('send_rule', None)
    if rule is None:
        rule = SendRule.ALWAYS
    if rule not in list(SendRule):
        raise InputError('send_rule', 'must be one of %s' % ', '.join(SendRule))
    cleaned = msgtemplates.check_templates(given, params, title=title, report=report)
    for field in msgtemplates.FIELDS:
        cleaned.setdefault(field, None)
    cleaned['send_rule'] = SendRule(rule)
    return cleaned


def of_schedule(schedule):
    """A schedule's (or run's) message fields, as create_run takes them."""
    return {key: getattr(schedule, key) for key in MESSAGE_FIELDS}


_installation = contextvars.ContextVar('installation', default=None)
# A batch's schedules as read once: {name: (timezone, has a webhook)}.
_schedules = contextvars.ContextVar('schedules', default=None)


def installation_id():
    """Made once per state database and kept in it (nightshift_secret)."""
    return _installation.get() or AppSecret.value_of('installation',
                                                     lambda: secrets.token_hex(6))


@contextlib.contextmanager
def read_once(schedule_names=()):
    """Within, the installation id is read once, and so are the timezone
    and webhook of each schedule named: a batch mails hundreds of runs in a
    second, and reading them per run was a fifth of its statements. Not
    kept any longer: a database reset must give new Message-IDs, and a
    schedule changed meanwhile counts from the next batch."""
    known = {}
    for names in chunked(sorted({name for name in schedule_names if name}), 500):
        known.update((name, (zone, bool(hook))) for name, zone, hook in Schedule.select(
            Schedule.name, Schedule.timezone, Schedule.webhook_url).where(
            Schedule.name.in_(names)).tuples())
    tokens = _installation.set(installation_id()), _schedules.set(known)
    try:
        yield
    finally:
        _installation.reset(tokens[0])
        _schedules.reset(tokens[1])


def schedule_facts(name):
    """(timezone, has a webhook of its own) of schedule `name`: as read_once
    read them for the batch, else read now; None if there is no such
    schedule."""
    known = _schedules.get()
    if known is not None and name in known:
        return known[name]
    row = statements.select_one(Schedule, ('timezone', 'webhook_url'), ('name', '=', name))
    return row and (row[0], bool(row[1]))


def message_id(run, settings):
    """Stable for the run (a resend is recognisable downstream), unique
    across installations and database resets."""
    domain = settings.mail_from.rsplit('@', 1)[1]
    if not run.message_token:  # made before Message-IDs had a token
        return '<nightshift-run-%d@%s>' % (run.id, domain)
    return '<nightshift-run-%d-%s.%s@%s>' % (run.id, installation_id(), run.message_token,
                                             domain)


def zone_of(run, settings):
    facts = schedule_facts(run.schedule) if run.schedule else None
    return cron.check_timezone((facts and facts[0]) or settings.timezone)


def local_date(run, settings, now=None):
    """The slot's date in the schedule's timezone; for a run without a slot,
    the day it was made (in the schedule's or the default timezone)."""
    instant = run.slot_at or run.created_at or now or utcnow()
    return cron.to_local(instant, zone_of(run, settings)).date()


def template_context(run, settings, title, *, rows=None, size=None, cut=None):
    """The values every template sees (msgtemplates.COMMON)."""
    return msgtemplates.base_context(
        title=title, report=run.report, params=run.params,
        date=local_date(run, settings),
        stamp=(run.created_at or utcnow()).strftime('%Y%m%d-%H%M%S'),
        rows=run.rows if rows is None else rows,
        size=human_size(run.bytes if size is None else size),
        cut=run.truncated if cut is None else cut, run_id=run.id)


def name_file(run, settings, title, path, stream):
    """Rename the freshly written file `path` (named <report>-<stamp><ext>)
    as the run's attachment_name template says; the extension stays. Returns
    the new path. A template that fails raises TemplateFailure (the run
    fails: its message cannot be what its sender asked)."""
    if not run.attachment_name:
        return path
    folder, current = os.path.split(path)
    stem = '%s-%s' % (run.report, (run.created_at or utcnow()).strftime('%Y%m%d-%H%M%S'))
    extension = current[len(stem):] if current.startswith(stem) else os.path.splitext(current)[1]
    context = template_context(run, settings, title, rows=stream.rows, size=stream.bytes,
                               cut=stream.truncated)
    text = msgtemplates.render('attachment_name', run.attachment_name, context)
    name = msgtemplates.safe_file_name(text, extension, stem)
    if name == current:
        return path
    renamed = os.path.join(folder, name)
    os.replace(path, renamed)
    return renamed


def preview(definition, params, data, settings, zone=None, slot=None, extension='.csv'):
    """The next message as the templates in `data` would make it, with
    sample values (1,234 rows) and the given or next slot's date."""
    cleaned = clean_message(data, params, definition.title, definition.name)
    if slot is not None:
        date = cron.to_local(slot, zone).date()
    else:
        date = cron.to_local(utcnow(), zone or cron.check_timezone(settings.timezone)).date()
    context = msgtemplates.sample_context(params, date=date, title=definition.title,
                                          report=definition.name, run_id=0)
    sources = {field: cleaned[field] or msgtemplates.DEFAULTS[field]
               for field in msgtemplates.FIELDS}
    name = msgtemplates.safe_file_name(
        msgtemplates.render('attachment_name', sources['attachment_name'], context), extension,
        definition.name)
    context.update(file_name=name, file_note='File: %s, attached' % name)
    result = {'subject': msgtemplates.render('subject', sources['subject'], context),
              'body': msgtemplates.render('body', sources['body'], context),
              'attachment_name': name, 'send_rule': cleaned['send_rule'],
              'date': date.isoformat()}
    if cleaned['send_rule'] == SendRule.NOTICE:
        result['notice_subject'] = notice_subject(definition.title, context['window'])
    return result


def notice_subject(title, window):
    return msgtemplates.one_line('Nightshift: no data for %s (%s)' % (title, window))


def skip_reason(run):
    """Why the run's file is not sent (its send rule and no rows), or None."""
    if run.rows == 0 and run.send_rule == SendRule.ROWS:
        return 'no rows: send rule "rows" sends only when the report has rows; nothing sent'
    return None


def sends_notice(run):
    return run.rows == 0 and run.send_rule == SendRule.NOTICE
