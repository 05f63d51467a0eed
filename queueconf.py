"""How the Redis queue is connected to, and how a failed connection is told.

Hosted Redis with TLS (Heroku Redis among them) serves a certificate no CA
signed, and the platform's REDIS_URL carries no option saying so. The
`redis_ssl_cert_reqs` setting says whether a rediss:// certificate must
verify; the Procfile sets it to `none` for that platform, everywhere else
it is `required`.
"""
import logging
import ssl

logger = logging.getLogger('nightshift.queue')


def redis_options(settings):
    """Keyword arguments for RedisHuey. Huey takes a URL or connection
    options, not both, so the pool is built here from the URL and the TLS
    setting; an `ssl_cert_reqs` in the URL itself still wins."""
    import redis
    options = {}
    if settings.redis_url.startswith('rediss://'):
        options['ssl_cert_reqs'] = settings.redis_ssl_cert_reqs
    return {'connection_pool': redis.ConnectionPool.from_url(settings.redis_url, **options)}


def _causes(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def failure_reason(exc):
    """Why the queue could not be reached, short and without addresses
    (/healthz answers anyone): the TLS reason when there is one."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return 'certificate verify failed: %s' % cause.verify_message
        if isinstance(cause, ssl.SSLError):
            return 'TLS failed: %s' % (cause.reason or type(cause).__name__)
    return type(exc).__name__


class FailureLog:
    """Logs a queue failure once when it starts or its reason changes, not on
    every health check while it lasts."""

    def __init__(self, settings):
        self.settings = settings
        self.last = None

    def down(self, exc):
        reason = failure_reason(exc)
        if reason != self.last:
            self.last = reason
            logger.warning('queue down: %s (%s)', reason,
                           self.settings.redact('%s: %s' % (type(exc).__name__, exc)))
        return reason

    def up(self):
        if self.last is not None:
            logger.info('queue back up')
        self.last = None
