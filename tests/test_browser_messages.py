"""The page's "Message" section in a real browser: templates with a preview,
a refused template shown under its field, the send rule, a skipped run."""
import datetime
import re

import pytest

import demo
from conftest import attachment
from models import Run, Schedule
from test_browser import ON_POSTGRES, expect_field_error, orders_csv, read_csv
from test_browser import browser, live, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@ON_POSTGRES
def test_a_report_mailed_with_its_own_subject_and_file_name(page, live, smtp_sink):  # noqa: F811
    from playwright.sync_api import expect
    demo.seed(customers=10, orders=80)
    live.start_consumer()
    card = page.locator('#report-orders')
    card.get_by_label('Status').select_option('paid')
    card.locator('summary', has_text='Message').click()
    subject = card.get_by_label('Subject', exact=True)
    subject.fill("{{ ''.__class__ }}")
    card.get_by_label('Email to').fill('ana@example.org')
    card.get_by_role('button', name='Email it').click()
    expect_field_error(card, 'Subject', "attributes starting with _ are not available "
                                        "('__class__')")
    assert Run.select().count() == 0

    subject.fill('{{ title }}: {{ params.status }} on {{ date }}')
    card.get_by_label('Attachment', exact=True).fill('paid/{{ params.status }}-orders')
    card.get_by_role('button', name='Preview the next message').click()
    box = card.locator('.message-preview')
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    expect(box.locator('.preview-subject')).to_have_text('Orders: paid on %s' % today)
    expect(box.locator('.preview-name')).to_have_text('paid_paid-orders.csv')
    expect(box.locator('.preview-body')).to_contain_text('Rows: 1,234')

    card.get_by_role('button', name='Email it').click()
    expect(card.locator('.form-status')).to_contain_text('queued')
    [sent] = smtp_sink.wait_for(1, timeout=30)
    assert sent['message']['Subject'] == 'Orders: paid on %s' % today
    name, data = attachment(sent['message'])
    assert name == 'paid_paid-orders.csv'
    assert read_csv(data) == orders_csv(status='paid')


@ON_POSTGRES
def test_a_schedule_that_sends_only_rows_shows_its_skipped_run(page, live, smtp_sink):  # noqa: F811
    from playwright.sync_api import expect
    demo.seed(customers=10, orders=50)
    live.start_consumer()
    page.get_by_role('button', name='New schedule').click()
    form = page.locator('#schedule-form')
    form.get_by_label('Name').fill('quiet-orders')
    form.get_by_label('Report').select_option('orders')
    form.get_by_label('Since').fill('2999-01-01')
    form.get_by_label('Email to').fill('ops@example.org')
    form.get_by_label('When (cron)').fill('0 7 * * *')
    form.get_by_label('Timezone').fill('Europe/Lisbon')
    form.locator('summary', has_text='Message').click()
    form.get_by_label('Send', exact=True).select_option('rows')
    form.get_by_label('Body text', exact=True).fill(
        '{{ rows }} new orders since {{ params.since }}')
    form.get_by_role('button', name='Preview the next message').click()
    box = form.locator('.message-preview')
    expect(box.locator('.preview-body')).to_have_text('1234 new orders since 2999-01-01')
    expect(box.locator('.preview-notice')).to_contain_text('the run is recorded as skipped')
    form.get_by_role('button', name='Save schedule').click()
    expect(page.locator('#schedule-quiet-orders')).to_be_visible()
    stored = Schedule.get(Schedule.name == 'quiet-orders')
    assert (stored.send_rule, stored.body) == (
        'rows', '{{ rows }} new orders since {{ params.since }}')

    # Editing shows what is stored.
    page.get_by_role('button', name='Edit quiet-orders').click()
    expect(form.get_by_label('Send', exact=True)).to_have_value('rows')
    expect(form.get_by_label('Body text', exact=True)).to_have_value(stored.body)
    form.get_by_role('button', name='Cancel').click()

    page.get_by_role('button', name='Run now quiet-orders').click()
    run = None
    for _ in range(100):
        run = Run.get_or_none(Run.schedule == 'quiet-orders')
        if run:
            break
        page.wait_for_timeout(100)
    row = page.locator('#run-%d' % run.id)
    expect(row).to_have_attribute('data-status', 'skipped', timeout=30000)
    details = row.locator('td[data-label="Details"] .skip-text')
    expect(details).to_contain_text(
        re.compile('send rule "rows" sends only when the report has rows'))
    assert smtp_sink.messages == []
