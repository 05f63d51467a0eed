"""Log lines a machine can read: `log_format = json` gives one JSON object
per line (time, level, logger, message; `run_id` and `report` when the line
is about a run), web and consumer alike. Secrets are scrubbed in both
formats (settings.RedactSecrets, and again here for every JSON field).

A line is about a run when its call says so (`extra=run_fields(...)`), or
when it is logged while a worker executes the run (`about_run`): then the
mail, file and retry lines of that run carry its id without each call
having to pass it.
"""
import contextlib
import contextvars
import datetime
import json
import logging

from settings import RedactSecrets

RUN_FIELDS = ('run_id', 'report', 'schedule')
_current = contextvars.ContextVar('nightshift_run', default=None)


def run_fields(run_id, report=None, **more):
    """`extra=` for a log call about a run."""
    fields = dict(run_id=run_id, report=report, **more)
    return {key: value for key, value in fields.items() if value is not None}


@contextlib.contextmanager
def about_run(run_id, report=None):
    """Lines logged in this context (this thread or task) are about the run."""
    token = _current.set({'run_id': run_id, 'report': report})
    try:
        yield
    finally:
        _current.reset(token)


def note(**fields):
    """Add what was learnt about the current run (its report, once read)."""
    current = _current.get()
    if current is not None:
        current.update({key: value for key, value in fields.items() if value is not None})


class RunContext(logging.Filter):
    """Puts the current run's fields on records whose call did not."""

    def filter(self, record):
        current = _current.get()
        if current:
            for key, value in current.items():
                if value is not None and getattr(record, key, None) is None:
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def format(self, record):
        redact = self.settings.redact
        entry = {
            'time': datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec='milliseconds').replace('+00:00', 'Z'),
            'level': record.levelname,
            'logger': record.name,
            'message': redact(record.getMessage()),
        }
        for key in RUN_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value if isinstance(value, int) else redact(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry['exception'] = redact(record.exc_text)
        if record.stack_info:
            entry['stack'] = redact(self.formatStack(record.stack_info))
        entry['process'] = record.process
        entry['thread'] = record.threadName
        # ensure_ascii: a line break inside a value can never split the line.
        return json.dumps(entry, ensure_ascii=True, default=str)


def _handlers():
    handlers = []
    for name in (None, 'huey'):
        for handler in logging.getLogger(name).handlers:
            if handler not in handlers:
                handlers.append(handler)
    return handlers


def install_logging(settings):
    """Set the log format on the handlers there are (the root logger's under
    server.py, huey's under huey_consumer), with redaction and the run
    fields. Under huey_consumer the root logger has no handler, so
    Nightshift's own lines go to huey's (its stream or -l file) at its level."""
    root, huey_logger = logging.getLogger(), logging.getLogger('huey')
    if not root.handlers and huey_logger.handlers:
        ours = logging.getLogger('nightshift')
        for handler in huey_logger.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        ours.setLevel(huey_logger.level or logging.INFO)
        ours.propagate = False
    for handler in _handlers():
        if settings.log_format == 'json' and not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter(settings))
        if not any(isinstance(f, RunContext) for f in handler.filters):
            handler.addFilter(RunContext())
        if settings.secrets() and not any(isinstance(f, RedactSecrets)
                                          for f in handler.filters):
            handler.addFilter(RedactSecrets(settings))
