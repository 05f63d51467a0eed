"""End to end with real processes: huey_consumer, and server.py --worker."""
import datetime
import json
import os
import subprocess
import sys
import urllib.request

import pytest

import demo
from conftest import ROOT, attachment, faketime_library, free_port, wait_until
from demo import Customer, Order
from loopback import stop_gracefully as stop

pytestmark = pytest.mark.slow


def spawn(args, env, log):
    full_env = dict(os.environ, **env)
    return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT)


def test_huey_consumer_process_delivers_a_posted_run(app, consumer_env, smtp_sink, tmp_path):
    demo.seed(customers=30, orders=2000)
    with open(tmp_path / 'consumer.log', 'wb') as log:
        consumer = spawn(['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2',
                          '-k', 'thread'], consumer_env, log)
        try:
            res = app.post_json('/api/runs', {'report': 'orders',
                                              'params': {'since': '2025-06-01'},
                                              'to': ['ops@example.org']})
            run_url = res.headers['Location']
            [sent] = smtp_sink.wait_for(1, timeout=30)
            wait_until(lambda: app.get(run_url).json['status'] == 'delivered', timeout=10,
                       message='run to be delivered')
        finally:
            stop(consumer)
    assert consumer.returncode == 0, (tmp_path / 'consumer.log').read_text()
    name, data = attachment(sent['message'])
    lines = data.decode().splitlines()
    expected = Order.select().join(Customer).where(Order.created_at >= '2025-06-01').count()
    assert len(lines) == expected + 1 and expected > 100
    run = app.get(run_url).json
    assert run['rows'] == expected and run['attempts'] == 1


def _embedded_defaults(tmp_path, more=''):
    """The environment of `python server.py` on the embedded defaults (SQLite
    database and queue, mail to the outbox) in tmp_path, with no deploy
    target set."""
    config = tmp_path / 'config.ini'
    config.write_text('[nightshift]\ndatabase_url = sqlite:///data/nightshift.db\n'
                      'queue = sqlite\nqueue_path = data/queue.db\nmail_backend = outbox\n'
                      'outbox_dir = data/outbox\nreports_dir = data/reports\n' + more)
    return {'NIGHTSHIFT_CONFIG': str(config), 'REDIS_URL': '', 'DATABASE_URL': '',
            'SMTP_HOST': '', 'PORT': ''}


@pytest.mark.parametrize('worker', [False, True])
def test_the_web_server_stops_on_sigint_when_started_with_it_ignored(tmp_path, worker):
    """A shell without job control starts `python server.py &` with SIGINT
    ignored, and Python keeps it ignored: `kill -INT` (what stops a
    consumer) then did nothing to the web server until it was killed."""
    import signal
    port = free_port()
    env = dict(os.environ, **_embedded_defaults(tmp_path))
    with open(tmp_path / 'server.log', 'wb') as log:
        server = subprocess.Popen(
            [sys.executable, 'server.py', '--port', str(port)] + (['--worker'] if worker else []),
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            wait_until(lambda: _get_json('http://127.0.0.1:%d/healthz' % port), timeout=20,
                       message='server to answer')
            server.send_signal(signal.SIGINT)
            server.wait(15)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    assert server.returncode == 0, (tmp_path / 'server.log').read_text()


def test_main_command_serves_web_and_worker_on_embedded_defaults(tmp_path):
    """`python server.py --worker` on SQLite queue + database and the outbox."""
    port = free_port()
    env = _embedded_defaults(tmp_path, '[source:demo]\nurl = sqlite:///data/demo.db\n')
    with open(tmp_path / 'seed.log', 'wb') as log:
        assert spawn(['scripts/seed.py', '--if-empty', '--orders', '300'], env, log).wait(60) == 0
    with open(tmp_path / 'server.log', 'wb') as log:
        server = spawn(['server.py', '--worker', '--port', str(port)], env, log)
        base = 'http://127.0.0.1:%d' % port
        try:
            health = wait_until(lambda: _get_json(base + '/healthz'), timeout=20,
                                message='server to answer')
            assert health['status'] == 'ok' and health['queue_backend'] == 'sqlite'
            request = urllib.request.Request(
                base + '/api/runs', method='POST', headers={'Content-Type': 'application/json'},
                data=json.dumps({'report': 'customers', 'to': ['me@example.org']}).encode())
            with urllib.request.urlopen(request, timeout=10) as res:
                assert res.status == 202
                run_url = base + json.load(res)['url']
            run = wait_until(lambda: _delivered(run_url), timeout=30, message='delivery')
            outbox = tmp_path / 'data' / 'outbox'
            assert len(os.listdir(outbox)) == 1
            with urllib.request.urlopen(base + '/reports/orders.csv', timeout=10) as res:
                assert len(res.read().splitlines()) == 301
        finally:
            stop(server)
    assert server.returncode == 0, (tmp_path / 'server.log').read_text()
    assert run['rows'] == 1000  # demo customers


def _get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as res:
            return json.load(res)
    except OSError:
        return None


def _delivered(url):
    run = _get_json(url)
    return run if run and run['status'] == 'delivered' else None


def clock_just_past_the_next_minute():
    """Environment that sets a process's clock (libfaketime) one second past
    the next minute boundary, as a fixed offset: every process started with
    it, now or later, shows the same time. {} without libfaketime."""
    lib = faketime_library()
    if lib is None:
        return {}
    now = datetime.datetime.now()
    ahead = 61 - now.second  # the next boundary, plus one second
    return {'LD_PRELOAD': lib, 'FAKETIME': '+%ds' % ahead, 'FAKETIME_DONT_FAKE_MONOTONIC': '1'}


# Real minutes: run once, on the production pairing (Postgres + Redis).
@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_two_consumers_and_a_restart_send_each_slot_once(app, consumer_env, smtp_sink,
                                                          tmp_path):
    """Two real huey_consumer processes on one Redis run through minute slots;
    one restarts inside a slot's minute. Every slot: one run, one email.

    A consumer ticks as it starts and every 60 s after. With the consumers'
    clocks just past the next minute boundary, the first slot is due as they
    start (both tick it at once) rather than up to two minutes later; the
    second comes from their periodic ticks a minute on."""
    from models import Run
    demo.seed(customers=5, orders=20)
    res = app.post_json('/api/schedules', {'name': 'every-minute', 'report': 'customers',
                                           'to': ['ops@example.org'], 'cron': '* * * * *'})
    assert res.status_int == 201
    env = dict(consumer_env, **clock_just_past_the_next_minute())
    logs = [open(tmp_path / ('consumer-%d.log' % i), 'wb') for i in range(3)]
    command = ['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2', '-k', 'thread']
    first = spawn(command, env, logs[0])
    second = spawn(command, env, logs[1])
    restarted = None
    try:
        smtp_sink.wait_for(1, timeout=150)
        # Restart one consumer inside that slot's minute: its start-up tick
        # must not send the slot again.
        stop(second)
        restarted = spawn(command, env, logs[2])
        wait_until(lambda: b'consumer started' in (tmp_path / 'consumer-2.log').read_bytes(),
                   timeout=20, message='the restarted consumer')
        # Both consumers tick through the next minute.
        smtp_sink.wait_for(2, timeout=150)
    finally:
        # Stopped gracefully, each finishes the tick or run in hand: whatever
        # they were to send or record is there once they have exited.
        for proc in (first, second, restarted):
            if proc is not None:
                stop(proc)
        for log in logs:
            log.close()
    runs = list(Run.select().where(Run.schedule == 'every-minute'))
    slots = [r.slot_at for r in runs]
    assert len(slots) == len(set(slots)) >= 2
    assert all(r.trigger == 'schedule' for r in runs)
    delivered = [r for r in runs if r.status == 'delivered']
    # Every email belongs to a distinct slot's run: nothing sent twice.
    assert len(smtp_sink.messages) == len(delivered)
    ids = [m['message']['Message-ID'] for m in smtp_sink.messages]
    assert len(ids) == len(set(ids))


SALES = '''/*
title: Sales by day
description: One row per day with its total, from the team's own database.
source: team
params:
  since: {type: date, required: true, help: First day included.}
*/
SELECT day, total, note FROM sales WHERE day >= :since ORDER BY day
'''
TYPO = '''/*
title: Broken
params:
  since: {type: dat}
*/
SELECT * FROM sales WHERE day >= :since
'''


def test_a_report_file_added_while_running_is_served_and_a_broken_one_listed(tmp_path):
    """The team's own SQLite database as a source, their SQL file dropped into
    the report folder while web and worker run: listed, downloaded, emailed;
    a broken file beside it is listed with its error and cannot run."""
    import email
    import email.policy
    import sqlite3
    from loopback import call
    team = tmp_path / 'team.db'
    conn = sqlite3.connect(str(team))
    conn.execute('CREATE TABLE sales (day DATE, total DECIMAL(10,2), note TEXT)')
    conn.executemany('INSERT INTO sales VALUES (?, ?, ?)', [
        ('2025-06-01', 10.5, 'first'), ('2025-06-02', 3, None), ('2025-06-03', 0.1, '=1+1')])
    conn.commit()
    conn.close()
    folder = tmp_path / 'team-reports'
    folder.mkdir()
    config = tmp_path / 'config.ini'
    config.write_text('[nightshift]\ndatabase_url = sqlite:///data/nightshift.db\n'
                      'queue = sqlite\nqueue_path = data/queue.db\nmail_backend = outbox\n'
                      'outbox_dir = data/outbox\nreports_dir = data/reports\n'
                      'report_paths = team-reports\n'
                      '[source:team]\nurl = sqlite:///team.db\n')
    env = {'NIGHTSHIFT_CONFIG': str(config), 'NIGHTSHIFT_REPORT_PATHS': str(folder)}
    for name in ('REDIS_URL', 'DATABASE_URL', 'SMTP_HOST', 'PORT'):
        env[name] = ''
    port = free_port()
    base = 'http://127.0.0.1:%d' % port
    with open(tmp_path / 'server.log', 'wb') as log:
        server = spawn(['server.py', '--worker', '--port', str(port)], env, log)
        try:
            wait_until(lambda: _get_json(base + '/healthz'), timeout=20,
                       message='server to answer')
            assert _get_json(base + '/api/reports') == {'reports': [], 'broken': []}
            (folder / 'sales.sql').write_text(SALES)
            (folder / 'typo.sql').write_text(TYPO)
            listing = wait_until(lambda: (_get_json(base + '/api/reports') or {}).get('reports')
                                 and _get_json(base + '/api/reports'), timeout=10,
                                 message='the new file to be listed')
            assert [r['name'] for r in listing['reports']] == ['sales']
            [broken] = listing['broken']
            assert (broken['name'], broken['line']) == ('typo', 4)
            assert 'type must be one of' in broken['error']

            with urllib.request.urlopen(base + '/reports/sales.csv?since=2025-06-02') as res:
                downloaded = res.read()
            assert downloaded == b"\xef\xbb\xbfday,total,note\n2025-06-02,3.00,\n" \
                                 b"2025-06-03,0.10,'=1+1\n"
            status, body = call('POST', base + '/api/runs', {
                'report': 'sales', 'params': {'since': '2025-06-02'}, 'to': ['me@example.org']})
            assert status == 202
            outbox = tmp_path / 'data' / 'outbox'
            [name] = wait_until(lambda: os.path.isdir(outbox) and
                                [n for n in os.listdir(outbox) if n.endswith('.eml')],
                                timeout=30, message='the email in the outbox')
            with open(outbox / name, 'rb') as f:
                message = email.message_from_binary_file(f, policy=email.policy.default)
            assert attachment(message)[1] == downloaded

            status, body = call('POST', base + '/api/runs', {'report': 'typo',
                                                             'to': ['me@example.org']})
            assert (status, body['error'], body['field']) == (400, 'broken_report', 'report')
            with urllib.request.urlopen(base + '/') as res:
                page = res.read().decode()
            assert 'Report files with errors' in page and 'typo.sql:4' in page
        finally:
            stop(server)
