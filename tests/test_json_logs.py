"""Logs a machine can read: with log_format = json each line is one JSON
object (time, level, logger, message, and run_id and report when the line
is about a run), in the web and in the consumer; secrets are scrubbed in
both formats."""
import contextlib
import io
import json
import logging

import pytest
from huey.exceptions import RetryTask

from conftest import free_port, wait_until, web_app
from logformat import about_run, install_logging, note, run_fields
from models import Run
from test_e2e import spawn, stop

SECRET = 'json-logs-secret-token-0123456789'


@contextlib.contextmanager
def root_logging_to(stream):
    """The root logger writing to `stream` only, as server.py sets it up
    (basicConfig's handler), and as it was afterwards (pytest's own)."""
    root = logging.getLogger()
    kept, level = root.handlers[:], root.level
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s %(message)s'))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.handlers, root.level = kept, level


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_run_and_never_a_secret(make_settings):
    settings = make_settings({'NIGHTSHIFT_API_TOKEN': SECRET}, log_format='json')
    stream = io.StringIO()
    log = logging.getLogger('nightshift.test')
    with root_logging_to(stream):
        install_logging(settings)
        log.info('plain line')
        log.warning('run %d failed: login %s refused\nsecond line', 7, SECRET,
                    extra=run_fields(7, 'orders'))
        with about_run(8):
            note(report='customers')
            log.info('inside the run')
            try:
                raise ValueError('bad token %s' % SECRET)
            except ValueError:
                log.exception('it broke')
        log.info('after the run')
    plain, failed, inside, broke, after = lines(stream)
    assert set(plain) >= {'time', 'level', 'logger', 'message'}
    assert (plain['level'], plain['logger'], plain['message']) == \
        ('INFO', 'nightshift.test', 'plain line')
    assert plain['time'].endswith('Z') and 'run_id' not in plain
    assert (failed['run_id'], failed['report']) == (7, 'orders')
    assert failed['message'] == 'run 7 failed: login *** refused\nsecond line'
    assert (inside['run_id'], inside['report']) == (8, 'customers')
    assert broke['run_id'] == 8 and 'ValueError: bad token ***' in broke['exception']
    assert 'run_id' not in after and 'report' not in after
    assert SECRET not in stream.getvalue()


def test_text_lines_stay_text_and_redacted(make_settings):
    settings = make_settings({'NIGHTSHIFT_API_TOKEN': SECRET})
    assert settings.log_format == 'text'
    stream = io.StringIO()
    with root_logging_to(stream):
        install_logging(settings)
        logging.getLogger('nightshift.test').warning('token %s', SECRET,
                                                     extra=run_fields(3, 'orders'))
    text = stream.getvalue()
    assert text.rstrip().endswith('nightshift.test WARNING token ***')
    assert SECRET not in text


def test_a_worker_executing_a_run_logs_its_id_and_report(make_jobs, smtp_sink):
    jobs = make_jobs(env={'NIGHTSHIFT_API_TOKEN': SECRET}, log_format='json')
    app = web_app(jobs)
    run = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                        headers={'Authorization': 'Bearer ' + SECRET}).json
    # The server's reply quotes the token: the retry line must not.
    smtp_sink.rcpt_replies = ['451 4.7.1 greylisted, try later (%s)' % SECRET]
    stream = io.StringIO()
    with root_logging_to(stream):
        install_logging(jobs.settings)
        with pytest.raises(RetryTask):
            jobs.execute(run['id'])
        jobs.execute(run['id'])
    assert Run.get_by_id(run['id']).status == 'delivered'
    logged = lines(stream)
    about = [entry for entry in logged if entry.get('run_id') == run['id']]
    assert {entry['report'] for entry in about} == {'customers'}
    messages = [entry['message'] for entry in about]
    assert any(m.startswith('run %d: attempt 1 failed' % run['id']) and '***' in m
               for m in messages), messages
    assert messages[-1] == 'run %d: delivered' % run['id']
    assert SECRET not in stream.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
def test_consumer_and_web_processes_write_json_lines(consumer_env, smtp_sink, tmp_path):
    from loopback import call
    env = dict(consumer_env, NIGHTSHIFT_LOG_FORMAT='json', NIGHTSHIFT_API_TOKEN=SECRET)
    smtp_sink.rcpt_replies = ['451 4.7.1 greylisted, try later (%s)' % SECRET]
    port = free_port()
    base = 'http://127.0.0.1:%d' % port
    with open(tmp_path / 'consumer.log', 'wb') as consumer_log, \
            open(tmp_path / 'web.log', 'wb') as web_log:
        consumer = spawn(['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '1', '-k',
                          'thread'], env, consumer_log)
        web = spawn(['server.py', '--port', str(port)], env, web_log)
        try:
            wait_until(lambda: call('GET', base + '/healthz')[0] == 200, timeout=30,
                       message='the web')
            import urllib.request
            request = urllib.request.Request(
                base + '/api/runs', method='POST', data=json.dumps(
                    {'report': 'customers', 'to': ['a@example.org']}).encode(),
                headers={'Content-Type': 'application/json', 'Authorization':
                         'Bearer ' + SECRET})
            with urllib.request.urlopen(request, timeout=10) as res:
                run_id = json.load(res)['id']
            wait_until(lambda: Run.get_by_id(run_id).status == 'delivered', timeout=30,
                       message='the run to be delivered after its retry')
            wait_until(lambda: b'delivered' in (tmp_path / 'consumer.log').read_bytes(),
                       timeout=10, message='the consumer to log it')
        finally:
            stop(consumer)
            stop(web)
    for name in ('consumer.log', 'web.log'):
        text = (tmp_path / name).read_text()
        assert SECRET not in text
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert entries and all(set(e) >= {'time', 'level', 'logger', 'message'}
                               for e in entries)
    consumer_lines = [json.loads(line) for line in
                      (tmp_path / 'consumer.log').read_text().splitlines()]
    about = [e for e in consumer_lines if e.get('run_id') == run_id]
    assert {e['report'] for e in about} == {'customers'}
    assert [e['message'] for e in about][-1] == 'run %d: delivered' % run_id
    assert any('attempt 1 failed' in e['message'] and '***' in e['message'] for e in about)
    assert any(e['logger'] == 'huey.consumer' for e in consumer_lines)
    assert any(e['logger'] == 'waitress' for e in
               map(json.loads, (tmp_path / 'web.log').read_text().splitlines()))
    assert consumer.returncode == 0 and web.returncode == 0
