"""Delivery through a real SMTP server on loopback (aiosmtpd)."""
import email
import email.policy
import os
import re

import pytest

import demo
import runs
from conftest import attachment, run_queued
from mail import MailError, SmtpMailer, check_address
from models import Run
from conftest import demo_catalogue

registry = demo_catalogue()


@pytest.fixture
def shop(database):
    demo.seed(customers=10, orders=50)


def new_run(settings, to, report='customers'):
    return runs.create_run(registry, settings, report, {}, to)


def queue(jobs, run):
    jobs.enqueue_run(run)
    return run.id


@pytest.fixture
def auth_jobs(make_jobs):
    """Jobs against an SMTP server that wants AUTH (password 'secret-pw')."""
    from loopback import SmtpSink
    sink = SmtpSink()
    sink.start(auth=True)

    def make(password):
        jobs = make_jobs(env={'SMTP_PORT': str(sink.port), 'SMTP_USER': 'apikey',
                              'SMTP_PASSWORD': password})
        run_id = queue(jobs, new_run(jobs.settings, ['a@example.org']))
        run_queued(jobs)
        return jobs, sink, Run.get_by_id(run_id)
    yield make
    sink.stop()


def test_login_user_is_kept_apart_from_the_sender(auth_jobs, shop):
    jobs, sink, run = auth_jobs('secret-pw')
    assert sink.logins == [('apikey', 'secret-pw')]
    [sent] = sink.messages
    assert sent['from'] == 'reports@nightshift.test'
    assert run.status == 'delivered'


def test_wrong_password_fails_at_once_with_the_reply(auth_jobs, shop):
    jobs, sink, run = auth_jobs('wrong')
    assert run.status == 'failed' and '535' in run.error
    assert 'wrong' not in run.error
    assert sink.messages == []
    assert jobs.huey.pending_count() == 0 and jobs.huey.scheduled_count() == 0


def test_one_refused_recipient_does_not_stop_the_other(settings, jobs, shop, smtp_sink):
    smtp_sink.refuse['gone@example.org'] = '550 5.1.1 no such user'
    run_id = queue(jobs, new_run(settings, ['gone@example.org', 'ok@example.org']))
    run_queued(jobs)
    [sent] = smtp_sink.messages
    assert sent['to'] == ['ok@example.org']
    run = Run.get_by_id(run_id)
    assert run.status == 'delivered'
    assert '550 5.1.1 no such user' in run.error
    outcome = {d.address: (d.status, d.error) for d in run.deliveries}
    assert outcome == {'gone@example.org': ('refused', '550 5.1.1 no such user'),
                       'ok@example.org': ('sent', None)}


def test_permanent_refusal_of_everyone_fails_without_retry(settings, jobs, shop, smtp_sink):
    smtp_sink.refuse['gone@example.org'] = '550 5.1.1 no such user'
    run_id = queue(jobs, new_run(settings, ['gone@example.org']))
    run_queued(jobs)
    run = Run.get_by_id(run_id)
    assert run.status == 'failed'
    assert '550 5.1.1 no such user' in run.error
    assert smtp_sink.messages == []
    assert jobs.huey.pending_count() == 0 and jobs.huey.scheduled_count() == 0


def test_temporary_refusal_is_retried_and_sent_once(settings, jobs, shop, smtp_sink):
    smtp_sink.refuse['busy@example.org'] = '451 4.3.0 try again later'
    run_id = queue(jobs, new_run(settings, ['busy@example.org', 'ok@example.org']))
    run_queued(jobs, limit=1)
    run = Run.get_by_id(run_id)
    assert run.status == 'queued' and '451' in run.error
    assert [m['to'] for m in smtp_sink.messages] == [['ok@example.org']]

    del smtp_sink.refuse['busy@example.org']
    run_queued(jobs, limit=1)  # the retry Huey queued
    assert [m['to'] for m in smtp_sink.messages] == [['ok@example.org'], ['busy@example.org']]
    run = Run.get_by_id(run_id)
    assert (run.status, run.attempts, run.error) == ('delivered', 2, None)
    assert {d.status for d in run.deliveries} == {'sent'}


def test_smtp_down_then_back_delivers_once(settings, jobs, shop, smtp_sink):
    smtp_sink.stop()
    run_id = queue(jobs, new_run(settings, ['a@example.org']))
    run_queued(jobs, limit=1)
    run = Run.get_by_id(run_id)
    assert run.status == 'queued' and 'unreachable' in run.error
    smtp_sink.start()
    run_queued(jobs, limit=1)
    assert len(smtp_sink.messages) == 1
    assert Run.get_by_id(run_id).status == 'delivered'


def test_retries_run_out_into_failed(make_jobs, shop, smtp_sink):
    smtp_sink.stop()
    jobs = make_jobs(max_attempts=2)
    run_id = queue(jobs, new_run(jobs.settings, ['a@example.org']))
    assert run_queued(jobs) == 2
    run = Run.get_by_id(run_id)
    assert (run.status, run.attempts) == ('failed', 2)
    assert 'unreachable' in run.error


def test_mailer_reports_unreachable_server_as_temporary(make_settings):
    from conftest import free_port
    settings = make_settings({'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(free_port()),
                              'NIGHTSHIFT_SMTP_SECURITY': 'none'}, smtp_timeout=2)
    from mail import Mail
    with pytest.raises(MailError) as info:
        SmtpMailer(settings).send(Mail(['a@example.org'], 's', 'b', __file__, '<x@y>'))
    assert info.value.temporary


def test_outbox_backend_writes_the_message(make_jobs, shop):
    jobs = make_jobs(env={'SMTP_HOST': ''})  # no SMTP server: the outbox
    settings = jobs.settings
    assert settings.mail_backend == 'outbox'
    run_id = queue(jobs, new_run(settings, ['a@example.org'], report='orders'))
    run_queued(jobs)
    [name] = os.listdir(settings.outbox_dir)
    with open(os.path.join(settings.outbox_dir, name), 'rb') as f:
        message = email.message_from_binary_file(f, policy=email.policy.default)
    assert message['To'] == 'a@example.org'
    assert re.fullmatch(r'<nightshift-run-%d-[0-9a-f]{12}\.[0-9a-f]{12}@%s>'
                        % (run_id, re.escape('nightshift.test')), message['Message-ID'])
    body = message.get_body(('plain',)).get_content()
    assert 'Rows: 50' in body and '<br>' not in body
    filename, data = attachment(message)
    assert filename.startswith('orders-') and data.count(b'\n') == 51
    assert Run.get_by_id(run_id).status == 'delivered'


@pytest.mark.parametrize('address', ['a@example.org', 'first.last+tag@sub.example.co.uk'])
def test_good_addresses(address):
    assert check_address(address) == address


@pytest.mark.parametrize('address', [
    'a@example.org, b@example.org', 'Bob <b@example.org>', 'a@example.org\n', 'a b@example.org',
    '@example.org', 'a@', 'a@localhost', 'a@-bad.org', 'ä@example.org', 'a@exämple.org',
    'a' * 250 + '@example.org', '"quoted"@example.org',
])
def test_bad_addresses(address):
    with pytest.raises(ValueError):
        check_address(address)


def _comparable(text):
    # The two writers differ only in what is made anew for each message.
    text = re.sub(r'nightshift_[0-9a-f]{32}\.part', 'BOUNDARY', text)
    return re.sub(r'(?m)^Date: .*$', 'Date: DATE', text)


def test_the_message_written_directly_is_what_the_email_package_writes(tmp_path, monkeypatch):
    """mail.message_text writes the usual message itself and leaves the rest
    to build_message: both give the same text, for plain and tricky values."""
    import random
    import types

    import mail
    rng = random.Random(16)
    words = ['Orders', 'report', 'for', '2026-11-28', '(5 rows)', 'a,b;c', '"quoted"',
             'back\\slash', '=?utf-8?q?x?=', 'caf\u00e9', '\u65e5\u672c', 'tab\tin', '',
             'x' * 90, '[brackets]', 'semi;colon', '100%']
    names = ['orders-2026-11-28.csv', 'orders 2026.csv.gz', 'Sales report.xlsx', 'a.zip',
             'na"me.csv', 'back\\slash.csv', 'caf\u00e9.csv', 'x' * 120 + '.csv',
             'two  spaces.csv', ' lead.csv', 'end .csv', 'file.unknownext']
    contents = [b'', b'id,name\r\n1,Ann\r\n', b'no newline at the end', bytes(range(256)) * 3,
                b'x' * 57, b'y' * 58 + b'\n']
    built = []  # by the email package, in message_text
    original = mail.build_message
    monkeypatch.setattr(mail, 'build_message', lambda *a: built.append(1) or original(*a))
    for i in range(300):
        settings = types.SimpleNamespace(
            mail_from=rng.choice(['reports@example.org', 'nightshift@localhost']),
            mail_from_name=rng.choice([None, '', 'Nightshift', 'Reports, Inc.', 'Caf\u00e9 bot',
                                       'Ann "The" Bot']))
        subject = ' '.join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        body = rng.choice(['', 'Rows: 5\n', 'line\r\nother\rthird\n', 'caf\u00e9 \u65e5\n' * 40,
                           'x' * 200])
        to = ['p%d@example.org' % n for n in range(rng.randint(1, 12))]
        attachment = None
        if rng.random() < 0.8:
            folder = tmp_path / str(i)
            folder.mkdir()
            attachment = folder / rng.choice(names)
            attachment.write_bytes(rng.choice(contents))
        message = mail.Mail(to, subject, body, str(attachment) if attachment else None,
                            '<nightshift-run-%d-abc.def@example.org>' % i)
        written = mail.message_text(settings, message)
        assert _comparable(written) == _comparable(original(settings, message).as_string()), (
            settings, message)
        # What a reader gets: the file's bytes, whole.
        if attachment is not None:
            parsed = email.message_from_string(written, policy=email.policy.default)
            part = next(parsed.iter_attachments())
            assert part.get_payload(decode=True) == attachment.read_bytes()
    assert 60 <= len(built) <= 240  # both ways were compared


def test_a_files_base64_is_kept_by_its_bytes_not_its_name(tmp_path):
    import base64
    import mail
    kept = mail._kept_base64_lines
    kept.cache_clear()
    first, link, other = tmp_path / 'a.csv', tmp_path / 'b.csv', tmp_path / 'c.csv'
    first.write_bytes(b'id,name\n1,Ana\n' * 40)
    os.link(first, link)
    assert mail.encoded_file(str(first)) == base64.encodebytes(first.read_bytes()).decode()
    assert mail.encoded_file(str(link)) == mail.encoded_file(str(first))
    assert kept.cache_info().currsize == 1  # a batch's copies: encoded once
    # Rewritten in place, same size: its own text, never the old one.
    first.write_bytes(b'id,name\n2,Bea\n' * 40)
    assert mail.encoded_file(str(first)) == base64.encodebytes(first.read_bytes()).decode()
    # Big files are encoded each time and not kept; only the last few are.
    other.write_bytes(b'x' * (mail.ENCODED_KEPT_BYTES + 1))
    assert mail.encoded_file(str(other)) == base64.encodebytes(other.read_bytes()).decode()
    assert kept.cache_info().currsize == 2
    for i in range(mail.ENCODED_KEPT_FILES + 3):
        other.write_bytes(b'row %d\n' % i)
        mail.encoded_file(str(other))
    assert kept.cache_info().currsize == mail.ENCODED_KEPT_FILES
