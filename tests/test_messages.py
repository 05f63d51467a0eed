"""The message is the sender's: templates in a sandbox, headers that cannot be
injected, a Message-ID unique across installations, send rules. Every mail is
read back from the SMTP sink on loopback."""
import csv
import datetime
import io
import re

import pytest

import demo
import models
import runmessages
import runs
import schedules
from conftest import REPORTS_DIR, _emptied, attachment, demo_catalogue, run_queued, web_app
from models import Delivery, Run, Schedule
from reports import Catalogue


@pytest.fixture
def shop(database):
    demo.seed(customers=10, orders=50)


@pytest.fixture
def labels(tmp_path):
    """The demo reports and one with a free-text parameter."""
    folder = tmp_path / 'more-reports'
    folder.mkdir()
    (folder / 'labels.sql').write_text(
        "/*\ntitle: Labels\nsource: demo\nparams:\n  label: {type: str, default: x}\n*/\n"
        "SELECT id, name FROM customer WHERE name <> :label ORDER BY id\n")
    return Catalogue([REPORTS_DIR, str(folder)])


def send(jobs, report='orders', params=None, to=('ana@example.org',), **message):
    run = runs.create_run(jobs.registry, jobs.settings, report, params or {}, list(to),
                          message=message)
    jobs.enqueue_run(run)
    run_queued(jobs)
    return Run.get_by_id(run.id)


def headers_of(raw):
    """The raw header block's lines, folded lines joined (RFC 5322 2.2.3)."""
    head = raw.split(b'\r\n\r\n', 1)[0].decode('ascii')
    return re.sub(r'\r\n[ \t]', ' ', head).split('\r\n')


def orders_csv(body):
    return list(csv.reader(io.StringIO(body.decode('utf-8-sig'))))


# --- templates ----------------------------------------------------------------

def test_templates_make_subject_body_and_file_name(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params={'status': 'paid'},
               subject='{{ title }} for {{ date }}: {{ rows_text }} rows, {{ params.status }}',
               body='Hello,\n\n{{ rows }} {{ params.status }} orders ({{ size }}).\n'
                    'Run {{ run_id }}, file {{ file_name }}.',
               attachment_name='Orders {{ params.status }} {{ date.strftime("%d %b %Y") }}')
    assert run.status == 'delivered'
    [sent] = smtp_sink.messages
    message = sent['message']
    today = datetime.datetime.now(datetime.timezone.utc).date()
    paid = demo.Order.select().where(demo.Order.status == 'paid').count()
    assert message['Subject'] == 'Orders for %s: {:,} rows, paid'.format(paid) % today
    name, data = attachment(message)
    assert name == 'Orders paid %s.csv' % today.strftime('%d %b %Y') == run.file_name
    rows = orders_csv(data)
    assert len(rows) == paid + 1 and {r[4] for r in rows[1:]} == {'paid'}
    body = message.get_body(('plain',)).get_content()
    assert body.startswith('Hello,\n\n%d paid orders (' % paid)
    assert 'Run %d, file %s.' % (run.id, name) in body
    # Plain text only: no HTML part in which a value could be markup.
    assert [p.get_content_type() for p in message.walk()] == [
        'multipart/mixed', 'text/plain', 'text/csv']


def test_the_attachment_part_says_attachment_with_its_name(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    send(jobs, report='customers')
    [part] = [p for p in smtp_sink.messages[0]['message'].walk() if p.get_filename()]
    assert part.get_content_disposition() == 'attachment'
    assert re.fullmatch(r'customers-\d{8}-\d{6}\.csv', part.get_filename())
    assert 'attachment; filename="customers-' in part['Content-Disposition']


def test_defaults_are_the_message_nightshift_always_sent(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, report='customers')
    message = smtp_sink.messages[0]['message']
    assert message['Subject'] == 'Nightshift: Customers report (10 rows)'
    assert message['From'] == 'reports@nightshift.test'
    body = message.get_body(('plain',)).get_content()
    assert body.startswith('Customers report\n\nParameters: min_orders=0\nRows: 10\nSize: ')
    assert 'File: %s, attached\n\nRun #%d, sent by Nightshift.' % (run.file_name, run.id) \
        in body


def test_a_body_without_the_link_still_gives_it(make_jobs, shop, smtp_sink):
    jobs = make_jobs(mail_max_mb=0.001)  # every file goes as a download link
    send(jobs, report='customers', body='Hello, {{ rows }} customers.',
         attachment_name='clients')
    send(jobs, report='customers', body='Get it at {{ link }} (until {{ link_expires }}).')
    first, second = (m['message'] for m in smtp_sink.messages)
    assert [p for p in first.walk() if p.get_filename()] == []
    text = first.get_body(('plain',)).get_content()
    assert text.startswith('Hello, 10 customers.\n\nFile: clients.zip is ') \
        or text.startswith('Hello, 10 customers.\n\nFile: clients.csv is ')
    [link] = re.findall(r'http://\S+/files/1\?\S+', text)
    assert 'Download it here until' in text
    text = second.get_body(('plain',)).get_content()
    [link] = re.findall(r'http://\S+/files/2\?\S+', text)
    assert text.startswith('Get it at %s (until 20' % link) and text.count(link) == 1


def test_the_file_name_is_a_file_name(make_jobs, labels, shop, smtp_sink):
    jobs = make_jobs(registry=labels)
    run = send(jobs, report='labels', params={'label': '../../etc/Relatório "Q4"\\x'},
               attachment_name='{{ params.label }}.csv')
    name, _ = attachment(smtp_sink.messages[0]['message'])
    assert name == run.file_name == '_.._etc_Relatorio _Q4__x.csv'
    assert '/' not in run.file_key.rsplit('/', 1)[1]


BAD_TEMPLATES = [
    ("{{ ''.__class__ }}", 'attributes starting with _'),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", 'not available'),
    ('{{ self }}', "unknown variable 'self'"),
    ('{{ self.__init__ }}', "unknown variable 'self'"),
    ('{{ cycler.__init__.__globals__ }}', 'not available'),
    ('{{ lipsum.__globals__ }}', 'not available'),
    ('{{ lipsum() }}', "unknown variable 'lipsum'"),
    ('{{ range(10) }}', "unknown variable 'range'"),
    ('{{ config }}', "unknown variable 'config'"),
    ('{{ request }}', "unknown variable 'request'"),
    ("{{ title|attr('__class__') }}", "No filter named 'attr'"),
    ("{{ params['_x'] }}", 'not available'),
    ("{{ '{0.__class__}'.format(title) }}", 'unsafe'),
    ("{% include '/etc/passwd' %}", 'include, import and extends'),
    ("{% extends 'x' %}", 'include, import and extends'),
    ('{{ title ', 'template error'),
    ('{{ nope }}', "unknown variable 'nope'"),
    ('{{ params.nope }}', "no parameter 'nope'"),
    ("{{ 'x' * 100000000 }}", 'longer than'),
    ('{{ 9 ** 9999 }}', 'powers'),
    ("{{ title.ljust(10) }}", "method 'ljust' is not available"),
    ('{{ date.replace(year=1) }}', "method 'replace' is not available"),
    ("{{ params.update({'a': 1}) }}", "method 'update' is not available"),
    ('{{ title|truncate(100000000) }}', 'numbers above'),
    ("{{ ('x' * 90000)|list|join('abc') }}", 'longer than'),
    ("{% set s = 'x' * 90000 %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s|length }}",
     'longer than'),
    ("{% for a in 'x' * 90000 %}{% for b in 'x' * 90000 %}{% endfor %}{% endfor %}",
     'too much work'),
    ("{% for a in 'x' * 90000 %}{{ 'y' * 90000 }}{% endfor %}", 'more than 100000 characters'),
    ("{{ '{:>100000000}'.format(1) }}", 'format widths'),
]


@pytest.mark.parametrize('template,why', BAD_TEMPLATES, ids=[t for t, _ in BAD_TEMPLATES])
@pytest.mark.parametrize('field', ['subject', 'body', 'attachment_name'])
def test_a_template_reaching_for_python_is_refused_naming_the_field(
        jobs, shop, template, why, field):
    app = web_app(jobs)
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                      field: template}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field), res.json
    assert why in res.json['message']
    res = app.post_json('/api/schedules', {
        'name': 'nightly', 'report': 'orders', 'to': ['a@example.org'], 'cron': '0 7 * * *',
        field: template}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field), res.json
    assert Run.select().count() == 0 and Schedule.select().count() == 0


def test_a_send_rule_must_be_one_of_three(jobs, shop):
    app = web_app(jobs)
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                      'send_rule': 'never'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'send_rule')


def test_schedules_keep_and_change_their_templates(jobs, shop):
    app = web_app(jobs)
    made = app.post_json('/api/schedules', {
        'name': 'nightly', 'report': 'orders', 'to': ['a@example.org'], 'cron': '0 7 * * *',
        'subject': 'Orders {{ date }}', 'send_rule': 'rows'}).json
    assert (made['subject'], made['body'], made['send_rule']) == (
        'Orders {{ date }}', None, 'rows')
    changed = app.put_json('/api/schedules/nightly', {'body': 'Hi {{ rows }}'}).json
    assert (changed['subject'], changed['body'], changed['send_rule']) == (
        'Orders {{ date }}', 'Hi {{ rows }}', 'rows')
    res = app.put_json('/api/schedules/nightly', {'body': '{{ self }}'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'body')
    # A report change checks the templates against the new report's parameters.
    app.put_json('/api/schedules/nightly', {'subject': '{{ params.status }}'})
    res = app.put_json('/api/schedules/nightly', {'report': 'customers'}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'subject')
    assert "no parameter 'status'" in res.json['message']


def test_a_template_that_breaks_at_send_time_fails_the_run_saying_so(make_jobs, shop,
                                                                      smtp_sink):
    jobs = make_jobs(operator_email='ops@example.org', notify_every=0)
    run = runs.create_run(jobs.registry, jobs.settings, 'orders', {}, ['a@example.org'])
    # Stored past the check (an older release, a hand edit): the sandbox
    # still stands at send time, and the run fails, not silently.
    Run.update(subject="{{ '{0.__class__.__mro__}'.format(title) }}") \
        .where(Run.id == run.id).execute()
    jobs.enqueue_run(run)
    run_queued(jobs)
    run = Run.get_by_id(run.id)
    assert run.status == 'failed' and run.attempts == 1
    assert run.error.startswith('subject template: refused by the sandbox')
    jobs.tick()  # announcements go out from the tick (alarms.py)
    # Only the operator hears of it, under a Message-ID of this installation's.
    [notice] = smtp_sink.messages
    assert notice['to'] == ['ops@example.org']
    assert 'subject template: refused' in notice['message'].get_body(('plain',)).get_content()
    assert re.fullmatch(r'<nightshift-run-1-[0-9a-f]{12}\.[0-9a-f]{12}-failed@nightshift\.test>',
                        notice['message']['Message-ID'].strip())  # folded: it is long


def test_the_slot_date_is_in_the_schedule_timezone(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    app = web_app(jobs)
    app.post_json('/api/schedules', {
        'name': 'tokyo', 'report': 'customers', 'to': ['a@example.org'], 'cron': '30 0 * * *',
        'timezone': 'Asia/Tokyo', 'subject': 'Customers on {{ date }}'})
    schedule = Schedule.get(Schedule.name == 'tokyo')
    # 00:30 on 2026-03-10 in Tokyo is 15:30 UTC on the 9th.
    slot = datetime.datetime(2026, 3, 9, 15, 30)
    Schedule.update(checked_through=slot - datetime.timedelta(minutes=5)) \
        .where(Schedule.id == schedule.id).execute()
    [run] = schedules.tick(jobs.registry, jobs.settings, jobs, slot + datetime.timedelta(
        seconds=20))
    assert run.subject == 'Customers on {{ date }}'
    run_queued(jobs)
    assert smtp_sink.messages[0]['message']['Subject'] == 'Customers on 2026-03-10'


def test_a_config_schedule_may_set_its_message(tmp_path, service_env, database):
    from settings import SettingsError, load_settings
    section = ('[nightshift]\nreports_dir = %s\n\n[schedule:nightly]\nreport = orders\n'
               'to = a@example.org\ncron = 0 7 * * *\nsend_rule = notice\n' % tmp_path)
    path = tmp_path / 'config.ini'
    path.write_text(section + 'subject = Orders of {{ date.strftime("%d %b") }}\n')
    settings = load_settings(path, environ=service_env)
    declared = schedules.declared_schedules(demo_catalogue(), settings)
    assert (declared['nightly']['subject'], declared['nightly']['send_rule']) == (
        'Orders of {{ date.strftime("%d %b") }}', 'notice')
    path.write_text(section + 'subject = {{ self }}\n')
    settings = load_settings(path, environ=service_env)
    with pytest.raises(SettingsError, match=r"\[schedule:nightly\] subject: unknown variable"):
        schedules.declared_schedules(demo_catalogue(), settings)


# --- headers ----------------------------------------------------------------------

def test_no_header_can_be_injected_through_a_template(make_jobs, labels, shop, smtp_sink):
    jobs = make_jobs(registry=labels, env={'MAIL_FROM_NAME': 'Acme Reports'})
    run = send(jobs, report='labels',
               params={'label': 'a\u2028Bcc: eve@evil.example\x85X-Two: 2\x0bX-Three: 3'},
               subject="Labels\r\nBcc: eve@evil.example\r\nX-One: 1"
                       "{{ '\\r\\n' }}X-Four: 4{{ date.strftime('%n') }}X-Five: 5 "
                       "{{ params.label }}")
    assert run.status == 'delivered'
    [sent] = smtp_sink.messages
    assert sent['to'] == ['ana@example.org']
    lines = headers_of(sent['raw'])
    names = [line.split(':', 1)[0].lower() for line in lines]
    assert names.count('subject') == 1
    for header in ('bcc', 'x-one', 'x-two', 'x-three', 'x-four', 'x-five'):
        assert header not in names
    assert sent['message']['Subject'] == (
        'Labels Bcc: eve@evil.example X-One: 1 X-Four: 4 X-Five: 5 '
        'a Bcc: eve@evil.example X-Two: 2 X-Three: 3')
    # The body may hold line breaks; the raw message is still plain ASCII.
    sent['raw'].decode('ascii')


def test_from_carries_the_display_name(make_jobs, shop, smtp_sink):
    jobs = make_jobs(env={'MAIL_FROM_NAME': 'Acme "Reports", Lisboa ç'})
    send(jobs, report='customers')
    [sent] = smtp_sink.messages
    [sender] = sent['message']['From'].addresses
    assert (sender.display_name, sender.addr_spec) == (
        'Acme "Reports", Lisboa ç', 'reports@nightshift.test')
    assert sent['from'] == 'reports@nightshift.test'


def test_a_display_name_with_a_line_break_is_refused(make_settings):
    from settings import SettingsError
    with pytest.raises(SettingsError, match='mail_from_name'):
        make_settings({'MAIL_FROM_NAME': 'Acme\r\nBcc: eve@evil.example'})


# --- Message-ID -------------------------------------------------------------------

MESSAGE_ID = re.compile(r'<nightshift-run-1-([0-9a-f]{12})\.([0-9a-f]{12})@nightshift\.test>')


def test_message_ids_differ_across_databases_and_resets(settings, database, tmp_path):
    ids = []
    for name in ('one', 'two'):
        models.bind_database('sqlite:///%s' % (tmp_path / ('%s.db' % name)))
        run = Run.create(report='orders')
        assert run.id == 1
        ids.append(runmessages.message_id(run, settings))
    models.bind_database(settings.database_url, create=False)
    # The test database reset: ids count from 1 again.
    assert _emptied(database)
    for _ in range(2):
        run = Run.create(report='orders')
        assert run.id == 1
        ids.append(runmessages.message_id(run, settings))
        assert runmessages.message_id(Run.get_by_id(1), settings) == ids[-1]
        assert _emptied(database)
    parts = [MESSAGE_ID.fullmatch(i).groups() for i in ids]
    assert len(set(ids)) == 4
    assert len({installation for installation, _ in parts}) == 4
    assert len({token for _, token in parts}) == 4


def test_a_resent_message_keeps_its_message_id(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, report='customers', to=['a@example.org', 'b@example.org'])
    # The crash between "the server took it" and "recorded": sent again.
    Delivery.update(status='sending').where(Delivery.address == 'b@example.org').execute()
    Run.update(status='queued').where(Run.id == run.id).execute()
    jobs.execute(run.id)
    first, again = smtp_sink.messages
    assert again['to'] == ['b@example.org']
    assert first['message']['Message-ID'] == again['message']['Message-ID']
    assert MESSAGE_ID.fullmatch(first['message']['Message-ID'])


# --- send rules -------------------------------------------------------------------

NONE = {'since': '2999-01-01'}


def test_rule_rows_skips_an_empty_report_and_records_why(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params=NONE, send_rule='rows', to=['a@example.org', 'b@example.org'])
    assert (run.status, run.rows, run.attempts) == ('skipped', 0, 1)
    assert 'send rule "rows"' in run.error and run.finished_at is not None
    assert smtp_sink.messages == []
    assert {(d.address, d.status) for d in run.deliveries} == {
        ('a@example.org', 'skipped'), ('b@example.org', 'skipped')}
    shown = web_app(jobs).get('/api/runs/%d' % run.id).json
    assert (shown['status'], shown['send_rule']) == ('skipped', 'rows')
    assert [d['status'] for d in shown['deliveries']] == ['skipped', 'skipped']
    listed = web_app(jobs).get('/api/runs?status=skipped').json['runs']
    assert [r['id'] for r in listed] == [run.id]
    # Nothing to do again: a second execution leaves it as it is.
    jobs.execute(run.id)
    assert Run.get_by_id(run.id).status == 'skipped' and smtp_sink.messages == []


def test_a_skip_whose_record_was_lost_is_decided_the_same_again(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params=NONE, send_rule='rows')
    # The worker died after marking the deliveries, before the run's status.
    Run.update(status='queued', finished_at=None, error=None).where(Run.id == run.id).execute()
    from huey.exceptions import RetryTask
    try:
        jobs.execute(run.id)
    except RetryTask:  # pragma: no cover - it must not come to that
        pytest.fail('a skip was retried')
    run = Run.get_by_id(run.id)
    assert (run.status, run.attempts) == ('skipped', 2) and smtp_sink.messages == []
    assert 'send rule "rows"' in run.error


def test_a_deferred_notice_is_retried_and_sent_once(make_jobs, shop, smtp_sink):
    from huey.exceptions import RetryTask
    jobs = make_jobs()
    run = runs.create_run(jobs.registry, jobs.settings, 'orders', NONE, ['a@example.org'],
                          message={'send_rule': 'notice'})
    smtp_sink.data_reply = '451 4.3.0 try again later'
    with pytest.raises(RetryTask):
        jobs.execute(run.id)
    assert [d.status for d in Run.get_by_id(run.id).deliveries] == ['pending']
    smtp_sink.data_reply = None
    jobs.execute(run.id)
    run = Run.get_by_id(run.id)
    assert (run.status, run.sent_as, run.attempts) == ('delivered', 'notice', 2)
    [sent] = smtp_sink.messages
    assert sent['message']['Subject'] == 'Nightshift: no data for Orders (since=2999-01-01)'
    assert MESSAGE_ID.fullmatch(sent['message']['Message-ID'])


def test_rule_rows_sends_a_report_with_rows(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params={'status': 'paid'}, send_rule='rows')
    assert run.status == 'delivered' and run.rows > 0
    name, data = attachment(smtp_sink.messages[0]['message'])
    assert len(orders_csv(data)) == run.rows + 1


def test_rule_notice_sends_a_short_notice_instead_of_an_empty_file(make_jobs, shop,
                                                                   smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params=NONE, send_rule='notice', subject='Never used {{ rows }}')
    assert (run.status, run.rows, run.sent_as) == ('delivered', 0, 'notice')
    assert [d.status for d in run.deliveries] == ['sent']
    [sent] = smtp_sink.messages
    message = sent['message']
    assert message['Subject'] == 'Nightshift: no data for Orders (since=2999-01-01)'
    assert [p for p in message.walk() if p.get_filename()] == []
    body = message.get_body(('plain',)).get_content()
    assert body.startswith('No data for Orders: since=2999-01-01.\n')
    assert MESSAGE_ID.fullmatch(message['Message-ID'])


def test_rule_notice_sends_the_file_when_there_are_rows(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params={'status': 'paid'}, send_rule='notice')
    assert run.status == 'delivered' and run.sent_as == 'csv'
    name, data = attachment(smtp_sink.messages[0]['message'])
    assert len(orders_csv(data)) == run.rows + 1


def test_always_sends_the_empty_file(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    run = send(jobs, params=NONE)
    assert (run.status, run.send_rule) == ('delivered', 'always')
    name, data = attachment(smtp_sink.messages[0]['message'])
    assert len(orders_csv(data)) == 1  # the header alone


def test_a_scheduled_slot_with_no_rows_is_a_recorded_skipped_run(make_jobs, shop, smtp_sink):
    jobs = make_jobs()
    app = web_app(jobs)
    app.post_json('/api/schedules', {
        'name': 'quiet', 'report': 'orders', 'params': NONE, 'to': ['a@example.org'],
        'cron': '0 7 * * *', 'timezone': 'Europe/Lisbon', 'send_rule': 'rows'})
    app.post_json('/api/schedules', {
        'name': 'alert', 'report': 'orders', 'params': NONE, 'to': ['a@example.org'],
        'cron': '0 7 * * *', 'timezone': 'Europe/Lisbon', 'send_rule': 'notice'})
    slot = datetime.datetime(2026, 7, 1, 6, 0)  # 07:00 in Lisbon (summer time)
    Schedule.update(checked_through=slot - datetime.timedelta(minutes=5)).execute()
    created = schedules.tick(jobs.registry, jobs.settings, jobs, slot)
    assert len(created) == 2
    run_queued(jobs)
    quiet = Run.get(Run.schedule == 'quiet')
    alert = Run.get(Run.schedule == 'alert')
    assert (quiet.status, quiet.slot_at, quiet.trigger) == ('skipped', slot, 'schedule')
    assert 'send rule "rows"' in quiet.error
    assert (alert.status, alert.sent_as) == ('delivered', 'notice')
    # The rule-skipped run is the schedule's last run (a missed slot is not).
    listed = {s['name']: s for s in app.get('/api/schedules').json['schedules']}
    assert listed['quiet']['last_run']['id'] == quiet.id
    assert listed['quiet']['last_run']['status'] == 'skipped'
    [sent] = smtp_sink.messages
    assert 'no data for Orders' in sent['message']['Subject']
    assert 'for 2026-07-01' in sent['message'].get_body(('plain',)).get_content()


# --- preview ----------------------------------------------------------------------

def test_the_preview_renders_the_next_message(jobs, shop):
    app = web_app(jobs)
    res = app.post_json('/api/messages/preview', {
        'report': 'orders', 'params': {'status': 'paid'}, 'cron': '0 7 * * *',
        'timezone': 'Pacific/Kiritimati', 'subject': '{{ title }} {{ date }} {{ rows }}',
        'attachment_name': 'orders/{{ params.status }}', 'send_rule': 'notice'})
    preview = res.json
    import cron
    zone = cron.check_timezone('Pacific/Kiritimati')
    slot = cron.next_slot('0 7 * * *', zone, models.utcnow())
    date = cron.to_local(slot, zone).date().isoformat()
    assert preview['subject'] == 'Orders %s 1234' % date
    assert preview['date'] == date
    assert preview['attachment_name'] == 'orders_paid.csv'
    assert preview['body'].startswith('Orders report\n\nParameters: status=paid\nRows: 1,234')
    assert preview['notice_subject'] == 'Nightshift: no data for Orders (status=paid)'
    res = app.post_json('/api/messages/preview', {'report': 'orders', 'body': '{{ self }}'},
                        expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'body')
    res = app.post_json('/api/messages/preview', {'report': 'orders', 'cron': 'often'},
                        expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'cron')


def test_a_rendered_text_is_kept_by_the_values_its_template_names(monkeypatch):
    import msgtemplates
    monkeypatch.setattr(msgtemplates, '_kept', {})
    rendered = []
    real = msgtemplates._render
    monkeypatch.setattr(msgtemplates, '_render',
                        lambda *args: rendered.append(args[0]) or real(*args))
    subject = msgtemplates.DEFAULTS['subject']  # title, rows_text, cut: no run id
    texts = set()
    for run_id in (1, 2, 3):
        context = msgtemplates.sample_context({'since': '2026-01-01'}, run_id=run_id)
        texts.add(msgtemplates.render('subject', subject, context))
        assert msgtemplates.render('body', msgtemplates.DEFAULTS['body'], context) \
            .endswith('Run #%d, sent by Nightshift.' % run_id)
    # One subject for the three runs; each run's own body (it names run_id).
    assert len(texts) == 1 and rendered == ['subject', 'body', 'body', 'body']
    other = dict(context, rows_text='9')
    assert '9 rows' in msgtemplates.render('subject', subject, other)
    # A failure is raised each time, never kept.
    for _ in range(2):
        with pytest.raises(msgtemplates.TemplateFailure):
            msgtemplates.render('subject', '{{ rows / 0 }}', context)
    assert len(msgtemplates._kept) == 5
