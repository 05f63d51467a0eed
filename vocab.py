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


class DeliveryStatus(StrEnum):
    PENDING = 'pending'
    # Handed to the SMTP server, reply not yet recorded: a retry sends again.
    SENDING = 'sending'
    SENT = 'sent'
    REFUSED = 'refused'


class Trigger(StrEnum):
    WEB = 'web'
    SCHEDULE = 'schedule'
    CLI = 'cli'


class Ending(StrEnum):
    """How one execution of a run ended (runs.Outcome.status)."""
    DELIVERED = 'delivered'
    FAILED = 'failed'  # for good
    RETRY = 'retry'  # after a delay
    BUSY = 'busy'  # the report has no free turn; wait for one
    LOST = 'lost'  # taken back: another attempt owns the run
    IDLE = 'idle'  # nothing to do: the run is not queued


# A worker took these runs as far as they go: they may keep a file.
TERMINAL = (RunStatus.DELIVERED, RunStatus.FAILED)
# Runs that never change again: the terminal ones and the slots a schedule skipped.
FINAL = TERMINAL + (RunStatus.SKIPPED,)
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
