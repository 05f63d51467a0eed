"""Settings: defaults, then config.ini, then environment variables.

Read once at start-up into a frozen `Settings` object that is passed to the
parts that need it. Nothing here runs at import time.
"""
import configparser
import logging
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import cron
from mail import check_address

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PROJECT_DIR / 'config.ini'
SECTION = 'nightshift'
ENV_PREFIX = 'NIGHTSHIFT_'

# Deploy platforms set these names; everything else is NIGHTSHIFT_<KEY>.
PLATFORM_ENV = {
    'database_url': 'DATABASE_URL',
    'redis_url': 'REDIS_URL',
    'smtp_host': 'SMTP_HOST',
    'smtp_port': 'SMTP_PORT',
    'smtp_user': 'SMTP_USER',
    'mail_from': 'MAIL_FROM',
    'port': 'PORT',
}
# Secrets never come from a file that might be committed.
SECRET_ENV = {'smtp_password': 'SMTP_PASSWORD', 'secret_key': 'NIGHTSHIFT_SECRET_KEY',
              'api_tokens': 'NIGHTSHIFT_API_TOKEN'}

CHOICES = {
    'queue': ('sqlite', 'redis'),
    'mail_backend': ('outbox', 'smtp'),
    'smtp_security': ('starttls', 'ssl', 'none'),
    'file_store': ('local', 'database'),
    'redis_ssl_cert_reqs': ('required', 'none'),
}
PATH_KEYS = ('queue_path', 'outbox_dir', 'reports_dir')


class SettingsError(Exception):
    """A setting is missing, unknown or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str = 'sqlite:///var/nightshift.db'
    queue: str = 'sqlite'
    queue_path: str = 'var/queue.db'
    redis_url: str = ''
    redis_ssl_cert_reqs: str = 'required'
    queue_name: str = 'nightshift'
    mail_backend: str = 'outbox'
    outbox_dir: str = 'var/outbox'
    smtp_host: str = ''
    smtp_port: int = 587
    smtp_security: str = 'starttls'
    smtp_user: str = ''
    smtp_password: str = ''
    smtp_timeout: float = 30.0
    mail_from: str = 'nightshift@localhost'
    reports_dir: str = 'var/reports'
    host: str = '127.0.0.1'
    port: int = 8080
    web_threads: int = 4
    download_slots: int = 2
    web_connections: int = 500
    workers: int = 2
    max_recipients: int = 20
    max_body_bytes: int = 65536
    max_attempts: int = 5
    retry_delay: float = 10.0
    retry_max_delay: float = 600.0
    stale_after: float = 30.0
    requeue_after: float = 600.0
    progress_every: float = 0.5
    zip_over_mb: float = 5.0
    mail_max_mb: float = 25.0
    file_store: str = 'local'
    retention_days: float = 7.0
    public_url: str = 'http://127.0.0.1:8080'
    secret_key: str = ''
    operator_email: str = ''
    api_tokens: str = ''
    allowed_domains: str = ''
    max_rows: int = 10000000
    max_concurrent_per_report: int = 2
    csv_bom: bool = True
    timezone: str = 'UTC'
    catchup_hours: float = 24.0
    max_schedules: int = 200
    max_runs_per_tick: int = 100
    report_paths: str = 'reports'
    python_reports: str = ''
    query_timeout: float = 300.0
    auto_migrate: bool = True
    # Parsed [schedule:<name>] sections: ({'name': ..., 'report': ..., ...}, ...)
    schedules: tuple = field(default=(), repr=False)
    # The databases reports read: sources.Source(name, url, query_timeout), ...
    sources: tuple = field(default=(), repr=False)

    @property
    def report_folders(self):
        return tuple(p.strip() for p in self.report_paths.split(',') if p.strip())

    def source(self, name):
        """The named source; sources.UnknownSource if there is none."""
        for candidate in self.sources:
            if candidate.name == name:
                return candidate
        import sources
        raise sources.UnknownSource(name)

    @property
    def tokens(self):
        return tuple(t.strip() for t in self.api_tokens.split(',') if t.strip())

    @property
    def domains(self):
        return tuple(d.strip().lower() for d in self.allowed_domains.split(',') if d.strip())

    def secrets(self):
        """Every secret value, for scrubbing from logs and errors."""
        values = list(self.tokens) + [self.smtp_password, self.secret_key]
        for url in (self.database_url, self.redis_url) + tuple(s.url for s in self.sources):
            password = url_password(url)
            values.append(password)
        return tuple(v for v in values if v and len(v) >= 4)

    def redact(self, text):
        for secret in self.secrets():
            text = text.replace(secret, '***')
        return text

    def describe(self):
        """Settings as text for logs, with secrets and URL passwords masked."""
        shown = []
        for f in fields(self):
            if f.name in ('schedules', 'sources'):
                continue
            value = getattr(self, f.name)
            if f.name in SECRET_ENV:
                value = '***' if value else ''
            elif f.name.endswith('_url'):
                value = mask_url(value)
            shown.append('%s=%s' % (f.name, value))
        return ', '.join(shown)


HELP = {
    'database_url': 'Peewee database URL (sqlite:///path or postgres://user@host/db). Env: DATABASE_URL',
    'queue': 'Where Huey keeps its queue: sqlite (embedded) or redis. REDIS_URL set means redis.',
    'queue_path': 'SQLite file of the embedded queue.',
    'redis_url': 'redis:// or rediss:// URL of the queue. Env: REDIS_URL',
    'redis_ssl_cert_reqs': 'rediss:// only: required (the certificate must verify) or none '
                           '(Heroku Redis: its certificate is self-signed).',
    'queue_name': 'Huey queue name (keys are prefixed with it in Redis).',
    'mail_backend': 'outbox (write .eml files) or smtp. SMTP_HOST set means smtp.',
    'outbox_dir': 'Folder the outbox backend writes messages to.',
    'smtp_host': 'SMTP server. Env: SMTP_HOST',
    'smtp_port': 'SMTP port. Env: SMTP_PORT',
    'smtp_security': 'starttls, ssl (implicit TLS) or none.',
    'smtp_user': 'SMTP login; empty means no login. Env: SMTP_USER',
    'smtp_password': 'SMTP password, only from the environment: SMTP_PASSWORD',
    'smtp_timeout': 'Seconds before an SMTP connection attempt gives up.',
    'mail_from': 'Sender address. Env: MAIL_FROM',
    'reports_dir': 'Folder the worker writes report files to.',
    'host': 'Address the web server binds to.',
    'port': 'Port the web server listens on. Env: PORT',
    'web_threads': 'waitress worker threads.',
    'download_slots': 'Downloads streamed at once (at most web_threads - 1); more get 503 with Retry-After.',
    'web_connections': 'Open connections waitress keeps at most, slow clients included.',
    'workers': 'Consumer threads run by `server.py --worker`.',
    'max_recipients': 'Most recipients one run may have.',
    'max_body_bytes': 'Largest JSON request body accepted.',
    'max_attempts': 'Tries of a run (first one included) before it is marked failed.',
    'retry_delay': 'Seconds before the first retry; doubles each time, with jitter.',
    'retry_max_delay': 'Longest wait between two tries.',
    'stale_after': 'A running run silent this long is taken as lost and run again.',
    'requeue_after': 'A queued run untouched this long has lost its task and is queued again.',
    'progress_every': 'Seconds between heartbeat and row-count updates of a running run.',
    'zip_over_mb': 'Attachments larger than this are zipped.',
    'mail_max_mb': 'Largest message the SMTP provider takes (after base64); larger go as a link.',
    'file_store': 'local (a folder, one machine) or database (shared by web and workers).',
    'retention_days': 'How long finished report files are kept for download.',
    'public_url': 'Base URL of the web server, for download links in emails (default http://127.0.0.1:<port>).',
    'secret_key': 'Signs download links; only from NIGHTSHIFT_SECRET_KEY (else one is made and kept in the database).',
    'operator_email': 'Optional address told about every run that fails for good.',
    'api_tokens': 'API tokens, comma-separated; only from NIGHTSHIFT_API_TOKEN.',
    'allowed_domains': 'If set, recipients must be at these domains (comma-separated).',
    'max_rows': 'Most rows one report writes; a longer one is cut and the email says so.',
    'max_concurrent_per_report': 'Runs of one report in progress at once, across workers.',
    'csv_bom': 'Start files meant for people (emails, downloads) with a UTF-8 BOM for Excel.',
    'timezone': 'Default IANA timezone of schedules.',
    'catchup_hours': 'After downtime, the latest missed slot still runs if it is this recent.',
    'max_schedules': 'Most schedules kept (config.ini and API together); one more is refused.',
    'max_runs_per_tick': 'Most scheduled runs one tick (each minute) creates; the rest wait '
                         'for the next tick, oldest first.',
    'report_paths': 'Folders of report .sql files, comma-separated (relative to the config '
                    'file).',
    'python_reports': 'Modules of Python reports to import, comma-separated (on PYTHONPATH).',
    'query_timeout': 'Seconds a report\'s query may run on its source before it is stopped '
                     '(0: no limit); a report may set less.',
    'auto_migrate': 'Bring Nightshift\'s own tables up to date at start; false: refuse to '
                    'start until scripts/migrate.py --apply has.',
}
SCHEDULE_KEYS = ('report', 'cron', 'timezone', 'to', 'enabled')


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


def mask_url(url):
    """Hide the password part of a URL so it can be logged or shown."""
    if '@' not in url or '://' not in url:
        return url
    scheme, rest = url.split('://', 1)
    creds, host = rest.rsplit('@', 1)
    user = creds.split(':', 1)[0]
    return '%s://%s:***@%s' % (scheme, user, host) if ':' in creds else url


def _convert(name, raw, kind, source):
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
    if name in CHOICES and value not in CHOICES[name]:
        raise SettingsError('%s: %r must be one of %s (from %s)'
                            % (name, value, ', '.join(CHOICES[name]), source))
    if kind in (int, float) and not isinstance(value, bool) and value < 0:
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
    kind_of = {f.name: f.type for f in fields(Settings)
               if f.name not in ('schedules', 'sources')}

    values = {}
    if parser.has_section(SECTION):
        for key, raw in parser.items(SECTION):
            if key in SECRET_ENV:
                raise SettingsError('%s: secrets are read only from the environment '
                                    '(%s); remove it from %s' % (key, SECRET_ENV[key], path))
            if key not in kind_of:
                raise SettingsError('unknown setting %r in [%s] of %s'
                                    % (key, SECTION, path))
            values[key] = _convert(key, raw, kind_of[key], path.name)
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
    values['schedules'] = tuple(schedules)

    for name, kind in kind_of.items():
        env_name = PLATFORM_ENV.get(name) or SECRET_ENV.get(name)
        for candidate in filter(None, (env_name, ENV_PREFIX + name.upper())):
            if candidate in environ and environ[candidate] != '':
                values[name] = _convert(name, environ[candidate], kind, candidate)
                break

    # The deploy convention: a platform that provides a service means use it.
    if environ.get('REDIS_URL'):
        values['queue'] = 'redis'
    if environ.get('SMTP_HOST'):
        values['mail_backend'] = 'smtp'

    # Unset, links follow the port actually listened on.
    values.setdefault('public_url', 'http://127.0.0.1:%d' % values.get('port', Settings.port))
    base = path.resolve().parent
    for key in PATH_KEYS:
        values[key] = str((base / values.get(key, getattr(Settings, key))).resolve())
    values['database_url'] = _resolve_sqlite_url(
        values.get('database_url', Settings.database_url), base)
    values['report_paths'] = ','.join(
        str((base / folder.strip()).resolve())
        for folder in values.get('report_paths', Settings.report_paths).split(',')
        if folder.strip())
    values['sources'] = _sources(source_specs, environ, values, base)

    settings = Settings(**values)
    _check(settings)
    return settings


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
        spec['query_timeout'] = _convert('query_timeout', spec['query_timeout'], float, where)
    return name, spec


def _sources(specs, environ, values, base):
    """The sources from config sections and NIGHTSHIFT_SOURCE_<NAME>_URL;
    `default` is the state database unless said otherwise."""
    import sources
    specs = {name: dict(spec) for name, spec in specs.items()}
    for key, url in environ.items():
        found = SOURCE_ENV.match(key)
        if found and url:
            specs.setdefault(found.group(1).lower(), {})['url'] = url
    specs.setdefault('default', {}).setdefault('url', values['database_url'])
    timeout = values.get('query_timeout', Settings.query_timeout)
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
            if url == values['database_url']:
                raise SettingsError('database_url: %s is not a sqlite://, postgres:// or '
                                    'mysql:// URL' % mask_url(url))
            raise SettingsError('[source:%s] url: %s' % (name, exc))
        result.append(sources.Source(name, url, spec.get('query_timeout', timeout)))
    return tuple(result)


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
    for key in ('report', 'cron', 'to'):
        if not spec.get(key):
            raise SettingsError('%s: missing in %s' % (key, where))
    return spec


def _resolve_sqlite_url(url, base):
    # Relative SQLite paths are relative to the config file, not the cwd.
    prefix = 'sqlite:///'
    if url.startswith(prefix) and not url.startswith(prefix + '/') \
            and ':memory:' not in url:
        path, _, query = url[len(prefix):].partition('?')
        url = prefix + str((base / path).resolve()) + ('?' + query if query else '')
    return url


def _check(settings):
    if not settings.database_url.split('://', 1)[0].split('+', 1)[0] in (
            'sqlite', 'postgres', 'postgresql', 'mysql', 'mariadb'):
        raise SettingsError('database_url: %s is not a sqlite://, postgres:// or mysql:// URL'
                            % mask_url(settings.database_url))
    if settings.queue == 'redis' and not settings.redis_url.startswith(
            ('redis://', 'rediss://', 'unix://')):
        raise SettingsError('redis_url: queue is redis but redis_url is %r; set REDIS_URL '
                            'to redis://host:port/db' % mask_url(settings.redis_url))
    if settings.mail_backend == 'smtp' and not settings.smtp_host:
        raise SettingsError('smtp_host: mail_backend is smtp but no SMTP_HOST is set')
    if settings.smtp_user and not settings.smtp_password:
        raise SettingsError('smtp_password: SMTP_USER is set but SMTP_PASSWORD is not')
    for token in settings.tokens:
        if len(token) < 16:
            raise SettingsError('api_tokens: every NIGHTSHIFT_API_TOKEN must be at least 16 '
                                'characters (e.g. python -c "import secrets; '
                                'print(secrets.token_urlsafe())")')
    if settings.max_attempts < 1:
        raise SettingsError('max_attempts: must be at least 1')
    if settings.max_runs_per_tick < 1:
        raise SettingsError('max_runs_per_tick: must be at least 1, or schedules never run')
    if not settings.public_url.startswith(('http://', 'https://')):
        raise SettingsError('public_url: %r must start with http:// or https://'
                            % settings.public_url)
    for name in ('operator_email', 'mail_from'):
        address = getattr(settings, name)
        if name == 'operator_email' and not address:
            continue  # optional
        try:
            # The sender may be a development name (nightshift@localhost).
            check_address(address, single_label_domain=name == 'mail_from')
        except ValueError as exc:
            raise SettingsError('%s: %s' % (name, exc))
    try:
        cron.check_timezone(settings.timezone)
    except ValueError as exc:
        raise SettingsError('timezone: %s' % exc)
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
    if settings.port > 65535:
        raise SettingsError('port: %d is not a TCP port' % settings.port)
