"""Nightshift's own schema, in explicit, numbered steps.

The state database may be one the team already uses for other things, so a
step only ever creates or changes tables named nightshift_*; every other
table is read at most (to carry over what an earlier release kept), never
created, altered or written. `nightshift_schema` records each step applied,
and each step is logged as it runs.

    python scripts/migrate.py            # say where the schema is
    python scripts/migrate.py --apply    # apply what is missing

Web and worker apply missing steps at start (one process at a time, under a
lock) unless `auto_migrate = false`, in which case they refuse to start on a
schema that is behind and say which command brings it up to date.
"""
import datetime
import logging

from typing import List, Set

from peewee import Database, MySQLDatabase, PostgresqlDatabase, SqliteDatabase

from models import quote_name

logger = logging.getLogger('nightshift.migrations')

SCHEMA_TABLE = 'nightshift_schema'


class SchemaBehind(Exception):
    """The database's schema is older than this release and may not be
    changed without being told to."""


def _models():
    from models import ALL_MODELS
    return ALL_MODELS


def create_tables(database):
    database.create_tables(_models(), safe=True)


# The tables a release before the nightshift_ prefix kept, by the columns that
# make them recognisably its own. A table of the same name with any other
# column is the team's own and is left alone.
LEGACY = (
    ('run', 'Run', {'id', 'report', 'params', 'recipients', 'status', 'attempts', 'trigger',
                    'created_at'}),
    ('delivery', 'Delivery', {'id', 'run_id', 'address', 'status'}),
    ('schedule', 'Schedule', {'id', 'name', 'report', 'cron', 'timezone', 'checked_through'}),
    ('reportfilechunk', 'ReportFileChunk', {'key', 'seq', 'data'}),
    ('appsecret', 'AppSecret', {'name', 'value'}),
)


def carry_over_legacy(database):
    """Copy the run history, deliveries, schedules, kept files and link
    secret of a release that named its tables run, delivery, ... into the
    nightshift_* tables. The old tables are left as they were."""
    import models
    carried = []
    skipped_runs = False
    for table, model_name, signature in LEGACY:
        model = getattr(models, model_name)
        if not database.table_exists(table):
            continue
        present = {c.name for c in database.get_columns(table)}
        ours = {f.column_name for f in model._meta.sorted_fields}
        if not signature <= present or not present <= ours:
            logger.warning('schema: table %r is not one Nightshift made (columns %s); left '
                           'alone', table, ', '.join(sorted(present - ours) or present))
            skipped_runs |= table == 'run'
            continue
        if table == 'delivery' and skipped_runs:
            continue
        if model.select().exists():
            continue  # carried over already
        count = _copy_rows(database, table, model, present)
        carried.append('%s: %d' % (table, count))
    if carried:
        logger.warning('schema: carried over from the previous release (%s); the old tables '
                       'are left as they were and can be dropped once you are satisfied',
                       ', '.join(carried))


def _copy_rows(database, table, model, present):
    fields = model._meta.sorted_fields
    columns, values, params = [], [], []
    for field in fields:
        columns.append(quote_name(field.column_name, database))
        if field.column_name in present:
            values.append(quote_name(field.column_name, database))
        else:
            default = field.default() if callable(field.default) else field.default
            values.append(database.param)
            params.append(field.db_value(default))
    database.execute_sql('INSERT INTO %s (%s) SELECT %s FROM %s' % (
        quote_name(model._meta.table_name, database), ', '.join(columns), ', '.join(values),
        quote_name(table, database)), params)
    if isinstance(database, PostgresqlDatabase) and model._meta.primary_key.name == 'id':
        # Ids were copied: the sequence goes on after the last one.
        database.execute_sql(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
            "COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)".format(
                quote_name(model._meta.table_name, database)), (model._meta.table_name,))
    return model.select().count()


def add_columns(model_name, *field_names):
    """A step that adds fields of a Nightshift model to its table. A database
    made after the field was declared already has the column (step 1 creates
    tables from today's models), so a column that exists is left as it is."""
    def step(database):
        import models
        from playhouse.migrate import SchemaMigrator, migrate as run_migration
        model = getattr(models, model_name)
        table = model._meta.table_name
        present = {c.name for c in database.get_columns(table)}
        migrator = SchemaMigrator.from_database(database)
        for name in field_names:
            field = model._meta.fields[name]
            if field.column_name not in present:
                run_migration(migrator.add_column(table, field.column_name, field))
    step.__name__ = 'add_columns_%s' % model_name.lower()
    return step


def create_new_tables(*model_names):
    """A step that creates tables for models added after step 1 (a database
    made since already has them)."""
    def step(database):
        import models
        database.create_tables([getattr(models, name) for name in model_names], safe=True)
    step.__name__ = 'create_%s' % '_'.join(n.lower() for n in model_names)
    return step


def add_index(model_name, *field_names):
    """A step that indexes fields of a Nightshift model's table, unless an
    index on exactly those columns exists."""
    def step(database):
        import models
        from playhouse.migrate import SchemaMigrator, migrate as run_migration
        model = getattr(models, model_name)
        table = model._meta.table_name
        columns = [model._meta.fields[name].column_name for name in field_names]
        if any(list(index.columns) == columns for index in database.get_indexes(table)):
            return
        run_migration(SchemaMigrator.from_database(database).add_index(table, columns))
    step.__name__ = 'add_index_%s' % model_name.lower()
    return step


def steps(*parts):
    """One step made of several builders' steps, in order."""
    def step(database):
        for part in parts:
            part(database)
    step.__name__ = '_'.join(part.__name__ for part in parts)
    return step


def _judge_history(database):
    """Slots that were over before alarms came are not judged now: an upgrade
    must not announce every missed or late slot of the history."""
    database.execute_sql(
        "UPDATE %s SET late = %s WHERE slot_at IS NOT NULL AND late IS NULL AND status IN "
        "('delivered', 'failed', 'skipped', 'cancelled')"
        % (quote_name('nightshift_run', database), database.param), (False,))


def _message_columns(database):
    add_columns('Run', 'subject', 'body', 'attachment_name', 'send_rule',
                'message_token')(database)
    add_columns('Schedule', 'subject', 'body', 'attachment_name', 'send_rule')(database)


# (version, what it does, the step). Append only: a released step never changes.
MIGRATIONS = (
    (1, "create Nightshift's tables (nightshift_*)", create_tables),
    (2, 'carry over the run history, schedules and files of the previous release',
     carry_over_legacy),
    (3, 'runs record the relative dates asked for and their timezone',
     add_columns('Run', 'asked_params', 'params_timezone')),
    (4, 'runs and schedules choose their file format (csv, csv.gz, xlsx)',
     steps(add_columns('Run', 'format'), add_columns('Schedule', 'format'))),
    (5, 'message templates, send rule and Message-ID token of runs and schedules',
     _message_columns),
    (6, 'bursting and test sends: split column, split report, per-recipient files',
     steps(add_columns('Run', 'split_by', 'split_report', 'test_slot_at'),
           add_columns('Delivery', 'part', 'rows', 'file_name', 'file_key', 'file_bytes'),
           add_columns('Schedule', 'split_by'))),
    (7, 'add nightshift_consumer: consumers register and beat there',
     create_new_tables('Consumer')),
    (8, 'runs: rerun_of and requested_by; an index on finished_at for history retention',
     steps(add_columns('Run', 'rerun_of', 'requested_by'), add_index('Run', 'finished_at'))),
    (9, 'late slots and notifications: run.late (slots already over count as judged), '
        'schedule.late_after and webhook_url, the notice outbox and the notification log',
     steps(add_columns('Run', 'late'), add_index('Run', 'late', 'slot_at'),
           add_columns('Schedule', 'late_after', 'webhook_url'),
           create_new_tables('Notice', 'Notification'), _judge_history)),
    (10, 'runs served by another run of the same report and parameters (batch_of)',
     steps(add_columns('Run', 'batch_of'), add_index('Run', 'batch_of'))),
)
LATEST = max(version for version, _, _ in MIGRATIONS)


def _ensure_schema_table(database):
    database.execute_sql(
        'CREATE TABLE IF NOT EXISTS %s (version INTEGER NOT NULL PRIMARY KEY, '
        'name VARCHAR(255) NOT NULL, applied_at VARCHAR(32) NOT NULL)'
        % quote_name(SCHEMA_TABLE, database))


def applied_versions(database: Database) -> Set[int]:
    if not database.table_exists(SCHEMA_TABLE):
        return set()
    return {row[0] for row in database.execute_sql(
        'SELECT version FROM %s' % quote_name(SCHEMA_TABLE, database))}


def pending(database: Database) -> List[tuple]:
    done = applied_versions(database)
    return [m for m in MIGRATIONS if m[0] not in done]


def migrate(database: Database, auto: bool = True) -> List[int]:
    """Apply the steps this database has not had, each logged, one process
    at a time. With auto=False a database that has Nightshift tables but is
    behind raises SchemaBehind; a database with none of them is set up."""
    todo = pending(database)
    if not todo:
        return []
    fresh = not applied_versions(database) and not any(
        database.table_exists(m._meta.table_name) for m in _models())
    if not auto and not fresh:
        raise SchemaBehind(
            'the database schema is at version %d, this release needs %d (%s). Back it up, '
            'then run: python scripts/migrate.py --apply'
            % (max(applied_versions(database) or {0}), LATEST,
               '; '.join('%d: %s' % (v, name) for v, name, _ in todo)))
    with _lock(database):
        _ensure_schema_table(database)
        applied = []
        for version, name, step in todo:
            with _transaction(database):
                if version in applied_versions(database):
                    continue  # another process applied it meanwhile
                logger.warning('schema: applying step %d: %s', version, name)
                step(database)
                database.execute_sql(
                    'INSERT INTO %s (version, name, applied_at) VALUES (%s, %s, %s)'
                    % (quote_name(SCHEMA_TABLE, database), database.param, database.param,
                       database.param),
                    (version, name, datetime.datetime.now(datetime.timezone.utc)
                     .strftime('%Y-%m-%dT%H:%M:%SZ')))
            applied.append(version)
        if applied:
            logger.warning('schema: now at version %d', LATEST)
        return applied


def _transaction(database):
    if isinstance(database, SqliteDatabase):
        # Taken before reading: two processes cannot both see a step missing.
        return database.atomic(lock_type='IMMEDIATE')
    return database.atomic()


class _lock:
    """Two processes starting together take turns at migrating."""

    def __init__(self, database):
        self.database = database

    def __enter__(self):
        db = self.database
        if isinstance(db, PostgresqlDatabase):
            db.execute_sql('SELECT pg_advisory_lock(%s)', (0x6e73686d69677261,))
        elif isinstance(db, MySQLDatabase):
            db.execute_sql("SELECT GET_LOCK('nightshift_migrate', 120)")
        return self

    def __exit__(self, *exc):
        db = self.database
        if isinstance(db, PostgresqlDatabase):
            db.execute_sql('SELECT pg_advisory_unlock(%s)', (0x6e73686d69677261,))
        elif isinstance(db, MySQLDatabase):
            db.execute_sql("SELECT RELEASE_LOCK('nightshift_migrate')")
