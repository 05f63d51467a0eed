"""Bursting: one report, each recipient their own rows.

A run (or schedule) with `split_by` names a column of the report that holds
each row's recipient. The query runs once: its CSV stream is written to the
run's whole file and, record by record, to one file per recipient found in
that column, so memory stays flat and the source sees one statement. The
records are copied byte for byte, so formula escaping, the BOM and the
engine's exact text are what an unsplit run would send; every file starts
with the header, and the split column stays in each file.

Recipients found in the data obey the rules typed ones do: one plain address
(mail.check_address), `allowed_domains`, and a cap (`max_split_recipients`,
one open file each while writing; a run that finds more fails, saying so).
Rows whose address is refused are counted, and their addresses listed, in the
run's `split_report`, never dropped silently. Each recipient becomes a
delivery record with its own file, created when the files are published, so
exactly-once and retries-for-the-unsent work as for typed recipients.

Typed recipients of a split run (optional there) get the whole file. A test
run (trigger `test`) of a split schedule mails only the tester, the whole
file, and records who would get how many rows.
"""
import csv
import os
import shutil
import time
from typing import Optional

import runmessages
from delivery import _record_until_it_lands, deliver
from errors import InputError, PermanentFailure
from export import escape_formula
from mail import MailError, check_address, compose
from models import Delivery, Run, db, db_now
from runfiles import (_published_copy, attempt_folder, local_path, open_report, package,
                      report_definition, store_key)
from vocab import UNSENT, DeliveryStatus, Trigger

BOM = b'\xef\xbb\xbf'
# Refused addresses listed one by one on the run; rows at any further
# refused address are counted, not listed, so the record stays small.
REFUSED_LISTED = 100
MAX_COLUMN_NAME = 128


# --- validation at request time ---------------------------------------------

def report_columns(definition):
    """The names of a report file's columns as its SQL says them, or None
    when that cannot be known without running it (Python reports, `*`)."""
    parsed = getattr(definition, 'parsed', None)
    if parsed is None:
        return None
    import sqlglot
    try:
        names = sqlglot.parse_one(parsed.sql, read='postgres').named_selects
    except Exception:
        return None
    if not names or any(not n or n == '*' for n in names):
        return None
    return names


def clean_split_by(definition, value) -> Optional[str]:
    """The split column a request names (None for no split), or InputError
    on `split_by`. Checked against the report's columns when its SQL says
    them; otherwise the run fails, saying so, if the column is missing."""
    if value is None or value == '':
        return None
    if not isinstance(value, str) or len(value) > MAX_COLUMN_NAME \
            or not value.isprintable() or not value.strip():
        raise InputError('split_by', 'must be the name of one of the report\'s columns')
    columns = report_columns(definition)
    if columns is not None and _column_index(columns, value) is None:
        raise InputError('split_by', 'report %s has no column %r; its columns are %s'
                         % (definition.name, value, ', '.join(columns)),
                         code='unknown_column')
    return value


def _column_index(columns, name):
    """Exact match first; else a case-insensitive one if it is unique."""
    if name in columns:
        return columns.index(name)
    folded = [i for i, c in enumerate(columns) if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


# --- one pass: the whole file and a file per recipient ----------------------

class Part:
    """One recipient found in the data: their rows' file."""

    def __init__(self, address, path):
        self.address, self.path = address, path
        self.rows = 0
        self.out = None


class Split:
    """What a split found: the recipients (Parts), and the refused rows."""

    def __init__(self, column, typed, escaped=True):
        self.column = column
        # The CSV's text cells went through the formula escape.
        self.escaped = escaped
        self.typed = {a.lower() for a in typed}
        self.parts = {}      # lower-case address -> Part
        self.refused = {}    # listed refused value -> {'address', 'rows', 'reason'}
        self.refused_rows = 0
        self.unlisted_rows = 0
        self.typed_rows = 0

    def report(self):
        return {'column': self.column, 'recipients': len(self.parts),
                'rows': sum(p.rows for p in self.parts.values()),
                'refused_rows': self.refused_rows,
                'refused': sorted(self.refused.values(), key=lambda r: r['address']),
                'refused_unlisted_rows': self.unlisted_rows,
                'typed_rows': self.typed_rows}


def judge(value, settings):
    """(address, None) for a value mail may go to, else (None, why not)."""
    address = value.strip(' ')
    if not address:
        return None, 'no address in this row'
    try:
        check_address(address)
    except ValueError as exc:
        return None, str(exc)
    domain = address.rsplit('@', 1)[1].lower()
    if settings.domains and domain not in settings.domains:
        return None, 'mail to %s is not allowed here (allowed_domains: %s)' % (
            domain, ', '.join(settings.domains))
    return address, None


def _records(chunks):
    """Each CSV record's bytes, line end included, however the chunks cut
    them: a record ends at a line feed outside quotes (an even count of
    quotes so far in the record). Lines are cut at CR too (splitlines), but
    a CR is only ever inside a quoted cell, so its pieces are joined again."""
    tail = b''
    held = []
    quoted = False
    for chunk in chunks:
        data = tail + chunk if tail else chunk
        lines = data.splitlines(True)
        tail = lines.pop() if lines and not lines[-1].endswith(b'\n') else b''
        if not quoted and b'"' not in data:
            yield from lines  # nothing quoted here: every line is a record
            continue
        for line in lines:
            if line.count(b'"') % 2:
                quoted = not quoted
            if quoted or held and not line.endswith(b'\n'):
                held.append(line)
                continue
            if held:
                held.append(line)
                yield b''.join(held)
                held = []
            else:
                yield line
    rest = b''.join(held) + tail
    if rest:
        yield rest


def _field(record, index):
    """The text of field `index` of a record with quoted cells ('' if it
    has fewer fields)."""
    fields = next(csv.reader([record.rstrip(b'\n').decode('utf-8')]))
    return fields[index] if index < len(fields) else ''


def split_stream(stream, whole_path, parts_dir, split, settings, *, write_parts=True,
                 on_progress=None, every=0.1, clock=time.monotonic):
    """Write the CSV `stream` to `whole_path` and each record to its
    recipient's file under `parts_dir` (when `write_parts`), in one pass.
    Raises PermanentFailure for a missing column or too many recipients."""
    header = index = None
    last = clock()
    cap = settings.max_split_recipients
    # Raw value -> Part, 'typed', or a refused entry; bounded, so that many
    # spellings of few addresses cannot grow it (a miss only costs a check).
    decided = {}
    remembered = 4 * cap + REFUSED_LISTED
    name = os.path.basename(whole_path)
    tee = _Tee(stream)
    try:
        with open(whole_path + '.part', 'wb') as whole:
            tee.out = whole
            for record in _records(tee):
                if header is None:
                    header = record
                    names = next(csv.reader([record.rstrip(b'\n').decode('utf-8-sig')]))
                    index = _column_index(names, split.column)
                    last = index == len(names) - 1
                    if index is None:
                        raise PermanentFailure(
                            'the report has no column %r to split by; its columns are %s'
                            % (split.column, ', '.join(names)))
                    continue
                if b'"' in record:
                    value = _field(record, index)
                else:  # the common case, kept inline: the cell's raw bytes are its key
                    cells = record.split(b',', index + 1)
                    value = cells[index] if len(cells) > index else b''
                    if last:
                        value = value.rstrip(b'\n')
                target = decided.get(value)
                if target is None:
                    text = value.decode('utf-8') if value.__class__ is bytes else value
                    target = _decide(text or '', split, settings, cap,
                                     lambda n: os.path.join(parts_dir, str(n), name))
                    if len(decided) < remembered and target != 'unlisted':
                        decided[value] = target
                if target.__class__ is Part:
                    target.rows += 1
                    if write_parts:
                        if target.out is None:
                            os.makedirs(os.path.dirname(target.path), exist_ok=True)
                            target.out = open(target.path, 'wb')
                            target.out.write(header)
                        target.out.write(record)
                elif target == 'typed':
                    split.typed_rows += 1
                elif target == 'unlisted':
                    split.refused_rows += 1
                    split.unlisted_rows += 1
                else:
                    target['rows'] += 1
                    split.refused_rows += 1
                if on_progress is not None and clock() - last >= every:
                    on_progress(stream.rows, stream.bytes)
                    last = clock()
        os.replace(whole_path + '.part', whole_path)
    finally:
        for part in split.parts.values():
            if part.out is not None:
                part.out.close()
                part.out = None
        if os.path.exists(whole_path + '.part'):
            os.unlink(whole_path + '.part')
    return stream


class _Tee:
    """Iterates the stream's chunks, writing each to the whole file first."""

    def __init__(self, stream):
        self.stream, self.out = stream, None

    def __iter__(self):
        for chunk in self.stream:
            self.out.write(chunk)
            yield chunk


def _decide(value, split, settings, cap, part_path):
    """Where rows with this value go: a Part, 'typed' (in the whole file
    only), a listed refused entry, or 'unlisted' (refused, counted only)."""
    text = value
    if split.escaped and value.startswith("'") and escape_formula(value[1:]) == value:
        # "+sales@..." was written "'+sales@..." for spreadsheets; the
        # apostrophe is legal in an address, so it would go somewhere else.
        text = value[1:]
    address, why = judge(text, settings)
    if address is None:
        entry = split.refused.get(value)
        if entry is None:
            if len(split.refused) >= REFUSED_LISTED:
                return 'unlisted'  # its rows are counted, its address not listed
            entry = split.refused[value] = {'address': value[:300], 'rows': 0, 'reason': why}
        return entry
    key = address.lower()
    if key in split.typed:
        return 'typed'
    part = split.parts.get(key)
    if part is None:
        if len(split.parts) >= cap:
            raise PermanentFailure(
                'column %r holds more than %d distinct recipients (max_split_recipients); '
                'nothing was sent. Raise NIGHTSHIFT_MAX_SPLIT_RECIPIENTS (at most 1000) or '
                'narrow the report' % (split.column, cap))
        part = split.parts[key] = Part(address, part_path(len(split.parts) + 1))
    return part


# --- the run's files: built once, published with the recipients ------------

def prepare_split(registry, settings, store, attempt, *, heartbeat=None) -> str:
    """The split run's whole file (the local path), with every unsent
    recipient's own file ready beside it. Reused when a complete set was
    published; otherwise built in one pass and published, with a delivery
    record per recipient found, in one fenced transaction."""
    run = Run.get_by_id(attempt.run_id)
    whole = _published_copy(settings, store, run)
    if whole:
        parts = Delivery.select().where(Delivery.run == run.id, Delivery.part == True,  # noqa
                                        Delivery.status.in_(UNSENT))
        if all(_published_copy(settings, store, d) for d in parts):
            return whole
    folder = attempt_folder(settings, attempt)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    saved = []
    try:
        stamp = run.created_at.strftime('%Y%m%d-%H%M%S')
        name = '%s-%s' % (run.report, stamp)
        csv_path = os.path.join(folder, name + '.csv')
        attempt.update(rows=0, bytes=0, file_name=None, file_key=None, file_bytes=None,
                       sent_as=None, split_report=None)
        split = Split(run.split_by, run.recipients, run.escape_formulas)
        stream = _write_split(registry, settings, run, csv_path, os.path.join(folder, 'parts'),
                              split, run.trigger != Trigger.TEST,
                              heartbeat.progress if heartbeat else None)
        path, sent_as = package(csv_path, settings)
        key = store_key(settings, path)
        store.save(key, path)
        saved.append(key)
        records = []
        if run.trigger != Trigger.TEST:
            for part in split.parts.values():
                records.append(_part_record(settings, store, run, part, saved))
        report = split.report()
        if run.trigger == Trigger.TEST:
            report['would_send'] = sorted(({'address': p.address, 'rows': p.rows}
                                           for p in split.parts.values()),
                                          key=lambda p: p['address'].lower())
        if not split.parts and not run.recipients and split.refused_rows:
            attempt.update(split_report=report)
            raise PermanentFailure('every address in column %r was refused: %s' % (
                split.column, '; '.join('%s: %s' % (r['address'] or '(empty)', r['reason'])
                                        for r in report['refused'][:5])))
        with db.atomic():
            attempt.update(rows=stream.rows, bytes=stream.bytes, truncated=stream.truncated,
                           file_name=os.path.basename(path), file_key=key,
                           file_bytes=os.path.getsize(path), sent_as=sent_as,
                           heartbeat_at=db_now(), split_report=report)
            _publish_parts(run.id, records)
    except BaseException:
        # Nothing half-made stays: the run's record does not name these files.
        for key in saved:
            store.delete(key)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path


def _write_split(registry, settings, run, csv_path, parts_folder, split, write_parts,
                 on_progress):
    """split_stream over the run's report, failing as write_report does."""
    with report_definition(registry, run) as definition:
        with open_report(definition, settings, definition.parse(run.params),
                         run.escape_formulas, run.bom) as stream:
            return split_stream(stream, csv_path, parts_folder, split, settings,
                                write_parts=write_parts, on_progress=on_progress)


def _part_record(settings, store, run, part, saved):
    """The delivery row for one recipient's file, its file saved to the
    store. A file too large to attach even zipped is refused for that
    recipient: links are signed for a run's whole file, not for a part."""
    path, sent_as = package(part.path, settings)
    record = dict(run=run.id, address=part.address, part=True, rows=part.rows,
                  file_name=os.path.basename(path), file_bytes=os.path.getsize(path),
                  status=DeliveryStatus.PENDING, error=None, file_key=None)
    if sent_as == 'link':
        record.update(status=DeliveryStatus.REFUSED,
                      error='their file is too large to attach (%d bytes, mail_max_mb); '
                            'split runs do not send links' % record['file_bytes'])
        return record
    key = store_key(settings, path)
    store.save(key, path)
    saved.append(key)
    record['file_key'] = key
    return record


def _publish_parts(run_id, records):
    """Each recipient's delivery record, in the publishing transaction. A
    recipient an earlier attempt already sent to is left as it is (sent
    once); unsent records of an earlier build are replaced."""
    Delivery.delete().where(Delivery.run == run_id, Delivery.part == True,  # noqa: E712
                            Delivery.status != DeliveryStatus.SENT).execute()
    sent = {d.address.lower() for d in Delivery.select(Delivery.address).where(
        Delivery.run == run_id, Delivery.part == True)}  # noqa: E712
    fresh = [r for r in records if r['address'].lower() not in sent]
    for start in range(0, len(fresh), 100):
        Delivery.insert_many(fresh[start:start + 100]).execute()


# --- mail: typed recipients the whole file, each found one their own --------

class _PartView:
    """The run as one recipient's message shows it: their rows, their file."""

    def __init__(self, run, delivery, settings):
        self._run, self.rows, self.bytes = run, delivery.rows, delivery.file_bytes
        local, _, domain = runmessages.message_id(run, settings).strip('<>').partition('@')
        # Stable for this recipient, so a resend is recognisable downstream.
        self.message_id = '<%s.p%d@%s>' % (local, delivery.id, domain)

    def __getattr__(self, name):
        return getattr(self._run, name)


def deliver_split(attempt, title, path, settings, mailer, *, seconds):
    """Mail typed recipients the whole file and each recipient found in the
    data their own, one message (one SMTP transaction) each. Every recipient
    is tried; a temporary failure of any is raised at the end (the run is
    retried for those only), a permanent one at once."""
    temporary = []
    try:
        skipped = deliver(attempt, title, path, settings, mailer, seconds=seconds)
    except MailError as exc:
        if not exc.temporary:
            raise
        temporary.append(str(exc))
        skipped = None
    if skipped:
        return skipped  # the send rule said no: nobody gets a part either
    run = Run.get_by_id(attempt.run_id)
    # Read whole first (at most max_split_recipients): no cursor stays open
    # across the writes and the SMTP transactions below.
    targets = list(Delivery.select().where(Delivery.run == run.id, Delivery.part == True,  # noqa
                                           Delivery.status.in_(UNSENT)).order_by(Delivery.id))
    for target in targets:
        view = _PartView(run, target, settings)
        mail = compose(view, title, [target.address],
                       local_path(settings, target.file_key), seconds,
                       cut_at=settings.max_rows if run.truncated else None,
                       message_id=view.message_id, date=runmessages.local_date(run, settings))
        with db.atomic():
            attempt.update(heartbeat_at=db_now())
            Delivery.update(status=DeliveryStatus.SENDING).where(
                Delivery.id == target.id, Delivery.status.in_(UNSENT)).execute()
        try:
            replies = mailer.send(mail)
        except MailError as exc:
            Delivery.update(status=DeliveryStatus.PENDING, error=str(exc)).where(
                Delivery.id == target.id, Delivery.status == DeliveryStatus.SENDING).execute()
            raise
        _record_until_it_lands([target], replies, settings)
        if target.status == DeliveryStatus.PENDING:
            temporary.append('%s: %s' % (target.address, target.error))
    if temporary:
        raise MailError('recipients to retry: %s' % '; '.join(temporary), temporary=True)
    return None


__all__ = ['clean_split_by', 'prepare_split', 'deliver_split', 'split_stream', 'judge']
