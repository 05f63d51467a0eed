"""The promises a change could quietly break, one test each.

Every test here was written against a mutant of the code (scripts/mutate.py
lists them) that the rest of the suite let through: each states the promise
in its name and fails when the promise is broken.
"""
import csv
import datetime
import io
import logging
import socket
import socketserver
import textwrap
import threading
import urllib.parse

import pytest

import demo
import links
import runfiles
import runs
import schedules
import sqlexport
from conftest import attachment, demo_catalogue, run_queued
from demo import Customer
from filestore import LocalFileStore
from mail import Mail, MailError, SmtpMailer
from models import Delivery, Run, Schedule, db_now, utcnow
from reports import Catalogue
from sources import ReportSQLError

registry = demo_catalogue()
FORMULA = '=HYPERLINK("http://evil.example","click")'


@pytest.fixture
def shop(database):
    demo.seed(customers=12, orders=60)


def statuses(run_id):
    return {d.address: d.status for d in Delivery.select().where(Delivery.run == run_id)}


def execute(jobs, run_id, mailer=None):
    return runs.execute_run(run_id, jobs.registry, jobs.settings, mailer or jobs.mailer,
                            jobs.store)


def cells(text):
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


# --- Formulas are escaped unless someone with the right asks otherwise -------

def test_a_download_escapes_formulas_by_default(app, shop):
    Customer.create(name=FORMULA, email='formula@example.org')
    res = app.get('/reports/customers.csv')
    found = cells(res.body.decode('utf-8-sig'))
    assert "'" + FORMULA in found
    assert FORMULA not in found


def test_a_run_escapes_formulas_by_default(app, jobs, shop, smtp_sink):
    Customer.create(name=FORMULA, email='formula@example.org')
    res = app.post_json('/api/runs', {'report': 'customers', 'to': ['ops@example.org']})
    run_queued(jobs)
    assert Run.get_by_id(res.json['id']).status == 'delivered'
    _, data = attachment(smtp_sink.messages[0]['message'])
    found = cells(data.decode('utf-8-sig'))
    assert "'" + FORMULA in found and FORMULA not in found


# --- A signed link opens its own run's file and nothing else -----------------

def test_a_signed_link_opens_only_its_own_runs_file(app, jobs, settings, shop):
    ids = [runs.create_run(registry, settings, 'customers', {}, ['ops@example.org']).id
           for _ in range(2)]
    for run_id in ids:
        assert execute(jobs, run_id).status == 'delivered'
    mine, other = (Run.get_by_id(run_id) for run_id in ids)
    assert mine.file_key and other.file_key  # both files exist and are kept
    url = urllib.parse.urlsplit(links.download_url(
        settings, mine, utcnow() + datetime.timedelta(days=1)))
    assert app.get('%s?%s' % (url.path, url.query)).status_int == 200
    res = app.get('/files/%d?%s' % (other.id, url.query), expect_errors=True)
    assert res.status_int == 403
    assert res.json['error'] == 'forbidden'


# --- The processes install log redaction themselves --------------------------

SECRET = 'signing-key-never-in-logs-7f3a'


@pytest.fixture
def log_lines():
    """What a handler on the root logger (as an operator's setup has) prints."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def secret_env(settings, smtp_port):
    return {'DATABASE_URL': settings.database_url, 'REDIS_URL': settings.redis_url,
            'NIGHTSHIFT_SOURCE_DEMO_URL': settings.database_url,
            'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(smtp_port),
            'NIGHTSHIFT_SMTP_SECURITY': 'none', 'MAIL_FROM': 'reports@nightshift.test',
            'NIGHTSHIFT_SECRET_KEY': SECRET}


def test_a_starting_consumer_redacts_secrets_from_logs(settings, make_settings, smtp_sink,
                                                        log_lines):
    from huey.consumer import Worker
    from tasks import Jobs
    jobs = Jobs(make_settings(secret_env(settings, smtp_sink.port)))
    # What a consumer's worker does first: the startup hooks, and nothing else.
    Worker(jobs.huey, threading.Event(), 0.1, 1.0, 1.15).initialize()
    logging.getLogger('nightshift.test').warning('the key is %s', SECRET)
    assert 'the key is ***' in log_lines.getvalue()
    assert SECRET not in log_lines.getvalue()


def test_the_web_server_redacts_secrets_from_logs(settings, smtp_sink, tmp_path, monkeypatch,
                                                  log_lines):
    import server
    for name, value in secret_env(settings, smtp_sink.port).items():
        monkeypatch.setenv(name, value)
    config = tmp_path / 'server.ini'
    config.write_text('[nightshift]\nreports_dir = %s\n' % settings.reports_dir)
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        # The port is taken: main() sets everything up, then exits at the bind.
        with pytest.raises(SystemExit):
            server.main(['--config', str(config), '--port', str(busy.getsockname()[1])])
    logging.getLogger('nightshift.test').warning('the key is %s', SECRET)
    assert 'the key is ***' in log_lines.getvalue()
    assert SECRET not in log_lines.getvalue()


# --- A retry sends the file it already built ---------------------------------

def test_a_retry_mails_the_file_already_built_not_a_new_one(jobs, settings, shop, smtp_sink):
    run_id = runs.create_run(registry, settings, 'customers', {}, ['ops@example.org']).id
    smtp_sink.data_reply = '451 4.3.0 try again later'
    assert execute(jobs, run_id).status == 'retry'
    built = Run.get_by_id(run_id)
    # The data changes between the attempts: the recipients must still get
    # the file of the first one (what the run recorded), not a new report.
    Customer.create(name='Added later', email='later@example.org')
    smtp_sink.data_reply = None
    assert execute(jobs, run_id).status == 'delivered'
    _, data = attachment(smtp_sink.messages[0]['message'])
    assert b'Added later' not in data
    assert len(data) == built.file_bytes
    assert Run.get_by_id(run_id).file_key == built.file_key


# --- A schedule's new timing counts from the change ---------------------------

T0 = datetime.datetime(2026, 3, 2, 5, 0)
TUESDAY_NOON = datetime.datetime(2026, 3, 3, 12, 0)
MINUTE = datetime.timedelta(minutes=1)
NIGHTLY = {'name': 'nightly', 'report': 'customers', 'to': ['ops@example.org'],
           'cron': '0 6 * * *', 'timezone': 'UTC'}


def schedule_runs():
    return list(Run.select().where(Run.schedule == 'nightly').order_by(Run.id))


def test_editing_a_schedules_timing_does_not_catch_up_slots_of_the_new_timing(
        jobs, settings, shop):
    schedule = schedules.create_schedule(jobs.registry, settings, NIGHTLY, T0)
    schedules.tick(jobs.registry, settings, jobs, TUESDAY_NOON)
    before = len(schedule_runs())  # Monday's and Tuesday's 06:00, caught up
    schedule = Schedule.get_by_id(schedule.id)
    schedules.update_schedule(jobs.registry, settings, schedule, {'cron': '0 7 * * *'},
                              TUESDAY_NOON + MINUTE)
    # Tuesday 07:00 passed before the change: it is not a slot to run.
    assert schedules.tick(jobs.registry, settings, jobs, TUESDAY_NOON + 2 * MINUTE) == []
    assert len(schedule_runs()) == before


def test_resyncing_a_changed_config_schedule_does_not_catch_up_slots_of_the_new_timing(
        jobs, settings, shop):
    declared = {'nightly': schedules.clean(jobs.registry, settings, NIGHTLY)}
    schedules.sync_config(declared, T0)
    schedules.tick(jobs.registry, settings, jobs, TUESDAY_NOON)
    before = len(schedule_runs())
    changed = {'nightly': schedules.clean(jobs.registry, settings,
                                          dict(NIGHTLY, cron='0 7 * * *'))}
    schedules.sync_config(changed, TUESDAY_NOON + MINUTE)
    assert schedules.tick(jobs.registry, settings, jobs, TUESDAY_NOON + 2 * MINUTE) == []
    assert len(schedule_runs()) == before


# --- SMTP replies: 5xx is final, 4xx is tried again ---------------------------

class ScriptedSmtp(socketserver.ThreadingTCPServer):
    """An SMTP server on loopback answering each command from a script, so a
    test can have any stage reply anything (aiosmtpd only lets a few)."""
    daemon_threads = True
    allow_reuse_address = True
    DEFAULT = {'greeting': '220 scripted ESMTP', 'EHLO': '250-scripted\r\n250 AUTH PLAIN',
               'AUTH': '235 2.7.0 ok', 'MAIL': '250 ok', 'RCPT': '250 ok', 'DATA': '354 go on',
               'dot': '250 2.0.0 queued', 'QUIT': '221 bye', 'RSET': '250 ok',
               'NOOP': '250 ok'}

    def __init__(self, **script):
        self.script = dict(self.DEFAULT, **script)
        super().__init__(('127.0.0.1', 0), _SmtpSession)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]


class _SmtpSession(socketserver.StreamRequestHandler):
    def reply(self, key):
        self.wfile.write(self.server.script[key].encode() + b'\r\n')

    def handle(self):
        self.reply('greeting')
        if not self.server.script['greeting'].startswith('2'):
            return
        in_data = False
        for line in self.rfile:
            text = line.decode('utf-8', 'replace').rstrip('\r\n')
            if in_data:
                if text == '.':
                    in_data = False
                    self.reply('dot')
                continue
            verb = text.split(' ', 1)[0].split(':', 1)[0].upper()
            self.reply(verb if verb in self.server.script else 'NOOP')
            if verb == 'DATA' and self.server.script['DATA'].startswith('3'):
                in_data = True
            if verb == 'QUIT':
                return


def smtp_send(make_settings, script_server, login=False):
    env = {'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(script_server.port),
           'NIGHTSHIFT_SMTP_SECURITY': 'none', 'MAIL_FROM': 'reports@nightshift.test'}
    if login:
        env.update({'SMTP_USER': 'reports', 'SMTP_PASSWORD': 'not-the-password'})
    mail = Mail(['ops@example.org'], 'Report', 'Hello', None, '<promise@nightshift>')
    try:
        return SmtpMailer(make_settings(env, smtp_timeout=10)).send(mail)
    finally:
        script_server.shutdown()
        script_server.server_close()


@pytest.mark.parametrize('stage,reply,temporary', [
    ('greeting', '554 5.3.2 not accepting mail', False),
    ('greeting', '421 4.3.2 busy, try later', True),
    ('MAIL', '553 5.7.1 sender not allowed', False),
    ('MAIL', '451 4.3.0 try again later', True),
    ('AUTH', '535 5.7.8 bad credentials', False),
    ('AUTH', '534 5.7.9 mechanism too weak', False),
])
def test_smtp_5xx_replies_are_final_and_4xx_replies_are_temporary(make_settings, stage,
                                                                    reply, temporary):
    server = ScriptedSmtp(**{stage: reply})
    with pytest.raises(MailError) as caught:
        smtp_send(make_settings, server, login=stage == 'AUTH')
    assert caught.value.temporary is temporary
    assert reply.split(' ')[0] in str(caught.value)


def test_a_454_to_the_login_is_temporary(make_settings):
    server = ScriptedSmtp(AUTH='454 4.7.0 temporary authentication failure')
    with pytest.raises(MailError) as caught:
        smtp_send(make_settings, server, login=True)
    assert caught.value.temporary is True


def test_each_recipient_is_sent_only_on_2xx_refused_on_5xx_retried_on_4xx(
        jobs, settings, shop, smtp_sink):
    smtp_sink.refuse = {'busy@example.org': '450 4.2.1 mailbox busy',
                        'gone@example.org': '550 5.1.1 no such user'}
    to = ['busy@example.org', 'gone@example.org', 'ok@example.org']
    run_id = runs.create_run(registry, settings, 'customers', {}, to).id
    assert execute(jobs, run_id).status == 'retry'
    assert statuses(run_id) == {'busy@example.org': 'pending', 'gone@example.org': 'refused',
                                'ok@example.org': 'sent'}
    assert [m['to'] for m in smtp_sink.messages] == [['ok@example.org']]


# --- Deliveries: marked before SMTP, never failed after delivered -------------

class WatchingMailer(SmtpMailer):
    """Real SMTP; notes what the database says while the message is handed over."""
    seen = None

    def send(self, mail):
        self.seen = {d.address: d.status for d in Delivery.select()}
        return super().send(mail)


def test_recipients_are_marked_sending_before_the_smtp_transaction(jobs, settings, shop,
                                                                   smtp_sink):
    to = ['a@example.org', 'b@example.org']
    run_id = runs.create_run(registry, settings, 'customers', {}, to).id
    mailer = WatchingMailer(settings)
    assert execute(jobs, run_id, mailer).status == 'delivered'
    # A crash inside the transaction leaves "sending": the retry sends again
    # (same Message-ID) instead of taking the run for never mailed or done.
    assert mailer.seen == dict.fromkeys(to, 'sending')
    assert statuses(run_id) == dict.fromkeys(to, 'sent')


def stale_run(attempts):
    return Run.create(report='customers', params={}, recipients=['ops@example.org'],
                      status='running', attempts=attempts, trigger='api',
                      heartbeat_at=db_now() - datetime.timedelta(hours=1))


def test_two_reapers_at_once_queue_a_lost_run_once(settings, database):
    # The first reaper pauses between reading the lost runs and taking one
    # back (here: while it reports another run failed); a second reaper on
    # another consumer takes it back meanwhile.
    out_of_attempts = stale_run(settings.max_attempts)
    lost = stale_run(1)
    now = utcnow()
    queued = []

    def second_reaper(run_id):
        runs.reap(settings, now, queued.append)

    runs.reap(settings, now, queued.append, on_failed=second_reaper)
    assert queued == [lost.id]
    assert Run.get_by_id(out_of_attempts.id).status == 'failed'
    assert Run.get_by_id(lost.id).status == 'queued'


def test_a_delivered_run_is_never_marked_failed_afterwards(jobs, settings, shop):
    run_id = runs.create_run(registry, settings, 'customers', {}, ['ops@example.org']).id
    assert execute(jobs, run_id).status == 'delivered'
    assert runs.mark_failed(run_id, 'the reaper gave up on it') is False
    run = Run.get_by_id(run_id)
    assert (run.status, run.error) == ('delivered', None)


def test_an_attempt_taken_back_can_no_longer_write_to_its_run(settings, shop):
    run_id = runs.create_run(registry, settings, 'customers', {}, ['ops@example.org']).id
    first = runs.claim(run_id)
    runs.hand_back(run_id, 'worker went silent')
    second = runs.claim(run_id)
    with pytest.raises(runs.LostOwnership):
        first.update(status='failed', error='the old attempt gave up')
    second.update(status='delivered', finished_at=utcnow())
    with pytest.raises(runs.LostOwnership):
        first.update(status='failed', error='the old attempt gave up')
    run = Run.get_by_id(run_id)
    assert (run.status, run.attempts, run.error) == ('delivered', 2, 'worker went silent')


# --- Recipients ---------------------------------------------------------------

def test_a_recipient_given_twice_gets_one_copy(app, jobs, smtp_sink, shop):
    res = app.post_json('/api/runs', {'report': 'customers',
                                      'to': ['Ann@Example.org', 'ann@example.org',
                                             'ANN@EXAMPLE.ORG']})
    assert app.get(res.json['url']).json['to'] == ['Ann@Example.org']
    run_queued(jobs)
    assert [m['to'] for m in smtp_sink.messages] == [['Ann@Example.org']]


def test_exactly_max_recipients_are_accepted_and_one_more_refused(app, settings, shop):
    many = ['r%d@example.org' % i for i in range(settings.max_recipients + 1)]
    res = app.post_json('/api/runs', {'report': 'customers',
                                      'to': many[:settings.max_recipients]})
    assert len(app.get(res.json['url']).json['to']) == settings.max_recipients
    res = app.post_json('/api/runs', {'report': 'customers', 'to': many}, expect_errors=True)
    assert res.status_int == 400
    assert (res.json['error'], res.json['field']) == ('too_many', 'to')


# --- The local file store keeps to its folder ---------------------------------

@pytest.mark.parametrize('key', ['../outside.txt', 'run-1/../../outside.txt',
                                 '/outside.txt'])
def test_the_file_store_refuses_keys_that_leave_its_folder(tmp_path, key):
    outside = tmp_path / 'outside.txt'
    outside.write_text('not a report')
    store = LocalFileStore(str(tmp_path / 'reports'))
    for action in (store.exists, store.open_chunks, store.delete,
                   lambda k: store.save(k, str(outside))):
        with pytest.raises(ValueError):
            action(key)
    assert outside.read_text() == 'not a report'


# --- Report sources: read-only, values bound ----------------------------------

def test_a_postgresql_source_refuses_writes(settings, shop, database_url):
    if not database_url.startswith('postgres'):
        pytest.skip('the read-only transaction is PostgreSQL\'s')
    # nextval() writes (and is never rolled back): only a read-only
    # transaction refuses it; a statement check does not see it.
    sql = "SELECT nextval(pg_get_serial_sequence('customer', 'id')) AS taken"
    before = Customer.select().count()
    with pytest.raises(ReportSQLError) as caught:
        with sqlexport.open_query_csv(settings.source('demo'), sql, {}) as stream:
            b''.join(stream)
    assert 'read-only' in caught.value.message
    assert Customer.create(name='Next', email='next@example.org').id == before + 1


def test_report_parameters_are_bound_never_pasted_into_the_sql(settings, shop, tmp_path):
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'by_name.sql').write_text(textwrap.dedent('''\
        /*
        title: By name
        source: demo
        params:
          name: {type: str, required: true}
        */
        SELECT id, name FROM customer WHERE name = :name ORDER BY id
        '''))
    definition = Catalogue([str(folder)]).get('by_name')
    quoted = Customer.create(name="Ann O'Brien 100%", email='ann@example.org')

    def rows(name):
        with runfiles.open_report(definition, settings, definition.parse({'name': name}),
                              True, False) as stream:
            return list(csv.reader(io.StringIO(b''.join(stream).decode())))[1:]

    assert rows("x' OR 'a' = 'a") == []
    assert rows("Ann O'Brien 100%") == [[str(quoted.id), "Ann O'Brien 100%"]]
