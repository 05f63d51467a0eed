#!/usr/bin/env python
"""Fault drill: run a whole Nightshift on loopback, break it while it works,
and count what came out.

    .venv/bin/python scripts/drill.py [--runs 40] [--orders 200000] [--database sqlite|postgres]

It starts its own redis-server (free port), SMTP sink (aiosmtpd), database
(a temp SQLite file, or a throwaway PostgreSQL database), web server and two
consumers, then posts runs while it: kill -9's a consumer mid-run, SIGTERMs
the other, stops Redis for a few seconds, stops the SMTP server for a few
seconds, answers 421 at RCPT, withholds the reply after DATA past the
client's timeout, hangs up right after accepting, pauses a consumer with
SIGSTOP past stale_after, and (PostgreSQL) terminates every database
connection. It waits for every accepted run to finish and prints a table:
requested, refused at the door (503 while Redis was down), delivered,
failed, duplicate emails, copies resent after a lost reply and after a
consumer was killed mid-send (same Message-ID, at least once by design: the
first copy landed just as its consumer died), broken attachments, lost. Needs
requirements-dev.txt (aiosmtpd).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # the loopback services live with the tests

from loopback import RedisServer, SmtpSink, call, free_port, wait_until  # noqa: E402
from vocab import TERMINAL  # noqa: E402

PG_ADMIN_URL = os.environ.get('NIGHTSHIFT_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/test')


class System:
    """Web server and consumers as child processes, on the drill's services."""

    def __init__(self, workdir, env):
        self.workdir, self.env = workdir, env
        self.port = free_port()
        self.base = 'http://127.0.0.1:%d' % self.port
        self.procs = {}

    def spawn(self, name, args):
        log = open(os.path.join(self.workdir, name + '.log'), 'ab')
        self.procs[name] = subprocess.Popen([sys.executable] + args, cwd=ROOT,
                                            env=dict(os.environ, **self.env),
                                            stdout=log, stderr=subprocess.STDOUT)
        return self.procs[name]

    def start_consumer(self, name):
        return self.spawn(name, ['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2',
                                 '-k', 'thread'])

    def start(self):
        self.spawn('web', ['server.py', '--port', str(self.port)])
        self.start_consumer('consumer-a')
        self.start_consumer('consumer-b')
        wait_until(lambda: call('GET', self.base + '/healthz')[0] == 200, timeout=30,
                   message='the web server')

    def signal(self, name, signum):
        proc = self.procs[name]
        proc.send_signal(signum)
        proc.wait(30)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def post_run(system, i):
    report = 'orders' if i % 3 == 0 else 'customers'
    status, body = call('POST', system.base + '/api/runs',
                        {'report': report, 'to': ['drill-%d@example.org' % i]})
    return status, (body or {}).get('id')


def attachment_matches(message):
    """The attachment is whole: a zip that opens, a CSV with as many rows
    as the body says."""
    import io
    import re
    import zipfile
    body = message.get_body(('plain',)).get_content()
    said = re.search(r'Rows: ([\d,]+)', body)
    parts = [p for p in message.walk() if p.get_filename()]
    if not said or len(parts) != 1:
        return False
    data = parts[0].get_payload(decode=True)
    if parts[0].get_filename().endswith('.zip'):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                [inner] = archive.namelist()
                data = archive.read(inner)
        except (zipfile.BadZipFile, ValueError):
            return False
    return data.count(b'\n') - 1 == int(said.group(1).replace(',', ''))


def drill(args, workdir):
    redis = RedisServer()
    redis.start()
    sink = SmtpSink()
    sink.start()
    pg_name = None
    if args.database == 'postgres':
        import psycopg
        pg_name = 'nightshift_drill_%s' % uuid.uuid4().hex[:8]
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute('CREATE DATABASE %s' % pg_name)
        database_url = '%s/%s' % (PG_ADMIN_URL.rsplit('/', 1)[0], pg_name)
    else:
        database_url = 'sqlite:///%s' % os.path.join(workdir, 'drill.db')
    config = os.path.join(workdir, 'drill.ini')
    with open(config, 'w') as out:
        out.write('[nightshift]\nreports_dir = reports\nretry_delay = 0.5\n'
                  'retry_max_delay = 3\nmax_attempts = 30\nstale_after = 3\n'
                  'progress_every = 0.2\nrequeue_after = 20\nsmtp_timeout = 2\n'
                  'report_paths = %s\n' % os.path.join(ROOT, 'reports'))
    env = {'NIGHTSHIFT_CONFIG': config, 'DATABASE_URL': database_url,
           'NIGHTSHIFT_SOURCE_DEMO_URL': database_url,
           'REDIS_URL': redis.url, 'SMTP_HOST': '127.0.0.1', 'SMTP_PORT': str(sink.port),
           'NIGHTSHIFT_SMTP_SECURITY': 'none', 'MAIL_FROM': 'drill@nightshift.test'}
    system = System(workdir, env)
    try:
        seed = subprocess.run([sys.executable, 'scripts/seed.py', '--orders', str(args.orders),
                               '--customers', '2000'], cwd=ROOT, env=dict(os.environ, **env),
                              capture_output=True, text=True)
        if seed.returncode:
            sys.exit('drill: seeding failed:\n' + seed.stderr)
        system.start()
        accepted, events = [], []
        crashes = []  # when a consumer was killed or paused, whatever it was doing
        refused = [0]

        def post_during(count, base, pause=0.0):
            for k in range(count):
                status, run_id = post_run(system, base + k)
                refused[0] += status == 503
                accepted.extend([run_id] if status == 202 else [])
                time.sleep(pause)

        def kill_consumer():
            time.sleep(0.5)
            crashes.append(time.perf_counter())
            os.kill(system.procs['consumer-a'].pid, signal.SIGKILL)
            system.procs['consumer-a'].wait()
            time.sleep(3.5)
            system.start_consumer('consumer-a')

        def terminate_consumer():
            system.signal('consumer-b', signal.SIGTERM)
            system.start_consumer('consumer-b')

        def redis_down():
            redis.stop()
            post_during(3, 10000, pause=1)
            redis.start()

        def smtp_down():
            sink.stop()
            post_during(2, 20000)
            time.sleep(4)
            sink.start()

        def refuse_rcpt():
            sink.rcpt_replies = ['421 4.7.0 too busy, closing'] * 3
            post_during(2, 30000)
            wait_until(lambda: not sink.rcpt_replies, timeout=30, message='421s used up')

        def no_data_reply():
            # Longer than smtp_timeout: the message is kept, the reply is late.
            sink.data_delay = 3
            post_during(2, 40000)
            try:
                wait_until(lambda: sum(1 for m in sink.messages if m['reply_late']) >= 2,
                           timeout=20, message='two late replies')
            finally:
                sink.data_delay = 0

        def hang_up_after_data():
            sink.hang_up_after_data = True
            post_during(2, 50000)
            time.sleep(2)
            sink.hang_up_after_data = False

        def pause_consumer():
            time.sleep(0.5)
            proc = system.procs['consumer-a']
            crashes.append(time.perf_counter())
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(5)  # past stale_after: the other consumer takes its runs
            os.kill(proc.pid, signal.SIGCONT)

        def cut_connections():
            import psycopg
            with psycopg.connect(database_url, autocommit=True) as admin:
                for _ in range(5):
                    admin.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                                  'WHERE datname = current_database() '
                                  'AND pid <> pg_backend_pid()')
                    time.sleep(0.3)

        faults = [('kill -9 consumer-a while it works', kill_consumer),
                  ('SIGTERM consumer-b', terminate_consumer),
                  ('Redis down 3 s', redis_down),
                  ('SMTP down 4 s', smtp_down),
                  ('421 at RCPT', refuse_rcpt),
                  ('no reply after DATA', no_data_reply),
                  ('hang-up after accepting', hang_up_after_data),
                  ('SIGSTOP consumer-a past stale_after', pause_consumer)]
        if args.database == 'postgres':
            faults.append(('database connections terminated', cut_connections))
        step = max(args.runs // (len(faults) + 1), 1)
        at = {step * (k + 1): fault for k, fault in enumerate(faults)}
        marks = []  # (time, fault) as each began, to say what a second copy followed
        for i in range(args.runs):
            if i in at:
                events.append(at[i][0])
                marks.append((time.perf_counter(), at[i][0]))
                at[i][1]()
            post_during(1, i)
            time.sleep(args.pause)
        # With fewer runs than faults, the rest still happen.
        for index in sorted(k for k in at if k >= args.runs):
            events.append(at[index][0])
            at[index][1]()
        refused = refused[0]

        def finished():
            states = [call('GET', '%s/api/runs/%d' % (system.base, r))[1] for r in accepted]
            return all(s and s['status'] in TERMINAL for s in states) and states
        try:
            states = wait_until(finished, timeout=args.timeout, interval=0.5,
                                message='every accepted run to finish')
        except AssertionError:
            states = [call('GET', '%s/api/runs/%d' % (system.base, r))[1] for r in accepted]
        time.sleep(2)  # anything sent twice would arrive by now
        ids = [m['message']['Message-ID'] for m in sink.messages]
        # Message-IDs are <nightshift-run-<id>-<installation>.<token>@<domain>>.
        runs_mailed = {int(i.strip().split('-')[2].split('@')[0]) for i in ids}
        delivered = sum(1 for s in states if s and s['status'] == 'delivered')
        failed = sum(1 for s in states if s and s['status'] == 'failed')
        # A message whose reply never came may have arrived: it goes again
        # with the same Message-ID (at least once). Those copies are counted
        # apart; any other second copy is a duplicate.
        resent = sum(1 for m in sink.messages if m.get('reply_late'))
        # The other designed second copy: a consumer killed (or paused past
        # stale_after) after the server took the message and before it could
        # record that. Its first copy landed within a moment of the kill.
        crash_resent = 0
        for message_id in sorted({i for i in ids if ids.count(i) > 1}):
            copies = [m for m in sink.messages if m['message']['Message-ID'] == message_id]
            run_id = int(message_id.strip().split('-')[2].split('@')[0])
            state = next((s for s in states if s and s['id'] == run_id), {}) or {}
            after = [name for at_time, name in marks if at_time <= copies[-1]['at']]
            late = sum(1 for m in copies if m['reply_late'])
            crashed = not late and any(-0.5 < copies[0]['at'] - when < 1.5 for when in crashes)
            crash_resent += len(copies) - 1 if crashed else 0
            print('sent %d times: run %d (attempts %s, late replies %d, error %s); last '
                  'fault before the second copy: %s, %.1f s between copies%s' % (
                      len(copies), run_id, state.get('attempts'), late, state.get('error'),
                      after[-1] if after else 'none', copies[-1]['at'] - copies[0]['at'],
                      '; the first copy landed as its consumer was killed or paused'
                      if crashed else ''))
        duplicates = len(ids) - len(set(ids)) - resent - crash_resent
        broken = sum(1 for m in sink.messages if not attachment_matches(m['message']))
        lost = sum(1 for s in states if not s or s['status'] not in TERMINAL) \
            + sum(1 for s in states if s and s['status'] == 'delivered'
                  and s['id'] not in runs_mailed)
        stray = len(runs_mailed - set(accepted))
        return {'database': args.database, 'events': events, 'requested': len(accepted),
                'refused': refused, 'delivered': delivered, 'failed': failed,
                'duplicates': duplicates, 'resent': resent, 'crash_resent': crash_resent,
                'broken': broken,
                'lost': lost, 'stray': stray,
                'attempts': sum(s['attempts'] for s in states if s)}
    finally:
        system.stop()
        sink.stop()
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)
        if pg_name:
            import psycopg
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % pg_name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=40)
    parser.add_argument('--orders', type=int, default=200000,
                        help='demo orders; every third run exports all of them')
    parser.add_argument('--database', choices=('sqlite', 'postgres'), default='sqlite')
    parser.add_argument('--pause', type=float, default=0.2, help='seconds between posts')
    parser.add_argument('--timeout', type=float, default=240)
    parser.add_argument('--keep', action='store_true', help='keep the work folder and logs')
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix='nightshift-drill-')
    started = time.monotonic()
    try:
        result = drill(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print('logs in', workdir)
    print('faults: ' + '; '.join(result['events']))
    print()
    print('| database | requested | refused (503) | delivered | failed | duplicates '
          '| resent after a lost reply | resent after a crash mid-send | broken attachments '
          '| lost | attempts |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    print('| {database} | {requested} | {refused} | {delivered} | {failed} | {duplicates} '
          '| {resent} | {crash_resent} | {broken} | {lost} | {attempts} |'.format(**result))
    print()
    print('%.0f s' % (time.monotonic() - started))
    ok = result['duplicates'] == 0 and result['lost'] == 0 and result['stray'] == 0 \
        and result['broken'] == 0 \
        and result['delivered'] + result['failed'] == result['requested']
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
