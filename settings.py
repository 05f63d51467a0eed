"""Settings: defaults, then config.ini, then environment variables.

`SETTINGS` is the one table of every setting: its name, type, default, the
environment variables it is read from, whether it is a secret, its choices
and its help. Parsing, the `Settings` object, masking and the README's
configuration table (tests/test_settings.py holds it to this table) are all
derived from it. Read once at start-up into a frozen `Settings` object that
is passed to the parts that need it. Nothing here runs at import time.
"""
import configparser
import logging
import os
import re
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import peewee
from playhouse import db_url

import cron
import sources
from mail import check_address

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PROJECT_DIR / 'config.ini'
SECTION = 'nightshift'
ENV_PREFIX = 'NIGHTSHIFT_'


class SettingsError(Exception):
    """A setting is missing, unknown or malformed; the message names it."""


class Setting(NamedTuple):
    """One row of the table. `help` is the README's "meaning" cell, word for word."""
    name: str
    type: type
    default: object
    help: str
    # Names deploy platforms set (DATABASE_URL, PORT...), read before NIGHTSHIFT_<NAME>.
    env: tuple = ()
    # Secrets never come from a file that might be committed, and are masked.
    secret: bool = False
    choices: tuple = ()
    # (value, config file's folder) -> value: paths are relative to the config file.
    resolve: Optional[Callable] = None
    # value -> None or ValueError saying what is wrong.
    check: Optional[Callable] = None
    # (VARIABLE, value): a platform that provides a service means use it.
    implied_by: Optional[tuple] = None

    @property
    def env_names(self):
        """Environment variables read, first one set wins."""
        names = self.env + (ENV_PREFIX + self.name.upper(),)
        return tuple(dict.fromkeys(names))


def _path(value, base):
    return str((base / value).resolve())


def _paths(value, base):
    return ','.join(_path(folder.strip(), base) for folder in value.split(',') if folder.strip())


def _resolve_sqlite_url(url, base):
    # Relative SQLite paths are relative to the config file, not the cwd.
    scheme, sep, rest = url.partition(':///')
    if sep and scheme.split('+', 1)[0] == 'sqlite' and not rest.startswith('/') \
            and ':memory:' not in rest:
        path, _, query = rest.partition('?')
        url = '%s:///%s%s' % (scheme, (base / path).resolve(), '?' + query if query else '')
    return url


# models.open_database speaks to these families; the scheme names are
# playhouse.db_url's, so a scheme Peewee learns is one Nightshift accepts.
DATABASE_FAMILIES = {peewee.SqliteDatabase: 'sqlite', peewee.PostgresqlDatabase: 'postgresql',
                     peewee.MySQLDatabase: 'mysql'}
# models.open_database reads mariadb:// as mysql://; playhouse has no such name.
SCHEME_ALIASES = {'mariadb': 'mysql'}


def database_family(url):
    """'sqlite', 'postgresql' or 'mysql' for a URL playhouse.db_url can open,
    else ValueError saying which schemes there are."""
    scheme = url.split('://', 1)[0] if '://' in url else ''
    database_class = db_url.schemes.get(SCHEME_ALIASES.get(scheme, scheme))
    if database_class is None:
        raise ValueError('%s is not a sqlite://, postgres:// or mysql:// URL (schemes '
                         'playhouse.db_url knows: %s)'
                         % (mask_url(url), ', '.join(sorted(db_url.schemes))))
    for family, name in DATABASE_FAMILIES.items():
        if issubclass(database_class, family):
            return name
    raise ValueError('%s:// opens a %s; Nightshift keeps its state only in SQLite, '
                     'PostgreSQL or MySQL/MariaDB' % (scheme, database_class.__name__))


def _at_least_one(why=''):
    def check(value):
        if value < 1:
            raise ValueError('must be at least 1' + why)
    return check


def _from_1_to(most, why=''):
    def check(value):
        if not 1 <= value <= most:
            raise ValueError('must be from 1 to %d%s' % (most, why))
    return check


def _positive(value):
    if value <= 0:
        raise ValueError('must be more than 0')


def _check_port(port):
    if port > 65535:
        raise ValueError('%d is not a TCP port' % port)


def _check_public_url(url):
    if not url.startswith(('http://', 'https://')):
        raise ValueError('%r must start with http:// or https://' % url)


def _check_sender(address):
    # The sender may be a development name (nightshift@localhost).
    check_address(address, single_label_domain=True)


def _check_display_name(name):
    if any(c in name for c in '\r\n\x00') or len(name) > 100:
        raise ValueError('must be one line of at most 100 characters')


def _check_optional_address(address):
    if address:
        check_address(address)


MIN_TOKEN_LENGTH = 16


def _check_tokens(value):
    for token in _items(value):
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError('every NIGHTSHIFT_API_TOKEN must be at least %d characters '
                             '(e.g. python -c "import secrets; print(secrets.token_urlsafe())")'
                             % MIN_TOKEN_LENGTH)


def _check_metrics_token(value):
    if value and len(value) < MIN_TOKEN_LENGTH:
        raise ValueError('NIGHTSHIFT_METRICS_TOKEN must be at least %d characters'
                         % MIN_TOKEN_LENGTH)


def _check_webhook_url(url):
    if url and not url.startswith(('http://', 'https://')):
        raise ValueError('%r must start with http:// or https://' % url.split('?', 1)[0])


EVENTS = ('delivered', 'failed', 'late', 'skipped')


def _check_events(value):
    for event in _items(value):
        if event not in EVENTS:
            raise ValueError('%r is not one of %s' % (event, ', '.join(EVENTS)))


def _items(text):
    return tuple(item.strip() for item in text.split(',') if item.strip())


S = Setting
SETTINGS = (
    S('database_url', str, 'sqlite:///var/nightshift.db',
      "Nightshift's own state: `sqlite:///path` (WAL mode), `postgres://user:pw@host/db` or "
      "`mysql://user:pw@host/db` (MariaDB too); any scheme of `playhouse.db_url` of these "
      "three families",
      env=('DATABASE_URL',), resolve=_resolve_sqlite_url, check=database_family),
    S('queue', str, 'sqlite', '`sqlite` (embedded) or `redis`; `REDIS_URL` set means `redis`',
      choices=('sqlite', 'redis'), implied_by=('REDIS_URL', 'redis')),
    S('queue_path', str, 'var/queue.db', "the embedded queue's file", resolve=_path),
    S('redis_url', str, '', '`redis://host:port/db` or `rediss://` (TLS)', env=('REDIS_URL',)),
    S('redis_ssl_cert_reqs', str, 'required',
      "with `rediss://`: `required` (the server's certificate must verify) or `none` "
      "(Heroku Redis, whose certificate is self-signed; the `Procfile` sets this)",
      choices=('required', 'none')),
    S('queue_name', str, 'nightshift', "Huey's name; its Redis keys are prefixed with it"),
    S('mail_backend', str, 'outbox',
      '`outbox` writes `.eml` files; `smtp` sends; `SMTP_HOST` set means `smtp`',
      choices=('outbox', 'smtp'), implied_by=('SMTP_HOST', 'smtp')),
    S('outbox_dir', str, 'var/outbox', 'where the outbox writes', resolve=_path),
    S('smtp_host', str, '', 'SMTP server', env=('SMTP_HOST',)),
    S('smtp_port', int, 587, 'SMTP port', env=('SMTP_PORT',)),
    S('smtp_security', str, 'starttls', '`starttls`, `ssl` (implicit TLS, port 465) or `none`',
      choices=('starttls', 'ssl', 'none')),
    S('smtp_user', str, '',
      "SMTP login; empty means none (may differ from the sender, e.g. SendGrid's `apikey`)",
      env=('SMTP_USER',)),
    S('smtp_password', str, '', '**environment only**; refused in `config.ini`',
      env=('SMTP_PASSWORD',), secret=True),
    S('smtp_timeout', float, 30.0, 'seconds before an SMTP connection attempt gives up'),
    S('smtp_idle_close', float, 30.0, 'seconds a worker keeps its SMTP connection open '
      'between messages (it is reused for the next one); `0`: a new connection per message'),
    S('mail_from', str, 'nightshift@localhost', 'sender address', env=('MAIL_FROM',),
      check=_check_sender),
    S('mail_from_name', str, '', 'display name in `From` (e.g. `Acme Reports`); empty: the '
      'address alone', env=('MAIL_FROM_NAME',), check=_check_display_name),
    S('reports_dir', str, 'var/reports', 'where the worker writes CSV files', resolve=_path),
    S('host', str, '127.0.0.1', 'address the web server binds to'),
    S('port', int, 8080, 'port the web server listens on', env=('PORT',), check=_check_port),
    S('web_threads', int, 4, 'waitress threads'),
    S('malloc_arenas', int, 1,
      "glibc malloc arenas of `server.py` (0: glibc's default, one per thread): one keeps a "
      'server that has streamed big downloads ~20 MB smaller, at the same speed '
      '(scripts/bench_arenas.py)'),
    S('download_slots', int, 2,
      'downloads streamed at once (at most `web_threads` − 1); more get 503 with '
      '`Retry-After`, so health checks and the API keep a thread'),
    S('web_connections', int, 500,
      'open connections waitress keeps at most, slow clients included'),
    S('workers', int, 2, 'consumer threads of `server.py --worker`'),
    S('max_recipients', int, 20, 'recipients per run'),
    S('max_split_recipients', int, 200,
      'distinct recipients a split run (`split_by`) may find in its data, at most 1000: one '
      'open file each while the rows are written; a run that finds more fails, saying so',
      # Each recipient of a split run is an open file while the rows stream by.
      check=_from_1_to(1000, ' (one open file per recipient)')),
    S('max_body_bytes', int, 65536, 'largest JSON body'),
    S('max_attempts', int, 5, 'tries of a run, first included, before it is `failed`',
      check=_at_least_one()),
    S('retry_delay', float, 10.0,
      'seconds before the first retry: doubles each time, half of it random (jitter)'),
    S('retry_max_delay', float, 600.0, 'longest wait between two tries, in seconds'),
    S('stale_after', float, 30.0,
      'a running run with no heartbeat this long is taken back and run again'),
    S('requeue_after', float, 600.0,
      'a queued run untouched this long has lost its task (e.g. Redis restarted without '
      'persistence) and is queued again'),
    S('progress_every', float, 0.5,
      'seconds between heartbeat and row-count updates of a running run'),
    S('zip_over_mb', float, 5.0, 'attachments larger than this are zipped'),
    S('mail_max_mb', float, 25.0,
      "the provider's message limit, counted after base64 (Gmail/Mailgun 25, SendGrid 30, "
      "SES 40, Postmark 10); larger files go as a download link"),
    S('file_store', str, 'local',
      '`local` (a folder: `reports_dir`) or `database` (chunks in the application database, '
      'shared by web and workers on other machines)', choices=('local', 'database')),
    S('retention_days', float, 7.0, 'report files are kept this long, then removed'),
    S('history_days', float, 90.0,
      'finished runs and their deliveries are kept this long in the history, then removed by '
      "the tick in batches (0: kept for ever); a run's file goes first, after `retention_days`"),
    S('history_batch', int, 500,
      'runs removed per transaction by history retention: small, so the API keeps answering',
      check=_at_least_one()),
    S('max_backfill_slots', int, 100,
      "slots one backfill of a schedule may cover; a longer range is refused (422)",
      check=_at_least_one()),
    S('public_url', str, 'http://127.0.0.1:8080',
      'base URL of the web server, for links in emails; unset, it follows `port`',
      check=_check_public_url),
    S('secret_key', str, '',
      '**environment only**: signs download links (without it one is made and kept in the '
      'database)', secret=True),
    S('operator_email', str, '', 'told about every run that fails for good',
      check=_check_optional_address),
    S('api_tokens', str, '',
      '**environment only**: API tokens, comma-separated, each at least 16 characters '
      '(see Security)', env=('NIGHTSHIFT_API_TOKEN',), secret=True, check=_check_tokens),
    S('allowed_domains', str, '', 'if set, recipients only at these domains (comma-separated)'),
    S('max_rows', int, 10000000, 'rows per report; longer ones are cut and the email says so'),
    S('max_concurrent_per_report', int, 2, 'runs of one report in progress at once'),
    S('batch_runs', int, 500,
      'runs of one report with the same parameters that one query serves when they are '
      'queued together (a burst); each is still mailed and recorded on its own; 1: every '
      # Its runs' ids go in one IN (...) list: well within every engine's limit.
      'run queries alone (at most 1000)', check=_from_1_to(1000)),
    S('batch_senders', int, 4,
      'SMTP connections a batch of runs (`batch_runs`) is mailed over at most at once, each '
      'from a thread of its own: two at first, all of them once its worker is seen waiting '
      'more than working; 1: one run after another (at most 32)', check=_from_1_to(32)),
    S('csv_bom', bool, True, 'start files meant for people with a UTF-8 BOM (for Excel)'),
    S('timezone', str, 'UTC', 'default IANA timezone of schedules', check=cron.check_timezone),
    S('catchup_hours', float, 24.0,
      'after downtime, the latest missed slot still runs if this recent'),
    S('max_schedules', int, 200,
      'schedules kept, `config.ini` and API together; one more is refused (409)'),
    S('max_runs_per_tick', int, 100,
      'scheduled runs one tick (each `tick_every` seconds) creates; due schedules beyond it '
      'wait for the next tick, oldest first', check=_at_least_one(', or schedules never run')),
    S('report_paths', str, 'reports', 'folders of report `.sql` files, comma-separated',
      resolve=_paths),
    S('python_reports', str, '', 'modules of Python reports to import, comma-separated'),
    S('query_timeout', float, 300.0,
      "seconds a report's query may run on its source (0: no limit); per source in "
      "`[source:NAME]`; a report may set less"),
    S('auto_migrate', bool, True,
      "make or update Nightshift's own tables at start; `false`: refuse to start until "
      "`scripts/migrate.py --apply`"),
    S('metrics_token', str, '',
      '**environment only**: a token that may read `/metrics` (and only that), beside the '
      'API tokens; at least 16 characters', secret=True, check=_check_metrics_token),
    S('consumer_heartbeat', float, 15.0,
      "seconds between a consumer's heartbeats; silent three times as long it counts as "
      'gone, and after an hour it is forgotten', check=_positive),
    S('tick_alarm_after', float, 120.0,
      '`/healthz` says `degraded` when schedules are enabled and no consumer has ticked '
      'them for this many seconds'),
    S('queue_alarm_after', float, 300.0,
      '`/healthz` says `degraded` when a run has waited in the queue this many seconds '
      'and no consumer is alive'),
    S('log_format', str, 'text',
      '`text` lines, or `json`: one object per line (time, level, logger, message; '
      '`run_id` and `report` when about a run), web and consumer alike',
      choices=('text', 'json')),
    S('tick_every', float, 5.0,
      "seconds between each consumer's look at its schedules, on the clock's beat, so a "
      "slot's run starts within about a second; 0 leaves only Huey's once-a-minute tick "
      "(up to 60 s late)"),
    S('late_after', float, 3600.0,
      'a scheduled run not delivered this many seconds after its slot is marked late and '
      'announced once; per schedule `late_after`; 0: never'),
    S('notify_every', float, 60.0,
      'announcements (operator email, webhooks) wait this long for others to join them: a '
      'burst of failures is one message, at most one per channel each interval'),
    S('webhook_url', str, '',
      'gets a signed JSON POST for runs delivered, failed, late or skipped (see Webhooks); '
      'per schedule `webhook`', check=_check_webhook_url),
    S('webhook_events', str, 'delivered,failed,late,skipped',
      'which events `webhook_url` gets, comma-separated', check=_check_events),
    S('webhook_secret', str, '',
      '**environment only**: signs webhook POSTs (HMAC-SHA256 over timestamp and body)',
      secret=True),
    S('webhook_timeout', float, 10.0, 'seconds a webhook POST may take'),
    S('webhook_attempts', int, 5,
      'tries of a webhook POST or operator email before the log says failed; waits as '
      "runs' retries", check=_at_least_one()),
    S('webhook_private', bool, False,
      "let a schedule's `webhook` reach loopback, private and link-local addresses "
      '(refused by default: see Webhooks)'),
)
del S
BY_NAME = {setting.name: setting for setting in SETTINGS}


class _SettingsBehaviour:
    """What Settings does beyond holding the values of the table."""

    @property
    def report_folders(self):
        return _items(self.report_paths)

    def source(self, name):
        """The named source; sources.UnknownSource if there is none."""
        for candidate in self.sources:
            if candidate.name == name:
                return candidate
        raise sources.UnknownSource(name)

    @property
    def tokens(self):
        return _items(self.api_tokens)

    @property
    def webhook_event_names(self):
        return _items(self.webhook_events)

    @property
    def domains(self):
        return tuple(d.lower() for d in _items(self.allowed_domains))

    def secrets(self):
        """Every secret value, for scrubbing from logs and errors."""
        values = list(self.tokens)
        values += [getattr(self, s.name) for s in SETTINGS if s.secret]
        urls = [getattr(self, s.name) for s in SETTINGS if s.name.endswith('_url')]
        values += [url_password(url) for url in urls + [s.url for s in self.sources]]
        # A webhook URL is its own credential (Slack's and Teams' are).
        values.append(self.webhook_url)
        return tuple(dict.fromkeys(v for v in values if v and len(v) >= 4))

    def redact(self, text):
        # Longest first: a secret inside another must not leave the rest showing.
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, '***')
        return text

    def describe(self):
        """Settings as text for logs, with secrets and URL passwords masked."""
        return ', '.join('%s=%s' % (s.name, _shown(s, getattr(self, s.name)))
                         for s in SETTINGS)


def _shown(setting, value):
    if setting.secret:
        return '***' if value else ''
    if setting.name == 'webhook_url':
        return hide_path(value)
    if setting.name.endswith('_url'):
        return mask_url(value)
    return value


Settings = make_dataclass(
    'Settings',
    [(s.name, s.type, field(default=s.default)) for s in SETTINGS] + [
        # Parsed [schedule:<name>] sections: ({'name': ..., 'report': ..., ...}, ...)
        ('schedules', tuple, field(default=(), repr=False)),
        # The databases reports read: sources.Source(name, url, query_timeout), ...
        ('sources', tuple, field(default=(), repr=False)),
    ],
    bases=(_SettingsBehaviour,), frozen=True)
Settings.__module__ = __name__  # pickling finds it here
Settings.__doc__ = 'The values of SETTINGS, read once at start-up (see load_settings).'

SCHEDULE_KEYS = ('report', 'cron', 'timezone', 'to', 'enabled', 'split_by', 'subject', 'body',
                 'attachment_name', 'send_rule', 'late_after', 'webhook',
                 'format')


class RedactSecrets(logging.Filter):
    """Scrub secret values from log records, messages and tracebacks alike."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def filter(self, record):
        message = record.getMessage()
        cleaned = self.settings.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.settings.redact(
                logging.Formatter().formatException(record.exc_info))
        return True


def install_log_redaction(settings):
    """Put the filter on every handler there is (root's and huey's)."""
    if not settings.secrets():
        return
    for name in (None, 'huey'):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets(settings))


def url_password(url):
    from urllib.parse import urlparse
    try:
        return urlparse(url).password or ''
    except ValueError:
        return ''


def hide_path(url):
    """A webhook URL as it may be shown: scheme and host, the rest (where
    Slack and Teams put the credential) hidden."""
    from urllib.parse import urlsplit
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ''
        port = ':%d' % parts.port if parts.port else ''
    except ValueError:
        return '***'
    if ':' in host:
        host = '[%s]' % host
    return '%s://%s%s/***' % (parts.scheme, host, port)


def mask_url(url):
    """Hide the password part of a URL so it can be logged or shown."""
    if '@' not in url or '://' not in url:
        return url
    scheme, rest = url.split('://', 1)
    creds, host = rest.rsplit('@', 1)
    user = creds.split(':', 1)[0]
    return '%s://%s:***@%s' % (scheme, user, host) if ':' in creds else url


def _convert(setting, raw, source):
    name, kind = setting.name, setting.type
    try:
        if kind is bool:
            text = str(raw).strip().lower()
            if text not in ('true', 'false', 'yes', 'no', '1', '0', 'on', 'off'):
                raise ValueError(text)
            value = text in ('true', 'yes', '1', 'on')
        elif kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            value = str(raw).strip()
    except ValueError:
        raise SettingsError('%s: %r is not a valid %s (from %s)'
                            % (name, raw, kind.__name__, source))
    if setting.choices and value not in setting.choices:
        raise SettingsError('%s: %r must be one of %s (from %s)'
                            % (name, value, ', '.join(setting.choices), source))
    if kind in (int, float) and value < 0:
        raise SettingsError('%s: must not be negative (from %s)' % (name, source))
    return value


def read_config(path):
    """Parse the config file strictly: a missing file is an error, not empty."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError('config file not found: %s' % path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding='utf-8'), source=str(path))
    except configparser.Error as exc:
        raise SettingsError('config file %s: %s' % (path, exc))
    return parser


def load_settings(path=None, environ=None):
    """Build Settings from defaults, the config file and the environment.

    `environ` defaults to os.environ; tests pass a dict instead.
    """
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get(ENV_PREFIX + 'CONFIG') or DEFAULT_CONFIG)
    parser = read_config(path)
    values = _from_file(parser, path)
    schedules, source_specs = _sections(parser, path)
    values.update(_from_environment(environ))

    # Unset, links follow the port actually listened on.
    values.setdefault('public_url', 'http://127.0.0.1:%d' % values.get('port', Settings.port))
    base = path.resolve().parent
    for setting in SETTINGS:
        value = values.get(setting.name, setting.default)
        if setting.resolve:
            value = setting.resolve(value, base)
        if setting.check:
            try:
                setting.check(value)
            except ValueError as exc:
                raise SettingsError('%s: %s' % (setting.name, exc))
        values[setting.name] = value
    values['schedules'] = schedules
    values['sources'] = _sources(source_specs, environ, values, base)

    settings = Settings(**values)
    _check(settings)
    return settings


def _from_file(parser, path):
    values = {}
    if not parser.has_section(SECTION):
        return values
    for key, raw in parser.items(SECTION):
        setting = BY_NAME.get(key)
        if setting is None:
            raise SettingsError('unknown setting %r in [%s] of %s' % (key, SECTION, path))
        if setting.secret:
            raise SettingsError('%s: secrets are read only from the environment '
                                '(%s); remove it from %s' % (key, setting.env_names[0], path))
        values[key] = _convert(setting, raw, path.name)
    return values


def _sections(parser, path):
    """The [schedule:NAME] specs and the [source:NAME] specs by name."""
    schedules, source_specs = [], {}
    for section in parser.sections():
        if section.startswith('schedule:'):
            schedules.append(_read_schedule(section, parser.items(section), path))
        elif section.startswith('source:'):
            name, spec = _read_source(section, parser.items(section), path)
            source_specs[name] = spec
        elif section != SECTION:
            raise SettingsError('unknown section [%s] in %s; expected [%s], [schedule:NAME] '
                                'or [source:NAME]' % (section, path, SECTION))
    return tuple(schedules), source_specs


def _from_environment(environ):
    values = {}
    for setting in SETTINGS:
        for name in setting.env_names:
            if environ.get(name, '') != '':
                values[setting.name] = _convert(setting, environ[name], name)
                break
    for setting in SETTINGS:
        if setting.implied_by and environ.get(setting.implied_by[0]):
            values[setting.name] = setting.implied_by[1]
    return values


SOURCE_KEYS = ('url', 'query_timeout')
SOURCE_ENV = re.compile(r'NIGHTSHIFT_SOURCE_([A-Z0-9_]+)_URL\Z')


def _read_source(section, items, path):
    """One [source:<name>] section: its url (secrets belong in the
    environment: NIGHTSHIFT_SOURCE_<NAME>_URL) and optional query_timeout."""
    name = section.split(':', 1)[1].strip()
    where = '[%s] of %s' % (section, path.name)
    if not re.match(r'[a-z][a-z0-9_]{0,63}\Z', name):
        raise SettingsError('%s: a source name is lower case letters, digits and _' % where)
    spec = {}
    for key, raw in items:
        if key not in SOURCE_KEYS:
            raise SettingsError('unknown key %r in %s; expected %s'
                                % (key, where, ', '.join(SOURCE_KEYS)))
        spec[key] = raw.strip()
    if 'url' in spec and url_password(spec['url']):
        raise SettingsError('url: %s holds a password; give it in the environment as '
                            'NIGHTSHIFT_SOURCE_%s_URL instead' % (where, name.upper()))
    if 'query_timeout' in spec:
        spec['query_timeout'] = _convert(BY_NAME['query_timeout'], spec['query_timeout'], where)
    return name, spec


def _sources(specs, environ, values, base):
    """The sources from config sections and NIGHTSHIFT_SOURCE_<NAME>_URL;
    `default` is the state database unless said otherwise."""
    specs = {name: dict(spec) for name, spec in specs.items()}
    for key, url in environ.items():
        found = SOURCE_ENV.match(key)
        if found and url:
            specs.setdefault(found.group(1).lower(), {})['url'] = url
    specs.setdefault('default', {}).setdefault('url', _as_source_url(values['database_url']))
    result = []
    for name in sorted(specs):
        spec = specs[name]
        if not spec.get('url'):
            raise SettingsError('[source:%s]: no url; give url = ... or '
                                'NIGHTSHIFT_SOURCE_%s_URL' % (name, name.upper()))
        url = _resolve_sqlite_url(spec['url'], base)
        try:
            sources.engine_of(url)
        except ValueError as exc:
            raise SettingsError('[source:%s] url: %s' % (name, exc))
        result.append(sources.Source(name, url, spec.get('query_timeout',
                                                         values['query_timeout'])))
    return tuple(result)


def _as_source_url(database_url):
    """The state database as the `default` source. Sources connect with their
    own drivers, which read only plain schemes: a scheme that picks a Peewee
    class (postgresql+pool, cockroachdb, mysqlconnector...) becomes its family's."""
    scheme, rest = database_url.split('://', 1)
    try:
        sources.engine_of(database_url)
        if '+' not in scheme:
            return database_url
    except ValueError:
        pass
    return '%s://%s' % (database_family(database_url), rest)


def _read_schedule(section, items, path):
    """One [schedule:<name>] section as a dict; the report and its params are
    checked against the registry when the consumer syncs it."""
    name = section.split(':', 1)[1].strip()
    where = '[%s] of %s' % (section, path.name)
    spec = {'name': name, 'params': {}, 'enabled': True}
    for key, raw in items:
        if key.startswith('param.'):
            spec['params'][key[len('param.'):]] = raw.strip()
        elif key == 'to':
            spec['to'] = [a.strip() for a in raw.split(',') if a.strip()]
        elif key == 'enabled':
            if raw.strip().lower() not in ('true', 'false', 'yes', 'no', '1', '0'):
                raise SettingsError('enabled: %r is not true or false in %s' % (raw, where))
            spec['enabled'] = raw.strip().lower() in ('true', 'yes', '1')
        elif key in SCHEDULE_KEYS:
            spec[key] = raw.strip()
        else:
            raise SettingsError('unknown key %r in %s; expected %s or param.<name>'
                                % (key, where, ', '.join(SCHEDULE_KEYS)))
    for key in ('report', 'cron') + (() if spec.get('split_by') else ('to',)):
        if not spec.get(key):
            raise SettingsError('%s: missing in %s' % (key, where))
    return spec


def _check(settings):
    """What one setting cannot say alone: settings that need each other, and
    the schedules."""
    if settings.queue == 'redis' and not settings.redis_url.startswith(
            ('redis://', 'rediss://', 'unix://')):
        raise SettingsError('redis_url: queue is redis but redis_url is %r; set REDIS_URL '
                            'to redis://host:port/db' % mask_url(settings.redis_url))
    if settings.mail_backend == 'smtp' and not settings.smtp_host:
        raise SettingsError('smtp_host: mail_backend is smtp but no SMTP_HOST is set')
    if settings.smtp_user and not settings.smtp_password:
        raise SettingsError('smtp_password: SMTP_USER is set but SMTP_PASSWORD is not')
    for spec in settings.schedules:
        where = '[schedule:%s]' % spec['name']
        try:
            cron.check_cron(spec['cron'])
        except ValueError as exc:
            raise SettingsError('cron: %s in %s' % (exc, where))
        try:
            cron.check_timezone(spec.get('timezone') or settings.timezone)
        except ValueError as exc:
            raise SettingsError('timezone: %s in %s' % (exc, where))
