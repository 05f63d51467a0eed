"""The JSON API: health, the report catalogue, downloads, runs, schedules.

`install_api` adds the routes to the app server.create_app builds, whose
plugins (guards.py) give every route its token check and its JSON errors.
"""
import contextlib
import datetime
import functools
import logging
import urllib.parse

from bottle import HTTPResponse, request, response

import controlapi
import health
import history
import links
import reldates
import messageapi
import runmessages
from alarmsapi import install_notifications
import runs
import runviews
import schedules
import slotparams
import testsend
from dbhealth import DB_ERRORS
from errors import (Conflict, Forbidden, Gone, InputError, NotFound, QueueUnavailable,
                    ReportFailed, SourceDown)
from formats import CONTENT_TYPES, EXTENSIONS, check_format, content_type_of
from guards import TokenAuth, error_response, forget_connection, json_response
from inputs import (OUTPUT_OPTIONS, RAW_HEADER, WHOLE_NUMBER, flag, query_params,
                    raw_allowed, read_json_body)
from logformat import run_fields
from models import Run, Schedule, db_now, utcnow
from openapi import build_spec
from params import dump_params
from queueconf import FailureLog
from reports import find_report
from outputs import open_output
from runmessages import MESSAGE_FIELDS
from slots import DownloadSlots
from sources import ReportSQLError, SourceUnavailable, UnknownSource
from vocab import FINAL, TERMINAL, FileFormat, RunStatus, Trigger

logger = logging.getLogger('nightshift.server')


def find_run(run_id):
    # An id past 64 bits is no run, not an overflow inside the driver.
    if not 0 < run_id < 2 ** 63:
        return None
    return Run.get_or_none(Run.id == run_id)


def existing_run(run_id):
    run = find_run(run_id)
    if run is None:
        raise NotFound('no run %d' % run_id, 'id')
    return run


def find_schedule(name):
    schedule = Schedule.get_or_none(Schedule.name == name)
    if schedule is None:
        raise NotFound('no schedule named %r' % name, 'name')
    return schedule


def report_error(definition, exc):
    """The ApiError for a report that failed before its download started."""
    if isinstance(exc, ReportSQLError):
        logger.warning('report %s (%s) failed on source %s: %s', definition.name,
                       definition.path or 'python', exc.source, exc.message)
        return ReportFailed('report %s failed on source %s: %s'
                            % (definition.name, exc.source, exc.message), 'report')
    if isinstance(exc, UnknownSource):
        return ReportFailed('report %s reads source %r, which is not configured'
                            % (definition.name, str(exc.args[0])), 'report',
                            code='unknown_source')
    logger.warning('source %s unavailable: %s', exc.source, exc.message)
    return SourceDown('source %s is not answering; try again shortly' % exc.source)


def install_api(app, settings, jobs, registry):
    """Add the API's routes to `app`."""
    queue_log = FailureLog(settings)
    slots = DownloadSlots(max(1, min(settings.download_slots, settings.web_threads - 1)))
    install_health(app, settings, jobs, registry, queue_log)
    install_downloads(app, settings, registry, slots)
    enqueue = install_runs(app, settings, jobs, registry, slots, queue_log)
    install_schedules(app, settings, registry, enqueue)
    controlapi.install_control(app, settings, jobs, registry, enqueue)
    messageapi.install_message_preview(app, settings, registry)
    install_notifications(app)


def install_health(app, settings, jobs, registry, queue_log):
    token_auth = TokenAuth(settings.tokens)

    @app.get('/healthz', auth=False)
    def healthz():
        checks = {}
        try:
            # The database's clock: it proves the database answers and is
            # the time health.report reads heartbeats on (one query, not two).
            db_time = db_now()
            checks['database'] = 'ok'
        except Exception as exc:
            forget_connection()
            checks['database'] = 'down: %s' % type(exc).__name__
        try:
            jobs.queue_ok()
            checks['queue'] = 'ok'
            queue_log.up()
        except Exception as exc:
            checks['queue'] = 'down: %s' % queue_log.down(exc)
        ok = all(v == 'ok' for v in checks.values())
        body = dict(checks, status='ok' if ok else 'unavailable', queue_backend=settings.queue)
        if checks['database'] == 'ok':
            # The consumers, and whether the work is being done (health.py):
            # "degraded" keeps 200 unless ?strict=1 asks for 503. Who runs
            # where (hosts, pids) only with a token, when tokens are set.
            try:
                body.update(health.report(settings, db_time))
            except DB_ERRORS as exc:
                forget_connection()
                body['problems'] = ['consumers: not read (%s)' % type(exc).__name__]
            if settings.tokens and not token_auth.allowed(
                    request.get_header('Authorization', '')):
                body.pop('consumers', None)
            if ok and body['problems']:
                body['status'] = 'degraded'
        strict = request.query.get('strict') in ('1', 'true')
        return json_response(200 if ok and not (strict and body['status'] != 'ok') else 503,
                             body)

    @app.get('/api/openapi.json', auth=False)
    def openapi_spec():
        # Built per request: report files may be added while the server runs.
        return json_response(200, build_spec(registry))

    @app.get('/api/reports')
    def list_reports():
        # A report file with an error is listed with it, so its owner sees
        # why it is missing; the others work as usual.
        return json_response(200, {
            'reports': [r.describe() for r in registry],
            'broken': [{'name': name, 'file': error.path, 'line': error.line,
                        'error': error.message}
                       for name, error in sorted(registry.broken.items())]})


def install_downloads(app, settings, registry, slots):
    def download_request(name, fmt=None):
        """(report, typed params, output options) from a download's query string."""
        definition = find_report(registry, name)
        raw = query_params(prefix='params.')
        options = {key: flag(raw.pop(key), key) for key in OUTPUT_OPTIONS if key in raw}
        if 'format' in raw:
            options['format'] = check_format(raw.pop('format'))
            if fmt is not None and options['format'] != fmt:
                raise InputError('format', 'this address gives %s; for %s use /reports/%s%s'
                                 % (fmt, options['format'], name,
                                    EXTENSIONS[options['format']]))
        if options.get('escape_formulas') is False and not raw_allowed():
            raise InputError('escape_formulas', 'false needs the header %s: 1 or a Bearer '
                             'token, so that a link alone cannot turn escaping off'
                             % RAW_HEADER)
        # Relative dates: now, in the timezone setting.
        raw, _ = reldates.resolve_params(definition.params, raw,
                                         reldates.check_zone(settings.timezone), utcnow())
        return definition, definition.parse(raw), options

    @app.get('/api/reports/<name>/check')
    def check_download(name):
        # Lets a page find a mistake before it starts a download, where the
        # error would otherwise replace the page.
        definition, typed, options = download_request(name)
        # The format is the address's extension, not a parameter.
        query = urllib.parse.urlencode([
            pair for pair in urllib.parse.parse_qsl(request.query_string,
                                                    keep_blank_values=True)
            if pair[0] != 'format'])
        extension = EXTENSIONS[options.get('format', FileFormat.CSV)]
        return json_response(200, {'report': definition.name, 'params': dump_params(typed),
                                   'options': options,
                                   'url': '/reports/%s%s%s' % (definition.name, extension,
                                                               '?' + query if query else '')})

    def download_headers(name, fmt=FileFormat.CSV):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
        response.content_type = CONTENT_TYPES[fmt]
        response.set_header('Content-Disposition',
                            'attachment; filename="%s-%s%s"' % (name, stamp, EXTENSIONS[fmt]))

    @app.route('/reports/<name>.csv', method='HEAD')
    def download_head(name):
        # What a GET would answer, without running the report.
        download_request(name)
        download_headers(name)
        return ''

    def format_head(name, fmt):
        download_request(name, fmt)
        download_headers(name, fmt)
        return ''

    @app.get('/reports/<name>.csv')
    def download(name, fmt=FileFormat.CSV):
        definition, typed, options = download_request(name, fmt)
        held = slots.take()
        download_headers(name, fmt)
        escape = options.get('escape_formulas', definition.escape_formulas)
        bom = options.get('bom', settings.csv_bom)
        # Recorded in the run history (trigger download): an insert now, an update at the end.
        record = history.DownloadRecord.start(definition, typed, escape, bom,
                                              history.who(settings), file_format=fmt)
        return held.wrap(stream_csv(definition, typed, escape=escape, bom=bom, record=record,
                                    fmt=fmt))

    # The same download as .csv.gz and .xlsx (formats.py).
    for fmt in (FileFormat.CSV_GZ, FileFormat.XLSX):
        rule = '/reports/<name>%s' % EXTENSIONS[fmt]
        app.route(rule, 'GET', functools.partial(download, fmt=fmt))
        app.route(rule, 'HEAD', functools.partial(format_head, fmt=fmt))

    def stream_csv(definition, typed, escape, bom, record=None, fmt=FileFormat.CSV):
        # Bottle reads the first chunk before it sends headers, so a report
        # that fails before anything was written still becomes a clean JSON
        # error: the report's own (422) or its source's (503).
        started = False
        stream = None
        try:
            with open_output(definition, settings, typed, fmt, escape=escape,
                             bom=bom) as stream, \
                    contextlib.closing(iter(stream)) as chunks:
                for chunk in chunks:
                    started = True
                    yield chunk
            if record is not None:
                record.end(stream)
        except (ReportSQLError, SourceUnavailable, UnknownSource) as exc:
            error = report_error(definition, exc)
            if record is not None:
                record.end(stream, error.message)
            if started:
                raise
            yield error_response(error)
        finally:
            if record is not None:
                record.stopped(stream)


def install_runs(app, settings, jobs, registry, slots, queue_log):
    """The run routes; returns `enqueue(run)`, the response to a new run."""
    @app.post('/api/runs')
    def create_run():
        body = read_json_body(settings.max_body_bytes)
        unknown = set(body) - {'report', 'params', 'to', 'timezone', 'split_by', 'format'} \
            - set(OUTPUT_OPTIONS) - set(MESSAGE_FIELDS)
        if unknown:
            raise InputError(sorted(unknown)[0], 'unknown field; expected report, params, '
                             'to, timezone, split_by, format, escape_formulas, bom, %s'
                             % ', '.join(MESSAGE_FIELDS),
                             code='unknown_field')
        options = {key: flag(body[key], key) for key in OUTPUT_OPTIONS if key in body}
        if 'format' in body:
            options['file_format'] = check_format(body['format'], given=True)
        if 'params' in body and not isinstance(body['params'], dict):
            raise InputError('params', 'must be an object of parameter values')
        if 'timezone' in body and not isinstance(body['timezone'], str):
            raise InputError('timezone', 'give an IANA timezone such as Europe/Lisbon')
        message = {key: body[key] for key in MESSAGE_FIELDS if key in body}
        run = runs.create_run(registry, settings, body.get('report'), body.get('params'),
                              body.get('to'), trigger=Trigger.WEB,
                              timezone=body.get('timezone'), split_by=body.get('split_by'),
                              message=message, **options)
        return enqueue(run)

    def enqueue(run):
        try:
            jobs.enqueue_run(run)
        except QueueUnavailable as exc:
            logger.warning('run %d not queued: %s', run.id, exc,
                           extra=run_fields(run.id, run.report))
            queue_log.down(exc.__cause__ or exc)
            raise QueueUnavailable('the job queue is not answering; run %d was recorded as '
                                   'failed, nothing will be sent. Try again shortly.'
                                   % run.id) from exc
        url = '/api/runs/%d' % run.id
        return json_response(202, {'id': run.id, 'status': RunStatus.QUEUED, 'url': url},
                             headers={'Location': url})

    @app.get('/api/runs/<run_id:int>')
    def get_run(run_id):
        return json_response(200, runviews.run_as_dict(existing_run(run_id)))

    @app.get('/api/runs')
    def list_runs():
        query = Run.select().order_by(Run.id.desc())
        filters = query_params()
        unknown = sorted(set(filters) - {'report', 'status', 'limit'})
        if unknown:
            raise InputError(unknown[0], 'unknown filter; expected report, status, limit')
        report = filters.get('report')
        status = filters.get('status')
        limit = filters.get('limit', '50')
        if report:
            query = query.where(Run.report == report)
        if status is not None:
            if status not in list(RunStatus):
                raise InputError('status', 'must be one of %s' % ', '.join(RunStatus))
            query = query.where(Run.status == status)
        if not WHOLE_NUMBER.match(limit) or not 1 <= int(limit) <= 500:
            raise InputError('limit', 'must be a whole number from 1 to 500')
        return json_response(200, {'runs': runviews.runs_as_dicts(query.limit(int(limit)))})

    @app.get('/api/runs/<run_id:int>/file')
    def run_file(run_id):
        run = existing_run(run_id)
        if not runviews.file_ready(run):
            if run.status in TERMINAL and run.file_name and not run.file_key:
                raise Gone('run %d\'s file was removed after %g days'
                           % (run_id, settings.retention_days))
            if run.status in FINAL:
                raise NotFound('run %d is %s and has no file' % (run_id, run.status))
            raise Conflict('run %d is %s; it has no file yet' % (run_id, run.status),
                           code='not_ready')
        return send_stored_file(run)

    def send_stored_file(run):
        held = slots.take()
        try:
            chunks = jobs.store.open_chunks(run.file_key)
        except FileNotFoundError:
            held.close()
            raise NotFound('the file is no longer kept')
        content_type = content_type_of(run.file_name)
        return HTTPResponse(held.wrap(chunks), status=200, headers={
            'Content-Type': content_type,
            'Content-Disposition': 'attachment; filename="%s"' % run.file_name})

    @app.get('/files/<run_id:int>', auth=False)  # the signature is the credential
    def download_file(run_id):
        # The link in a report email: signed, expiring, for one run's file.
        # Any mismatch gets the same 403, so a probe learns nothing.
        run = find_run(run_id)
        if not links.check(settings, run, request.query.get('expires', ''),
                           request.query.get('sig', '')):
            raise Forbidden('this link is not valid or has expired')
        return send_stored_file(run)

    return enqueue


def install_schedules(app, settings, registry, enqueue):
    def schedule_response(status, schedule, headers=None):
        return json_response(status, schedules.schedule_as_dict(schedule, utcnow(), registry),
                             headers)

    @app.get('/api/schedules')
    def list_schedules():
        now = utcnow()
        return json_response(200, {'schedules': [
            schedules.schedule_as_dict(s, now, registry)
            for s in schedules.with_last_runs(Schedule.select().order_by(Schedule.name))]})

    @app.post('/api/schedules')
    def create_schedule():
        body = read_json_body(settings.max_body_bytes)
        schedule = schedules.create_schedule(registry, settings, body, utcnow())
        url = '/api/schedules/%s' % schedule.name
        return schedule_response(201, schedule, {'Location': url})

    @app.post('/api/schedule-preview')
    def preview_schedule():
        # The schedule form asks while the user types: the next slot and the
        # values its relative dates will have then.
        body = read_json_body(settings.max_body_bytes)
        return json_response(200, slotparams.preview(registry, settings, body, utcnow()))

    @app.get('/api/schedules/<name>')
    def get_schedule(name):
        return schedule_response(200, find_schedule(name))

    @app.put('/api/schedules/<name>')
    def update_schedule(name):
        schedule = find_schedule(name)
        body = read_json_body(settings.max_body_bytes)
        return schedule_response(200, schedules.update_schedule(
            registry, settings, schedule, body, utcnow()))

    @app.delete('/api/schedules/<name>')
    def delete_schedule(name):
        schedules.delete_schedule(find_schedule(name))
        return HTTPResponse(status=204)

    @app.post('/api/schedules/<name>/pause')
    def pause_schedule(name):
        return schedule_response(200, schedules.set_enabled(find_schedule(name), False, utcnow()))

    @app.post('/api/schedules/<name>/resume')
    def resume_schedule(name):
        return schedule_response(200, schedules.set_enabled(find_schedule(name), True, utcnow()))

    @app.post('/api/schedules/<name>/run')
    def run_schedule_now(name):
        # A test send: a normal run of the schedule's report to its recipients.
        schedule = find_schedule(name)
        return enqueue(runs.create_run(registry, settings, schedule.report, schedule.params,
                                       schedule.recipients, trigger=Trigger.WEB,
                                       schedule=schedule.name, timezone=schedule.timezone,
                                       split_by=schedule.split_by,
                                       message=runmessages.of_schedule(schedule),
                                       file_format=schedule.format))

    @app.post('/api/schedules/<name>/test')
    def test_schedule(name):
        # "Send a test to me": the next slot, to one address, recorded as a test.
        schedule = find_schedule(name)
        body = read_json_body(settings.max_body_bytes)
        unknown = sorted(set(body) - {'to'})
        if unknown:
            raise InputError(unknown[0], 'unknown field; expected to', code='unknown_field')
        return enqueue(testsend.send_test(registry, settings, schedule, body.get('to'),
                                          utcnow()))
