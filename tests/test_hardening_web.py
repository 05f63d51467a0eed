"""Hardening of the web side: hostile clients, hostile input, hostile links.

The slow-client tests run the real waitress server, with the options
server.main() gives it, on a free loopback port in a thread.
"""
import base64
import contextlib
import csv
import io
import os
import select
import socket
import subprocess
import sys
import threading

import pytest
import webtest

import runs
from conftest import ROOT, free_port, run_queued, wait_until, web_app
from export import escape_formula
from demo import Customer, Order
from models import Run, db
from reports import Registry
from server import create_app, server_options
from sources import Source
from sqlexport import open_query_csv

TOKEN = 'tok-0123456789abcdef-web'


@pytest.fixture
def secured(make_jobs):
    jobs = make_jobs(env={'NIGHTSHIFT_API_TOKEN': TOKEN})
    return jobs.settings, jobs, web_app(jobs)


BEARER = {'Authorization': 'Bearer ' + TOKEN}


def basic(password):
    return 'Basic ' + base64.b64encode(('me:%s' % password).encode()).decode()


# --- a live waitress server ------------------------------------------------

@contextlib.contextmanager
def live_server(settings, jobs, registry=None):
    """The app served by waitress with server.main()'s options, in a thread."""
    from waitress.server import create_server
    app = create_app(settings, jobs, **({'registry': registry} if registry else {}))
    port = free_port()
    server = create_server(app, **server_options(settings, '127.0.0.1', port))
    def serve():
        # close() below pulls the sockets from under the running loop.
        with contextlib.suppress(OSError, ValueError):
            server.run()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.close()
        thread.join(10)


def http_get(port, path, headers=None, timeout=5):
    """(status, headers dict, body) of one GET on a fresh connection."""
    import http.client
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path, headers=headers or {})
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def slow_client(port, path, headers=''):
    """A client that asks for `path` and then reads nothing; returns the
    socket after the status line has arrived."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(('127.0.0.1', port))
    sock.sendall(('GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n' % (path, headers)).encode())
    head = sock.recv(64)
    return sock, head


def seed_wide_customers(rows, width=240):
    filler = 'x' * width
    with db.atomic():
        for start in range(0, rows, 2000):
            Customer.insert_many([{'name': '%s%06d' % (filler, i), 'email': None}
                                  for i in range(start, min(rows, start + 2000))]).execute()


def wide_registry():
    wide = Registry()

    @wide.report('wide', 'Wide')
    def build():
        return Customer.select(Customer.name).order_by(Customer.id)
    return wide


# --- 6: bodies refused at the door -----------------------------------------

def test_an_unauthenticated_chunked_body_is_refused_before_it_is_read(secured):
    settings, jobs, _ = secured
    total, piece = 50 * 1024 * 1024, b'x' * 65536
    with live_server(settings, jobs) as port:
        sock = socket.create_connection(('127.0.0.1', port), timeout=20)
        sock.sendall(b'POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                     b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
        sent, answered = 0, b''
        try:
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    answered = sock.recv(4096)
                    break
                sock.sendall(b'%x\r\n%s\r\n' % (len(piece), piece))
                sent += len(piece)
            else:
                sock.sendall(b'0\r\n\r\n')
                answered = sock.recv(4096)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        finally:
            sock.close()
    # The server stopped taking the body long before 50 MB (what the kernel's
    # socket buffers hold is all that could get through).
    assert sent < 16 * 1024 * 1024, sent
    if answered:
        assert answered.split(b' ')[1] in (b'413', b'401'), answered[:200]


def test_a_declared_large_body_is_refused_from_its_headers(secured):
    settings, jobs, _ = secured
    with live_server(settings, jobs) as port:
        sock = socket.create_connection(('127.0.0.1', port), timeout=20)
        with sock:
            sock.sendall(b'POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                         b'Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n')
            answered = sock.recv(4096)
    assert answered.startswith(b'HTTP/1.1 413'), answered[:200]


# --- 7: slow clients ---------------------------------------------------------

def test_health_answers_while_many_connections_trickle_their_headers(settings, jobs):
    with live_server(settings, jobs) as port:
        trickling = []
        try:
            for _ in range(150):
                sock = socket.create_connection(('127.0.0.1', port), timeout=10)
                sock.sendall(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ')
                trickling.append(sock)
            status, _, body = http_get(port, '/healthz', timeout=5)
            assert status == 200, body
        finally:
            for sock in trickling:
                sock.close()


def test_slow_readers_of_downloads_leave_health_and_the_api_answering(settings, jobs):
    seed_wide_customers(100000)  # ~25 MB: far more than waitress and the kernel buffer
    from tasks import Jobs
    wide = wide_registry()
    jobs = Jobs(settings, registry=wide)
    with live_server(settings, jobs, registry=wide) as port:
        readers = [slow_client(port, '/reports/wide.csv') for _ in range(4)]
        try:
            statuses = [head.split(b' ')[1] for sock, head in readers]
            # Some downloads run, the rest are told to come back: never all threads.
            assert b'200' in statuses and b'503' in statuses, statuses
            status, _, body = http_get(port, '/healthz', timeout=5)
            assert status == 200, body
            status, _, body = http_get(port, '/api/runs', timeout=5)
            assert status == 200, body
            status, headers, body = http_get(port, '/reports/wide.csv', timeout=5)
            assert status == 503 and int(headers['Retry-After']) > 0, (status, body[:200])
        finally:
            for sock, _ in readers:
                sock.close()
        # Abandoned downloads give their slots back.
        wait_until(lambda: http_get(port, '/api/reports/wide/check')[0] == 200 and
                   _download_starts(port), timeout=20, message='a free download slot')


def _download_starts(port):
    sock, head = slow_client(port, '/reports/wide.csv')
    sock.close()
    return head.startswith(b'HTTP/1.1 200')


def test_head_of_a_download_does_not_run_the_export(settings, jobs):
    broken = Registry()

    @broken.report('broken', 'Broken')
    def build():
        # A query that fails when run: a HEAD that ran it would say so.
        from peewee import SQL
        return Customer.select(SQL('no_such_column')).from_(Customer)

    app = webtest.TestApp(create_app(settings, jobs, registry=broken))
    res = app.head('/reports/broken.csv')
    assert res.status_int == 200
    assert res.headers['Content-Type'].startswith('text/csv')
    assert 'attachment; filename="broken-' in res.headers['Content-Disposition']
    # The same query run by a GET fails: the HEAD above did not run it.
    assert app.get('/reports/broken.csv', expect_errors=True).status_int == 422
    res = app.head('/reports/nope.csv', expect_errors=True)
    assert res.status_int == 404
    res = app.head('/reports/broken.csv?bogus=1', expect_errors=True)
    assert res.status_int == 400


def test_an_abandoned_download_stops_its_query_on_postgresql(settings, jobs, database_url):
    if not database_url.startswith('postgres'):
        pytest.skip('pg_stat_activity is PostgreSQL')
    import psycopg
    seed_wide_customers(100000)
    from tasks import Jobs
    wide = Registry()

    @wide.report('slowwide', 'Slow wide')
    def build():
        # A pause per row keeps the query running long after the client left.
        # Every column's type is known, so PostgreSQL writes it with COPY.
        from peewee import SQL, fn
        return Customer.select(Customer.name).where(
            fn.length(fn.CONCAT(Customer.name, fn.pg_sleep(SQL('0.0005')))) > 0)

    jobs = Jobs(settings, registry=wide)
    watcher = psycopg.connect(database_url, autocommit=True)

    def export_queries():
        # Running a fetch, or holding its cursor open between fetches.
        return watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND state IN ('active', 'idle in transaction')").fetchone()[0]
    try:
        with live_server(settings, jobs, registry=wide) as port:
            sock, head = slow_client(port, '/reports/slowwide.csv')
            assert head.startswith(b'HTTP/1.1 200'), head
            wait_until(lambda: export_queries() > 0, timeout=20, message='the export running')
            sock.close()
            wait_until(lambda: export_queries() == 0, timeout=30,
                       message='the abandoned export to stop')
    finally:
        watcher.close()


# --- 10, 11: hostile bytes and numbers are 4xx naming the field -------------

def raw_get(app, path, headers=None):
    """A GET whose path and headers are sent as given (latin-1 bytes, as WSGI
    hands non-ASCII header bytes to the app)."""
    return app.get(path, headers=headers or {}, expect_errors=True)


@pytest.mark.parametrize('header', ['Authorization', 'Origin', 'Host'])
def test_non_utf8_bytes_in_headers_are_refused_not_crashed(secured, header):
    settings, jobs, app = secured
    value = {'Authorization': 'Bearer \xff\xfe' + TOKEN, 'Origin': 'http://\xffevil',
             'Host': '\xfflocalhost'}[header]
    headers = dict(BEARER, **{header: value})
    res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                        headers=headers, expect_errors=True)
    assert 400 <= res.status_int < 500, res.text
    assert res.json['field'] == header
    res = raw_get(app, '/api/runs', headers)
    assert 400 <= res.status_int < 500, res.text
    assert res.json['field'] == header
    assert Run.select().count() == 0


@pytest.mark.parametrize('header', ['Authorization', 'Origin', 'Host'])
def test_non_utf8_bytes_in_headers_on_an_open_server(app, header):
    value = {'Authorization': 'Bearer \xff', 'Origin': 'http://\xff',
             'Host': '\xfflocalhost'}[header]
    res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                        headers={header: value}, expect_errors=True)
    assert 400 <= res.status_int < 500, res.text
    assert res.json['field'] == header


@pytest.fixture
def finished_run(settings, jobs, database):
    """A delivered run whose file is kept: its link is checked all the way."""
    Customer.create(name='a', email='a@example.org')
    run = runs.create_run(jobs.registry, settings, 'customers', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs)
    assert Run.get_by_id(run.id).file_key
    return run.id


@pytest.mark.parametrize('expires', ['%B2', '%C2%B2', '%EF%BC%91', '1%00', '-1', '+1', ' 1',
                                     '9' * 40])
def test_a_signed_link_with_a_strange_expiry_is_a_client_error(app, finished_run, expires):
    res = app.get('/files/%d?expires=%s&sig=%s' % (finished_run, expires, 'a' * 64),
                  expect_errors=True)
    assert (res.status_int, res.json['error']) == (403, 'forbidden'), res.text


@pytest.mark.parametrize('query, field', [
    ('limit=%FF', 'limit'), ('limit=%C2%B2', 'limit'), ('status=%FF', 'status'),
    ('report=%FF', 'report'), ('%FF=1', 'query'),
])
def test_bad_bytes_in_list_filters_name_the_field(app, query, field):
    res = app.get('/api/runs?' + query, expect_errors=True)
    assert res.status_int == 400, res.text
    assert res.json['field'] == field


def test_bad_utf8_in_a_download_filter_is_refused_not_dropped(app, database):
    customer = Customer.create(name='a', email='a@example.org')
    Order.create(customer=customer, status='paid', amount='1.00')
    Order.create(customer=customer, status='pending', amount='2.00')
    for path in ('/reports/orders.csv?status=%FF', '/api/reports/orders/check?status=%FF'):
        res = app.get(path, expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, 'params.status'), path
    res = app.get('/reports/orders.csv?bom=%FF', expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'bom')


def test_deeply_nested_json_is_a_400(app):
    body = '[' * 30000 + ']' * 30000
    res = app.post('/api/runs', body, content_type='application/json', expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'body')
    res = app.post('/api/schedules', '{"a":' * 10000 + '1' + '}' * 10000,
                   content_type='application/json', expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, 'body')


@pytest.mark.parametrize('value', ['99999999999999999999', '9223372036854775808',
                                   '-9223372036854775809'])
def test_integers_past_64_bits_are_refused_everywhere(app, database, value):
    field = 'params.min_orders'
    res = app.get('/api/reports/customers/check?min_orders=' + value, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field)
    res = app.get('/reports/customers.csv?min_orders=' + value, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field)
    res = app.post_json('/api/runs', {'report': 'customers', 'params': {'min_orders': int(value)},
                                      'to': ['a@example.org']}, expect_errors=True)
    assert (res.status_int, res.json['field']) == (400, field)
    assert Run.select().count() == 0


def test_the_largest_64_bit_integer_still_works(app, database):
    res = app.get('/api/reports/customers/check?min_orders=9223372036854775807')
    assert res.json['params']['min_orders'] == 2 ** 63 - 1
    assert app.get('/reports/customers.csv?min_orders=9223372036854775807&bom=false') \
        .text.splitlines()[1:] == []


def test_a_signature_with_strange_bytes_is_refused_quietly(app, finished_run):
    res = app.get('/files/%d?expires=99999999999&sig=%%FF%%FE' % finished_run,
                  expect_errors=True)
    assert (res.status_int, res.json['error']) == (403, 'forbidden')


# --- 12: turning escaping off needs more than a link --------------------------

@pytest.fixture
def seeded_formula(database):
    customer = Customer.create(name='=HYPERLINK("http://evil.example","x")', email='a@ex.org')
    Order.create(customer=customer, status='paid', amount='1.00')


def names_in(body):
    rows = list(csv.reader(io.StringIO(body.decode('utf-8-sig'), newline='')))
    return [row[2] for row in rows[1:]]  # the customer's name


def test_a_link_cannot_turn_escaping_off(secured, seeded_formula):
    settings, jobs, app = secured
    browser = {'Authorization': basic(TOKEN)}  # what a logged-in browser sends by itself
    for path in ('/reports/orders.csv?escape_formulas=false',
                 '/reports/orders.csv?escape_formulas=0',
                 '/api/reports/orders/check?escape_formulas=false'):
        res = app.get(path, headers=browser, expect_errors=True)
        assert (res.status_int, res.json['field']) == (400, 'escape_formulas'), path
    escaped = app.get('/reports/orders.csv?escape_formulas=true', headers=browser).body
    assert names_in(escaped) == ['\'=HYPERLINK("http://evil.example","x")']
    # What a link cannot carry: a Bearer token, or the raw header.
    for headers in (BEARER, dict(browser, **{'X-Nightshift-Raw': '1'})):
        raw = app.get('/reports/orders.csv?escape_formulas=false', headers=headers).body
        assert names_in(raw) == ['=HYPERLINK("http://evil.example","x")']


def test_a_json_body_may_still_turn_escaping_off(secured, seeded_formula):
    settings, jobs, app = secured
    res = app.post_json('/api/runs', {'report': 'orders', 'to': ['a@example.org'],
                                      'escape_formulas': False},
                        headers={'Authorization': basic(TOKEN)})
    assert Run.get_by_id(res.json['id']).escape_formulas is False


# --- 12: what counts as a formula ----------------------------------------------

def demo_source(database_url):
    """The demo shop (in the test's own database) as a report source."""
    return Source('demo', database_url, 10)


HIDDEN_TRIGGERS = [' =1+1', '  @SUM(A1)', '\u00a0=1', '\ufeff=1', '\u3000+1', ' \t=1',
                   '\uff1d1+1', '\uff0b1', '\uff0d1', '\uff20SUM(A1)', ' -1', ' -1+2',
                   '\u00a0\ufeff -x']
HARMLESS = ['-12.5', '-3', ' plain', '\u00a0text', 'a=b', '', ' ', '1-2', '\uff21']


@pytest.mark.parametrize('cell', HIDDEN_TRIGGERS)
def test_triggers_behind_blanks_or_full_width_are_escaped(cell):
    assert escape_formula(cell) == "'" + cell


@pytest.mark.parametrize('cell', HARMLESS)
def test_numbers_and_plain_text_stay_as_they_are(cell):
    assert escape_formula(cell) == cell


def test_database_and_python_escaping_agree_on_hidden_triggers(database, database_url):
    cells = HIDDEN_TRIGGERS + HARMLESS + ['=1', '-1', '\tx', '%x', '|x', '\r=1']
    for cell in cells:
        Customer.create(name=cell, email=None)
    with open_query_csv(demo_source(database_url), 'SELECT name FROM customer ORDER BY id', {},
                        escape=True) as stream:
        text = b''.join(stream).decode('utf-8')
    got = [row[0] if row else '' for row in csv.reader(io.StringIO(text, newline=''))][1:]
    assert got == [escape_formula(c) for c in cells]


# --- 15: progress and NUL -------------------------------------------------------

def test_rows_so_far_never_run_ahead_of_the_rows_written(database, database_url):
    from peewee import PostgresqlDatabase
    if not isinstance(db.obj, PostgresqlDatabase):
        pytest.skip('COPY is PostgreSQL only')
    for i in range(3000):
        Customer.create(name='line\n' * 40 + str(i), email='"q"\n%d' % i)
    with open_query_csv(demo_source(database_url), 'SELECT name, email FROM customer ORDER BY id',
                        {}, escape=False) as stream:
        written = b''
        for chunk in stream:
            written += chunk
            complete = len(list(csv.reader(io.StringIO(
                written.decode('utf-8').rpartition('"\n')[0] + '"\n', newline='')))) - 1
            assert 0 < stream.rows <= complete
    assert stream.rows == 3000


def test_a_nul_in_a_cell_never_reaches_the_file_raw(database, database_url):
    from peewee import PostgresqlDatabase
    if isinstance(db.obj, PostgresqlDatabase):
        with pytest.raises(Exception):
            with db.atomic():
                Customer.create(name='a\x00b', email=None)
        return
    Customer.create(name='a\x00b', email='\x00=1')
    for escape in (True, False):
        with open_query_csv(demo_source(database_url), 'SELECT name, email FROM customer', {},
                            escape=escape) as stream:
            data = b''.join(stream)
        assert b'\x00' not in data
        assert 'a\ufffdb' in data.decode('utf-8')


# --- 13: writes need what a form cannot send --------------------------------------

def test_a_bodyless_form_post_is_refused(secured, database):
    settings, jobs, app = secured
    Schedule_payload = {'name': 'nightly', 'report': 'customers', 'cron': '@daily',
                        'to': ['a@example.org']}
    app.post_json('/api/schedules', Schedule_payload, headers=BEARER)
    browser = {'Authorization': basic(TOKEN)}
    for path in ('/api/schedules/nightly/run', '/api/schedules/nightly/pause'):
        for content_type in ('application/x-www-form-urlencoded', 'text/plain',
                             'multipart/form-data; boundary=x'):
            res = app.post(path, '', headers=dict(browser, **{'Content-Type': content_type}),
                           expect_errors=True)
            assert (res.status_int, res.json['field']) == (415, 'Content-Type'), path
    res = app.delete('/api/schedules/nightly', headers=browser, expect_errors=True)
    assert res.status_int == 415
    assert Run.select().count() == 0
    assert app.get('/api/schedules/nightly', headers=browser).json['enabled'] is True
    # The page's own requests say JSON; a Bearer client needs no more.
    assert app.post('/api/schedules/nightly/pause', headers=browser,
                    content_type='application/json').json['enabled'] is False
    assert app.post('/api/schedules/nightly/resume', headers=BEARER).json['enabled'] is True


@pytest.mark.parametrize('origin', ['https://localhost:80', 'http://localhost:8081',
                                    'ftp://localhost:80', 'http://localhost.evil:80'])
def test_origin_is_compared_with_scheme_host_and_port(secured, origin):
    settings, jobs, app = secured
    res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                        headers={'Authorization': basic(TOKEN), 'Origin': origin},
                        expect_errors=True)
    assert (res.status_int, res.json['error']) == (403, 'cross_site'), origin
    for same in ('http://localhost', 'http://LOCALHOST:80'):
        res = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']},
                            headers={'Authorization': basic(TOKEN), 'Origin': same})
        assert res.status_int == 202, same


def test_the_default_public_url_follows_the_port(make_settings, make_jobs, service_env):
    jobs = make_jobs(env={'NIGHTSHIFT_API_TOKEN': TOKEN, 'PORT': '9123'})
    assert jobs.settings.public_url == 'http://127.0.0.1:9123'
    app = web_app(jobs)
    body = {'report': 'customers', 'to': ['a@example.org']}
    auth = {'Authorization': basic(TOKEN)}
    # Another server on this machine at the old default is not this page.
    res = app.post_json('/api/runs', body, expect_errors=True,
                        headers=dict(auth, Origin='http://127.0.0.1:8080', Host='127.0.0.1:9123'))
    assert (res.status_int, res.json['error']) == (403, 'cross_site')
    res = app.post_json('/api/runs', body, headers=dict(
        auth, Origin='http://127.0.0.1:9123', Host='proxy.internal'))
    assert res.status_int == 202
    explicit = make_settings(dict(service_env, PORT='9123'), public_url='https://reports.example')
    assert explicit.public_url == 'https://reports.example'


def test_a_run_emailed_as_a_link_carries_the_port_listened_on(make_jobs, smtp_sink):
    for i in range(200):
        Customer.create(name='customer %d' % i, email='c%d@example.org' % i)
    jobs = make_jobs(env={'PORT': '9124'}, mail_max_mb=0.001, zip_over_mb=100)
    run = runs.create_run(jobs.registry, jobs.settings, 'customers', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    run_queued(jobs)
    [sent] = smtp_sink.messages
    text = sent['message'].get_body(('plain',)).get_content()
    assert 'http://127.0.0.1:9124/files/%d?' % run.id in text


# --- a busy port ------------------------------------------------------------------

def test_a_busy_port_is_one_clear_line(tmp_path):
    config = tmp_path / 'c.ini'
    config.write_text('[nightshift]\ndatabase_url = sqlite:///x.db\nqueue_path = q.db\n')
    env = dict(os.environ, NIGHTSHIFT_CONFIG=str(config), NIGHTSHIFT_API_TOKEN='',
               REDIS_URL='', SMTP_HOST='', DATABASE_URL='', PORT='')
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert 'Traceback' not in done.stderr, done.stderr
    assert 'nightshift: port %d is in use' % port in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith('nightshift: port')


def test_headers_the_app_does_not_read_are_left_alone(app):
    res = app.get('/api/runs', headers={'Cookie': 'other_app=\xff\xfe', 'X-Note': '\xff'})
    assert res.status_int == 200
