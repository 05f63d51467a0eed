"""One SMTP connection per worker thread, kept for the next message, against
a real aiosmtpd sink: reused while it works, replaced when the server has
dropped it or it sat idle too long, never reused after a transaction that
went wrong; the per-recipient replies stay what they were."""
import os
import signal
import threading
import time

import pytest

import demo
import runs
from conftest import demo_catalogue, run_queued, wait_until
from loopback import HANG_UP
from mail import Mail, MailError, SmtpMailer
from models import Run

registry = demo_catalogue()


@pytest.fixture
def mail_settings(make_settings, smtp_sink):
    def make(**values):
        env = {'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(smtp_sink.port),
               'NIGHTSHIFT_SMTP_SECURITY': 'none', 'MAIL_FROM': 'reports@nightshift.test'}
        return make_settings(env, **values)
    return make


@pytest.fixture
def report_file(tmp_path):
    path = tmp_path / 'orders.csv'
    path.write_bytes(b'id,total\r\n1,9.50\r\n2,12.00\r\n')
    return str(path)


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def mail(report_file, n, to=('a@example.org',)):
    return Mail(list(to), 'Orders %d' % n, 'Body %d' % n, report_file, '<reuse-%d@test>' % n)


def subjects(sink):
    return [m['message']['Subject'] for m in sink.messages]


def test_messages_from_one_thread_go_over_one_connection(mail_settings, smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings())
    for n in range(5):
        assert mailer.send(mail(report_file, n)) == {'a@example.org': '250 Message accepted'}
    assert subjects(smtp_sink) == ['Orders %d' % n for n in range(5)]
    assert len(smtp_sink.greeted) == 1 and smtp_sink.quits == 0
    name, data = next((p.get_filename(), p.get_payload(decode=True))
                      for p in smtp_sink.messages[4]['message'].walk() if p.get_filename())
    assert (name, data) == ('orders.csv', b'id,total\r\n1,9.50\r\n2,12.00\r\n')


@pytest.mark.parametrize('quiet', [0, 5], ids=['found at MAIL FROM', 'found by RSET'])
def test_a_connection_the_server_dropped_is_replaced_and_the_message_goes_once(
        mail_settings, smtp_sink, report_file, quiet):
    clock = Clock()
    mailer = SmtpMailer(mail_settings(), clock=clock)
    mailer.send(mail(report_file, 1))
    smtp_sink.hang_up_all()
    clock.now += quiet
    assert mailer.send(mail(report_file, 2)) == {'a@example.org': '250 Message accepted'}
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 2']
    assert len(smtp_sink.greeted) == 2


@pytest.mark.parametrize('fault,quiet', [
    ({'rset_replies': ['421 4.3.2 shutting down']}, 5),
    ({'rset_replies': ['451 4.3.0 lost track']}, 5),
    ({'mail_replies': ['421 4.3.2 closing']}, 0),
    ({'mail_replies': ['421 4.3.2 closing']}, 5),
])
def test_a_kept_connection_refused_before_the_message_is_replaced(mail_settings, smtp_sink,
                                                                  report_file, fault, quiet):
    clock = Clock()
    mailer = SmtpMailer(mail_settings(), clock=clock)
    mailer.send(mail(report_file, 1))
    for name, replies in fault.items():
        setattr(smtp_sink, name, list(replies))
    clock.now += quiet
    assert mailer.send(mail(report_file, 2)) == {'a@example.org': '250 Message accepted'}
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 2']
    assert len(smtp_sink.greeted) == 2
    # And the new connection is the one kept.
    mailer.send(mail(report_file, 3))
    assert len(smtp_sink.greeted) == 2


def test_a_connection_in_use_is_not_asked_rset_first(mail_settings, smtp_sink, report_file):
    # Back to back, the last message's 250 vouches for the session: no RSET
    # round trip per message. After SmtpMailer.RSET_AFTER quiet seconds, one.
    clock = Clock()
    mailer = SmtpMailer(mail_settings(), clock=clock)
    smtp_sink.rset_replies = ['250 RSET seen']
    for n in range(3):
        mailer.send(mail(report_file, n))
        clock.now += SmtpMailer.RSET_AFTER / 2
    assert smtp_sink.rset_replies == ['250 RSET seen']
    clock.now += SmtpMailer.RSET_AFTER
    mailer.send(mail(report_file, 3))
    assert smtp_sink.rset_replies == []
    assert len(smtp_sink.messages) == 4 and len(smtp_sink.greeted) == 1


def test_a_new_connection_refusing_the_sender_is_not_tried_again(mail_settings, smtp_sink,
                                                                 report_file):
    # Only a kept connection gets a second chance: a fresh one speaks for the server.
    mailer = SmtpMailer(mail_settings())
    smtp_sink.mail_replies = ['421 4.3.2 closing']
    with pytest.raises(MailError) as caught:
        mailer.send(mail(report_file, 1))
    assert caught.value.temporary and '421' in str(caught.value)
    assert smtp_sink.messages == [] and len(smtp_sink.greeted) == 1


def test_a_4xx_to_mail_from_on_a_kept_connection_is_the_servers_answer(mail_settings,
                                                                      smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings())
    mailer.send(mail(report_file, 1))
    smtp_sink.mail_replies = ['451 4.3.0 try again later']
    with pytest.raises(MailError) as caught:
        mailer.send(mail(report_file, 2))
    assert caught.value.temporary and '451' in str(caught.value)
    assert subjects(smtp_sink) == ['Orders 1']
    mailer.send(mail(report_file, 3))
    assert len(smtp_sink.greeted) == 2  # the refused one was not kept


def test_an_idle_connection_is_closed_and_a_new_one_opened(mail_settings, smtp_sink,
                                                           report_file):
    clock = Clock()
    mailer = SmtpMailer(mail_settings(smtp_idle_close=30), clock=clock)
    mailer.send(mail(report_file, 1))
    clock.now += 29
    mailer.send(mail(report_file, 2))
    assert len(smtp_sink.greeted) == 1
    clock.now += 31  # idle since message 2
    mailer.send(mail(report_file, 3))
    assert len(smtp_sink.greeted) == 2
    wait_until(lambda: smtp_sink.quits == 1, message='QUIT on the idle connection')
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 2', 'Orders 3']


def test_idle_close_0_keeps_no_connection(mail_settings, smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings(smtp_idle_close=0))
    for n in range(3):
        mailer.send(mail(report_file, n))
    assert len(smtp_sink.greeted) == 3
    wait_until(lambda: smtp_sink.quits == 3, message='a QUIT after each message')


def test_close_says_quit_and_the_next_message_opens_anew(mail_settings, smtp_sink,
                                                         report_file):
    mailer = SmtpMailer(mail_settings())
    mailer.send(mail(report_file, 1))
    mailer.close()
    wait_until(lambda: smtp_sink.quits == 1, message='QUIT')
    mailer.close()  # nothing kept: nothing to do
    mailer.send(mail(report_file, 2))
    assert len(smtp_sink.greeted) == 2


# --- Faults inside a transaction: the connection goes, the replies stay -------

TO = ('a@example.org', 'b@example.org')


def test_a_421_at_rcpt_leaves_everybody_pending_and_the_connection_goes(
        mail_settings, smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings())
    mailer.send(mail(report_file, 1))
    smtp_sink.rcpt_replies = [None, '421 4.7.0 closing']
    replies = mailer.send(mail(report_file, 2, TO))
    assert replies == {'a@example.org': '421 not sent: the server closed the connection',
                       'b@example.org': '421 4.7.0 closing'}
    mailer.send(mail(report_file, 3, TO))
    assert [(m['message']['Subject'], m['to']) for m in smtp_sink.messages] == [
        ('Orders 1', ['a@example.org']), ('Orders 3', list(TO))]
    assert len(smtp_sink.greeted) == 2


def test_a_hang_up_between_rcpts_sends_nobody(mail_settings, smtp_sink, report_file):
    # a@ was accepted, then the server went away with no reply to b@: no
    # DATA carried the message, so a@ did not get it either.
    mailer = SmtpMailer(mail_settings())
    mailer.send(mail(report_file, 1))
    smtp_sink.rcpt_replies = [None, HANG_UP]
    replies = mailer.send(mail(report_file, 2, TO))
    assert {address: reply[:4] for address, reply in replies.items()} == dict.fromkeys(
        TO, '421 ')
    assert all('connection lost' in reply for reply in replies.values())
    assert subjects(smtp_sink) == ['Orders 1']
    mailer.send(mail(report_file, 3, TO))
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 3']


def test_no_reply_after_data_is_not_sent_and_the_connection_goes(mail_settings, smtp_sink,
                                                                 report_file):
    mailer = SmtpMailer(mail_settings(smtp_timeout=1))
    mailer.send(mail(report_file, 1))
    smtp_sink.data_delay = 2.5
    replies = mailer.send(mail(report_file, 2))
    assert replies['a@example.org'].startswith('451 no reply after the message was sent')
    smtp_sink.data_delay = 0
    # At least once: it arrived, its reply did not; it goes again, on a new connection.
    assert mailer.send(mail(report_file, 2)) == {'a@example.org': '250 Message accepted'}
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 2', 'Orders 2']
    assert len(smtp_sink.greeted) == 2


@pytest.mark.parametrize('reply', ['554 5.6.0 content refused', '451 4.3.0 queue full'])
def test_a_refused_data_is_the_answer_and_the_connection_goes(mail_settings, smtp_sink,
                                                              report_file, reply):
    mailer = SmtpMailer(mail_settings())
    mailer.send(mail(report_file, 1))
    smtp_sink.data_reply = reply
    assert mailer.send(mail(report_file, 2, TO)) == dict.fromkeys(TO, reply)
    smtp_sink.data_reply = None
    mailer.send(mail(report_file, 3))
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 3']
    assert len(smtp_sink.greeted) == 2


def test_a_hang_up_after_accepting_counts_as_sent_and_the_next_one_reconnects(
        mail_settings, smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings())
    smtp_sink.hang_up_after_data = True
    assert mailer.send(mail(report_file, 1)) == {'a@example.org': '250 Message accepted'}
    smtp_sink.hang_up_after_data = False
    time.sleep(0.1)
    assert mailer.send(mail(report_file, 2)) == {'a@example.org': '250 Message accepted'}
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 2']
    assert len(smtp_sink.greeted) == 2


# --- Threads and processes --------------------------------------------------

def test_two_threads_keep_a_connection_each(mail_settings, smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings())
    start = threading.Barrier(2)
    failures = []

    def work(name):
        try:
            start.wait(10)
            for n in range(3):
                reply = mailer.send(mail(report_file, n, ['%s@example.org' % name]))
                assert reply == {'%s@example.org' % name: '250 Message accepted'}
        except Exception as exc:  # reported below, in the test's thread
            failures.append(exc)
    threads = [threading.Thread(target=work, args=(name,)) for name in ('one', 'two')]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert sorted(m['to'][0] for m in smtp_sink.messages) == \
        ['one@example.org'] * 3 + ['two@example.org'] * 3
    assert len(set(smtp_sink.greeted)) == len(smtp_sink.greeted) == 2


def test_a_forked_process_opens_its_own_connection(mail_settings, smtp_sink, report_file):
    mailer = SmtpMailer(mail_settings())
    mailer.send(mail(report_file, 1))
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            ok = mailer.send(mail(report_file, 2)) == {'a@example.org': '250 Message accepted'}
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's session was left alone: its connection carries the next one.
    mailer.send(mail(report_file, 3))
    assert subjects(smtp_sink) == ['Orders 1', 'Orders 2', 'Orders 3']
    assert len(smtp_sink.greeted) == 2 and smtp_sink.quits == 0


# --- Runs: the worker's mailer keeps its connection across runs -------------

@pytest.fixture
def shop(database):
    demo.seed(customers=10, orders=50)


def test_runs_in_a_row_share_a_connection_and_a_421_still_retries_once(settings, jobs, shop,
                                                                        smtp_sink):
    first = runs.create_run(registry, settings, 'customers', {}, ['a@example.org'])
    jobs.enqueue_run(first)
    run_queued(jobs)
    second = runs.create_run(registry, settings, 'customers', {}, ['a@example.org',
                                                                    'b@example.org'])
    smtp_sink.rcpt_replies = [None, '421 4.7.0 too busy, closing']
    jobs.enqueue_run(second)
    run_queued(jobs, limit=1)
    assert Run.get_by_id(second.id).status == 'queued'
    assert {d.status for d in Run.get_by_id(second.id).deliveries} == {'pending'}
    run_queued(jobs)
    assert Run.get_by_id(first.id).status == Run.get_by_id(second.id).status == 'delivered'
    assert [m['to'] for m in smtp_sink.messages] == [['a@example.org'],
                                                     ['a@example.org', 'b@example.org']]
    # One connection for the first run and the second's refused attempt, one for its retry.
    assert len(smtp_sink.greeted) == 2


def test_a_stopping_consumer_says_quit_on_its_connections(settings, jobs, shop, smtp_sink):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer = jobs.huey.create_consumer(workers=2, worker_type='thread', periodic=False)
    try:
        consumer.start()
        ids = []
        for n in range(4):
            run = runs.create_run(registry, settings, 'customers', {}, ['r%d@example.org' % n])
            jobs.enqueue_run(run)
            ids.append(run.id)
        smtp_sink.wait_for(4, timeout=30)
        wait_until(lambda: all(Run.get_by_id(i).status == 'delivered' for i in ids), 15,
                   message='4 runs delivered')
        # Four runs: a batch of three at most, mailed by its leader alone
        # (runs.in_threads: a sender for two runs).
        assert smtp_sink.quits == 0
        connections = len(smtp_sink.greeted)
        assert 1 <= connections <= 2
    finally:
        consumer.stop(graceful=True)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    wait_until(lambda: smtp_sink.quits == connections, message='a QUIT on each connection')


@pytest.mark.parametrize('text', [
    'Subject: a\n\n.starts with a dot\n..two\nmid.dle\n.\n',
    '.the very first character\nno newline at the end',
    'Subject: b\n\nline\n\n\n',
    'Subject: c\n\ncarriage\r\nreturns go to smtplib\n',
])
def test_data_sends_what_smtplib_sends(smtp_sink, text):
    """mail._data puts the message on the wire as SMTP.data would: the
    server gets the same bytes from both."""
    import smtplib

    import mail
    got = []
    for send in (lambda conn: conn.data(text), lambda conn: mail._data(conn, text)):
        conn = smtplib.SMTP('127.0.0.1', smtp_sink.port, timeout=10)
        conn.ehlo()
        conn.mail('reports@nightshift.test')
        conn.rcpt('a@example.org')
        code, _ = send(conn)
        conn.quit()
        assert code == 250
        got.append(smtp_sink.messages[-1]['raw'])
    assert got[0] == got[1]
    expected = text.replace('\r\n', '\n').replace('\n', '\r\n')
    # What the server took is the text itself, dots and all (a line end added
    # where the text had none).
    assert got[1].decode('ascii') in (expected, expected + '\r\n')
