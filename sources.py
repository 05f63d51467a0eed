"""Sources: the databases reports read, each with a name.

A source is someone else's data. Every connection to one is read-only in the
database itself (PostgreSQL read-only transactions, MySQL/MariaDB
`TRANSACTION READ ONLY`, SQLite opened read-only) and carries a statement
time limit, so a report can neither change the data nor hold the database
for ever. Nightshift never creates, alters or writes anything in a source.

Errors are sorted by whose fault they are: `SourceUnavailable` when the
database does not answer (try again later), `ReportSQLError` when the
report's SQL is wrong, too slow or tried to write (trying again cannot help).
"""
import sqlite3
import time
import urllib.parse
from typing import NamedTuple, Optional, Tuple

ENGINES = {'postgres': 'postgres', 'postgresql': 'postgres', 'mysql': 'mysql',
           'mariadb': 'mysql', 'sqlite': 'sqlite'}


class SourceError(Exception):
    """Base of the errors a source raises; `source` names it."""

    def __init__(self, source, message):
        super().__init__(message)
        self.source = source
        self.message = message


class SourceUnavailable(SourceError):
    """The database does not answer (down, unreachable, refused the login)."""


class ReportSQLError(SourceError):
    """The report's SQL failed: unknown table, syntax, time limit, a write."""


class UnknownSource(LookupError):
    pass


class Source(NamedTuple):
    """A named database reports read. `query_timeout` is in seconds."""
    name: str
    url: str
    query_timeout: float

    @property
    def engine(self):
        return engine_of(self.url)

    def describe(self):
        return {'name': self.name, 'engine': self.engine}


def engine_of(url: str) -> str:
    scheme = url.split('://', 1)[0].split('+', 1)[0].lower()
    try:
        return ENGINES[scheme]
    except KeyError:
        raise ValueError('%s:// is not a source database; use postgresql://, mysql:// '
                         '(MariaDB too) or sqlite:///path' % scheme)


def connect(source: Source, timeout: Optional[float] = None):
    """A read-only DB-API connection to `source`, with the statement time
    limit set (`timeout` seconds, default the source's). The caller closes it.
    Raises SourceUnavailable when the database cannot be reached."""
    timeout = source.query_timeout if timeout is None else timeout
    opener = {'postgres': _postgres, 'mysql': _mysql, 'sqlite': _sqlite}[source.engine]
    return opener(source, timeout)


def _postgres(source, timeout):
    import psycopg
    url = source.url
    if url.startswith('postgres://'):
        url = 'postgresql://' + url[len('postgres://'):]
    try:
        conn = psycopg.connect(url, connect_timeout=10, autocommit=False)
    except psycopg.Error as exc:
        raise SourceUnavailable(source.name, _first_line(exc))
    # Every transaction on this connection is READ ONLY: PostgreSQL refuses
    # any write, a data-modifying CTE or a nextval() included. ISO dates and
    # UTC make values print the same whatever the server's defaults are.
    conn.read_only = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, false), "
                       "set_config('DateStyle', 'ISO, YMD', false), "
                       "set_config('TimeZone', 'UTC', false), "
                       "set_config('IntervalStyle', 'iso_8601', false)",
                       (str(int(timeout * 1000)),))
    conn.commit()
    return conn


def _mysql(source, timeout):
    import pymysql
    parts = urllib.parse.urlsplit(source.url)
    options = dict(urllib.parse.parse_qsl(parts.query))
    try:
        conn = pymysql.connect(
            host=parts.hostname or 'localhost', port=parts.port or 3306,
            user=urllib.parse.unquote(parts.username or ''),
            password=urllib.parse.unquote(parts.password or ''),
            database=urllib.parse.unquote(parts.path.lstrip('/')) or None,
            charset=options.get('charset', 'utf8mb4'), autocommit=False,
            connect_timeout=10, read_timeout=timeout + 30 if timeout else None)
    except pymysql.err.MySQLError as exc:
        raise SourceUnavailable(source.name, _mysql_message(exc))
    with conn.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
        cursor.execute("SET SESSION time_zone = '+00:00'")
        cursor.execute('SELECT VERSION()')
        mariadb = 'mariadb' in cursor.fetchone()[0].lower()
        if timeout:
            if mariadb:
                cursor.execute('SET SESSION max_statement_time = %s', (float(timeout),))
            else:
                cursor.execute('SET SESSION max_execution_time = %s', (int(timeout * 1000),))
        cursor.execute('START TRANSACTION READ ONLY')
    return conn


class _Deadline:
    """SQLite has no statement timeout: a progress handler interrupts the
    statement once the time is up."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.ends = None
        self.expired = False

    def start(self):
        self.ends = time.monotonic() + self.seconds if self.seconds else None
        self.expired = False

    def __call__(self):
        if self.ends is not None and time.monotonic() > self.ends:
            self.expired = True
            return 1
        return 0


def _sqlite(source, timeout):
    path = sqlite_path(source.url)
    # mode=ro: the file is opened read-only by SQLite itself; query_only
    # refuses writes to anything else the statement could reach.
    uri = 'file:%s?mode=ro' % urllib.parse.quote(path)
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
        conn.execute('PRAGMA query_only = ON')
        conn.execute('SELECT 1 FROM sqlite_master LIMIT 1')  # a file that is no database fails here
    except sqlite3.Error as exc:
        raise SourceUnavailable(source.name, '%s (%s)' % (exc, path))
    conn.set_authorizer(_read_only_authorizer)
    deadline = _Deadline(timeout)
    conn.set_progress_handler(deadline, 10000)
    deadline.start()
    return _SqliteConnection(conn, deadline)


# What a query needs; anything else (ATTACH, PRAGMA, writes, DDL) is denied
# before it runs, so not even a file beside the source can be created.
_SQLITE_READ_ACTIONS = frozenset((sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ,
                                  sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE))


def _read_only_authorizer(action, *_):
    return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY


class _SqliteConnection:
    """sqlite3's connection with the deadline restarted for each statement."""

    def __init__(self, conn, deadline):
        self._conn = conn
        self.deadline = deadline

    def cursor(self):
        return _SqliteCursor(self._conn.cursor(), self.deadline)

    def close(self):
        self._conn.close()

    def rollback(self):
        self._conn.rollback()

    def commit(self):
        self._conn.rollback()  # nothing to commit in a read-only source


class _SqliteCursor:
    def __init__(self, cursor, deadline):
        self._cursor = cursor
        self.deadline = deadline

    def execute(self, sql, params=()):
        self.deadline.start()
        self._cursor.execute(sql, params)
        return self

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def __iter__(self):
        return iter(self._cursor)

    def close(self):
        self._cursor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sqlite_path(url: str) -> str:
    if not url.startswith('sqlite:///'):
        raise ValueError('a SQLite source is sqlite:///relative/path or sqlite:////abs/path')
    return urllib.parse.unquote(url[len('sqlite:///'):].split('?', 1)[0])


def classify(source: Source, exc: BaseException, deadline=None) -> SourceError:
    """The right error for a driver exception met while running a report:
    SourceUnavailable for a connection that failed, ReportSQLError for the
    SQL's own fault (with the database's message and why)."""
    engine = source.engine
    message = _first_line(exc)
    if engine == 'postgres':
        import psycopg
        state = getattr(exc, 'sqlstate', None) or ''
        if isinstance(exc, psycopg.OperationalError) and not state or state.startswith('08') \
                or state in ('57P01', '57P02', '57P03'):
            return SourceUnavailable(source.name, message)
        if state == '57014':
            return ReportSQLError(source.name, 'time limit of %gs hit: %s'
                                  % (source.query_timeout, message))
        if state == '25006':
            return ReportSQLError(source.name, 'the source is read-only: %s' % message)
        return ReportSQLError(source.name, message)
    if engine == 'mysql':
        import pymysql
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        message = _mysql_message(exc)
        if code in (1969, 3024):
            return ReportSQLError(source.name, 'time limit of %gs hit: %s'
                                  % (source.query_timeout, message))
        if code in (1792, 1290):
            return ReportSQLError(source.name, 'the source is read-only: %s' % message)
        if isinstance(exc, pymysql.err.OperationalError) and code in (2003, 2006, 2013, 2055,
                                                                      1045, 1049, 1040):
            return SourceUnavailable(source.name, message)
        return ReportSQLError(source.name, message)
    if deadline is not None and deadline.expired:
        return ReportSQLError(source.name, 'time limit of %gs hit: %s'
                              % (source.query_timeout, message))
    if 'readonly' in message.replace('-', '').replace(' ', '').lower() \
            or 'not authorized' in message:
        return ReportSQLError(source.name, 'the source is read-only: %s' % message)
    if isinstance(exc, sqlite3.OperationalError) and ('unable to open' in message
                                                      or 'database is locked' in message):
        return SourceUnavailable(source.name, message)
    return ReportSQLError(source.name, message)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _mysql_message(exc):
    if len(exc.args) >= 2:
        return '%s %s' % (exc.args[0], exc.args[1])
    return _first_line(exc)


def driver_errors(engine: str) -> Tuple[type, ...]:
    """The exception classes a source's driver raises for a failed statement."""
    if engine == 'postgres':
        import psycopg
        return (psycopg.Error,)
    if engine == 'mysql':
        import pymysql
        return (pymysql.err.MySQLError,)
    return (sqlite3.Error,)
