"""Security rules with hostile values, against the real app and parts."""
import base64
import logging
import os
import subprocess
import sys

import pytest
import webtest

import demo
import runs
import turns
from conftest import ROOT, attachment, free_port, run_queued, web_app
from demo import Customer, Order
from models import Run
from reports import Registry
from server import check_exposure, create_app, is_loopback
from settings import SettingsError

TOKEN = 'tok-0123456789abcdef-one'
OTHER = 'tok-fedcba9876543210-two'


@pytest.fixture
def secured(make_jobs):
    jobs = make_jobs(env={'NIGHTSHIFT_API_TOKEN': '%s,%s' % (TOKEN, OTHER)},
                     allowed_domains='example.org, corp.example')
    return jobs.settings, jobs, web_app(jobs)


def basic(password, user='me'):
    return 'Basic ' + base64.b64encode(('%s:%s' % (user, password)).encode()).decode()


@pytest.mark.parametrize('header', [
    None, '', 'Bearer', 'Bearer ', 'Bearer ' + TOKEN[:-1], 'Bearer ' + TOKEN + 'x',
    'Bearer ' + TOKEN.upper(), 'Bearer  ' + TOKEN + ' extra', 'Token ' + TOKEN, TOKEN,
    basic('wrong'), basic(''), basic(TOKEN[1:]), 'Basic not-base64!!', 'Basic ' + TOKEN,
])
def test_wrong_missing_and_almost_right_tokens_get_401(secured, header):
    settings, jobs, app = secured
    headers = {} if header is None else {'Authorization': header}
    for path in ('/api/reports', '/api/runs', '/reports/orders.csv', '/api/schedules'):
        res = app.get(path, headers=headers, expect_errors=True)
        assert res.status_int == 401, (path, header)
        assert res.json['error'] == 'unauthorized'
        assert res.headers['WWW-Authenticate'].startswith('Basic realm="Nightshift"')
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org']},
                        headers=headers, expect_errors=True)
    assert res.status_int == 401
    assert Run.select().count() == 0


@pytest.mark.parametrize('header', ['Bearer ' + TOKEN, 'Bearer ' + OTHER, basic(TOKEN),
                                    basic(OTHER, user='anyone')])
def test_every_token_works_as_bearer_or_basic_password(secured, header):
    settings, jobs, app = secured
    assert app.get('/api/reports', headers={'Authorization': header}).status_int == 200


def test_health_spec_and_signed_links_need_no_token(secured):
    settings, jobs, app = secured
    assert app.get('/healthz').status_int == 200
    assert app.get('/api/openapi.json').json['openapi'].startswith('3.')
    res = app.get('/files/1?expires=1&sig=x', expect_errors=True)
    assert res.status_int == 403  # the signature, not a token, guards it


def test_writes_from_another_site_are_refused(secured):
    """A browser logged in with Basic auth sends the credentials with a form
    another site posts here; such writes carry that site's Origin."""
    settings, jobs, secured_app = secured
    auth = {'Authorization': basic(TOKEN)}
    body = {'report': 'customers', 'to': ['a@example.org']}
    for headers in ({'Origin': 'https://evil.example'}, {'Origin': 'null'},
                    {'Sec-Fetch-Site': 'cross-site'}, {'Sec-Fetch-Site': 'same-site'}):
        res = secured_app.post_json('/api/runs', body, headers=dict(auth, **headers),
                                    expect_errors=True)
        assert (res.status_int, res.json['error']) == (403, 'cross_site'), headers
    assert Run.select().count() == 0
    # The page's own requests: same origin.
    res = secured_app.post_json('/api/runs', body, headers=dict(
        auth, Origin='http://localhost:80', **{'Sec-Fetch-Site': 'same-origin'}))
    assert res.status_int == 202
    # Behind a proxy that sends its own Host, the public URL is the page's origin.
    res = secured_app.post_json('/api/runs', body, headers=dict(
        auth, Origin=settings.public_url, Host='127.0.0.1:9999'))
    assert res.status_int == 202
    # Reading stays possible from anywhere with the token (e.g. a dashboard).
    assert secured_app.get('/api/runs', headers=dict(auth, Origin='https://x.example')).json


def test_without_a_token_only_loopback_host_names_are_served(app):
    """DNS rebinding: a page on evil.example whose name now points at
    127.0.0.1 would send Host: evil.example."""
    for host in ('evil.example', 'evil.example:8080', '127.0.0.1.evil.example'):
        res = app.get('/api/runs', headers={'Host': host}, expect_errors=True)
        assert (res.status_int, res.json['error']) == (403, 'misdirected'), host
    for host in ('localhost:8080', '127.0.0.1:8080', '[::1]:8080', 'localhost'):
        assert app.get('/api/runs', headers={'Host': host}).status_int == 200, host
    # The client writes X-Forwarded-Host too: naming loopback there opens nothing.
    res = app.get('/outbox', headers={'Host': 'evil.example:8080',
                                      'X-Forwarded-Host': 'localhost:8080'},
                  expect_errors=True)
    assert (res.status_int, res.json['error']) == (403, 'misdirected')
    res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                        headers={'Host': 'localhost:8080', 'Origin': 'http://evil.example',
                                 'X-Forwarded-Host': 'evil.example'}, expect_errors=True)
    assert (res.status_int, res.json['error']) == (403, 'cross_site')
    assert Run.select().count() == 0


@pytest.mark.parametrize('path', ['/', '/api/runs', '/static/app.js', '/no/such/page',
                                  '/reports/customers.csv'])
def test_no_other_site_may_frame_the_page_or_inject_scripts(app, path):
    """Clickjacking: the page's buttons send mail, so it must not show inside
    another site's frame; its scripts and styles come from its own files."""
    res = app.get(path, expect_errors=True)
    assert res.status_int in (200, 404), path
    assert res.headers['X-Frame-Options'] == 'DENY'
    policy = dict(part.strip().split(' ', 1)
                  for part in res.headers['Content-Security-Policy'].split(';'))
    assert policy['frame-ancestors'] == "'none'"
    assert policy['default-src'] == "'self'"
    assert res.headers['X-Content-Type-Options'] == 'nosniff'


def test_no_token_means_loopback_only():
    from settings import Settings
    open_settings = Settings()
    for host in ('127.0.0.1', 'localhost', '::1', '127.0.0.2'):
        assert is_loopback(host)
        check_exposure(host, open_settings)
    for host in ('0.0.0.0', '::', '10.0.0.5', 'example.org'):
        with pytest.raises(SettingsError, match='NIGHTSHIFT_API_TOKEN'):
            check_exposure(host, open_settings)
    check_exposure('0.0.0.0', Settings(api_tokens=TOKEN))


def test_server_refuses_to_start_exposed_without_a_token(tmp_path):
    config = tmp_path / 'c.ini'
    config.write_text('[nightshift]\ndatabase_url = sqlite:///x.db\n')
    env = dict(os.environ, NIGHTSHIFT_CONFIG=str(config), NIGHTSHIFT_API_TOKEN='',
               REDIS_URL='', SMTP_HOST='', DATABASE_URL='')
    done = subprocess.run([sys.executable, 'server.py', '--host', '0.0.0.0', '--port',
                           str(free_port())], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert 'refusing to listen on 0.0.0.0 without an API token' in done.stderr
    assert not (tmp_path / 'x.db').exists()


def test_short_tokens_are_refused_at_start(make_settings):
    with pytest.raises(SettingsError, match='at least 16'):
        make_settings({'NIGHTSHIFT_API_TOKEN': 'short'})


@pytest.mark.parametrize('address, field', [
    ('a@example.org, b@other.org', 'to[0]'),
    ('a@example.org\r\nBcc: spy@other.org', 'to[0]'),
    ('a@example.org\n', 'to[0]'),
    ('a@example.org\x00', 'to[0]'),
    ('"Boss" <a@example.org>', 'to[0]'),
    ('a@еxample.org', 'to[0]'),  # Cyrillic e
    ('a@example.org.evil.com', 'to[0]'),
    ('a@sub.example.org', 'to[0]'),  # only the listed domains
    ('a@other.org', 'to[0]'),
])
def test_hostile_and_foreign_recipients_are_refused(secured, address, field):
    settings, jobs, app = secured
    res = app.post_json('/api/runs', {'report': 'orders', 'to': [address]},
                        headers={'Authorization': 'Bearer ' + TOKEN}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field)
    assert Run.select().count() == 0


def test_allowed_domains_accept_their_own(secured, smtp_sink):
    settings, jobs, app = secured
    res = app.post_json('/api/runs', {'report': 'customers',
                                      'to': ['a@example.org', 'b@CORP.example']},
                        headers={'Authorization': 'Bearer ' + TOKEN})
    assert res.status_int == 202


def test_formula_cells_are_neutralised_in_the_emailed_file(settings, jobs, app, database,
                                                           smtp_sink):
    hostile = ['=HYPERLINK("http://evil.example","click")', '@SUM(A1:A9)', '-2+3', '-12.5',
               '+1', '|calc', '%0A', '\t=1', 'plain']
    for name in hostile:
        customer = Customer.create(name=name, email='x@example.org')
        Order.create(customer=customer, status='paid', amount='1.00')
    run_id = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org']}).json['id']
    run_queued(jobs)
    name, data = attachment(smtp_sink.messages[0]['message'])
    import csv
    import io
    rows = list(csv.reader(io.StringIO(data.decode('utf-8-sig'), newline='')))
    assert [r[2] for r in rows[1:]] == [
        '\'=HYPERLINK("http://evil.example","click")', "'@SUM(A1:A9)", "'-2+3", '-12.5',
        "'+1", "'|calc", "'%0A", "'\t=1", 'plain']
    assert Run.get_by_id(run_id).escape_formulas is True


def test_a_report_can_opt_out_of_escaping(settings, jobs, database, smtp_sink):
    from tasks import Jobs
    raw = Registry()

    @raw.report('formulas', 'Formulas', escape_formulas=False)
    def build():
        return Customer.select(Customer.name)

    Customer.create(name='=SUM(1,2)', email='a@example.org')
    app = webtest.TestApp(create_app(settings, Jobs(settings, registry=raw), registry=raw))
    assert app.get('/reports/formulas.csv').body.endswith(b'"=SUM(1,2)"\n')
    assert app.get('/reports/formulas.csv?escape_formulas=true').body.endswith(
        b'"\'=SUM(1,2)"\n')
    run = runs.create_run(raw, settings, 'formulas', {}, ['a@example.org'])
    assert run.escape_formulas is False


def test_row_cap_cuts_and_says_so(make_jobs, smtp_sink):
    demo.seed(customers=5, orders=40)
    jobs = make_jobs(max_rows=25)
    settings = jobs.settings
    run = runs.create_run(jobs.registry, settings, 'orders', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs)
    message = smtp_sink.messages[0]['message']
    assert 'cut' in message['Subject']
    assert 'cut at 25 rows' in message.get_body(('plain',)).get_content()
    assert attachment(message)[1].count(b'\n') == 26
    run = Run.get_by_id(run.id)
    assert (run.rows, run.truncated) == (25, True)
    assert web_app(jobs).get('/reports/orders.csv').body.count(b'\n') == 26


def test_runs_of_one_report_are_bounded(make_jobs):
    demo.seed(customers=5, orders=10)
    jobs = make_jobs(max_concurrent_per_report=1)
    settings = jobs.settings
    busy = runs.create_run(jobs.registry, settings, 'orders', {}, ['a@example.org'])
    assert runs.claim(busy.id, busy.created_at, 'orders', 1)  # a worker is on it
    waiting = runs.create_run(jobs.registry, settings, 'orders', {}, ['b@example.org'])
    other = runs.create_run(jobs.registry, settings, 'customers', {}, ['c@example.org'])
    for run in (waiting, other):
        jobs.enqueue_run(run)
    run_queued(jobs, limit=2)
    assert Run.get_by_id(waiting.id).status == 'queued'
    assert Run.get_by_id(waiting.id).attempts == 0  # waiting is not failing
    assert Run.get_by_id(other.id).status == 'delivered'
    # It waits for a turn (no timed retry), and gets the one freed next.
    assert jobs.huey.scheduled_count() == 0 and jobs.huey.pending_count() == 0
    assert [r.id for r in turns.waiting('orders')] == [waiting.id]
    Run.update(status='delivered').where(Run.id == busy.id).execute()
    jobs.pass_turn(busy.id)
    run_queued(jobs)
    assert Run.get_by_id(waiting.id).status == 'delivered'


def test_crlf_in_a_report_title_never_reaches_a_header(settings, jobs, database, smtp_sink):
    from tasks import Jobs
    evil = Registry()

    @evil.report('evil', 'Evil\r\nBcc: spy@other.org')
    def build():
        return Customer.select(Customer.name)

    Customer.create(name='a', email='a@example.org')
    jobs = Jobs(settings, registry=evil)
    run = runs.create_run(evil, settings, 'evil', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    assert sent['to'] == ['a@example.org']
    assert 'Bcc' not in sent['message'] and '\n' not in sent['message']['Subject']


def test_secrets_stay_out_of_errors_logs_and_responses(make_settings, service_env, caplog):
    from loopback import SmtpSink
    from tasks import Jobs
    smtp_password, redis_password = 'smtp-pw-never-shown', 'redis-pw-never-shown'
    auth_sink = SmtpSink()
    auth_sink.start(auth=True)
    try:
        settings = make_settings(dict(
            service_env, REDIS_URL='redis://:%s@127.0.0.1:%d/0' % (redis_password, free_port()),
            SMTP_PORT=str(auth_sink.port), SMTP_USER='apikey', SMTP_PASSWORD=smtp_password,
            NIGHTSHIFT_API_TOKEN=TOKEN))
        from settings import install_log_redaction
        install_log_redaction(settings)
        caplog.handler.addFilter(__import__('settings').RedactSecrets(settings))
        caplog.set_level(logging.DEBUG)
        jobs = Jobs(settings)
        app = web_app(jobs)
        headers = {'Authorization': 'Bearer ' + TOKEN}
        res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                            headers=headers, expect_errors=True)
        assert res.status_int == 503  # that Redis is not there
        health = app.get('/healthz', expect_errors=True)
        # The SMTP login fails for good: its error must not carry the password.
        run = runs.create_run(jobs.registry, settings, 'customers', {}, ['a@example.org'])
        Customer.create(name='x', email='x@example.org')
        try:
            jobs.execute(run.id)
        except Exception:
            pass
        listed = app.get('/api/runs', headers=headers)
        shown = ' '.join([res.text, health.text, listed.text, caplog.text,
                          str([r.error for r in Run.select()])])
        assert '535' in shown  # the server's refusal is recorded...
        for secret in (smtp_password, redis_password, TOKEN):
            assert secret not in shown  # ...the secrets are not
        assert settings.redact('x %s y' % smtp_password) == 'x *** y'
    finally:
        auth_sink.stop()


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_every_response_matches_the_spec(tmp_path):
    """Property-based requests against the live app served by waitress."""
    import shutil
    import time
    import urllib.request
    st = shutil.which('st', path=os.path.dirname(sys.executable))
    assert st, 'schemathesis is in requirements-dev.txt'
    config = tmp_path / 'st.ini'
    config.write_text('[nightshift]\ndatabase_url = sqlite:///st.db\nqueue_path = q.db\n'
                      'outbox_dir = outbox\nreports_dir = reports\n'
                      '[source:demo]\nurl = sqlite:///demo.db\n')
    env = dict(os.environ, NIGHTSHIFT_CONFIG=str(config), NIGHTSHIFT_API_TOKEN=TOKEN,
               REDIS_URL='', SMTP_HOST='', DATABASE_URL='')
    subprocess.run([sys.executable, 'scripts/seed.py', '--orders', '300'], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    port = free_port()
    with open(tmp_path / 'server.log', 'wb') as log:
        server = subprocess.Popen([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = 'http://127.0.0.1:%d' % port
        for _ in range(100):
            try:
                urllib.request.urlopen(base + '/healthz', timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        done = subprocess.run(
            [st, 'run', base + '/api/openapi.json', '-H', 'Authorization: Bearer ' + TOKEN,
             '--checks', 'all', '--exclude-checks', 'positive_data_acceptance',
             '--max-examples', '40', '--seed', '20261124', '--no-shrink',
             '--request-timeout', '20'],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-6000:]
        assert 'passed' in done.stdout
    finally:
        server.terminate()
        server.wait(20)
    log_text = (tmp_path / 'server.log').read_text()
    assert 'Traceback' not in log_text, log_text[-3000:]
    assert TOKEN not in log_text
