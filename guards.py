"""What stands before every route: the token, the browser's guards, header
bytes, and the one place expected failures become JSON errors.

Each is a Bottle plugin (or hook) that server.create_app installs.
"""
import base64
import binascii
import functools
import hmac
import json
import logging
import urllib.parse

from bottle import HTTPResponse, request, response

from errors import (ApiError, DatabaseUnavailable, Forbidden, InputError, Unauthorized,
                    UnsupportedMediaType)
from dbhealth import DB_ERRORS, DatabaseHealth
from models import db

logger = logging.getLogger('nightshift.server')


def json_response(status, payload, headers=None):
    return HTTPResponse(json.dumps(payload), status=status,
                        headers=dict({'Content-Type': 'application/json'}, **(headers or {})))


def error_response(exc):
    """The JSON error shape of an ApiError, with its status (and Retry-After)."""
    headers = {'Retry-After': str(exc.retry_after)} if exc.retry_after else None
    return json_response(exc.status, exc.as_dict(), headers)


def forget_connection():
    # A dead connection stays dead; drop it so the next request reconnects.
    try:
        db.close()
    except Exception:
        pass


class JsonErrors:
    """Bottle plugin: every expected failure as its JSON error. Installed
    first, so it also sees what the other plugins raise. A database outage
    is logged when it starts and when it ends (`health`), not per request."""
    name = 'json_errors'
    api = 2

    def __init__(self, health=None):
        self.health = health or DatabaseHealth()

    def apply(self, callback, route):
        @functools.wraps(callback)
        def wrapper(*args, **kwargs):
            try:
                result = callback(*args, **kwargs)
            except ApiError as exc:
                return error_response(exc)
            except DB_ERRORS as exc:
                self.health.down(exc)
                forget_connection()
                return error_response(DatabaseUnavailable(
                    'the database is not answering; try again shortly'))
            if self.health.since is not None:
                self._back()
            return result
        return wrapper

    def _back(self):
        # Only while an outage is on: the route that just answered may not
        # have needed the database, so ask it before saying it is back.
        try:
            db.execute_sql('SELECT 1').fetchone()
        except DB_ERRORS:
            forget_connection()
            return
        self.health.up()


def bottle_errors(res):
    """Every error Bottle raises itself (404, 405, 500) as JSON, no traceback."""
    response.content_type = 'application/json'
    codes = {404: 'not_found', 405: 'method_not_allowed', 413: 'body_too_large'}
    if res.status_code >= 500:
        return json.dumps({'error': 'internal_error',
                           'message': 'internal error; it has been logged'})
    return json.dumps({'error': codes.get(res.status_code, 'http_%d' % res.status_code),
                       'message': res.body if isinstance(res.body, str) else res.status_line})


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


CONTENT_POLICY = ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                  "base-uri 'none'; form-action 'self'")


def protective_headers():
    """after_request hook. The page's buttons send mail: no other site may
    frame it and steer a click. Scripts and styles come from our own files only."""
    response.set_header('Content-Security-Policy', CONTENT_POLICY)
    response.set_header('X-Frame-Options', 'DENY')
    response.set_header('X-Content-Type-Options', 'nosniff')
    response.set_header('Referrer-Policy', 'same-origin')


def bearer_given():
    """True when the request names a Bearer token: a header that a page on
    another site cannot make a browser send (Basic credentials it can)."""
    return request.get_header('Authorization', '').partition(' ')[0].lower() == 'bearer'


def is_json_request():
    return request.content_type.split(';', 1)[0].strip().lower() == 'application/json'


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
                res = error_response(Unauthorized(
                    'give an API token: "Authorization: Bearer <token>" or '
                    'HTTP Basic auth with the token as password'))
                res.set_header('WWW-Authenticate', 'Basic realm="Nightshift", charset="UTF-8"')
                return res
            return callback(*args, **kwargs)
        return wrapper


LOOPBACK_NAMES = ('localhost', '127.0.0.1', '[::1]', '::1')
UNSAFE_METHODS = ('POST', 'PUT', 'PATCH', 'DELETE')
DEFAULT_PORTS = {'http': 80, 'https': 443}


def _host_name(host):
    if host.startswith('['):
        return host.split(']')[0] + ']'
    return host.rsplit(':', 1)[0] if host.count(':') == 1 else host


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
            return Forbidden('this server answers to localhost only while no API token '
                             'is set', code='misdirected')
        if request.method not in UNSAFE_METHODS:
            return None
        site = request.get_header('Sec-Fetch-Site')
        if site is not None and site not in ('same-origin', 'none'):
            return Forbidden('a write from another site is refused', code='cross_site')
        origin = request.get_header('Origin')
        if origin is not None:
            given = origin_of(origin)  # None for "null" and the like
            if given is None or given not in (self.own_origin(host), self.public_origin):
                return Forbidden('a write from another origin is refused', code='cross_site')
        if not (is_json_request() or bearer_given()):
            # A form from another site may come without Origin (older
            # browsers, some redirects); it cannot come with this type.
            return UnsupportedMediaType('send writes with Content-Type: application/json',
                                        'Content-Type')
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
