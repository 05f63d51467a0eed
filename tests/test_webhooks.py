"""Webhooks: signed POSTs to a receiver on loopback, retries with backoff,
the notification log in the API, and the URLs refused (SSRF)."""
import json
import time
from datetime import datetime as dt, timedelta

import pytest

import schedules
import webhooks
from conftest import demo_catalogue, web_app
from models import Notice, Notification, Run, Schedule
from webhook_sink import WebhookSink

registry = demo_catalogue()
SECRET = 'another-webhook-secret'
NOW = dt(2026, 3, 2, 8)


@pytest.fixture
def hook():
    sink = WebhookSink(secret=SECRET).start()
    yield sink
    sink.stop()


def hook_jobs(make_jobs, hook, **values):
    values.setdefault('webhook_url', hook.url())
    values.setdefault('notify_every', 0)
    return make_jobs(env={'NIGHTSHIFT_WEBHOOK_SECRET': SECRET}, **values)


def failed_notice(run_id=7, schedule=None):
    return Notice.create(event='run.failed', run_id=run_id, report='customers',
                         schedule=schedule, created_at=NOW,
                         detail='Run #%d of report customers failed: boom' % run_id)


def test_signature_and_timestamp_are_what_a_receiver_checks():
    body = b'{"text": "hi"}'
    stamp = 1767225600
    signature = webhooks.sign(SECRET, stamp, body)
    assert signature.startswith('sha256=') and len(signature) == 7 + 64
    assert webhooks.verify(SECRET, str(stamp), body, signature, now=stamp + 10)
    assert not webhooks.verify(SECRET, str(stamp), body + b' ', signature, now=stamp)
    assert not webhooks.verify('other-secret', str(stamp), body, signature, now=stamp)
    assert not webhooks.verify(SECRET, str(stamp + 1), body, signature, now=stamp)
    # A replay ten minutes later is refused.
    assert not webhooks.verify(SECRET, str(stamp), body, signature, now=stamp + 600)


def test_a_post_is_signed_json_slack_and_teams_accept(make_jobs, database, hook):
    jobs = hook_jobs(make_jobs, hook)
    failed_notice()
    jobs.notify_beat(NOW + timedelta(seconds=1))
    [post] = hook.wait_for(1)
    assert post['verified'] is True
    headers = post['headers']
    assert headers['Content-Type'] == 'application/json'
    assert abs(int(headers['X-Nightshift-Timestamp']) - time.time()) < 30
    [note] = Notification.select()
    assert headers['X-Nightshift-Delivery'] == str(note.id)
    payload = post['json']
    assert isinstance(payload['text'], str)  # all Slack and Teams incoming webhooks need
    assert payload['text'] == 'Nightshift: run #7 (customers) failed\n' \
                              '• Run #7 of report customers failed: boom'
    assert payload['events'][0]['event'] == 'run.failed'
    assert (note.status, note.attempts, note.response_status) == ('sent', 1, 200)


def test_unsigned_without_a_secret(make_jobs, database, hook):
    jobs = make_jobs(webhook_url=hook.url(), notify_every=0)
    failed_notice()
    jobs.notify_beat(NOW)
    [post] = hook.wait_for(1)
    assert 'X-Nightshift-Signature' not in post['headers']


def test_a_failing_receiver_is_retried_with_backoff_then_logged(make_jobs, database, hook):
    jobs = hook_jobs(make_jobs, hook, retry_delay=10, webhook_attempts=3)
    hook.replies = [500, 503]
    failed_notice()
    jobs.notify_beat(NOW)
    hook.wait_for(1)
    note = Notification.get()
    assert (note.status, note.attempts, note.error) == ('pending', 1, 'HTTP 500')
    waited = note.next_attempt_at - NOW
    assert timedelta(seconds=5) <= waited <= timedelta(seconds=10)  # half of it jitter
    jobs.notify_beat(NOW + timedelta(seconds=1))
    assert len(hook.received) == 1  # not due yet
    jobs.notify_beat(NOW + timedelta(seconds=11))
    jobs.notify_beat(NOW + timedelta(seconds=40))
    received = hook.wait_for(3)
    assert len({r['headers']['X-Nightshift-Delivery'] for r in received}) == 1
    assert all(r['verified'] for r in received)
    note = Notification.get()
    assert (note.status, note.attempts, note.response_status, note.error) == \
        ('sent', 3, 200, None)


def test_a_receiver_that_keeps_failing_is_logged_failed_and_shown(make_jobs, database, hook,
                                                                 caplog):
    jobs = hook_jobs(make_jobs, hook, webhook_attempts=2)
    hook.replies = [502, 502, 502]
    failed_notice()
    jobs.notify_beat(NOW)
    jobs.notify_beat(NOW + timedelta(seconds=1))
    jobs.notify_beat(NOW + timedelta(seconds=2))
    assert len(hook.received) == 2
    note = Notification.get()
    assert (note.status, note.attempts, note.error) == ('failed', 2, 'HTTP 502')
    assert 'failed after 2 tries: HTTP 502' in caplog.text
    assert 'secret-part' not in caplog.text  # the URL's path is its credential

    app = web_app(jobs)
    [shown] = app.get('/api/notifications').json['notifications']
    assert shown['target'] == 'http://127.0.0.1:%d/***' % hook.port
    assert (shown['channel'], shown['status'], shown['attempts'], shown['response_status'],
            shown['error'], shown['events']) == ('webhook', 'failed', 2, 502, 'HTTP 502', 1)
    assert shown['text'].startswith('Nightshift: run #7 (customers) failed')
    assert app.get('/api/notifications?status=sent').json == {'notifications': []}
    res = app.get('/api/notifications?status=lost', status=400)
    assert res.json['field'] == 'status'


def test_a_receiver_that_does_not_answer_times_out_and_is_tried_again(make_jobs, database,
                                                                     hook):
    jobs = hook_jobs(make_jobs, hook, webhook_timeout=0.5)
    hook.delay = 2
    failed_notice()
    started = time.monotonic()
    jobs.notify_beat(NOW)
    assert time.monotonic() - started < 1.9
    note = Notification.get()
    assert (note.status, note.error) == ('pending', 'no answer within 0.5s')
    hook.delay = 0
    jobs.notify_beat(NOW + timedelta(seconds=1))
    assert Notification.get().status == 'sent'


def test_a_permanent_refusal_is_not_retried(make_jobs, database, hook):
    jobs = hook_jobs(make_jobs, hook)
    hook.replies = [410]  # Slack: the hook was removed
    failed_notice()
    jobs.notify_beat(NOW)
    jobs.notify_beat(NOW + timedelta(seconds=5))
    assert len(hook.received) == 1
    assert (Notification.get().status, Notification.get().error) == ('failed', 'HTTP 410')


def test_a_schedule_webhook_gets_only_its_own_schedules_events(make_jobs, database):
    everything, own = WebhookSink(SECRET).start(), WebhookSink(SECRET).start()
    try:
        jobs = hook_jobs(make_jobs, everything, webhook_private=True)
        schedules.create_schedule(registry, jobs.settings, {
            'name': 'mine', 'report': 'customers', 'to': ['a@example.org'],
            'cron': '0 * * * *', 'webhook': own.url('/mine')}, NOW)
        failed_notice(1, schedule='mine')
        failed_notice(2)
        jobs.notify_beat(NOW)
        [mine] = own.wait_for(1)
        [every] = everything.wait_for(1)
    finally:
        everything.stop()
        own.stop()
    assert [e['run_id'] for e in mine['json']['events']] == [1]
    assert [e['run_id'] for e in every['json']['events']] == [1, 2]
    assert mine['path'] == '/mine' and mine['verified'] and every['verified']


def test_webhook_events_setting_narrows_the_global_hook(make_jobs, database, hook):
    jobs = hook_jobs(make_jobs, hook, webhook_events='late')
    run = Run.create(report='customers', status='delivered')
    jobs.alarms.delivered(run.id)
    failed_notice()
    jobs.notify_beat(NOW)
    assert Notice.select().count() == 0 and hook.received == []


SCHEDULE = {'name': 'hooked', 'report': 'customers', 'to': ['a@example.org'],
            'cron': '0 * * * *'}


@pytest.mark.parametrize('url, words', [
    ('ftp://hooks.example.org/x', 'must start with http:// or https://'),
    ('hooks.example.org/x', 'must start with http:// or https://'),
    ('http://127.0.0.1:8080/x', 'not a public address'),
    ('http://localhost/x', 'not a public address'),
    ('http://169.254.169.254/latest/meta-data', 'not a public address'),
    ('http://[::1]/x', 'not a public address'),
    ('http://10.0.0.5/x', 'not a public address'),
    ('http://[::ffff:192.168.1.1]/x', 'not a public address'),
    ('http://user:pw@hooks.example.org/x', 'must not carry a user or password'),
    ('https://hooks.example.org/x y', 'without spaces'),
    ('https://hooks.example.org:99999/x', 'is not a URL'),
    (42, 'must be a URL string'),
])
def test_bad_or_private_webhook_urls_are_400_naming_the_field(make_jobs, database, url, words):
    app = web_app(make_jobs())
    res = app.post_json('/api/schedules', dict(SCHEDULE, webhook=url), status=400)
    assert res.json['field'] == 'webhook' and words in res.json['message']
    assert 'meta-data' not in res.json['message']
    assert Schedule.select().count() == 0


@pytest.mark.parametrize('late_after', [-1, 'soon', True, 10 ** 9])
def test_bad_late_after_is_400(make_jobs, database, late_after):
    app = web_app(make_jobs())
    res = app.post_json('/api/schedules', dict(SCHEDULE, late_after=late_after), status=400)
    assert res.json['field'] == 'late_after'


def test_a_schedules_webhook_is_shown_masked_and_kept_when_sent_back(make_jobs, database):
    app = web_app(make_jobs())
    url = 'https://hooks.example.org/services/T0/B0/very-secret'
    created = app.post_json('/api/schedules', dict(SCHEDULE, webhook=url, late_after=900)).json
    assert (created['webhook'], created['late_after']) == ('https://hooks.example.org/***', 900)
    assert 'very-secret' not in json.dumps(app.get('/api/schedules').json)
    # A client that PUTs back what it read changes nothing it did not mean to.
    changed = {key: value for key, value in created.items() if key in schedules.FIELDS}
    changed['late_after'] = None
    assert app.put_json('/api/schedules/hooked', changed).json['late_after'] is None
    schedule = Schedule.get(Schedule.name == 'hooked')
    assert (schedule.webhook_url, schedule.late_after) == (url, None)
    app.put_json('/api/schedules/hooked', {'webhook': None})
    assert Schedule.get(Schedule.name == 'hooked').webhook_url is None


def test_a_private_address_is_refused_again_when_posting(make_jobs, database, hook):
    """Allowed once (webhook_private), then the setting is turned off: the
    stored URL to loopback is refused at send time, not posted."""
    allowed = make_jobs(webhook_private=True, notify_every=0)
    schedules.create_schedule(registry, allowed.settings,
                              dict(SCHEDULE, webhook=hook.url()), NOW)
    jobs = make_jobs(notify_every=0)
    failed_notice(schedule='hooked')
    jobs.notify_beat(NOW)
    assert hook.received == []
    note = Notification.get()
    assert note.status == 'failed' and 'refused: 127.0.0.1 is not a public address' in note.error


def test_names_resolving_to_private_addresses_are_refused():
    def resolve(host, port, **kwargs):
        return [(2, 1, 6, '', ('10.1.2.3', port))]
    with pytest.raises(ValueError, match='resolves to 10.1.2.3'):
        webhooks.check_resolved('https://hooks.example.org/x', resolve=resolve)
    public = [(2, 1, 6, '', ('93.184.215.14', 443))]
    webhooks.check_resolved('https://hooks.example.org/x', resolve=lambda *a, **k: public)


def test_a_config_schedule_takes_a_webhook_and_late_after(make_settings, tmp_path):
    from settings import SettingsError, load_settings
    config = tmp_path / 'c.ini'
    config.write_text('[schedule:night]\nreport = customers\ncron = 0 2 * * *\n'
                      'to = a@example.org\nlate_after = 900\n'
                      'webhook = https://hooks.example.org/x\n')
    settings = load_settings(config, environ={})
    declared = schedules.declared_schedules(registry, settings)
    assert (declared['night']['late_after'], declared['night']['webhook_url']) == \
        (900.0, 'https://hooks.example.org/x')
    config.write_text('[schedule:night]\nreport = customers\ncron = 0 2 * * *\n'
                      'to = a@example.org\nlate_after = soon\n')
    with pytest.raises(SettingsError, match='late_after'):
        schedules.declared_schedules(registry, load_settings(config, environ={}))


def test_the_pages_rows_show_the_log_masked(make_jobs, database, hook):
    jobs = hook_jobs(make_jobs, hook, webhook_attempts=1)
    hook.replies = [500]
    failed_notice()
    jobs.notify_beat(NOW)
    html = web_app(jobs).get('/ui/notifications').text
    assert 'Nightshift: run #7 (customers) failed' in html and 'HTTP 500' in html
    assert 'http://127.0.0.1:%d/***' % hook.port in html and 'secret-part' not in html
    Notification.delete().execute()
    assert 'Nothing announced yet' in web_app(jobs).get('/ui/notifications').text
