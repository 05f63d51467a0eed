"""The page's bursting and test-send parts in the real browser: a split run
from a report card, refused addresses on the run, the split column on the
schedule form, and "Send a test" on a schedule row."""
import os
import re

import pytest

from conftest import attachment
from demo import Customer, Order
from models import Run
from test_browser import ARTIFACTS, ON_POSTGRES, TOKEN, read_csv, serve, statuses_of
from test_browser import browser, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

PEOPLE = {'ann@example.org': 3, 'bob@example.org': 2, 'eve@elsewhere.net': 2}


@pytest.fixture
def live(consumer_env, tmp_path):
    """The page's server (and consumer, on demand) allowing mail to example.org only."""
    yield from serve(dict(consumer_env, NIGHTSHIFT_API_TOKEN=TOKEN,
                          NIGHTSHIFT_ALLOWED_DOMAINS='example.org'), tmp_path)


@pytest.fixture
def people(database):
    for address, count in PEOPLE.items():
        customer = Customer.create(name=address.split('@')[0].title(), email=address)
        for i in range(count):
            Order.create(customer=customer, status='paid', amount='%d.25' % (i + 1))


@ON_POSTGRES
def test_a_split_run_from_the_page_shows_its_refused_addresses(page, live, people,  # noqa: F811
                                                              smtp_sink):
    from playwright.sync_api import expect
    live.start_consumer()
    card = page.locator('#report-orders')
    card.get_by_label('Each recipient their own rows').select_option('customer_email')
    card.get_by_role('button', name='Email it').click()
    status = card.locator('.form-status')
    expect(status).to_contain_text('emailed to the addresses in its data')
    run_id = int(re.search(r'Run #(\d+)', status.inner_text()).group(1))
    row = '#run-%d' % run_id
    assert statuses_of(page, row)[-1] == 'delivered'
    expect(page.locator(row)).to_contain_text('split by customer_email: 2 recipient(s)')
    refused = page.locator('#run-%d-refused' % run_id)
    expect(refused).to_contain_text('2 row(s) not sent: address refused')
    refused.locator('summary').click()
    expect(refused.locator('li')).to_contain_text('eve@elsewhere.net: 2 row(s)')
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.locator(row).screenshot(path=os.path.join(ARTIFACTS, 'bursting-run.png'))
    expect(refused.locator('li')).to_contain_text('allowed_domains')

    sent = smtp_sink.wait_for(2)
    assert sorted(m['to'][0] for m in sent) == ['ann@example.org', 'bob@example.org']
    for message in sent:
        rows = read_csv(attachment(message['message'])[1])
        assert len(rows) == PEOPLE[message['to'][0]] + 1
        assert {r[3] for r in rows[1:]} == set(message['to'])


@ON_POSTGRES
def test_a_split_schedule_and_a_test_sent_to_me(page, live, people, smtp_sink):  # noqa: F811
    from playwright.sync_api import expect
    live.start_consumer()
    page.get_by_role('button', name='New schedule').click()
    form = page.locator('#schedule-form')
    form.get_by_label('Name').fill('per-customer')
    form.get_by_label('Report').select_option('orders')
    split = form.get_by_label('Each recipient their own rows')
    expect(split).to_have_attribute('list', 'split-columns-orders')
    split.fill('email')
    form.get_by_label('When (cron)').fill('0 7 * * *')
    form.get_by_label('Timezone').fill('Europe/Lisbon')
    form.get_by_role('button', name='Save schedule').click()
    expect(form.locator('#s-split_by-error')).to_contain_text('customer_email')
    expect(split).to_have_attribute('aria-invalid', 'true')
    split.fill('customer_email')
    form.get_by_role('button', name='Save schedule').click()
    row = page.locator('#schedule-per-customer')
    expect(row).to_contain_text('each recipient in customer_email gets their own rows')

    page.get_by_role('button', name='Edit per-customer').click()
    expect(split).to_have_value('customer_email')
    page.locator('#schedule-cancel').click()

    address = row.get_by_label('Send a test to')
    address.fill('me@elsewhere.net')
    row.get_by_role('button', name='Send a test of per-customer').click()
    expect(address).to_have_attribute('aria-invalid', 'true')
    expect(row.locator('#schedule-per-customer-test-to-error')).to_contain_text(
        'not allowed here')
    address.fill('me@example.org')
    row.get_by_role('button', name='Send a test of per-customer').click()
    status = row.locator('.form-status')
    expect(status).to_contain_text('to me@example.org only')
    run_id = int(re.search(r'Test run #(\d+)', status.inner_text()).group(1))

    [sent] = smtp_sink.wait_for(1, timeout=30)
    assert sent['to'] == ['me@example.org']
    assert len(read_csv(attachment(sent['message'])[1])) == sum(PEOPLE.values()) + 1
    run_row = page.locator('#run-%d' % run_id)
    expect(run_row).to_have_attribute('data-status', 'delivered', timeout=20000)
    expect(run_row).to_contain_text('test send of the slot at')
    expect(run_row).to_contain_text('would go to ann@example.org (3), bob@example.org (2)')
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.locator('#schedules').screenshot(path=os.path.join(ARTIFACTS, 'bursting-schedule.png'))
    run_row.screenshot(path=os.path.join(ARTIFACTS, 'bursting-test-run.png'))
    run = Run.get_by_id(run_id)
    assert (run.trigger, run.slot_at, run.schedule) == ('test', None, 'per-customer')
    assert run.test_slot_at is not None
