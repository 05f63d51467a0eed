"""The page at / and its fragments, through WSGI (the browser tests are in
test_browser.py)."""
import datetime
import html.parser
import xml.etree.ElementTree as ElementTree

import pytest
import webtest

import demo
from conftest import attachment, run_queued, web_app
from models import Run, Schedule, utcnow
from server import create_app


class Page(html.parser.HTMLParser):
    """The parts of a page the tests look at: form controls and labels."""

    def __init__(self, text):
        super().__init__()
        self.controls, self.labels, self.ids = [], set(), set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if 'id' in attrs:
            self.ids.add(attrs['id'])
        if tag == 'label' and 'for' in attrs:
            self.labels.add(attrs['for'])
        if tag in ('input', 'select', 'textarea') and attrs.get('type') != 'hidden':
            self.controls.append((tag, attrs))


@pytest.fixture
def shop(database):
    demo.seed(customers=20, orders=200)


def test_the_page_offers_each_report_with_typed_labelled_fields(app, shop):
    res = app.get('/')
    assert res.content_type == 'text/html'
    page = Page(res.text)
    by_id = {attrs['id']: (tag, attrs) for tag, attrs in page.controls}
    # A date field is text: it takes relative dates too, from a list.
    assert by_id['r-orders-since'][1]['type'] == 'text'
    assert by_id['r-orders-since'][1]['list'] == 'reldates-choices'
    assert by_id['r-orders-since'][1]['data-field'] == 'params.since'
    assert by_id['r-orders-status'][0] == 'select'
    assert by_id['r-customers-min_orders'][1]['type'] == 'number'
    assert by_id['r-customers-min_orders'][1]['min'] == '0'
    assert 'One row per order' in res.text and 'Only orders in this status.' in res.text
    for choice in ('pending', 'paid', 'shipped', 'cancelled', 'refunded'):
        assert '<option value="%s">' % choice in res.text
    # Every control has a label, and what it points its description at exists.
    for tag, attrs in page.controls:
        assert attrs['id'] in page.labels, attrs
        for described in attrs.get('aria-describedby', '').split():
            assert described in page.ids, (attrs['id'], described)
    assert len(page.ids) == len(set(page.ids))


def test_runs_fragment_shows_progress_errors_and_kept_files(app, jobs, shop):
    done = app.post_json('/api/runs', {'report': 'customers', 'to': ['a@example.org']}).json
    run_queued(jobs)
    now = utcnow()
    running = Run.create(report='orders', params={}, recipients=['b@example.org'],
                         status='running', rows=12345, bytes=4_200_000, attempts=1,
                         started_at=now - datetime.timedelta(seconds=75))
    failed = Run.create(report='orders', params={}, recipients=['c@example.org'],
                        status='failed', attempts=3, started_at=now, finished_at=now,
                        error='SMTP server replied 554 <script>alert(1)</script>')
    text = app.get('/ui/runs').text
    rows = {int(part.split('"', 1)[0]): part for part in text.split('data-run="')[1:]}
    assert list(rows) == [failed.id, running.id, done['id']]  # newest first
    assert '12,345 so far' in rows[running.id] and '4.2 MB' in rows[running.id]
    assert '1 min 15 s' in rows[running.id] and 'status-running' in rows[running.id]
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in rows[failed.id]
    assert '<script>' not in text
    assert 'href="/api/runs/%d/file"' % done['id'] in rows[done['id']]
    assert '/file' not in rows[failed.id] and '/file' not in rows[running.id]
    assert 'sending' not in rows[running.id]
    # Written and being mailed: the count is final, no longer "so far".
    Run.update(rows=20000, file_key='run-%d/orders.csv' % running.id) \
        .where(Run.id == running.id).execute()
    sending = app.get('/ui/runs').text.split('data-run="%d"' % running.id)[1].split('</tr>')[0]
    assert '20,000</td>' in sending and 'so far' not in sending
    assert 'file written; sending to b@example.org' in sending


def test_schedule_rows_show_next_run_in_the_schedules_own_timezone(app, shop):
    app.post_json('/api/schedules', {'name': 'lisbon', 'report': 'orders', 'cron': '30 2 * * *',
                                     'timezone': 'Europe/Lisbon', 'to': ['a@example.org'],
                                     'params': {'status': 'paid'}})
    app.post_json('/api/schedules', {'name': 'tokyo', 'report': 'customers',
                                     'cron': '30 2 * * *', 'timezone': 'Asia/Tokyo',
                                     'to': ['a@example.org']})
    app.post('/api/schedules/tokyo/pause', content_type='application/json')
    Schedule.create(name='from-config', report='customers', params={}, recipients=['o@x.org'],
                    cron='0 6 * * *', timezone='UTC', enabled=True, managed_by='config',
                    checked_through=utcnow(), created_at=utcnow(), updated_at=utcnow())
    text = app.get('/ui/schedules').text
    rows = {part.split('"', 1)[0]: part for part in text.split('data-schedule="')[1:]}
    assert ', 02:30 (in ' in rows['lisbon'] and 'Europe/Lisbon time' in rows['lisbon']
    assert 'status=paid' in rows['lisbon']
    assert 'data-action="pause"' in rows['lisbon']
    assert 'paused' in rows['tokyo'] and 'data-action="resume"' in rows['tokyo']
    # Declared in config.ini: run now, but no pausing or editing here.
    assert 'data-action="run"' in rows['from-config']
    assert 'data-action="pause"' not in rows['from-config']
    assert 'data-action="edit"' not in rows['from-config']


def test_chart_draws_recent_runs_and_marks_failures(app, shop):
    now = utcnow()
    for i in range(6):
        Run.create(report='orders', params={}, recipients=['a@example.org'],
                   status='failed' if i == 3 else 'delivered', rows=100 * (i + 1),
                   started_at=now, finished_at=now + datetime.timedelta(seconds=i + 1),
                   error='boom' if i == 3 else None)
    Run.create(report='orders', params={}, recipients=['a@example.org'], status='running')
    res = app.get('/ui/charts/orders')
    assert res.content_type == 'image/svg+xml'
    svg = ElementTree.fromstring(res.text)
    ns = '{http://www.w3.org/2000/svg}'
    assert svg.get('role') == 'img'
    assert svg.find(ns + 'desc').text == ('6 runs, 1 failed; longest 6.0 s; most rows 600')
    bars = [rect for rect in svg.iter(ns + 'rect') if rect.find(ns + 'title') is not None]
    assert len(bars) == 6  # the running one is not drawn yet
    heights = [float(bar.get('height')) for bar in bars]
    assert heights == sorted(heights) and heights[-1] == pytest.approx(68.0)
    failed = [g for g in svg.iter(ns + 'g') if g.get('class') == 'failed']
    assert len(failed) == 1 and 'failed' in failed[0].find(ns + 'title').text
    assert len(list(svg.iter(ns + 'circle'))) == 6
    # The page embeds the same drawing; an unknown report is a 404.
    assert 'Recent runs of Orders' in app.get('/').text
    unknown = app.get('/ui/charts/nope', expect_errors=True)
    assert (unknown.status_int, unknown.json['field']) == (404, 'report')
    assert 'No finished runs yet' in app.get('/ui/charts/customers').text


def test_chart_labels_say_what_the_runs_did_even_when_they_did_nothing(app, shop):
    """Empty results and instant runs: the labels say 0 rows and "-", not
    the 1 the plot scales by."""
    now = utcnow()
    for _ in range(3):
        Run.create(report='customers', params={}, recipients=['a@example.org'],
                   status='delivered', rows=0, started_at=now, finished_at=now)
    svg = ElementTree.fromstring(app.get('/ui/charts/customers').text)
    ns = '{http://www.w3.org/2000/svg}'
    assert svg.find(ns + 'desc').text == '3 runs, 0 failed; longest -; most rows 0'
    labels = [text.text for text in svg.iter(ns + 'text')]
    assert labels == ['longest -', 'most rows 0']


def test_static_files_are_served(app):
    assert 'report-form' in app.get('/static/app.js').text
    assert app.get('/static/style.css').content_type == 'text/css'
    assert app.get('/static/../server.py', expect_errors=True).status_int in (403, 404)


# --- outbox ------------------------------------------------------------------

@pytest.fixture
def outbox_app(make_jobs):
    jobs = make_jobs(env={'SMTP_HOST': ''})  # no SMTP server: the outbox
    settings = jobs.settings
    assert settings.mail_backend == 'outbox'
    bottle_app = create_app(settings, jobs)
    bottle_app.config['catchall'] = False
    return settings, jobs, webtest.TestApp(bottle_app)


def test_outbox_lists_messages_and_serves_their_attachments(outbox_app, shop):
    import email
    import email.policy
    import os

    import outbox
    settings, jobs, app = outbox_app
    assert 'No messages yet' in app.get('/outbox').text
    run_id = app.post_json('/api/runs', {'report': 'orders', 'params': {'status': 'paid'},
                                         'to': ['ana@example.org']}).json['id']
    run_queued(jobs)
    [name] = os.listdir(settings.outbox_dir)
    with open(os.path.join(settings.outbox_dir, name), 'rb') as source:
        written = email.message_from_binary_file(source, policy=email.policy.default)
    filename, data = attachment(written)

    listing = app.get('/outbox').text
    assert 'href="/outbox/%s"' % name in listing and written['Subject'] in listing
    assert 'ana@example.org' in listing
    [listed] = outbox.list_messages(settings.outbox_dir)
    assert listed.parsed.get_payload() == ''  # the listing read headers only
    page = app.get('/outbox/%s' % name).text
    assert '>%s</a>' % filename in page
    assert '&lt;nightshift-run-%d-' % run_id in page  # its Message-ID
    first_line = data.decode('utf-8-sig').splitlines()[1].split(',')
    assert '<td>%s</td>' % first_line[0] in page  # the preview table
    served = app.get('/outbox/%s/0' % name)
    assert served.body == data
    assert served.headers['Content-Disposition'] == 'attachment; filename="%s"' % filename

    for bad in ('../config.ini', name + '/1', 'x.eml', '..%2Fconfig.ini'):
        assert app.get('/outbox/' + bad, expect_errors=True).status_int == 404, bad


def test_no_outbox_page_when_mail_goes_over_smtp(app):
    res = app.get('/outbox', expect_errors=True)
    assert res.status_int == 404 and 'No outbox here' in res.text
    assert 'href="/outbox"' not in app.get('/').text


def test_pages_need_the_token_and_take_it_by_basic_auth(make_jobs):
    import base64

    token = 'page-token-0123456789'
    # No SMTP server, so the outbox page is there to be guarded too.
    app = web_app(make_jobs(env={'NIGHTSHIFT_API_TOKEN': token, 'SMTP_HOST': ''}))
    login = {'Authorization': 'Basic ' + base64.b64encode(b'me:' + token.encode()).decode()}
    for path in ('/', '/ui/runs', '/ui/schedules', '/ui/charts/orders', '/outbox',
                 '/static/app.js'):
        res = app.get(path, expect_errors=True)
        assert res.status_int == 401, path
        assert res.headers['WWW-Authenticate'].startswith('Basic'), path
        assert app.get(path, headers=login).status_int == 200, path
