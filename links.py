"""Signed, expiring download links for report files.

The signature covers the run, its file and the expiry, so a link cannot be
stretched in time or pointed at another run's file.
"""
import datetime
import hashlib
import hmac
import re
import secrets
import time
from urllib.parse import urlencode


from models import AppSecret

_cache = {}
_EXPIRES = re.compile(r'[0-9]{1,12}\Z')
_SIGNATURE = re.compile(r'[0-9a-f]{64}\Z')


def signing_key(settings):
    """NIGHTSHIFT_SECRET_KEY, or a key made once and kept in the database so
    that web and workers on other machines agree on it."""
    if settings.secret_key:
        return settings.secret_key.encode()
    url = settings.database_url
    if url not in _cache:
        _cache[url] = AppSecret.value_of('links', lambda: secrets.token_urlsafe(32)).encode()
    return _cache[url]


def _signature(key, run_id, file_key, expires):
    message = ('%d\n%s\n%d' % (run_id, file_key, expires)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def download_url(settings, run, expires_at):
    expires = int(expires_at.replace(tzinfo=datetime.timezone.utc).timestamp())
    sig = _signature(signing_key(settings), run.id, run.file_key, expires)
    return '%s/files/%d?%s' % (settings.public_url.rstrip('/'), run.id,
                               urlencode({'expires': expires, 'sig': sig}))


def check(settings, run, expires, sig, now=None):
    """True when `sig` is this run's current file's signature and not expired."""
    # ASCII only: "²".isdigit() is true and int() refuses it; a signature
    # with other characters cannot be compared in constant time as text.
    if run is None or not run.file_key or not _EXPIRES.match(expires) \
            or not _SIGNATURE.match(sig):
        return False
    expected = _signature(signing_key(settings), run.id, run.file_key, int(expires))
    if not hmac.compare_digest(expected, sig):
        return False
    return int(expires) >= (time.time() if now is None else now)
