"""The words a run's record is written in, each defined once.

StrEnums: a member is the plain string it stands for (in the database, in
JSON, in comparisons), so a typo is a NameError here rather than a status no
code looks for. The OpenAPI document and the page's script take their lists
from here.
"""
from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = 'queued'
    RUNNING = 'running'
    DELIVERED = 'delivered'
    FAILED = 'failed'
    SKIPPED = 'skipped'
    # Stopped by someone before anything was sent (control.cancel_run).
    CANCELLED = 'cancelled'


class DeliveryStatus(StrEnum):
    PENDING = 'pending'
    # Handed to the SMTP server, reply not yet recorded: a retry sends again.
    SENDING = 'sending'
    SENT = 'sent'
    REFUSED = 'refused'
    # Not sent because of the run's send rule (no rows): the run is skipped.
    SKIPPED = 'skipped'


class SendRule(StrEnum):
    """When a run's file is mailed."""
    ALWAYS = 'always'
    ROWS = 'rows'  # only when the report has rows; else the run is skipped
    NOTICE = 'notice'  # with no rows, a short "no data for ..." notice instead of a file


class Trigger(StrEnum):
    WEB = 'web'
    SCHEDULE = 'schedule'
    CLI = 'cli'
    # A CSV streamed to a browser or curl (/reports/<name>.csv), recorded as it ends.
    DOWNLOAD = 'download'
    # A past slot of a schedule, run on request (control.backfill).
    BACKFILL = 'backfill'
    # "Send a test to me": a schedule's next slot, to one address, not the slot's run.
    TEST = 'test'


class Ending(StrEnum):
    """How one execution of a run ended (runs.Outcome.status)."""
    DELIVERED = 'delivered'
    FAILED = 'failed'  # for good
    RETRY = 'retry'  # after a delay
    BUSY = 'busy'  # the report has no free turn; wait for one
    LOST = 'lost'  # taken back: another attempt owns the run
    IDLE = 'idle'  # nothing to do: the run is not queued
    CANCELLED = 'cancelled'  # someone cancelled it while this attempt ran


# A worker took these runs as far as they go: they may keep a file.
TERMINAL = (RunStatus.DELIVERED, RunStatus.FAILED)
# Runs that never change again: the terminal ones, the slots a schedule
# skipped and the runs someone cancelled.
FINAL = TERMINAL + (RunStatus.SKIPPED, RunStatus.CANCELLED)
# Recipients still owed the file.
UNSENT = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)


class Event(StrEnum):
    """What is announced about a run (alarms.py): a webhook's `event` field."""
    DELIVERED = 'run.delivered'
    FAILED = 'run.failed'
    LATE = 'run.late'
    SKIPPED = 'run.skipped'


class SendStatus(StrEnum):
    """A notification's state in the notification log."""
    PENDING = 'pending'  # waiting for its (next) try
    SENT = 'sent'
    FAILED = 'failed'  # out of tries


class FileFormat(StrEnum):
    """What a run's file or a download is written as (formats.py)."""
    CSV = 'csv'
    CSV_GZ = 'csv.gz'
    XLSX = 'xlsx'
