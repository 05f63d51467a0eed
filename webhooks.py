"""Webhooks: which URLs may be posted to, the signature, and one POST.

A POST carries a JSON body and, when `webhook_secret` is set, two headers:

    X-Nightshift-Timestamp: 1764370800
    X-Nightshift-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body,
compares in constant time and refuses a timestamp more than a few minutes
off (`verify` does all three), so a captured request cannot be replayed
later. `X-Nightshift-Delivery` is the notification's id: the same on every
try, for a receiver to drop a second copy (a consumer that dies after the
receiver answered sends it again: at least once).

Server-side request forgery: a schedule's webhook can be set by anyone with
an API token, so unless `webhook_private` is on, such a URL may not name, or
resolve to, a loopback, private, link-local (cloud metadata) or otherwise
non-public address; it is checked when given and again, resolved, before
each POST. Redirects are not followed and the response body is never read
into the log, so the POST cannot be turned into a way to read internal
pages. The global `webhook_url` is the operator's own setting and may point
anywhere (an internal chat server, say).
"""
import hashlib
import hmac
import ipaddress
import socket
import time
from typing import NamedTuple, Optional
from urllib.parse import urlsplit

import requests

TIMESTAMP_HEADER = 'X-Nightshift-Timestamp'
SIGNATURE_HEADER = 'X-Nightshift-Signature'
DELIVERY_HEADER = 'X-Nightshift-Delivery'
EVENT_HEADER = 'X-Nightshift-Event'
MAX_URL_LENGTH = 2000
# How far a receiver lets the timestamp be from its own clock.
TOLERANCE = 300


def check_url(url, allow_private=False):
    """The URL if it may be posted to, else ValueError saying why (the
    message never repeats the URL's path: it may hold a credential)."""
    if not isinstance(url, str):
        raise ValueError('must be a URL string')
    if len(url) > MAX_URL_LENGTH:
        raise ValueError('is longer than %d characters' % MAX_URL_LENGTH)
    if any(c.isspace() or ord(c) < 32 for c in url) or not url.isascii():
        raise ValueError('must be a plain ASCII URL without spaces or line breaks')
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError('is not a URL')
    if parts.scheme not in ('http', 'https'):
        raise ValueError('must start with http:// or https://')
    if not parts.hostname:
        raise ValueError('names no host')
    if parts.username or parts.password:
        raise ValueError('must not carry a user or password before the host')
    if not allow_private and not _may_be_public(parts.hostname):
        raise ValueError('%s is not a public address; webhooks of schedules go to public '
                         'hosts unless webhook_private is on' % parts.hostname)
    return url


def _literal(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_public(address):
    ip = address if not isinstance(address, str) else ipaddress.ip_address(address)
    mapped = getattr(ip, 'ipv4_mapped', None)
    if mapped is not None:
        ip = mapped
    return ip.is_global and not ip.is_multicast


def _may_be_public(host):
    """What can be told without DNS: an address literal must be public, and
    names that are local by definition are not."""
    host = host.lower().rstrip('.')
    literal = _literal(host)
    if literal is not None:
        return is_public(literal)
    if host == 'localhost' or host.endswith(('.localhost', '.local', '.internal')):
        return False
    return '.' in host


def check_resolved(url, resolve=socket.getaddrinfo):
    """ValueError unless every address the URL's host has now is public."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    try:
        found = resolve(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # the POST itself will say it cannot connect
    for info in found:
        address = info[4][0].split('%', 1)[0]
        if not is_public(address):
            raise ValueError('%s resolves to %s, not a public address' % (parts.hostname,
                                                                          address))


def sign(secret, timestamp, body):
    """The signature header's value for `body` (bytes) sent at `timestamp`."""
    message = str(int(timestamp)).encode() + b'.' + body
    return 'sha256=' + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret, timestamp, body, signature, now=None, tolerance=TOLERANCE):
    """What a receiver checks: the signature matches and the timestamp is recent."""
    now = time.time() if now is None else now
    try:
        stamp = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature or '')


class Reply(NamedTuple):
    """How one POST went: `status` (HTTP) when there was an answer; `error`
    is None on a 2xx; `final` says trying again will not help."""
    status: Optional[int]
    error: Optional[str]
    final: bool = False


def post(url, body, *, secret, timeout, delivery_id, event, allow_private, now=None):
    """POST `body` (bytes) once. Never raises for what the network or the
    receiver did: the Reply says it."""
    if not allow_private:
        try:
            check_url(url)
            check_resolved(url)
        except ValueError as exc:
            return Reply(None, 'refused: %s' % exc, final=True)
    stamp = int(time.time() if now is None else now)
    headers = {'Content-Type': 'application/json', 'User-Agent': 'nightshift-webhook',
               DELIVERY_HEADER: str(delivery_id), EVENT_HEADER: event,
               TIMESTAMP_HEADER: str(stamp)}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
    try:
        with requests.post(url, data=body, headers=headers, timeout=timeout,
                           allow_redirects=False, stream=True) as response:
            status = response.status_code
    except requests.Timeout:
        return Reply(None, 'no answer within %gs' % timeout)
    except requests.ConnectionError as exc:
        # Its text names the URL (and so its credential): only the kind is told.
        return Reply(None, 'could not connect (%s)' % _root(exc))
    except requests.RequestException as exc:
        return Reply(None, 'request failed (%s)' % type(exc).__name__, final=True)
    if 200 <= status < 300:
        return Reply(status, None)
    # Too many requests, a timeout or a server error may pass; any other
    # answer (404, 410 for a removed Slack hook, a redirect) will not.
    final = not (status in (408, 429) or status >= 500)
    return Reply(status, 'HTTP %d' % status, final=final)


def _root(exc):
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    return type(seen).__name__
