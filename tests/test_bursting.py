"""Bursting: one report, each recipient found in its data gets their own rows,
from one pass over the query, with per-recipient delivery records."""
import csv
import io

import pytest

import runs
import sources
from conftest import attachment, demo_catalogue, run_queued
from demo import Customer, Order
from models import Delivery, Run
from params import Param
from reports import Registry

registry = demo_catalogue()

ANN, BOB, EVE, BOSS = ('ann@example.org', 'Bob@Example.org', 'eve@elsewhere.net',
                       'boss@example.org')


@pytest.fixture
def shop(database):
    """Orders of three customers at addresses of their own, one of them
    outside allowed_domains, and one customer with no address at all."""
    people = {}
    for name, email in (('=HYPERLINK("http://x")', ANN), ('Bob, "Jr."\nline two', BOB),
                        ('Eve', EVE), ('Nobody', None)):
        people[email] = Customer.create(name=name, email=email)
    amounts = {ANN: 3, BOB: 2, EVE: 2, None: 1}
    i = 0
    for email, count in amounts.items():
        for _ in range(count):
            i += 1
            Order.create(customer=people[email], status='paid', amount='%d.50' % i,
                         created_at='2025-06-%02d 10:00:00' % i)
    return people


def rows_of(data):
    assert data.startswith(b'\xef\xbb\xbf')  # the BOM still applies
    return list(csv.reader(io.StringIO(data.decode('utf-8-sig'), newline='')))


@pytest.fixture
def statements(monkeypatch, database_url):
    """Every statement the report source runs, traced by SQLite itself (the
    real connection; the trace only listens)."""
    seen = []
    real = sources.connect

    def traced(source, timeout=None):
        conn = real(source, timeout)
        if source.engine == 'sqlite':
            conn._conn.set_trace_callback(seen.append)
        return conn
    monkeypatch.setattr(sources, 'connect', traced)
    return seen


def test_each_recipient_gets_exactly_their_rows_once(make_jobs, shop, smtp_sink, statements,
                                                     database_url):
    jobs = make_jobs(allowed_domains='example.org')
    settings = jobs.settings
    # Bob's server says "later" the first time.
    smtp_sink.refuse[BOB] = '451 4.3.0 mailbox busy, try later'
    run = runs.create_run(registry, settings, 'orders', {}, [BOSS], split_by='customer_email')
    jobs.enqueue_run(run)
    run_queued(jobs, limit=1)
    first = Run.get_by_id(run.id)
    assert first.status == 'queued' and 'try later' in first.error
    assert len(smtp_sink.messages) == 2  # the boss and Ann; Bob waits
    del smtp_sink.refuse[BOB]
    run_queued(jobs, limit=1)

    run = Run.get_by_id(run.id)
    assert run.status == 'delivered' and run.attempts == 2
    by_rcpt = {}
    for sent in smtp_sink.messages:
        [to] = sent['to']
        by_rcpt.setdefault(to, []).append(sent['message'])
    assert sorted(by_rcpt) == sorted([ANN, BOB, BOSS])
    assert all(len(messages) == 1 for messages in by_rcpt.values())  # exactly once each

    everything = [['id', 'created_at', 'customer_name', 'customer_email', 'status', 'amount']]
    for order in Order.select(Order, Customer).join(Customer).order_by(Order.id):
        everything.append([str(order.id), order.created_at.strftime('%Y-%m-%dT%H:%M:%S.%f'),
                           order.customer.name, order.customer.email or '', order.status,
                           '%.2f' % order.amount])
    everything[1][2] = "'" + everything[1][2]  # formula escaping still applies
    everything[2][2] = "'" + everything[2][2]
    everything[3][2] = "'" + everything[3][2]
    for address in (ANN, BOB):
        name, data = attachment(by_rcpt[address][0])
        assert name.startswith('orders-') and name.endswith('.csv')
        got = rows_of(data)
        assert got[0] == everything[0]
        assert got[1:] == [r for r in everything[1:] if r[3] == address]
        assert all(r[3] == address for r in got[1:]) and len(got) > 1
    assert rows_of(attachment(by_rcpt[BOSS][0])[1]) == everything  # typed: the whole file
    assert '=HYPERLINK' not in attachment(by_rcpt[ANN][0])[1].decode().replace("'=", '')

    deliveries = {d.address: d for d in Delivery.select().where(Delivery.run == run.id)}
    assert {a: (d.status, d.part, d.rows) for a, d in deliveries.items()} == {
        BOSS: ('sent', False, None), ANN: ('sent', True, 3), BOB: ('sent', True, 2)}
    assert by_rcpt[ANN][0]['Message-ID'] != by_rcpt[BOB][0]['Message-ID']

    report = run.split_report
    assert report['recipients'] == 2 and report['rows'] == 5 and report['refused_rows'] == 3
    refused = {r['address']: (r['rows'], r['reason']) for r in report['refused']}
    assert refused[EVE][0] == 2 and 'allowed_domains' in refused[EVE][1]
    assert refused[''][0] == 1 and 'no address' in refused[''][1]

    if database_url.startswith('sqlite'):
        # One pass: the report's query ran once (its columns are read first
        # with LIMIT 0, as for any run), whatever the number of recipients.
        reads = [s for s in statements if 'customer_email' in s]
        assert len(reads) == 2, reads
        assert sum('LIMIT 0' in s for s in reads) == 1


def test_the_run_json_reports_refused_addresses(app, make_jobs, shop, smtp_sink):
    jobs = make_jobs(allowed_domains='example.org')
    res = app.post_json('/api/runs', {'report': 'orders', 'split_by': 'customer_email'})
    run_id = res.json['id']
    runs.execute_run(run_id, registry, jobs.settings, jobs.mailer, jobs.store)
    body = app.get('/api/runs/%d' % run_id).json
    assert body['status'] == 'delivered' and body['split_by'] == 'customer_email'
    assert [r['address'] for r in body['split']['refused']] == ['', EVE]
    assert sorted(d['address'] for d in body['deliveries']) == sorted([ANN, BOB])
    assert {d['rows'] for d in body['deliveries']} == {2, 3}
    assert sorted(m['to'][0] for m in smtp_sink.messages) == sorted([ANN, BOB])


def test_a_column_the_report_does_not_have_is_refused_naming_the_field(app, shop):
    res = app.post_json('/api/runs', {'report': 'orders', 'split_by': 'email'}, status=400)
    assert res.json['field'] == 'split_by' and 'customer_email' in res.json['message']
    res = app.post_json('/api/schedules', {'name': 'x', 'report': 'orders', 'cron': '@daily',
                                           'split_by': 'nope'}, status=400)
    assert res.json['field'] == 'split_by'
    res = app.post_json('/api/runs', {'report': 'orders', 'split_by': ['a']}, status=400)
    assert res.json['field'] == 'split_by'
    # Without split_by a run still needs typed recipients.
    res = app.post_json('/api/runs', {'report': 'orders'}, status=400)
    assert res.json['field'] == 'to'


def counting_registry(calls):
    """A Python report (its columns unknown until it runs) that counts how
    many times its query is asked for."""
    python = Registry()

    @python.report('mine', 'Mine', source='demo',
                   params=[Param('limit', 'int', default=100)])
    def mine(limit):
        calls.append(limit)
        return ('SELECT o.id, c.email AS owner FROM "order" o JOIN customer c '
                'ON c.id = o.customer_id ORDER BY o.id LIMIT :limit')
    return python


def test_a_missing_column_found_only_at_run_time_fails_the_run_clearly(make_jobs, shop,
                                                                      smtp_sink):
    calls = []
    python = counting_registry(calls)
    jobs = make_jobs(registry=python)
    run = runs.create_run(python, jobs.settings, 'mine', {}, None, split_by='owner_email')
    outcome = runs.execute_run(run.id, python, jobs.settings, jobs.mailer, jobs.store)
    run = Run.get_by_id(run.id)
    assert outcome.status == 'failed' and run.status == 'failed'
    assert "no column 'owner_email' to split by" in run.error and 'owner' in run.error
    assert smtp_sink.messages == []


def test_a_split_run_whose_sql_fails_fails_for_good_like_any_run(make_jobs, shop, smtp_sink):
    python = Registry()

    @python.report('gone', 'Gone', source='demo')
    def gone():
        return 'SELECT email AS owner FROM no_such_table'
    jobs = make_jobs(registry=python)
    run = runs.create_run(python, jobs.settings, 'gone', {}, None, split_by='owner')
    outcome = runs.execute_run(run.id, python, jobs.settings, jobs.mailer, jobs.store)
    run = Run.get_by_id(run.id)
    assert outcome.status == 'failed' and run.attempts == 1
    assert 'report gone failed on source demo' in run.error
    assert smtp_sink.messages == []


def test_one_query_however_many_recipients_and_the_cap(make_jobs, database, smtp_sink):
    """Twelve recipients, one statement; over max_split_recipients the run
    fails saying so and nobody gets anything."""
    for i in range(12):
        customer = Customer.create(name='c%d' % i, email='c%d@example.org' % i)
        for _ in range(3):
            Order.create(customer=customer, status='paid', amount='1.00')
    calls = []
    python = counting_registry(calls)
    jobs = make_jobs(registry=python)
    run = runs.create_run(python, jobs.settings, 'mine', {}, None, split_by='owner')
    runs.execute_run(run.id, python, jobs.settings, jobs.mailer, jobs.store)
    run = Run.get_by_id(run.id)
    assert run.status == 'delivered', run.error
    assert len(calls) == 1  # the query was built once for 12 recipients
    assert len(smtp_sink.messages) == 12
    for sent in smtp_sink.messages:
        got = list(csv.reader(io.StringIO(attachment(sent['message'])[1].decode('utf-8-sig'))))
        assert len(got) == 4 and {r[1] for r in got[1:]} == set(sent['to'])

    smtp_sink.messages.clear()
    capped = make_jobs(registry=python, max_split_recipients=5)
    run = runs.create_run(python, capped.settings, 'mine', {}, None, split_by='owner')
    runs.execute_run(run.id, python, capped.settings, capped.mailer, capped.store)
    run = Run.get_by_id(run.id)
    assert run.status == 'failed' and 'max_split_recipients' in run.error
    assert smtp_sink.messages == [] and not Delivery.select().where(Delivery.run == run.id)


def test_large_parts_are_zipped_and_escaped_addresses_are_the_real_ones(make_jobs, database,
                                                                        smtp_sink):
    """A part over zip_over_mb goes zipped; an address a spreadsheet would
    read as a formula ("+sales@...", escaped as "'+sales@..." in the CSV)
    still gets its rows at its own address."""
    import zipfile
    for address, count in (('+sales@example.org', 40), ('ops@example.org', 30)):
        customer = Customer.create(name=address, email=address)
        for _ in range(count):
            Order.create(customer=customer, status='paid', amount='2.00')
    jobs = make_jobs(zip_over_mb=0.001)
    run = runs.create_run(registry, jobs.settings, 'orders', {}, None,
                          split_by='customer_email')
    runs.execute_run(run.id, registry, jobs.settings, jobs.mailer, jobs.store)
    assert Run.get_by_id(run.id).status == 'delivered'
    got = {}
    for sent in smtp_sink.messages:
        name, data = attachment(sent['message'])
        assert name.endswith('.zip')
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            [inner] = archive.namelist()
            got[sent['to'][0]] = rows_of(archive.read(inner))
    assert sorted(got) == ['+sales@example.org', 'ops@example.org']
    assert len(got['+sales@example.org']) == 41 and len(got['ops@example.org']) == 31
    assert {r[3] for r in got['+sales@example.org'][1:]} == {"'+sales@example.org"}

    smtp_sink.messages.clear()
    tiny = make_jobs(mail_max_mb=0.0001)
    run = runs.create_run(registry, tiny.settings, 'orders', {}, None,
                          split_by='customer_email')
    runs.execute_run(run.id, registry, tiny.settings, tiny.mailer, tiny.store)
    run = Run.get_by_id(run.id)
    assert run.status == 'failed' and 'too large to attach' in run.error
    assert smtp_sink.messages == []


def test_a_config_schedule_may_split_without_typed_recipients(tmp_path):
    import schedules
    from settings import SettingsError, load_settings
    path = tmp_path / 'config.ini'
    path.write_text('[nightshift]\n[schedule:per-customer]\nreport = orders\ncron = @daily\n'
                    'split_by = customer_email\n')
    declared = schedules.declared_schedules(registry, load_settings(path, environ={}))
    assert (declared['per-customer']['split_by'], declared['per-customer']['recipients']) == \
        ('customer_email', [])
    path.write_text('[nightshift]\n[schedule:per-customer]\nreport = orders\ncron = @daily\n'
                    'split_by = owner\n')
    with pytest.raises(SettingsError, match=r'\[schedule:per-customer\] split_by: .*owner'):
        schedules.declared_schedules(registry, load_settings(path, environ={}))
    path.write_text('[nightshift]\n[schedule:per-customer]\nreport = orders\ncron = @daily\n')
    with pytest.raises(SettingsError, match='to: missing'):
        load_settings(path, environ={})


def test_a_retry_on_another_machine_sends_the_same_rows_from_the_store(make_jobs, shop,
                                                                       smtp_sink, tmp_path):
    """The deferred recipient's file is fetched from the shared store by a
    worker that did not build it: the data changed meanwhile, the recipient
    still gets the rows of the run's one pass, and nobody gets a second copy."""
    smtp_sink.refuse[BOB] = '451 4.3.0 try later'
    first = make_jobs(file_store='database', allowed_domains='example.org')
    run = runs.create_run(registry, first.settings, 'orders', {}, None,
                          split_by='customer_email')
    runs.execute_run(run.id, registry, first.settings, first.mailer, first.store)
    assert Run.get_by_id(run.id).status == 'queued'
    built = Delivery.get(Delivery.run == run.id, Delivery.address == BOB)
    Order.delete().execute()  # the data moves on

    del smtp_sink.refuse[BOB]
    other = make_jobs(file_store='database', allowed_domains='example.org',
                      reports_dir=str(tmp_path / 'host-b'))
    runs.execute_run(run.id, registry, other.settings, other.mailer, other.store)
    run = Run.get_by_id(run.id)
    assert (run.status, run.attempts) == ('delivered', 2)
    assert [m['to'] for m in smtp_sink.messages] == [[ANN], [BOB]]
    rows = rows_of(attachment(smtp_sink.messages[1]['message'])[1])
    assert len(rows) == 3 and {r[3] for r in rows[1:]} == {BOB}
    assert Delivery.get_by_id(built.id).status == 'sent'  # the same record, now sent


def test_records_are_found_however_the_stream_is_cut():
    """Quoted commas, quotes, line feeds and carriage returns inside cells,
    and chunks cut anywhere: every record comes out whole, byte for byte."""
    import random

    from bursting import _records
    from export import CsvStream
    rng = random.Random(7)
    cells = ['a', 'b,c', 'x"y', 'multi\nline', 'cr\rin', 'crlf\r\nin', None, '"q"', 'end\r']
    for _ in range(300):
        rows = [[rng.choice(cells) for _ in range(4)] for _ in range(rng.randrange(1, 40))]
        data = b''.join(CsvStream(['h1', 'h2', 'h3', 'h4'], rows, escape=False, chunk_rows=7))
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(12))))
        chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        records = list(_records(iter(chunks)))
        assert b''.join(records) == data and len(records) == len(rows) + 1
        for record, row in zip(records[1:], rows):
            assert next(csv.reader(io.StringIO(record.decode(), newline=''))) == \
                [c or '' for c in row]
