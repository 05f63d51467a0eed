"""Hardening: schedule limits, DST intervals, source-routed addresses, TLS
Redis as Heroku sets it up, export to standard output, the oversize mail."""
import os
import subprocess
import sys
from datetime import datetime as dt

import pytest
import webtest

import demo
import runs
from conftest import ROOT
from mail import check_address, compose
from models import Run
from reports import registry
from settings import SettingsError

# --- addresses (issue item 15) ----------------------------------------------


@pytest.fixture
def fenced(make_settings, database, database_url, redis_url, smtp_sink):
    """An app that only mails example.org."""
    from server import create_app
    from tasks import Jobs
    settings = make_settings({
        'DATABASE_URL': database_url, 'REDIS_URL': redis_url, 'SMTP_HOST': '127.0.0.1',
        'SMTP_PORT': str(smtp_sink.port), 'NIGHTSHIFT_SMTP_SECURITY': 'none'},
        allowed_domains='example.org', retry_delay=0)
    jobs = Jobs(settings)
    return settings, webtest.TestApp(create_app(settings, jobs))


@pytest.mark.parametrize('address, words', [
    ('victim%evil.org@example.org', 'routes mail through another host'),
    ('evil.org!victim@example.org', 'routes mail through another host'),
    ('a!b@example.org', 'routes mail through another host'),
    ('x' * 65 + '@example.org', 'longer than 64'),
])
def test_source_routed_and_overlong_addresses_do_not_pass_allowed_domains(
        fenced, address, words):
    settings, app = fenced
    res = app.post_json('/api/runs', {'report': 'customers',
                                      'to': ['ok@example.org', address]}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'to[1]')
    assert words in res.json['message']
    assert Run.select().count() == 0


def test_ordinary_addresses_still_pass(fenced):
    settings, app = fenced
    to = ['x' * 64 + '@example.org', "o'brien+reports@example.org", 'a.b-c_d@EXAMPLE.org']
    res = app.post_json('/api/runs', {'report': 'customers', 'to': to})
    assert res.status_int == 202
    assert Run.get_by_id(res.json['id']).recipients == to


@pytest.mark.parametrize('key, value', [
    ('operator_email', 'ops%evil.org@example.org'),
    ('operator_email', 'ops@example.org, boss@example.org'),
    ('operator_email', 'x' * 65 + '@example.org'),
    ('mail_from', 'reports!evil@example.org'),
    ('mail_from', 'Reports <reports@example.org>'),
])
def test_operator_and_sender_addresses_follow_the_recipient_rule(make_settings, key, value):
    with pytest.raises(SettingsError, match=key):
        make_settings(**{key: value})


def test_a_development_sender_on_localhost_is_still_fine(make_settings):
    assert make_settings(mail_from='nightshift@localhost').mail_from == 'nightshift@localhost'
    assert check_address('ops@example.org') == 'ops@example.org'


# --- the oversize message ----------------------------------------------------

def test_the_link_email_compares_the_encoded_size_with_the_limit(tmp_path, database):
    path = tmp_path / 'orders-20250101-000000.zip'
    path.write_bytes(b'x' * 372_800)
    run = Run.create(report='orders', recipients=['a@example.org'], rows=9000, bytes=2_000_000)
    mail = compose(run, 'Orders', ['a@example.org'], str(path), 3.0,
                   link='https://reports.example/files/1', link_expires=dt(2025, 1, 8),
                   limit_mb=0.5)
    [line] = [li for li in mail.body.splitlines() if li.startswith('File:')]
    # 372,800 bytes are 497,068 in base64 and 510,150 with line breaks.
    assert line == ("File: orders-20250101-000000.zip is 372.8 KB: too large to attach. "
                    "As an attachment it would take 510.1 KB after base64 encoding, plus "
                    "headers, over the mail provider's 0.5 MB limit.")
    assert mail.attachment is None


# --- scripts/export.py -o - ------------------------------------------------------

def cli_env(settings, database_url, redis_url, tmp_path):
    config = tmp_path / 'cli.ini'
    config.write_text('[nightshift]\nreports_dir = %s\n' % settings.reports_dir)
    return dict(os.environ, NIGHTSHIFT_CONFIG=str(config), DATABASE_URL=database_url,
                REDIS_URL=redis_url)


def test_export_dash_writes_to_standard_output(app, settings, database_url, redis_url,
                                               tmp_path):
    demo.seed(customers=20, orders=700)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'export.py'), 'orders',
         '-p', 'status=paid', '-o', '-'],
        cwd=tmp_path, env=cli_env(settings, database_url, redis_url, tmp_path),
        capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == app.get('/reports/orders.csv', {'status': 'paid'}).body
    assert b'rows' in done.stderr  # the summary, out of the data's way
    assert not (tmp_path / '-').exists()
