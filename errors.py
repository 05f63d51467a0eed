"""Every expected failure, in one place.

An HTTP-facing error carries its own `status` and machine `code`, so the one
handler in guards.py turns any of them into the JSON error shape without
comparing strings. The others are the run life cycle's signals: what a worker
does next depends on which one it caught.
"""


class ApiError(Exception):
    """A request that cannot be answered as asked. `field` names the part of
    the request at fault, when there is one."""
    status = 400
    code = 'bad_request'
    # Seconds a client should wait before trying again (503s only).
    retry_after = None

    def __init__(self, message, field=None, code=None):
        super().__init__(message)
        self.message, self.field = message, field
        if code is not None:
            self.code = code

    def as_dict(self):
        payload = {'error': self.code, 'message': self.message}
        if self.field is not None:
            payload['field'] = self.field
        return payload


class InputError(ApiError):
    """A client sent something wrong; `field` names where."""
    code = 'invalid'

    def __init__(self, field, message, code='invalid'):
        super().__init__(message, field, code)

    def __str__(self):
        return '%s: %s' % (self.field, self.message)


class UnknownReportError(InputError):
    """The request names a report nobody defined: nothing there, so 404."""
    status = 404

    def __init__(self, name):
        super().__init__('report', 'no report named %r' % name, code='unknown_report')


class Unauthorized(ApiError):
    status = 401
    code = 'unauthorized'


class Forbidden(ApiError):
    status = 403
    code = 'forbidden'


class NotFound(ApiError):
    status = 404
    code = 'not_found'


class Conflict(ApiError):
    """The request clashes with what exists (a duplicate name, a schedule
    config.ini manages, a run whose file is not made yet)."""
    status = 409
    code = 'conflict'


class Gone(ApiError):
    status = 410
    code = 'gone'


class BodyTooLarge(ApiError):
    status = 413
    code = 'body_too_large'


class UnsupportedMediaType(ApiError):
    status = 415
    code = 'unsupported_media_type'


class ReportFailed(ApiError):
    """The report itself cannot work (its SQL fails, it reads a source nobody
    configured): trying again will not help until someone changes it."""
    status = 422
    code = 'report_failed'


class Unavailable(ApiError):
    """Something the answer needs is not answering; try again shortly."""
    status = 503
    code = 'unavailable'
    retry_after = 5


class DatabaseUnavailable(Unavailable):
    code = 'database_unavailable'


class SourceDown(Unavailable):
    """A report's source database does not answer."""
    code = 'source_unavailable'


class QueueUnavailable(Unavailable):
    """The queue could not take a task (e.g. Redis is down)."""
    code = 'queue_unavailable'


class Busy(Unavailable):
    code = 'busy'


# --- the run life cycle ---------------------------------------------------

class PermanentFailure(Exception):
    """Trying again cannot help; the run is failed with this reason."""


class LostOwnership(Exception):
    """This attempt was taken back (its worker was silent past stale_after)
    and another attempt owns the run now: this one must not publish a file,
    send mail or record anything about the run."""
