from pathlib import Path

import peewee
import pytest
from playhouse import db_url

from settings import SETTINGS, Settings, SettingsError, load_settings, mask_url

README = Path(__file__).resolve().parent.parent / 'README.md'

def write(tmp_path, text, name='config.ini'):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_from_file_with_paths_relative_to_it(tmp_path):
    path = write(tmp_path, '[nightshift]\nport = 9000\n')
    settings = load_settings(path, environ={})
    assert settings.port == 9000
    assert settings.queue == 'sqlite'
    assert settings.mail_backend == 'outbox'
    assert settings.queue_path == str(tmp_path / 'var' / 'queue.db')
    assert settings.database_url == 'sqlite:///%s' % (tmp_path / 'var' / 'nightshift.db')


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, '[nightshift]\nport = 9000\nworkers = 3\n')
    settings = load_settings(path, environ={
        'PORT': '9100', 'NIGHTSHIFT_WORKERS': '5',
        'DATABASE_URL': 'postgres://u:pw@db.example/app', 'MAIL_FROM': 'r@example.org'})
    assert (settings.port, settings.workers) == (9100, 5)
    assert settings.database_url == 'postgres://u:pw@db.example/app'
    assert settings.mail_from == 'r@example.org'


def test_platform_services_pick_the_parts(tmp_path):
    path = write(tmp_path, '[nightshift]\nqueue = sqlite\nmail_backend = outbox\n')
    settings = load_settings(path, environ={
        'REDIS_URL': 'rediss://:pw@redis.example:6380', 'SMTP_HOST': 'smtp.example',
        'SMTP_USER': 'apikey', 'SMTP_PASSWORD': 's3cret'})
    assert settings.queue == 'redis'
    assert settings.mail_backend == 'smtp'
    assert settings.smtp_password == 's3cret'
    assert 's3cret' not in settings.describe()
    assert 'pw' not in settings.describe().replace('smtp_password', '')


@pytest.mark.parametrize('text, env, words', [
    ('[nightshift]\nprot = 1\n', {}, ["unknown setting 'prot'"]),
    ('[nightshift]\nport = eighty\n', {}, ['port', "'eighty'"]),
    ('[nightshift]\n', {'PORT': 'x'}, ['port', 'PORT']),
    ('[nightshift]\nqueue = rabbit\n', {}, ['queue', 'sqlite, redis']),
    ('[nightshift]\nsmtp_password = hunter2\n', {}, ['smtp_password', 'SMTP_PASSWORD']),
    ('[nightshift]\nqueue = redis\n', {}, ['redis_url']),
    ('[nightshift]\nmail_backend = smtp\n', {}, ['smtp_host']),
    ('[nightshift]\n', {'SMTP_HOST': 'h', 'SMTP_USER': 'u'}, ['smtp_password']),
    ('[nightshift]\ndatabase_url = oracle://x/y\n', {}, ['database_url']),
    ('[other]\nx = 1\n', {}, ['unknown section [other]']),
    ('[nightshift\n', {}, ['config file']),
])
def test_bad_settings_stop_with_a_message_naming_the_key(tmp_path, text, env, words):
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text), environ=env)
    for word in words:
        assert word in str(info.value)


def test_missing_file_is_an_error_not_empty_settings(tmp_path):
    with pytest.raises(SettingsError, match='config file not found'):
        load_settings(tmp_path / 'nope.ini', environ={})


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, '[nightshift]\nport = 9300\n', name='other.ini')
    assert load_settings(environ={'NIGHTSHIFT_CONFIG': str(path)}).port == 9300


def test_repository_config_loads():
    assert isinstance(load_settings(environ={}), Settings)


def test_mask_url():
    assert mask_url('redis://:pw@h:1/0') == 'redis://:***@h:1/0'
    assert mask_url('postgres://u:pw@h/db') == 'postgres://u:***@h/db'
    assert mask_url('sqlite:///x.db') == 'sqlite:///x.db'


# The README's configuration table, held to settings.SETTINGS.

def readme_rows():
    """The README's configuration table as {setting: (environment, default, meaning)}."""
    text = README.read_text(encoding='utf-8')
    section = text.split('\n## Configuration\n', 1)[1].split('\n## ', 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith('| `'):
            name, *cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
            assert name.strip('`') not in rows, '%s is listed twice in the README' % name
            rows[name.strip('`')] = tuple(cells)
    return rows


def documented(setting):
    """The README row a setting should have: its environment names, default and help."""
    default = setting.default
    if isinstance(default, bool):
        default = str(default).lower()
    elif isinstance(default, float) and default.is_integer():
        default = '%d' % default
    return (', '.join('`%s`' % name for name in setting.env_names),
            '`%s`' % default if default != '' else '', setting.help)


def readme_line(setting):
    return '| `%s` | %s |' % (setting.name, ' | '.join(documented(setting)))


def test_every_setting_is_in_the_readme():
    rows = readme_rows()
    missing = [readme_line(s) for s in SETTINGS if s.name not in rows]
    assert not missing, 'add to the README configuration table:\n' + '\n'.join(missing)


def test_the_readme_lists_no_setting_that_does_not_exist():
    unknown = set(readme_rows()) - {s.name for s in SETTINGS}
    assert not unknown, 'the README lists settings settings.py does not have: %s' % unknown


@pytest.mark.parametrize('setting', SETTINGS, ids=lambda s: s.name)
def test_the_readme_shows_the_environment_default_and_meaning(setting):
    row = readme_rows().get(setting.name)
    if row is not None:
        assert row == documented(setting), 'README row should be:\n' + readme_line(setting)


@pytest.mark.parametrize('setting', SETTINGS, ids=lambda s: s.name)
def test_the_help_says_what_the_environment_decides(setting):
    if setting.secret:
        assert setting.help.startswith('**environment only**')
    if setting.implied_by:
        assert '`%s` set means `%s`' % setting.implied_by in setting.help
    if setting.choices:
        assert all('`%s`' % choice in setting.help for choice in setting.choices)


def test_the_settings_object_is_the_table():
    assert [f for f in Settings.__dataclass_fields__][:len(SETTINGS)] == [s.name for s in SETTINGS]
    assert all(getattr(Settings(), s.name) == s.default for s in SETTINGS)


# Each environment name of the table is read, and secrets never shown.

SAMPLES = {'database_url': 'postgres://u@db.example/app', 'mail_from': 'r@example.org',
           'public_url': 'https://reports.example', 'timezone': 'Europe/Lisbon',
           'operator_email': 'ops@example.org', 'api_tokens': 'a-token-of-16-chars',
           'queue_path': '/srv/queue.db', 'outbox_dir': '/srv/outbox',
           'reports_dir': '/srv/reports', 'report_paths': '/srv/sql',
           'redis_url': 'redis://127.0.0.1:2/0',
           'webhook_url': 'https://hooks.example/T0/B0/x', 'webhook_events': 'failed,late'}
# What a sample value needs beside it; secrets under their last name, so that
# a test of the first name overrides them.
COMPANIONS = {'NIGHTSHIFT_REDIS_URL': 'redis://127.0.0.1:1/0',
              'NIGHTSHIFT_SMTP_HOST': 'smtp.example', 'NIGHTSHIFT_SMTP_PASSWORD': 'pw-of-user'}


def sample(setting):
    if setting.name in SAMPLES:
        return SAMPLES[setting.name]
    if setting.choices:
        return [c for c in setting.choices if c != setting.default][0]
    if setting.type is bool:
        return not setting.default
    if setting.type is str:
        return 'sample-' + setting.name
    return setting.type(setting.default + 1)


@pytest.mark.parametrize('setting, variable', [
    (s, name) for s in SETTINGS for name in s.env_names],
    ids=lambda item: item if isinstance(item, str) else item.name)
def test_each_environment_name_of_the_table_is_read(tmp_path, setting, variable):
    value = sample(setting)
    environ = dict(COMPANIONS, **{variable: str(value).lower() if setting.type is bool
                                  else str(value)})
    settings = load_settings(write(tmp_path, '[nightshift]\n'), environ=environ)
    assert getattr(settings, setting.name) == value


def test_describe_masks_every_secret(tmp_path):
    environ = dict(COMPANIONS, SMTP_PASSWORD='smtp-secret', NIGHTSHIFT_SECRET_KEY='link-secret',
                   NIGHTSHIFT_API_TOKEN='token-secret-0123456789')
    settings = load_settings(write(tmp_path, '[nightshift]\n'), environ=environ)
    shown = settings.describe()
    for secret in ('smtp-secret', 'link-secret', 'token-secret-0123456789'):
        assert secret not in shown
        assert secret in settings.secrets()
    assert 'secret_key=***' in shown


@pytest.mark.parametrize('name', [s.name for s in SETTINGS if s.secret])
def test_no_secret_is_read_from_the_file(tmp_path, name):
    with pytest.raises(SettingsError, match='%s: secrets are read only from the environment'
                       % name):
        load_settings(write(tmp_path, '[nightshift]\n%s = x\n' % name), environ={})


# database_url: the schemes playhouse.db_url knows, of the families Nightshift speaks.

@pytest.mark.parametrize('url, engine', [
    ('postgresql+pool://u@db.example/app', 'postgres'),
    ('cockroachdb://u@db.example:26257/app', 'postgres'),
    ('mysqlconnector://u@db.example/app', 'mysql'),
    ('mariadb://u@db.example/app', 'mysql'),
    ('sqlite+pool:///var/state.db', 'sqlite'),
])
def test_every_peewee_database_scheme_is_accepted(tmp_path, url, engine):
    settings = load_settings(write(tmp_path, '[nightshift]\n'), environ={'DATABASE_URL': url})
    default = settings.source('default')
    assert default.engine == engine
    assert '+' not in default.url.split('://')[0]
    if engine == 'sqlite':
        assert settings.database_url == 'sqlite+pool:///%s' % (tmp_path / 'var' / 'state.db')
        assert default.url == 'sqlite:///%s' % (tmp_path / 'var' / 'state.db')
    else:
        assert settings.database_url == url


def test_an_unknown_database_scheme_names_the_ones_there_are(tmp_path):
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, '[nightshift]\n'),
                      environ={'DATABASE_URL': 'oracle://u:hunter2@db.example/app'})
    message = str(info.value)
    assert message.startswith('database_url: ')
    assert 'postgresql+pool' in message and 'cockroachdb' in message
    assert 'hunter2' not in message


class Elsewhere(peewee.Database):
    """A database of no family models.open_database speaks."""


def test_a_scheme_peewee_knows_of_another_family_is_refused(tmp_path):
    db_url.register_database(Elsewhere, 'elsewhere')
    try:
        with pytest.raises(SettingsError) as info:
            load_settings(write(tmp_path, '[nightshift]\n'),
                          environ={'DATABASE_URL': 'elsewhere://db.example/app'})
    finally:
        del db_url.schemes['elsewhere']
    assert 'database_url: elsewhere:// opens a Elsewhere' in str(info.value)
    assert 'SQLite, PostgreSQL or MySQL' in str(info.value)
