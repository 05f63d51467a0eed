"""The run history: downloads recorded beside emailed runs, and old runs
removed in small batches so the history does not grow forever.

A download is one insert when it starts and one update when it ends, both
outside the stream's loop; when the state database does not answer, the
download goes on unrecorded (it never needed that database).

Retention removes runs (and their deliveries) that are over and older than
`history_days`, a batch of `history_batch` per short transaction, so the web
server and the workers keep getting their turn at the database between two
batches. A run still queued or running is never removed, and neither is one
whose file is still kept (runfiles.remove_expired_files removes it first).
"""
import base64
import binascii
import datetime
import hmac
import logging
import time

from bottle import request

from dbhealth import DB_ERRORS
from models import Delivery, Run, db, utcnow
from params import dump_params
from vocab import FINAL, RunStatus, Trigger

logger = logging.getLogger('nightshift.history')

# A download still "running" this long after it started was cut off with its
# web process (a download is not reaped like a worker's run): it is failed.
DOWNLOAD_LOST_AFTER = datetime.timedelta(hours=24)
# Longest one tick spends removing old runs; the rest waits for the next tick.
PURGE_BUDGET_SECONDS = 10.0
# A pause between two batches, so other writers of an SQLite file get the lock.
PURGE_PAUSE_SECONDS = 0.02
MAX_WHO = 200


# --- downloads -----------------------------------------------------------------

def who(settings):
    """Who is downloading, for the history: the API token used (by its
    position in the list, never its value), the user name a browser gave with
    it, and the client's address."""
    address = request.environ.get('REMOTE_ADDR') or 'unknown address'
    scheme, _, value = request.get_header('Authorization', '').partition(' ')
    user, given = '', b''
    if scheme.lower() == 'bearer':
        given = value.strip().encode('utf-8', 'replace')
    elif scheme.lower() == 'basic':
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).partition(b':')
        except (ValueError, binascii.Error):
            user, password = b'', b''
        given = password
        user = ''.join(c for c in user.decode('utf-8', 'replace') if c.isprintable())[:60]
    number = None
    for index, token in enumerate(settings.tokens, 1):
        if given and hmac.compare_digest(given, token.encode()):
            number = index
    parts = []
    if user:
        parts.append(user)
    if number is not None:
        parts.append('token %d' % number)
    principal = ' with '.join(parts)
    return ('%s from %s' % (principal, address) if principal else address)[:MAX_WHO]


class DownloadRecord:
    """One download's run: `start` inserts it as running, `end` records how
    it ended. Every database error is logged and swallowed: recording must
    never stop or slow a download."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.done = run_id is None

    @classmethod
    def start(cls, definition, typed, escape, bom, requested_by, now=None):
        now = now or utcnow()
        try:
            run = Run.create(report=definition.name, params=dump_params(typed), recipients=[],
                             status=RunStatus.RUNNING, trigger=Trigger.DOWNLOAD, attempts=1,
                             created_at=now, queued_at=now, started_at=now,
                             escape_formulas=escape, bom=bom, requested_by=requested_by)
        except DB_ERRORS as exc:
            _forget(exc, definition.name)
            return cls(None)
        return cls(run.id)

    def end(self, stream, error=None):
        """Record the end once: delivered when `error` is None, else failed.
        `stream` (the CsvStream, or None if it never opened) gives rows and bytes."""
        if self.done:
            return
        self.done = True
        values = dict(status=RunStatus.FAILED if error else RunStatus.DELIVERED,
                      finished_at=utcnow(), error=error)
        if stream is not None:
            values.update(rows=stream.rows, bytes=stream.bytes, truncated=stream.truncated,
                          file_bytes=stream.bytes)
        try:
            Run.update(**values).where(Run.id == self.run_id,
                                       Run.status == RunStatus.RUNNING).execute()
        except DB_ERRORS as exc:
            _forget(exc, 'run %d' % self.run_id)

    def stopped(self, stream):
        """The response ended without `end`: the client went away, or the
        server failed while writing."""
        self.end(stream, 'the download stopped after %d rows: the client went away or the '
                         'server failed' % (stream.rows if stream is not None else 0))


def _forget(exc, what):
    logger.warning('download of %s not recorded in the run history: %s', what,
                   type(exc).__name__)
    try:
        db.close()
    except Exception:
        pass


# --- retention -------------------------------------------------------------------

def expired(settings, now):
    """The ids query of runs past `history_days` that retention may remove."""
    cutoff = now - datetime.timedelta(days=settings.history_days)
    return (Run.select(Run.id)
            .where(Run.status.in_(FINAL), Run.file_key.is_null(),
                   (Run.finished_at < cutoff)
                   | (Run.finished_at.is_null() & (Run.created_at < cutoff))))


def remove_old_runs(settings, now, clock=time.monotonic, sleep=time.sleep,
                    budget=PURGE_BUDGET_SECONDS):
    """Remove runs and deliveries past `history_days`, `history_batch` at a
    time, each batch its own short transaction, for at most `budget` seconds.
    Returns how many runs were removed. `history_days = 0` keeps everything."""
    if not settings.history_days:
        return 0
    _fail_lost_downloads(now)
    deadline = clock() + budget
    removed = 0
    while True:
        ids = [row[0] for row in expired(settings, now).order_by(Run.id)
               .limit(settings.history_batch).tuples()]
        if not ids:
            break
        with db.atomic():
            Delivery.delete().where(Delivery.run.in_(ids)).execute()
            removed += (Run.delete()
                        .where(Run.id.in_(ids), Run.status.in_(FINAL)).execute())
        if len(ids) < settings.history_batch or clock() >= deadline:
            break
        sleep(PURGE_PAUSE_SECONDS)
    if removed:
        logger.info('history: removed %d runs older than %g days', removed,
                    settings.history_days)
    return removed


def _fail_lost_downloads(now):
    Run.update(status=RunStatus.FAILED, finished_at=now,
               error='the download never ended: its web process stopped') \
        .where(Run.trigger == Trigger.DOWNLOAD, Run.status == RunStatus.RUNNING,
               Run.started_at < now - DOWNLOAD_LOST_AFTER).execute()
