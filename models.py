"""Peewee models. The database is declared empty and bound from settings
later (`bind_database`), so importing this module touches nothing."""
import datetime
import json
import os
import secrets
import threading

from peewee import (BigIntegerField, BlobField, BooleanField, CharField,
                    CompositeKey, DatabaseProxy, DateTimeField, FloatField, ForeignKeyField,
                    IntegerField, IntegrityError, InterfaceError, Model, MySQLDatabase,
                    OperationalError, PostgresqlDatabase, TextField)
from playhouse.db_url import connect, parse
from playhouse.shortcuts import ReconnectMixin

from vocab import DeliveryStatus, RunStatus, SendRule, Trigger

db = DatabaseProxy()
_bind_lock = threading.Lock()

SQLITE_PRAGMAS = {
    # Web and consumer are separate processes writing one file.
    'journal_mode': 'wal',
    'busy_timeout': 10000,
    'synchronous': 'normal',
    'foreign_keys': 1,
}


def new_message_token():
    """The random part of a run's Message-ID, made with the run: a database
    reset that gives out run id 1 again still makes a new Message-ID."""
    return secrets.token_hex(6)


def utcnow():
    """Naive UTC; every stored time is UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def iso_z(value):
    """A naive UTC datetime as the API writes it (ISO 8601 with Z), or None."""
    return value.isoformat() + 'Z' if value is not None else None


class JSONField(TextField):
    """JSON as text: the same on SQLite and PostgreSQL."""
    def db_value(self, value):
        return None if value is None else json.dumps(value, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(Model):
    class Meta:
        database = db


class Run(BaseModel):
    """One requested report, whatever asked for it: the run history."""
    report = CharField()
    params = JSONField(default=dict)
    recipients = JSONField(default=list)
    status = CharField(default=RunStatus.QUEUED)  # vocab.RunStatus
    rows = BigIntegerField(default=0)
    bytes = BigIntegerField(default=0)
    attempts = IntegerField(default=0)
    error = TextField(null=True)
    trigger = CharField(default=Trigger.WEB)
    # Filled for scheduled runs; unique together so a slot runs once.
    schedule = CharField(null=True)
    slot_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)
    # When it was last handed to the queue, and when Huey will retry it: a
    # queued run past both has lost its task and the reaper queues it again.
    queued_at = DateTimeField(default=utcnow)
    next_attempt_at = DateTimeField(null=True)
    started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)
    heartbeat_at = DateTimeField(null=True)
    file_name = CharField(null=True)
    # The finished file in the file store; None once retention removed it.
    file_key = CharField(null=True)
    file_bytes = BigIntegerField(null=True)
    # How the file went out: attached csv, attached zip, or a download link.
    sent_as = CharField(null=True)
    escape_formulas = BooleanField(default=True)
    bom = BooleanField(default=True)
    # Cut at max_rows: the email says so.
    truncated = BooleanField(default=False)
    # The relative dates asked for ({name: 'yesterday'}; `params` holds what
    # they resolved to) and the timezone they were resolved in (reldates.py).
    asked_params = JSONField(null=True)
    params_timezone = CharField(null=True)
    # The run this one repeats (control.rerun); not a foreign key, so history
    # retention may remove the older run first.
    rerun_of = BigIntegerField(null=True)
    # Who asked, where known: a download's user or client address (history.who).
    requested_by = CharField(null=True)
    # Bursting (bursting.py): the column holding each row's recipient, and
    # what the split found (recipients, refused addresses and their rows).
    split_by = CharField(null=True)
    split_report = JSONField(null=True)
    # A test run (trigger test): the slot it stands in for. Not slot_at, so
    # it never takes the slot's place in the (schedule, slot_at) index.
    test_slot_at = DateTimeField(null=True)
    # The message (msgtemplates.py): templates, None for the default; when to send.
    subject = TextField(null=True)
    body = TextField(null=True)
    attachment_name = TextField(null=True)
    send_rule = CharField(default=SendRule.ALWAYS)  # vocab.SendRule
    message_token = CharField(null=True, default=new_message_token)
    # A slot's run, judged once its grace (late_after) is over: True when it
    # had not delivered by then (alarms.py). None: not judged, or no slot.
    late = BooleanField(null=True)
    # What the file is written as: vocab.FileFormat (formats.py).
    format = CharField(default='csv')
    # Served by another run's query and file (batches.py): that run's id.
    batch_of = BigIntegerField(null=True)

    class Meta:
        table_name = 'nightshift_run'
        indexes = (
            (('schedule', 'slot_at'), True),
            (('status', 'created_at'), False),
            (('report', 'created_at'), False),
            (('late', 'slot_at'), False),
        )


class Delivery(BaseModel):
    """Per-recipient outcome, so a retry goes only to who did not get it."""
    run = ForeignKeyField(Run, backref='deliveries', on_delete='CASCADE')
    address = CharField()
    status = CharField(default=DeliveryStatus.PENDING)  # vocab.DeliveryStatus
    error = TextField(null=True)
    sent_at = DateTimeField(null=True)
    # A recipient found in a split run's data gets a file of its own: its
    # rows only. Typed recipients (part False) get the run's whole file.
    part = BooleanField(default=False)
    rows = BigIntegerField(null=True)
    file_name = CharField(null=True)
    file_key = CharField(null=True)
    file_bytes = BigIntegerField(null=True)

    class Meta:
        table_name = 'nightshift_delivery'
        indexes = ((('run', 'address'), True),)


class Schedule(BaseModel):
    """A report sent on a cron schedule in its own timezone."""
    name = CharField(unique=True)
    report = CharField()
    params = JSONField(default=dict)
    recipients = JSONField(default=list)
    cron = CharField()
    timezone = CharField()
    enabled = BooleanField(default=True)
    # Bursting: each recipient found in this column gets only their rows.
    split_by = CharField(null=True)
    managed_by = CharField(default='api')  # 'api' or 'config' (read-only via the API)
    # Slots up to here are handled (run or skipped); the next tick looks after it.
    checked_through = DateTimeField()
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    # Its runs' message: templates (None for the default) and when to send.
    subject = TextField(null=True)
    body = TextField(null=True)
    attachment_name = TextField(null=True)
    send_rule = CharField(default=SendRule.ALWAYS)  # vocab.SendRule
    # Seconds after a slot before its run counts as late (None: the setting),
    # and where this schedule's runs are announced besides the global webhook.
    late_after = FloatField(null=True)
    webhook_url = TextField(null=True)
    # The file format of its runs: vocab.FileFormat (formats.py).
    format = CharField(default='csv')

    class Meta:
        table_name = 'nightshift_schedule'


class ReportFileChunk(BaseModel):
    """Report files kept in the database (the shared file store)."""
    key = CharField()
    seq = IntegerField()
    data = BlobField()

    class Meta:
        table_name = 'nightshift_file_chunk'
        primary_key = CompositeKey('key', 'seq')


class AppSecret(BaseModel):
    """Signing key for download links when NIGHTSHIFT_SECRET_KEY is not set:
    made once, shared by web and worker through the database."""
    name = CharField(primary_key=True)
    value = CharField()

    class Meta:
        table_name = 'nightshift_secret'

    @classmethod
    def value_of(cls, name, make):
        """The value kept under `name`, made with `make()` the first time;
        two processes making it at once agree on the one that was stored."""
        row = cls.get_or_none(cls.name == name)
        if row is None:
            try:
                with db.atomic():
                    row = cls.create(name=name, value=make())
            except IntegrityError:
                row = cls.get(cls.name == name)
        return row.value


class Consumer(BaseModel):
    """A consumer process that is, or was lately, alive: it registers at
    start and beats every `consumer_heartbeat` seconds (on the database's
    clock), so the web, on another machine, can tell who is working."""
    host = CharField()
    pid = IntegerField()
    started_at = DateTimeField()
    workers = IntegerField()
    worker_type = CharField()
    # Whether it enqueues periodic tasks, the minute tick among them
    # (`huey_consumer -n` does not).
    periodic = BooleanField()
    heartbeat_at = DateTimeField()
    # When the tick last ran in this process.
    last_tick_at = DateTimeField(null=True)

    class Meta:
        table_name = 'nightshift_consumer'


class Notice(BaseModel):
    """Something to announce (a run delivered, failed, late or skipped),
    waiting in this outbox until the tick groups it with the others into one
    message per channel (alarms.py). A copy of what it says, so it outlives
    its run."""
    event = CharField()  # vocab.Event
    run_id = BigIntegerField(null=True)
    report = CharField()
    schedule = CharField(null=True)
    slot_at = DateTimeField(null=True)
    detail = TextField(null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = 'nightshift_notice'


class Notification(BaseModel):
    """One grouped message to one target (the operator's address, or a
    webhook URL), with its tries: the notification log."""
    channel = CharField()  # 'email' or 'webhook'
    target = TextField()
    subject = TextField(null=True)
    body = TextField()  # the email's text, or the JSON payload as posted
    # An email's Message-ID when it is not the notification's own (a single
    # failure keeps its run's, as before grouping).
    message_id = TextField(null=True)
    events = IntegerField(default=0)
    status = CharField(default='pending')  # vocab.SendStatus
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(default=utcnow)
    response_status = IntegerField(null=True)
    error = TextField(null=True)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)

    class Meta:
        table_name = 'nightshift_notification'
        indexes = ((('status', 'next_attempt_at'), False),)


# Nightshift's own state. Every table is named nightshift_*, so the database
# can be one the team already uses: nothing else in it is touched.
ALL_MODELS = (Run, Delivery, Schedule, ReportFileChunk, AppSecret, Consumer, Notice,
              Notification)


class ReconnectingPostgresqlDatabase(ReconnectMixin, PostgresqlDatabase):
    """A thread whose connection the server closed (a restart, a failover,
    pg_terminate_backend) opens a new one at its next statement instead of
    failing on the dead one forever. Only outside a transaction: inside one,
    the error goes up and the work is retried whole."""
    reconnect_errors = (
        (OperationalError, 'terminating connection'),
        (OperationalError, 'the connection is closed'),
        (OperationalError, 'server closed the connection'),
        (OperationalError, 'connection is lost'),
        (OperationalError, 'consuming input failed'),
        (OperationalError, 'sending query failed'),
        (InterfaceError, 'connection already closed'),
        (InterfaceError, 'the connection is closed'),
    )


class ReconnectingMySQLDatabase(ReconnectMixin, MySQLDatabase):
    """The same for MySQL/MariaDB (server gone away, lost connection).
    Microsecond timestamps and blobs large enough for a 1 MB file chunk."""
    field_types = dict(MySQLDatabase.field_types, DATETIME='DATETIME(6)', BLOB='LONGBLOB')


STATE_SCHEMES = ('sqlite', 'postgres', 'postgresql', 'mysql', 'mariadb')


def open_database(url):
    """A Peewee database for a sqlite://, postgres:// or mysql:// URL."""
    scheme = url.split('://', 1)[0].split('+', 1)[0]
    if scheme == 'sqlite':
        database = connect(url, pragmas=SQLITE_PRAGMAS, timeout=10)
        if database.database != ':memory:':
            os.makedirs(os.path.dirname(os.path.abspath(database.database)), exist_ok=True)
        return database
    if scheme in ('postgres', 'postgresql'):
        return ReconnectingPostgresqlDatabase(**parse(url))
    if scheme in ('mysql', 'mariadb'):
        from pymysql.constants import CLIENT
        options = parse(url.replace('mariadb://', 'mysql://', 1))
        options.setdefault('charset', 'utf8mb4')
        # Every compare-and-set here reads the row count: it must count the
        # rows matched, not only those whose values changed (MySQL's default).
        options['client_flag'] = options.get('client_flag', 0) | CLIENT.FOUND_ROWS
        return ReconnectingMySQLDatabase(**options)
    return connect(url)


def quote_name(name, database=None):
    """A table or column name quoted for `database`'s SQL (default: the
    bound one), a quote character inside it doubled."""
    database = database or db.obj
    opening, closing = database.quote[0], database.quote[-1]
    return '%s%s%s' % (opening, name.replace(closing, closing * 2), closing)


def db_now(database=None):
    """The database's clock as naive UTC. Heartbeats and the reaper both use
    it, so a worker whose own clock is off cannot make a live run look dead
    (nor a dead one alive). SQLite lives on one machine: its clock is that
    machine's."""
    database = database or db.obj
    if isinstance(database, PostgresqlDatabase):
        return database.execute_sql(
            "SELECT clock_timestamp() AT TIME ZONE 'UTC'").fetchone()[0]
    if isinstance(database, MySQLDatabase):
        return database.execute_sql('SELECT UTC_TIMESTAMP(6)').fetchone()[0]
    text = database.execute_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").fetchone()[0]
    # YYYY-MM-DD HH:MM:SS.SSS; fromisoformat reads it at a tenth of strptime's cost.
    return datetime.datetime.fromisoformat(text)


def bind_database(url, create=True, auto=True):
    """Point the models at `url` (once per process) and, with `create`,
    bring Nightshift's own tables up to date (migrations.migrate: logged,
    versioned, never touching a table that is not Nightshift's)."""
    with _bind_lock:
        current = db.obj
        if current is None or getattr(current, '_nightshift_url', None) != url:
            if current is not None:
                current.close()
            database = open_database(url)
            database._nightshift_url = url
            db.initialize(database)
        if create:
            import migrations
            migrations.migrate(db.obj, auto=auto)
    return db.obj
