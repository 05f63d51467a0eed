#!/usr/bin/env python
"""SMTP throughput: N small messages (a 50-row CSV attached, one recipient
each) from T threads to an aiosmtpd sink in its own process, four ways side
by side, in interleaved rounds:

- plain smtplib, a new connection per message (connect, EHLO, MAIL, RCPT,
  DATA, QUIT), the messages built beforehand;
- plain smtplib, one connection per thread reused for every message;
- mail.SmtpMailer with smtp_idle_close = 0: a connection per message, as
  before connections were kept (it also builds each message);
- mail.SmtpMailer on its defaults: each thread keeps its connection (RSET
  only before a message that follows 2 s or more of quiet).

    .venv/bin/python scripts/bench_smtp.py [--messages 1000] [--threads 2] [--rounds 3]
                                            [--root OTHER_CHECKOUT]

`--root` takes mail.py and settings.py from another checkout (e.g. a `git
worktree` of an older commit) for a before/after figure; the smtplib ways
are the same either way.

Prints messages/s per way (median of the rounds, and the range), the CPU
seconds of this process per way, and the sessions (EHLOs) the sink saw.
"""
import argparse
import asyncio
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SENDER = 'reports@nightshift.test'


class CountingSink:
    """aiosmtpd handler that counts and keeps nothing: the sink costs the
    same for every way."""

    def __init__(self):
        self.sessions = self.messages = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sessions += 1
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.messages += 1
        return '250 Message accepted'


def sink_main(port):
    """The sink process: serve until stdin closes, then print the counts."""
    from aiosmtpd.controller import Controller
    handler = CountingSink()
    controller = Controller(handler, hostname='127.0.0.1', port=port)
    controller.start()
    print('ready', flush=True)
    sys.stdin.read()

    def counts():
        return {'sessions': handler.sessions, 'messages': handler.messages}
    result = asyncio.run_coroutine_threadsafe(_call(counts), controller.loop).result(10)
    controller.stop()
    print(json.dumps(result), flush=True)


async def _call(fn):
    return fn()


class Sink:
    def __init__(self):
        sys.path.insert(0, os.path.join(ROOT, 'tests'))
        from loopback import free_port
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, '--sink', str(self.port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'ready'

    def stop(self):
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def make_settings(workdir, port, idle_close):
    from settings import load_settings
    config = os.path.join(workdir, 'bench.ini')
    with open(config, 'w') as out:
        out.write('[nightshift]\n')
    return load_settings(config, environ={
        'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(port), 'NIGHTSHIFT_SMTP_SECURITY': 'none',
        'MAIL_FROM': SENDER, 'NIGHTSHIFT_SMTP_IDLE_CLOSE': str(idle_close)})


def make_mails(workdir, count):
    from mail import Mail
    path = os.path.join(workdir, 'orders.csv')
    with open(path, 'w') as out:
        out.write('id,customer,email,status,total,created_at\r\n')
        for i in range(50):
            out.write('%d,Customer %d,c%d@example.org,paid,%d.50,2026-11-28 10:%02d:00\r\n'
                      % (i, i, i, i * 3, i))
    return [Mail(['r%d@example.org' % i], 'Orders %d' % i, 'Your report.\n', path,
                 '<bench-%d@nightshift>' % i) for i in range(count)]


def split(items, threads):
    return [items[i::threads] for i in range(threads)]


def run_threads(parts, work):
    failures = []

    def target(part):
        try:
            work(part)
        except Exception as exc:
            failures.append(exc)
    threads = [threading.Thread(target=target, args=(part,)) for part in parts]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - started, time.process_time() - cpu


def smtplib_way(port, reuse):
    def work(part):
        conn = smtplib.SMTP('127.0.0.1', port, timeout=30) if reuse else None
        for to, text in part:
            if not reuse:
                conn = smtplib.SMTP('127.0.0.1', port, timeout=30)
            refused = conn.sendmail(SENDER, to, text)
            assert not refused
            if not reuse:
                conn.quit()
        if reuse:
            conn.quit()
    return work


def mailer_way(settings):
    from mail import SmtpMailer
    mailer = SmtpMailer(settings)

    def work(part):
        for mail in part:
            replies = mailer.send(mail)
            assert all(reply.startswith('250') for reply in replies.values()), replies
        # An older mail.py keeps nothing, and has no close().
        getattr(mailer, 'close', lambda: None)()
    return work


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--messages', type=int, default=1000)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--root', help='import mail.py and settings.py from this checkout')
    parser.add_argument('--sink', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return sink_main(args.sink)
    if args.root:
        sys.path.insert(0, os.path.abspath(args.root))

    from mail import message_text
    workdir = tempfile.mkdtemp(prefix='nightshift-bench-smtp-')
    mails = make_mails(workdir, args.messages)
    plain = make_settings(workdir, 0, 0)
    prebuilt = [(m.to, message_text(plain, m)) for m in mails]
    ways = [
        ('smtplib, new connection per message (messages prebuilt)',
         lambda port: (smtplib_way(port, reuse=False), prebuilt)),
        ('smtplib, one connection per thread reused (baseline, prebuilt)',
         lambda port: (smtplib_way(port, reuse=True), prebuilt)),
        ('SmtpMailer, smtp_idle_close = 0 (a connection per message, as before)',
         lambda port: (mailer_way(make_settings(workdir, port, 0)), mails)),
        ('SmtpMailer, kept per thread (RSET only after 2 s quiet)',
         lambda port: (mailer_way(make_settings(workdir, port, 30)), mails)),
    ]
    results = {name: [] for name, _ in ways}
    for _ in range(args.rounds):
        for name, build in ways:
            sink = Sink()
            work, items = build(sink.port)
            wall, cpu = run_threads(split(items, args.threads), work)
            counts = sink.stop()
            assert counts['messages'] == args.messages, counts
            results[name].append((args.messages / wall, cpu, counts['sessions']))

    import mail
    print('%d messages (%d bytes each, a 50-row CSV attached), %d threads, %d rounds; '
          'mail.py from %s' % (args.messages, len(prebuilt[0][1]), args.threads, args.rounds,
                               'the --root checkout' if args.root else 'this checkout'))
    assert os.path.dirname(os.path.abspath(mail.__file__)) == os.path.abspath(
        args.root or ROOT)
    print()
    print('| way | messages/s (median) | range | CPU s (sender) | sink sessions | ratio |')
    print('|---|---|---|---|---|---|')
    base = None
    medians = {}
    for name, runs in results.items():
        rates = sorted(r[0] for r in runs)
        medians[name] = rates[len(rates) // 2]
        if 'baseline' in name:
            base = medians[name]
    for name, runs in results.items():
        rates = sorted(r[0] for r in runs)
        cpu = sorted(r[1] for r in runs)[len(runs) // 2]
        print('| %s | %.0f | %.0f-%.0f | %.2f | %d | %.2fx |'
              % (name, medians[name], rates[0], rates[-1], cpu, runs[0][2],
                 medians[name] / base))


if __name__ == '__main__':
    main()
