"""HTTP: a Bottle app built from settings, served by waitress.

    python server.py [--host H] [--port P] [--worker]

`--worker` also runs a Huey consumer (threads) in the same process, so one
command runs the whole system on one machine.
"""
import argparse
import base64
import binascii
import contextlib
import datetime
import errno
import functools
import hmac
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import urllib.parse

from bottle import Bottle, HTTPResponse, request, response
from peewee import DatabaseError, InterfaceError, OperationalError

import links
import runs
import schedules
import web
from models import RUN_STATUSES, Run, Schedule, bind_database, db, utcnow
from migrations import SchemaBehind
from openapi import build_spec
from params import InputError, dump_params
from queueconf import FailureLog
from reports import find_report
from sources import ReportSQLError, SourceUnavailable, UnknownSource
from settings import SettingsError, install_log_redaction, load_settings
from tasks import Jobs, QueueUnavailable

logger = logging.getLogger('nightshift.server')
DB_ERRORS = (OperationalError, InterfaceError, DatabaseError)


class ApiError(Exception):
    def __init__(self, status, code, message, field=None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def json_response(status, payload, headers=None):
    return HTTPResponse(json.dumps(payload), status=status,
                        headers=dict({'Content-Type': 'application/json'}, **(headers or {})))


def error_response(status, code, message, field=None):
    payload = {'error': code, 'message': message}
    if field is not None:
        payload['field'] = field
    return json_response(status, payload)


def _forget_connection():
    # A dead connection stays dead; drop it so the next request reconnects.
    try:
        db.close()
    except Exception:
        pass


def api_errors(callback):
    """Bottle plugin: map expected failures to JSON errors."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except ApiError as exc:
            res = error_response(exc.status, exc.code, exc.message, exc.field)
            if exc.status == 503:
                res.set_header('Retry-After', '5')
            return res
        except InputError as exc:
            status = 404 if exc.code == 'unknown_report' else 400
            return error_response(status, exc.code, exc.message, exc.field)
        except schedules.Conflict as exc:
            return error_response(409, 'conflict', exc.message, exc.field)
        except DB_ERRORS as exc:
            logger.warning('database unavailable: %s', type(exc).__name__)
            _forget_connection()
            return error_response(503, 'database_unavailable',
                                  'the database is not answering; try again shortly')
    return wrapper


# The headers this app reads through Bottle, which decodes them as UTF-8.
# Others (a cookie another app on localhost set, say) are left alone.
READ_HEADERS = ('Authorization', 'Host', 'Origin', 'Sec-Fetch-Site', 'Content-Type',
                'X-Nightshift-Raw', 'X-Forwarded-Proto')


def header_bytes(callback):
    """Bottle plugin: a header that is not UTF-8 is the client's mistake (400
    naming it), not a crash wherever the header is first read."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        for name in READ_HEADERS:
            key = name.upper().replace('-', '_')
            value = request.environ.get(key if key == 'CONTENT_TYPE' else 'HTTP_' + key, '')
            try:
                value.encode('latin-1').decode('utf-8')
            except UnicodeError:
                raise InputError(name, 'is not valid UTF-8')
        return callback(*args, **kwargs)
    return wrapper


def bearer_given():
    """True when the request names a Bearer token: a header that a page on
    another site cannot make a browser send (Basic credentials it can)."""
    return request.get_header('Authorization', '').partition(' ')[0].lower() == 'bearer'


class TokenAuth:
    """Bottle plugin: every route needs an API token, unless declared with
    auth=False. The token comes as `Authorization: Bearer <token>` or as the
    password of HTTP Basic auth (any user name), so a browser can log in."""
    name = 'token_auth'
    api = 2

    def __init__(self, tokens):
        self.tokens = [t.encode() for t in tokens]

    def allowed(self, header):
        scheme, _, value = header.partition(' ')
        given = b''
        if scheme.lower() == 'bearer':
            given = value.strip().encode('utf-8', 'replace')
        elif scheme.lower() == 'basic':
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (ValueError, binascii.Error):
                return False
            given = decoded.partition(b':')[2]
        # Compare with every token, always: the time taken says nothing.
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(given, token)
        return matched and bool(given)

    def apply(self, callback, route):
        if not self.tokens or route.config.get('auth', True) is False:
            return callback

        @functools.wraps(callback)
        def wrapper(*args, **kwargs):
            if not self.allowed(request.get_header('Authorization', '')):
                return json_response(401, {
                    'error': 'unauthorized',
                    'message': 'give an API token: "Authorization: Bearer <token>" or '
                               'HTTP Basic auth with the token as password'},
                    headers={'WWW-Authenticate': 'Basic realm="Nightshift", charset="UTF-8"'})
            return callback(*args, **kwargs)
        return wrapper


LOOPBACK_NAMES = ('localhost', '127.0.0.1', '[::1]', '::1')
UNSAFE_METHODS = ('POST', 'PUT', 'PATCH', 'DELETE')


def _host_name(host):
    if host.startswith('['):
        return host.split(']')[0] + ']'
    return host.rsplit(':', 1)[0] if host.count(':') == 1 else host


DEFAULT_PORTS = {'http': 80, 'https': 443}


def origin_of(url):
    """(scheme, host, port) of a URL or an Origin header; None when it is not one."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


def is_json_request():
    return request.content_type.split(';', 1)[0].strip().lower() == 'application/json'


CONTENT_POLICY = ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                  "base-uri 'none'; form-action 'self'")


class BrowserGuard:
    """Bottle plugin: what a browser session needs beside the token.

    - No cross-site writes. Once a browser has logged in with Basic auth it
      sends the credentials on every request to this host, including a form
      another site posts here; so a write whose Origin (or Sec-Fetch-Site)
      says it came from elsewhere is refused.
    - No DNS rebinding: without a token the server only listens on loopback,
      and a request naming another host in its Host header came through a
      name that was made to point here.
    """
    name = 'browser_guard'
    api = 2

    def __init__(self, tokens, public_url):
        self.open = not tokens
        # Behind a proxy that does not pass the Host on, the page's origin is
        # the public URL. Settings derive it from the port listened on unless
        # it was set, so it never names some other server on this machine.
        self.public_origin = origin_of(public_url)

    def refusal(self):
        """The ApiError this request gets instead of an answer, or None."""
        # Host only: X-Forwarded-Host is the client's to write (waitress drops
        # it from untrusted peers), so a rebinding page could name loopback in it.
        host = request.get_header('Host', '')
        if self.open and _host_name(host.lower()) not in LOOPBACK_NAMES:
            return ApiError(403, 'misdirected', 'this server answers to localhost only '
                            'while no API token is set')
        if request.method not in UNSAFE_METHODS:
            return None
        site = request.get_header('Sec-Fetch-Site')
        if site is not None and site not in ('same-origin', 'none'):
            return ApiError(403, 'cross_site', 'a write from another site is refused')
        origin = request.get_header('Origin')
        if origin is not None:
            given = origin_of(origin)  # None for "null" and the like
            if given is None or given not in (self.own_origin(host), self.public_origin):
                return ApiError(403, 'cross_site', 'a write from another origin is refused')
        if not (is_json_request() or bearer_given()):
            # A form from another site may come without Origin (older
            # browsers, some redirects); it cannot come with this type.
            return ApiError(415, 'unsupported_media_type',
                            'send writes with Content-Type: application/json', 'Content-Type')
        return None

    @staticmethod
    def own_origin(host):
        scheme = request.environ.get('HTTP_X_FORWARDED_PROTO') or \
            request.environ.get('wsgi.url_scheme', 'http')
        return origin_of('%s://%s' % (scheme, host))

    def apply(self, callback, route):
        @functools.wraps(callback)
        def wrapper(*args, **kwargs):
            refused = self.refusal()
            if refused:
                raise refused
            return callback(*args, **kwargs)
        return wrapper


def _error_handler(res):
    """Every error Bottle raises itself (404, 405, 500) as JSON, no traceback."""
    response.content_type = 'application/json'
    codes = {404: 'not_found', 405: 'method_not_allowed', 413: 'body_too_large'}
    if res.status_code >= 500:
        return json.dumps({'error': 'internal_error',
                           'message': 'internal error; it has been logged'})
    return json.dumps({'error': codes.get(res.status_code, 'http_%d' % res.status_code),
                       'message': res.body if isinstance(res.body, str) else res.status_line})


def read_json_body(max_bytes):
    # Only JSON: a browser cannot send that type to another site without a
    # preflight this server never grants, so a forged form post cannot write.
    if not is_json_request():
        raise ApiError(415, 'unsupported_media_type',
                       'send the body as application/json', 'Content-Type')
    length = request.content_length
    if length > max_bytes:
        raise ApiError(413, 'body_too_large', 'request body over %d bytes' % max_bytes, 'body')
    raw = request.body.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, 'body_too_large', 'request body over %d bytes' % max_bytes, 'body')
    try:
        data = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, 'invalid_json', 'the body must be a JSON object', 'body')
    if not isinstance(data, dict):
        raise ApiError(400, 'invalid_json', 'the body must be a JSON object', 'body')
    return data


# ASCII digits only: str.isdigit() also takes "²", which int() refuses.
WHOLE_NUMBER = re.compile(r'[0-9]{1,18}\Z')
# A header a link cannot carry: a page on another site cannot make a browser
# send it without a preflight this server never grants.
RAW_HEADER = 'X-Nightshift-Raw'
# Output switches a request may give beside the report's own parameters.
OUTPUT_OPTIONS = ('escape_formulas', 'bom')


def raw_allowed():
    """May this download turn formula escaping off? Only when the request
    carries what a crafted link in a mail or a chat cannot."""
    return request.get_header(RAW_HEADER, '').strip() == '1' or bearer_given()


def flag(value, field):
    """A boolean from JSON (true/false) or a query string (true/false/1/0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ('true', '1', 'false', '0'):
        return value.lower() in ('true', '1')
    raise InputError(field, 'must be true or false')


def query_params(prefix=''):
    """The query string as {name: str}; a repeated name or bytes that are not
    UTF-8 are an error naming `prefix + name` (never a filter dropped)."""
    params = {}
    for raw_name in request.query.keys():
        values = request.query.getall(raw_name)
        try:
            name = raw_name.encode('latin-1').decode('utf-8')
        except UnicodeError:
            raise InputError('query', 'a parameter name is not valid UTF-8')
        field = name if name in OUTPUT_OPTIONS else prefix + name
        if len(values) > 1:
            raise InputError(field, 'given more than once')
        value = request.query.getunicode(raw_name)
        if value is None:
            raise InputError(field, 'is not valid UTF-8')
        params[name] = value
    return params


class DownloadSlots:
    """How many downloads stream at once. A client that reads slowly holds a
    web thread for as long as it takes (waitress blocks the writer once its
    buffer is full), so downloads get only some of the threads and health
    checks and the API keep the rest."""

    def __init__(self, count):
        self.free = threading.BoundedSemaphore(count)

    def take(self):
        if not self.free.acquire(blocking=False):
            raise ApiError(503, 'busy', 'every download slot is in use; try again shortly')
        return Held(self.free)


class Held:
    """A taken download slot, given back when the response is done with,
    however it ends: finished, failed, or closed by waitress when the client
    went away."""

    def __init__(self, slot):
        self.slot, self.body = slot, None

    def wrap(self, body):
        self.body = iter(body)
        return self

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = next(self.body)
        except BaseException:
            self.close()
            raise
        if isinstance(item, HTTPResponse):
            # An error in place of the body: Bottle sends it and never
            # closes what it came from.
            self.close()
        return item

    def close(self):
        slot, self.slot = self.slot, None
        if slot is None:
            return
        try:
            # Closing the generator runs its `with` blocks: the cursor and the
            # transaction end, so the database stops working for nobody.
            getattr(self.body, 'close', lambda: None)()
        finally:
            slot.release()


def find_run(run_id):
    # An id past 64 bits is no run, not an overflow inside the driver.
    if not 0 < run_id < 2 ** 63:
        return None
    return Run.get_or_none(Run.id == run_id)


def create_app(settings, jobs, registry=None):
    registry = registry or jobs.registry
    app = Bottle()
    app.install(api_errors)
    app.install(header_bytes)
    app.install(TokenAuth(settings.tokens))
    app.install(BrowserGuard(settings.tokens, settings.public_url))
    app.default_error_handler = _error_handler
    queue_log = FailureLog(settings)
    slots = DownloadSlots(max(1, min(settings.download_slots, settings.web_threads - 1)))

    @app.hook('after_request')
    def protective_headers():
        # The page's buttons send mail: no other site may frame it and steer
        # a click. Scripts and styles come from our own files only.
        response.set_header('Content-Security-Policy', CONTENT_POLICY)
        response.set_header('X-Frame-Options', 'DENY')
        response.set_header('X-Content-Type-Options', 'nosniff')
        response.set_header('Referrer-Policy', 'same-origin')

    @app.get('/healthz', auth=False)
    def healthz():
        checks = {}
        try:
            db.execute_sql('SELECT 1').fetchone()
            checks['database'] = 'ok'
        except Exception as exc:
            _forget_connection()
            checks['database'] = 'down: %s' % type(exc).__name__
        try:
            jobs.queue_ok()
            checks['queue'] = 'ok'
            queue_log.up()
        except Exception as exc:
            checks['queue'] = 'down: %s' % queue_log.down(exc)
        ok = all(v == 'ok' for v in checks.values())
        return json_response(200 if ok else 503,
                             dict(checks, status='ok' if ok else 'unavailable',
                                  queue_backend=settings.queue))

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

    def download_request(name):
        """(report, typed params, output options) from a download's query string."""
        definition = find_report(registry, name)
        raw = query_params(prefix='params.')
        options = {key: flag(raw.pop(key), key) for key in OUTPUT_OPTIONS if key in raw}
        if options.get('escape_formulas') is False and not raw_allowed():
            raise InputError('escape_formulas', 'false needs the header %s: 1 or a Bearer '
                             'token, so that a link alone cannot turn escaping off'
                             % RAW_HEADER)
        return definition, definition.parse(raw), options

    @app.get('/api/reports/<name>/check')
    def check_download(name):
        # Lets a page find a mistake before it starts a download, where the
        # error would otherwise replace the page.
        definition, typed, options = download_request(name)
        query = '?' + request.query_string if request.query_string else ''
        return json_response(200, {'report': definition.name, 'params': dump_params(typed),
                                   'options': options,
                                   'url': '/reports/%s.csv%s' % (definition.name, query)})

    def download_headers(name):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
        response.content_type = 'text/csv; charset=utf-8'
        response.set_header('Content-Disposition',
                            'attachment; filename="%s-%s.csv"' % (name, stamp))

    @app.route('/reports/<name>.csv', method='HEAD')
    def download_head(name):
        # What a GET would answer, without running the report.
        download_request(name)
        download_headers(name)
        return ''

    @app.get('/reports/<name>.csv')
    def download(name):
        definition, typed, options = download_request(name)
        held = slots.take()
        download_headers(name)
        return held.wrap(_stream_csv(definition, typed,
                                     escape=options.get('escape_formulas',
                                                        definition.escape_formulas),
                                     bom=options.get('bom', settings.csv_bom)))

    def _stream_csv(definition, typed, escape, bom):
        # Bottle reads the first chunk before it sends headers, so a report
        # that fails before anything was written still becomes a clean JSON
        # error: the report's own (422) or its source's (503).
        started = False
        try:
            with runs.open_report(definition, settings, typed, escape, bom) as stream, \
                    contextlib.closing(iter(stream)) as chunks:
                for chunk in chunks:
                    started = True
                    yield chunk
        except (ReportSQLError, SourceUnavailable, UnknownSource) as exc:
            if started:
                raise
            yield report_failure(definition, exc)

    def report_failure(definition, exc):
        if isinstance(exc, ReportSQLError):
            logger.warning('report %s (%s) failed on source %s: %s', definition.name,
                           definition.path or 'python', exc.source, exc.message)
            return error_response(422, 'report_failed', 'report %s failed on source %s: %s'
                                  % (definition.name, exc.source, exc.message), 'report')
        if isinstance(exc, UnknownSource):
            return error_response(422, 'unknown_source', 'report %s reads source %r, which '
                                  'is not configured' % (definition.name, str(exc.args[0])),
                                  'report')
        logger.warning('source %s unavailable: %s', exc.source, exc.message)
        res = error_response(503, 'source_unavailable', 'source %s is not answering; try again '
                             'shortly' % exc.source)
        res.set_header('Retry-After', '5')
        return res

    @app.post('/api/runs')
    def create_run():
        body = read_json_body(settings.max_body_bytes)
        unknown = set(body) - {'report', 'params', 'to'} - set(OUTPUT_OPTIONS)
        if unknown:
            field = sorted(unknown)[0]
            raise ApiError(400, 'unknown_field', 'unknown field; expected report, params, to, '
                           'escape_formulas, bom', field)
        options = {key: flag(body[key], key) for key in OUTPUT_OPTIONS if key in body}
        if 'params' in body and not isinstance(body['params'], dict):
            raise InputError('params', 'must be an object of parameter values')
        run = runs.create_run(registry, settings, body.get('report'), body.get('params'),
                              body.get('to'), trigger='web', **options)
        return enqueue(run)

    def enqueue(run):
        try:
            jobs.enqueue_run(run)
        except QueueUnavailable as exc:
            logger.warning('run %d not queued: %s', run.id, exc)
            queue_log.down(exc.__cause__ or exc)
            return error_response(503, 'queue_unavailable',
                                  'the job queue is not answering; run %d was recorded as '
                                  'failed, nothing will be sent. Try again shortly.' % run.id)
        url = '/api/runs/%d' % run.id
        return json_response(202, {'id': run.id, 'status': 'queued', 'url': url},
                             headers={'Location': url})

    @app.get('/api/runs/<run_id:int>')
    def get_run(run_id):
        run = find_run(run_id)
        if run is None:
            raise ApiError(404, 'not_found', 'no run %d' % run_id, 'id')
        return json_response(200, runs.run_as_dict(run))

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
            if status not in RUN_STATUSES:
                raise InputError('status', 'must be one of %s' % ', '.join(RUN_STATUSES))
            query = query.where(Run.status == status)
        if not WHOLE_NUMBER.match(limit) or not 1 <= int(limit) <= 500:
            raise InputError('limit', 'must be a whole number from 1 to 500')
        return json_response(200, {'runs': runs.runs_as_dicts(query.limit(int(limit)))})

    @app.get('/api/runs/<run_id:int>/file')
    def run_file(run_id):
        run = find_run(run_id)
        if run is None:
            raise ApiError(404, 'not_found', 'no run %d' % run_id, 'id')
        if not runs.file_ready(run):
            if run.status in ('delivered', 'failed') and run.file_name and not run.file_key:
                raise ApiError(410, 'gone', 'run %d\'s file was removed after %g days'
                               % (run_id, settings.retention_days))
            if run.status in ('delivered', 'failed', 'skipped'):
                raise ApiError(404, 'not_found', 'run %d is %s and has no file'
                               % (run_id, run.status))
            raise ApiError(409, 'not_ready', 'run %d is %s; it has no file yet'
                           % (run_id, run.status))
        return send_stored_file(run)

    def send_stored_file(run):
        held = slots.take()
        try:
            chunks = jobs.store.open_chunks(run.file_key)
        except FileNotFoundError:
            held.close()
            raise ApiError(404, 'not_found', 'the file is no longer kept')
        content_type = 'application/zip' if run.file_name.endswith('.zip') \
            else 'text/csv; charset=utf-8'
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
            raise ApiError(403, 'forbidden', 'this link is not valid or has expired')
        return send_stored_file(run)

    def find_schedule(name):
        schedule = Schedule.get_or_none(Schedule.name == name)
        if schedule is None:
            raise ApiError(404, 'not_found', 'no schedule named %r' % name, 'name')
        return schedule

    def schedule_response(status, schedule, headers=None):
        return json_response(status, schedules.schedule_as_dict(schedule, utcnow()), headers)

    @app.get('/api/schedules')
    def list_schedules():
        now = utcnow()
        return json_response(200, {'schedules': [
            schedules.schedule_as_dict(s, now)
            for s in schedules.with_last_runs(Schedule.select().order_by(Schedule.name))]})

    @app.post('/api/schedules')
    def create_schedule():
        body = read_json_body(settings.max_body_bytes)
        schedule = schedules.create_schedule(registry, settings, body, utcnow())
        url = '/api/schedules/%s' % schedule.name
        return schedule_response(201, schedule, {'Location': url})

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
                                       schedule.recipients, trigger='web',
                                       schedule=schedule.name))

    web.install_pages(app, settings, jobs, registry)
    return app


def _parse_args(argv):
    parser = argparse.ArgumentParser(description='Nightshift web server')
    parser.add_argument('--host', help='address to bind (default from settings)')
    parser.add_argument('--port', type=int, help='port (default from settings / PORT)')
    parser.add_argument('--worker', action='store_true',
                        help='also run a Huey consumer in this process')
    parser.add_argument('--config', help='config file (default config.ini or NIGHTSHIFT_CONFIG)')
    return parser.parse_args(argv)


def is_loopback(host):
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


def check_exposure(host, settings):
    """Like Redis's protected mode: no token, no listening beyond loopback."""
    if not settings.tokens and not is_loopback(host):
        raise SettingsError(
            'refusing to listen on %s without an API token: anyone who can reach it could '
            'read your data and send mail through it. Set NIGHTSHIFT_API_TOKEN (e.g. '
            'export NIGHTSHIFT_API_TOKEN=$(python -c "import secrets; '
            'print(secrets.token_urlsafe())")), or listen on 127.0.0.1.' % host)


BODY_MARGIN = 64 * 1024


def server_options(settings, host, port):
    """waitress's options: what main() serves with, and the tests too."""
    # A streamed report can be written faster than the client reads it;
    # waitress then buffers up to 16 MB a connection by default. 2 MB keeps
    # the web server's memory flat whatever the report's size.
    #
    # Bodies: waitress would read (and spool to disk) up to 1 GiB before the
    # app could say 401 or 413. Ours are small JSON, so it refuses anything
    # past max_body_bytes (plus room for the app's own, clearer 413) from the
    # Content-Length, or as soon as a chunked body passes it.
    #
    # Connections: reading is asynchronous, so a slow client costs a socket,
    # not a thread; poll() is not limited to 1024 descriptors as select() is,
    # and idle ones are dropped after a minute.
    return dict(host=host, port=port, threads=settings.web_threads,
                outbuf_high_watermark=2 * 1024 * 1024,
                max_request_body_size=settings.max_body_bytes + BODY_MARGIN,
                connection_limit=settings.web_connections, asyncore_use_poll=True,
                channel_timeout=60, cleanup_interval=10)


def main(argv=None):
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    # The command line outranks the environment: given as environment, it
    # also moves what follows the port (the default public_url).
    environ = dict(os.environ)
    if args.host:
        environ['NIGHTSHIFT_HOST'] = args.host
    if args.port is not None:
        environ['PORT'] = str(args.port)
    try:
        settings = load_settings(args.config, environ=environ)
    except SettingsError as exc:
        sys.exit('nightshift: bad settings: %s' % exc)
    host, port = settings.host, settings.port
    try:
        check_exposure(host, settings)
    except SettingsError as exc:
        sys.exit('nightshift: %s' % exc)
    install_log_redaction(settings)
    logger.info('settings: %s', settings.describe())

    from waitress.server import create_server

    try:
        jobs = Jobs(settings)
    except SettingsError as exc:
        sys.exit('nightshift: bad settings: %s' % exc)
    try:
        bind_database(settings.database_url, auto=settings.auto_migrate)
    except SchemaBehind as exc:
        sys.exit('nightshift: %s' % exc)
    app = create_app(settings, jobs)
    try:
        server = create_server(app, **server_options(settings, host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sys.exit('nightshift: port %d is in use on %s; stop what is listening there or '
                 'give another with --port or PORT' % (port, host))
    if not args.worker:
        server.print_listen('Serving on http://{}:{}')
        server.run()
        return
    web = threading.Thread(target=server.run, name='waitress', daemon=True)
    web.start()
    logger.info('serving on http://%s:%d with %d consumer threads', host, port,
                settings.workers)
    consumer = jobs.huey.create_consumer(workers=settings.workers, worker_type='thread')
    try:
        consumer.run()  # main thread: SIGINT stops it gracefully
    finally:
        server.close()


if __name__ == '__main__':
    main()
