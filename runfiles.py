"""A run's files on this machine: where they are made, how the report is
written into them, published to the store, and cleaned away afterwards.

Every write about the run goes through the attempt (runs.Attempt), fenced so
that an attempt taken back cannot publish over the one that owns the run.
"""
import contextlib
import datetime
import logging
import math
import os
import shutil
import zipfile

from errors import InputError, LostOwnership, PermanentFailure
from export import write_file
from formats import EXTENSIONS, check_format, format_of_name, without_extension
from logformat import run_fields
from models import Delivery, Run, db_now
from outputs import open_output
from reports import BrokenReport, UnknownReport
from runmessages import name_file
from sources import ReportSQLError, UnknownSource
from sqlexport import open_query_csv
from vocab import FINAL

logger = logging.getLogger('nightshift.runs')


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


def store_key(settings, path):
    """The store's key for a file under reports_dir (local_path's inverse)."""
    return os.path.relpath(path, settings.reports_dir).replace(os.sep, '/')


def open_report(definition, settings, typed, escape, bom):
    """The report's rows on its source as a CSV stream (a context manager).
    Raises ReportSQLError / SourceUnavailable from the source, and
    UnknownSource for a report that names a source nobody configured."""
    source = settings.source(definition.source)
    sql, params = definition.statement(source.engine, typed)
    return open_query_csv(source, sql, params, escape=escape, bom=bom, limit=settings.max_rows,
                          timeout=definition.timeout)


@contextlib.contextmanager
def report_definition(registry, run):
    """The run's report definition, for the body that reads it. A report that
    cannot work (gone, its file broken, its source not configured, its SQL
    failing, its saved parameters no longer fitting) becomes a
    PermanentFailure; a source that does not answer does not."""
    definition = None
    try:
        definition = registry.get(run.report)
        yield definition
    except UnknownReport:
        raise PermanentFailure('report %r no longer exists' % run.report)
    except BrokenReport as exc:
        raise PermanentFailure('report %s cannot be used: %s' % (run.report, exc.error))
    except UnknownSource as exc:
        raise PermanentFailure('report %s reads source %r, which is not configured'
                               % (run.report, str(exc.args[0])))
    except ReportSQLError as exc:
        logger.warning('report %s (%s) failed on source %s: %s', run.report,
                       getattr(definition, 'path', None) or 'python', exc.source, exc.message,
                       extra=run_fields(run.id, run.report))
        raise PermanentFailure('report %s failed on source %s: %s'
                               % (run.report, exc.source, exc.message))
    except InputError as exc:
        raise PermanentFailure('report %s: its parameters no longer fit: %s'
                               % (run.report, exc))


def write_report(registry, settings, run, path, on_progress=None):
    """Write the run's file (in its format) to `path`; `on_progress(rows,
    bytes)` as it goes. Returns the finished stream (rows, bytes, truncated).
    Failures as report_definition says."""
    with report_definition(registry, run) as definition:
        with open_output(definition, settings, definition.parse(run.params), run.format,
                         escape=run.escape_formulas, bom=run.bom,
                         tmpdir=os.path.dirname(path)) as stream:
            write_file(stream, path, on_progress=on_progress, every=0.1)
    return stream


def message_size(attachment_bytes):
    """Bytes an attachment takes in a message: base64 (4 per 3) in 76-character
    lines, plus room for headers and the body. Providers count this."""
    encoded = math.ceil(attachment_bytes / 3) * 4
    return encoded + math.ceil(encoded / 76) * 2 + 64 * 1024


def package(csv_path, settings):
    """(path, sent_as): the file as it is (sent_as: its format), zipped when
    large, and 'link' when even the zip would be over the provider's limit."""
    path, sent_as = csv_path, format_of_name(csv_path) or 'csv'
    if os.path.getsize(csv_path) > settings.zip_over_mb * 1e6:
        path, sent_as = without_extension(csv_path) + '.zip', 'zip'
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


def prepare_file(registry, settings, store, attempt, *, heartbeat=None, share=False) -> str:
    """The run's finished file: reused when a complete one is kept, else
    built from scratch in this attempt's own folder and published with a
    fenced write. Returns the local path; LostOwnership if the run was taken
    from this attempt (nothing it made is left behind). With `share` the
    file as written is also kept at shared_source() for the runs of its
    batch (batches.py)."""
    run = Run.get_by_id(attempt.run_id)
    reused = _published_copy(settings, store, run)
    if reused:
        return reused
    folder, path = _fresh_folder(settings, attempt, run)
    try:
        attempt.update(rows=0, bytes=0, file_name=None, file_key=None, file_bytes=None,
                       sent_as=None)
        stream = write_report(registry, settings, run, path,
                              heartbeat.progress if heartbeat else None)
        if share:
            os.link(path, shared_source(settings, attempt))
        path, _ = _publish(settings, store, attempt, run, registry.get(run.report).title, path,
                           stream, heartbeat_at=db_now())
    except LostOwnership:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path


def _fresh_folder(settings, attempt, run):
    """(folder, path): the attempt's folder, emptied, and the path the run's
    file is first written to (<report>-<stamp><extension>)."""
    folder = attempt_folder(settings, attempt)
    try:
        # A fresh run has no folder yet: two mkdirs, where emptying first
        # and makedirs' checks cost as much again in a burst of companions.
        os.mkdir(os.path.dirname(folder))
        os.mkdir(folder)
    except (FileExistsError, FileNotFoundError):  # tried before; no reports_dir yet
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    stamp = run.created_at.strftime('%Y%m%d-%H%M%S')
    return folder, os.path.join(folder, '%s-%s%s' % (run.report, stamp,
                                                     EXTENSIONS[check_format(run.format)]))


def _publish(settings, store, attempt, run, title, path, written, **also):
    """Name the written file as the run's template says, package it, store
    it and record it (with `also`) by a fenced write. `written` has its rows,
    bytes and truncated. (path, the file's values recorded); a stored file
    the run is no longer this attempt's to record is deleted again."""
    path, sent_as = package(name_file(run, settings, title, path, written), settings)
    key = store_key(settings, path)
    store.save(key, path)
    values = dict(rows=written.rows, bytes=written.bytes, truncated=written.truncated,
                  file_name=os.path.basename(path), file_key=key,
                  file_bytes=os.path.getsize(path), sent_as=sent_as)
    try:
        attempt.update(**values, **also)
    except LostOwnership:
        store.delete(key)
        raise
    return path, values


def shared_source(settings, attempt):
    """Where a batch's leader keeps its file as written (before its own name
    and packaging) for its companions to copy."""
    return os.path.join(attempt_folder(settings, attempt), 'shared')


def publish_shared(settings, store, attempt, run, source, title, written) -> str:
    """A companion's own copy of its batch's file (`source`; `written` has
    its rows, bytes and truncated), published as prepare_file publishes a
    file it built, and recorded on `run` too (its row, read once for the
    batch). Returns the local path."""
    folder, path = _fresh_folder(settings, attempt, run)
    try:
        # A link costs nothing and the two names are deleted independently.
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)
    try:
        # No heartbeat here: the leader's beats the batch (runs.Heartbeat).
        path, values = _publish(settings, store, attempt, run, title, path, written)
    except LostOwnership:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for name, value in values.items():
        setattr(run, name, value)
    return path


def drop_working_copy(settings, store, run_id):
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


def discard_files(settings, store, run_id):
    """Everything a cancelled run made: its work folder and any file it had
    published (nobody was sent it)."""
    key = Run.select(Run.file_key).where(Run.id == run_id).scalar()
    if key:
        store.delete(key)
        Run.update(file_key=None).where(Run.id == run_id).execute()
    shutil.rmtree(run_folder(settings, run_id), ignore_errors=True)


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
        elif run.status in FINAL:
            remove_work_files(settings, store, run)
            cleaned += 1
    return cleaned


def remove_expired_files(settings, store, now):
    """Delete report files past their retention; returns how many."""
    cutoff = now - datetime.timedelta(days=settings.retention_days)
    removed = 0
    for run in Run.select().where(Run.file_key.is_null(False), Run.finished_at < cutoff):
        store.delete(run.file_key)
        for part in Delivery.select(Delivery.file_key).where(  # a split run's own files
                Delivery.run == run.id, Delivery.file_key.is_null(False)):
            store.delete(part.file_key)
        shutil.rmtree(run_folder(settings, run.id), ignore_errors=True)
        Run.update(file_key=None).where(Run.id == run.id).execute()
        removed += 1
    return removed
