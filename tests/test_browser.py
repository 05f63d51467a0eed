"""The page in a real browser: headless Chromium driven by Playwright, against
server.py on waitress with a real huey_consumer, Redis, PostgreSQL and an SMTP
sink. Locally these skip when Playwright or Chromium is missing; in CI that
fails the run (.ci/run installs Debian's chromium).

Screenshots go to test-artifacts/ (or $NIGHTSHIFT_ARTIFACTS).
"""
import csv
import datetime
import io
import os
import re
import shutil
import zoneinfo

import pytest

import demo
import schedules
from conftest import ROOT, attachment, free_port, missing, wait_until
from demo import Customer, Order
from models import Run, Schedule, utcnow
from loopback import stop_gracefully
from test_e2e import _get_json, spawn

pytestmark = pytest.mark.slow
ON_POSTGRES = pytest.mark.parametrize('database_url', ['postgres'], indirect=True)
TOKEN = 'browser-token-0123456789'
READER_ZONE = 'Asia/Tokyo'
ARTIFACTS = os.environ.get('NIGHTSHIFT_ARTIFACTS', os.path.join(ROOT, 'test-artifacts'))
# Chromium without these reaches for Google's services, which a closed network
# refuses many times a second; as root it needs --no-sandbox.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run',
                 '--disable-quic']


def find_chromium():
    for candidate in (os.environ.get('NIGHTSHIFT_CHROMIUM'), 'chromium', 'chromium-browser',
                      'google-chrome'):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    return None


@pytest.fixture(scope='module')
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing('Playwright (pip install -r requirements-dev.txt)')
    path = find_chromium()
    if path is None:
        missing('Chromium (Debian: apt-get install chromium; or set NIGHTSHIFT_CHROMIUM)')
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Live:
    """server.py (waitress) on a free port; a huey_consumer started on demand."""

    def __init__(self, env, tmp_path):
        self.env, self.tmp_path = env, tmp_path
        self.port = free_port()
        self.base = 'http://127.0.0.1:%d' % self.port
        self.procs, self.logs = [], []

    def _spawn(self, args, name):
        log = open(self.tmp_path / ('%s.log' % name), 'wb')
        self.logs.append(log)
        proc = spawn(args, self.env, log)
        self.procs.append(proc)
        return proc

    def start_web(self):
        self._spawn(['server.py', '--port', str(self.port)], 'web')
        wait_until(lambda: _get_json(self.base + '/healthz'), timeout=20,
                   message='the web server to answer')

    def start_consumer(self):
        proc = self._spawn(['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '2',
                            '-k', 'thread'], 'consumer')
        wait_until(lambda: b'consumer started' in (self.tmp_path / 'consumer.log').read_bytes()
                   or proc.poll() is not None, timeout=20, message='the consumer to start')

    def close(self):
        for proc in self.procs:
            stop_gracefully(proc)
        for log in self.logs:
            log.close()


def serve(env, tmp_path):
    """For a `live` fixture (`yield from`): the page's server on `env`, whose
    logs, once it is closed, hold no traceback and not the token."""
    server = Live(env, tmp_path)
    server.start_web()
    yield server
    server.close()
    for name in ('web', 'consumer'):
        log = tmp_path / ('%s.log' % name)
        if log.exists():
            text = log.read_text()
            assert 'Traceback' not in text, text[-3000:]
            assert TOKEN not in text


@pytest.fixture
def live(consumer_env, tmp_path):
    yield from serve(dict(consumer_env, NIGHTSHIFT_API_TOKEN=TOKEN), tmp_path)


@pytest.fixture
def page(browser, live):
    # A reader in another timezone than the schedules', to see both clocks.
    context = browser.new_context(http_credentials={'username': 'me', 'password': TOKEN},
                                  accept_downloads=True, viewport={'width': 1280, 'height': 900},
                                  timezone_id=READER_ZONE, locale='en-GB')
    page = context.new_page()
    errors = []
    page.on('pageerror', lambda exc: errors.append(str(exc)))
    # What the content policy blocks shows only on the console.
    page.on('console', lambda message: errors.append(message.text)
            if 'Content Security Policy' in message.text else None)
    page.goto(live.base + '/')
    yield page
    context.close()
    assert errors == [], errors  # no script errors on the page


def orders_csv(status=None, since=None):
    query = Order.select(Order, Customer).join(Customer).order_by(Order.id)
    if status:
        query = query.where(Order.status == status)
    if since:
        query = query.where(Order.created_at >= since)
    return [['id', 'created_at', 'customer_name', 'customer_email', 'status', 'amount']] + [
        [str(o.id), o.created_at.strftime('%Y-%m-%dT%H:%M:%S.%f'), o.customer.name, o.customer.email or '', o.status,
         '%.2f' % o.amount] for o in query]


def read_csv(data):
    return list(csv.reader(io.StringIO(data.decode('utf-8-sig'), newline='')))


def expect_field_error(scope, label, message):
    """The field is marked invalid, has focus, and the message is what a
    screen reader reads with it (its aria-describedby), next to it."""
    from playwright.sync_api import expect
    field = scope.get_by_label(label)
    expect(field).to_have_attribute('aria-invalid', 'true')
    expect(field).to_be_focused()
    expect(field).to_have_accessible_description(re.compile(re.escape(message) + '$'))
    error_id = field.get_attribute('id') + '-error'
    expect(scope.locator('#' + error_id)).to_have_text(message)


def email_from_card(card, to):
    """Press "Email it" on a report's card; the run id the page says it queued."""
    from playwright.sync_api import expect
    card.get_by_label('Email to').fill(to)
    card.get_by_role('button', name='Email it').click()
    status = card.locator('.form-status')
    expect(status).to_contain_text('queued')
    return int(re.search(r'Run #(\d+)', status.inner_text()).group(1))


def statuses_of(page, selector):
    """Every value the row's data-status takes, sampled until it is final."""
    seen = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=45)
    while datetime.datetime.now() < deadline:
        status = page.get_attribute(selector, 'data-status')
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ('delivered', 'failed'):
            return seen
        page.wait_for_timeout(100)
    raise AssertionError('run never finished; seen %s' % seen)


@ON_POSTGRES
def test_email_a_report_and_watch_it_go_from_queued_to_delivered(page, live, smtp_sink):
    from playwright.sync_api import expect
    demo.seed(customers=40, orders=3000)
    card = page.locator('#report-orders')
    card.get_by_label('Since').fill('2025-03-01')
    card.get_by_label('Status').select_option('paid')
    run_id = email_from_card(card, 'ana@example.org, bo@example.org')

    # No consumer yet: the table shows the run waiting.
    row = '#run-%d' % run_id
    expect(page.locator(row)).to_have_attribute('data-status', 'queued')
    live.start_consumer()
    seen = statuses_of(page, row)
    assert seen[0] == 'queued' and seen[-1] == 'delivered', seen
    expect(page.locator('#announcer')).to_contain_text('Run #%d (orders) is delivered' % run_id)

    [sent] = smtp_sink.wait_for(1)
    assert sent['to'] == ['ana@example.org', 'bo@example.org']
    name, data = attachment(sent['message'])
    expected = orders_csv(status='paid', since='2025-03-01')
    assert read_csv(data) == expected and len(expected) > 100
    cells = page.locator(row + ' td')
    expect(cells.nth(3)).to_have_text('{:,}'.format(len(expected) - 1))
    expect(cells.nth(6)).to_have_text('1')  # attempts

    # The finished run's file, downloaded from the table, is what was mailed.
    with page.expect_download() as download:
        page.locator('#run-%d-file' % run_id).click()
    assert download.value.suggested_filename == name
    with open(download.value.path(), 'rb') as kept:
        assert kept.read() == data

    # The report's chart was redrawn with this run.
    expect(page.locator('[data-chart="orders"] svg title').filter(
        has_text='Run #%d: delivered' % run_id)).to_have_count(1)


@ON_POSTGRES
def test_download_a_csv_and_see_mistakes_next_to_their_fields(page, live):
    from playwright.sync_api import expect
    demo.seed(customers=30, orders=800)
    card = page.locator('#report-orders')
    card.get_by_label('Status').select_option('shipped')
    with page.expect_download() as download:
        card.get_by_role('button', name='Download CSV').click()
    assert re.fullmatch(r'orders-\d{8}-\d{6}\.csv', download.value.suggested_filename)
    with open(download.value.path(), 'rb') as got:
        assert read_csv(got.read()) == orders_csv(status='shipped')

    # A range backwards: the message sits under "Until", which takes focus.
    card.get_by_label('Since').fill('2025-06-01')
    card.get_by_label('Until').fill('2025-01-01')
    card.get_by_role('button', name='Download CSV').click()
    expect_field_error(card, 'Until', 'must be after since')

    # A bad address among good ones is named in the message under "Email to".
    card.get_by_label('Until').fill('')
    card.get_by_label('Email to').fill('ana@example.org, bo@@example.org')
    card.get_by_role('button', name='Email it').click()
    expect(card.locator('#r-orders-to-error')).to_contain_text('“bo@@example.org”')
    expect(card.get_by_label('Until')).not_to_have_attribute('aria-invalid', 'true')
    # Nothing was recorded but the download itself.
    assert [r.trigger for r in Run.select()] == ['download']


@ON_POSTGRES
def test_create_pause_resume_edit_and_run_a_schedule(page, live, smtp_sink):
    from playwright.sync_api import expect
    demo.seed(customers=10, orders=50)
    live.start_consumer()
    page.get_by_role('button', name='New schedule').click()
    form = page.locator('#schedule-form')
    form.get_by_label('Name').fill('weekday-paid')
    form.get_by_label('Report').select_option('orders')
    form.get_by_label('Status').select_option('paid')
    form.get_by_label('Email to').fill('ops@example.org')
    form.get_by_label('When (cron)').fill('0 25 * * *')
    form.get_by_label('Timezone').fill('America/New_York')
    form.get_by_role('button', name='Save schedule').click()
    expect_field_error(form, 'When (cron)', "'0 25 * * *' is not a valid cron expression")
    assert Schedule.select().count() == 0

    cron_field = form.get_by_label('When (cron)')
    cron_field.fill('30 6 * * 1-5')
    form.get_by_label('Timezone').fill('Mars/Olympus')
    form.get_by_role('button', name='Save schedule').click()
    expect_field_error(form, 'Timezone', "unknown timezone 'Mars/Olympus'; use an IANA name "
                                         "such as Europe/Lisbon")
    expect(cron_field).not_to_have_attribute('aria-invalid', 'true')

    form.get_by_label('Timezone').fill('America/New_York')
    form.get_by_role('button', name='Save schedule').click()
    row = page.locator('#schedule-weekday-paid')
    expect(row).to_contain_text('06:30 (in')
    expect(row).to_contain_text('America/New_York time')
    expect(row).to_contain_text('status=paid')
    expect(page.locator('#schedule-editor')).to_be_hidden()
    stored = Schedule.get(Schedule.name == 'weekday-paid')
    assert (stored.cron, stored.timezone, stored.params['status']) == (
        '30 6 * * 1-5', 'America/New_York', 'paid')
    upcoming, _ = schedules.next_run(stored, utcnow())
    in_tokyo = upcoming.replace(tzinfo=datetime.timezone.utc).astimezone(
        zoneinfo.ZoneInfo(READER_ZONE))
    expect(row).to_contain_text(in_tokyo.strftime('%H:%M') + ' your time (Asia/Tokyo)')

    page.get_by_role('button', name='Pause weekday-paid').click()
    expect(row).to_contain_text('paused')
    assert Schedule.get(Schedule.name == 'weekday-paid').enabled is False
    page.get_by_role('button', name='Resume weekday-paid').click()
    expect(row).to_contain_text('06:30 (in')
    assert Schedule.get(Schedule.name == 'weekday-paid').enabled is True

    page.get_by_role('button', name='Edit weekday-paid').click()
    expect(form.get_by_label('Name')).to_have_value('weekday-paid')
    expect(form.get_by_label('Status')).to_have_value('paid')
    form.get_by_label('When (cron)').fill('15 18 * * *')
    form.get_by_role('button', name='Save schedule').click()
    expect(row).to_contain_text('18:15 (in')
    assert Schedule.get(Schedule.name == 'weekday-paid').cron == '15 18 * * *'

    page.get_by_role('button', name='Run now weekday-paid').click()
    [sent] = smtp_sink.wait_for(1, timeout=30)
    assert sent['to'] == ['ops@example.org']
    assert read_csv(attachment(sent['message'])[1]) == orders_csv(status='paid')
    run = Run.get(Run.schedule == 'weekday-paid')
    expect(page.locator('#run-%d' % run.id)).to_have_attribute('data-status', 'delivered',
                                                               timeout=20000)
    expect(row).to_contain_text('#%d' % run.id)

    page.once('dialog', lambda dialog: dialog.accept())  # "Delete schedule …?"
    page.get_by_role('button', name='Delete weekday-paid').click()
    expect(row).to_have_count(0)
    expect(page.locator('#announcer')).to_have_text('Schedule weekday-paid deleted.')
    assert Schedule.select().count() == 0


@pytest.mark.parametrize('database_url', ['sqlite'], indirect=True)
def test_a_running_run_shows_its_rows_so_far(page, live, smtp_sink):
    """A long export: the table shows the rows written so far, growing,
    while the worker writes; then the total."""
    from playwright.sync_api import expect
    demo.seed(customers=200, orders=10000)
    # Double the orders in SQL to 1,280,000: a few seconds of writing (the
    # export writes ~400k rows a second; the page polls every 1.5 s).
    for _ in range(7):
        Order.raw('INSERT INTO "order" (customer_id, status, amount, created_at) '
                  'SELECT customer_id, status, amount, created_at FROM "order"').execute()
    total = Order.select().count()
    live.start_consumer()
    row = page.locator('#run-%d' % email_from_card(page.locator('#report-orders'),
                                                   'ana@example.org'))
    rows_cell = row.locator('td[data-label="Rows"]')

    so_far = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    while row.get_attribute('data-status') != 'delivered':
        assert datetime.datetime.now() < deadline, 'not delivered; saw %s' % so_far
        found = re.fullmatch(r'([\d,]+) so far', rows_cell.inner_text().strip())
        if row.get_attribute('data-status') == 'running' and found:
            count = int(found.group(1).replace(',', ''))
            if not so_far or so_far[-1] != count:
                so_far.append(count)
        page.wait_for_timeout(100)
    assert len(so_far) >= 2 and so_far == sorted(so_far), so_far
    # Mid-file counts were shown; the last may be the total while the file is mailed.
    assert any(0 < count < total for count in so_far) and so_far[-1] <= total, so_far
    expect(rows_cell).to_have_text('{:,}'.format(total))
    [sent] = smtp_sink.wait_for(1, timeout=30)
    assert sent['to'] == ['ana@example.org']


CONTRAST_CHECK = '''() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(parseFloat); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = (el) => { for (; el; el = el.parentElement) {
    const c = parse(getComputedStyle(el).backgroundColor); if (c && c.a > 0.5) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; };
  const low = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!node.textContent.trim() || el.closest('.visually-hidden, svg, [hidden], noscript, option, datalist, .skip')) continue;
    const style = getComputedStyle(el);
    const a = lum(parse(style.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    if (ratio < ((size >= 24 || (size >= 18.66 && bold)) ? 3 : 4.5))
      low.push(node.textContent.trim().slice(0, 40) + ': ' + ratio.toFixed(2));
  }
  return low;
}'''

UNLABELLED = '''() => Array.from(document.querySelectorAll('input, select, textarea, button'))
  .filter((el) => el.type !== 'hidden')
  .filter((el) => !(el.labels && el.labels.length) && !el.textContent.trim() && !el.getAttribute('aria-label'))
  .map((el) => el.outerHTML.slice(0, 80))'''


@ON_POSTGRES
def test_usable_on_a_phone_accessible_and_screenshotted(page, live, browser):
    from playwright.sync_api import expect
    demo.seed(customers=10, orders=200)
    live.start_consumer()
    run_id = email_from_card(page.locator('#report-customers'), 'ana@example.org')
    expect(page.locator('#run-%d' % run_id)).to_have_attribute('data-status', 'delivered',
                                                               timeout=20000)
    # Even when the run finished before the table first saw it, its chart is redrawn.
    expect(page.locator('[data-chart="customers"] svg title').filter(
        has_text='Run #%d: delivered' % run_id)).to_have_count(1)
    page.get_by_role('button', name='New schedule').click()
    page.get_by_label('Name').fill('nightly')
    page.locator('#s-to').fill('ops@example.org')
    page.get_by_label('When (cron)').fill('30 2 * * *')
    page.get_by_label('Timezone').fill('Europe/Lisbon')
    page.get_by_role('button', name='Save schedule').click()
    expect(page.locator('#schedule-nightly')).to_be_visible()

    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, 'main-page.png'), full_page=True)
    assert page.evaluate(UNLABELLED) == []
    assert page.evaluate(CONTRAST_CHECK) == []

    # Keyboard: the first Tab reaches the skip link, which shows and is outlined.
    page.reload()
    page.keyboard.press('Tab')
    assert page.evaluate('document.activeElement.className') == 'skip'
    outline = page.evaluate('getComputedStyle(document.activeElement).outlineStyle')
    assert outline != 'none'

    page.set_viewport_size({'width': 390, 'height': 844})
    page.reload()
    overflow = page.evaluate('document.documentElement.scrollWidth - window.innerWidth')
    assert overflow <= 0, 'the page scrolls sideways on a phone by %d px' % overflow
    # Table rows become labelled blocks: the status is there without sideways scrolling.
    status = page.locator('tr[data-run] td[data-label="Status"]').first
    box = status.bounding_box()
    assert box['x'] + box['width'] <= 390
    assert page.evaluate(CONTRAST_CHECK) == []
    page.screenshot(path=os.path.join(ARTIFACTS, 'main-page-phone.png'), full_page=True)


@ON_POSTGRES
def test_without_the_token_the_browser_is_asked_to_log_in(browser, live):
    from playwright.sync_api import Error
    context = browser.new_context()
    answers = []
    try:
        page = context.new_page()
        page.on('response', lambda answer: answers.append(answer))
        # Headless Chromium has no login box to show: it gives up on the challenge.
        with pytest.raises(Error, match='AUTH'):
            page.goto(live.base + '/')
        [answer] = answers
        assert answer.status == 401
        assert answer.headers['www-authenticate'].startswith('Basic realm="Nightshift"')
    finally:
        context.close()


def test_main_command_page_with_the_outbox(browser, tmp_path):
    """`server.py --worker` on the embedded defaults: email from the page and
    read the message, with its attachment, in the outbox viewer."""
    from playwright.sync_api import expect
    config = tmp_path / 'config.ini'
    config.write_text('[nightshift]\ndatabase_url = sqlite:///data/nightshift.db\n'
                      'queue = sqlite\nqueue_path = data/queue.db\nmail_backend = outbox\n'
                      'outbox_dir = data/outbox\nreports_dir = data/reports\n'
                      '[source:demo]\nurl = sqlite:///data/demo.db\n')
    env = {'NIGHTSHIFT_CONFIG': str(config)}
    for name in ('REDIS_URL', 'DATABASE_URL', 'SMTP_HOST', 'PORT', 'NIGHTSHIFT_API_TOKEN'):
        env[name] = ''
    with open(tmp_path / 'seed.log', 'wb') as log:
        assert spawn(['scripts/seed.py', '--if-empty', '--orders', '500'], env, log).wait(60) == 0
    port = free_port()
    base = 'http://localhost:%d' % port
    with open(tmp_path / 'server.log', 'wb') as log:
        server = spawn(['server.py', '--worker', '--port', str(port)], env, log)
        context = browser.new_context(accept_downloads=True)
        try:
            wait_until(lambda: _get_json(base + '/healthz'), timeout=20, message='the server')
            page = context.new_page()
            page.goto(base + '/')
            run_id = email_from_card(page.locator('#report-orders'), 'me@example.org')
            expect(page.locator('#run-%d' % run_id)).to_have_attribute(
                'data-status', 'delivered', timeout=30000)
            page.get_by_role('link', name='Outbox').click()
            page.get_by_role('link', name=re.compile('Orders report')).click()
            expect(page.locator('dl.headers')).to_contain_text('me@example.org')
            expect(page.locator('table.preview tbody tr')).to_have_count(20)
            with page.expect_download() as download:
                page.locator('a[download]').click()
            with open(download.value.path(), 'rb') as got:
                rows = read_csv(got.read())
            assert len(rows) == 501 and rows[0][0] == 'id'
        finally:
            context.close()
            stop_gracefully(server)
    assert server.returncode == 0, (tmp_path / 'server.log').read_text()
