import pytest

from settings import Settings, SettingsError, load_settings, mask_url


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
