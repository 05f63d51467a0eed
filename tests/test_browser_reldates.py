"""Relative dates in the real browser: the date fields offer them, the
schedule form previews the next slot's values while it is typed, and the
runs table and the email show the values a run used."""
import datetime
import os
import re

import pytest

import demo
import reldates
import schedules
from conftest import attachment
from demo import Customer, Order
from models import Run, Schedule
from test_browser import (ARTIFACTS, ON_POSTGRES, browser, expect_field_error, live, page,  # noqa: F401
                          read_csv)

pytestmark = pytest.mark.slow


def body_of(message):
    return message.get_body(('plain',)).get_content()


@ON_POSTGRES
def test_relative_dates_on_the_page_from_field_to_email(page, live, smtp_sink,  # noqa: F811
                                                         make_jobs):
    from playwright.sync_api import expect
    demo.seed(customers=10, orders=300)
    live.start_consumer()

    # The date fields are text with the common relative dates offered.
    card = page.locator('#report-orders')
    since = card.get_by_label('Since')
    assert since.get_attribute('list') == 'reldates-choices'
    offered = page.locator('#reldates-choices option').evaluate_all(
        'options => options.map(o => o.value)')
    assert offered == list(reldates.COMMON)

    # A mistake is shown next to its field, as any other.
    since.fill('yesterdy')
    card.get_by_label('Email to').fill('ana@example.org')
    card.get_by_role('button', name='Email it').click()
    expect_field_error(card, 'Since', "'yesterdy' is not " + reldates.HINT)
    assert Run.select().count() == 0

    # An on-demand run resolves now, in the timezone setting (UTC here).
    since.fill('start of this year')
    card.get_by_label('Until').fill('today + 1 day')
    # Beside each relative field: what it is now.
    year = reldates.local_today(datetime.timezone.utc, schedules.utcnow()).year
    expect(page.locator('#r-orders-since-resolved')).to_have_text('= %d-01-01 now' % year)
    expect(page.locator('#r-orders-until-resolved')).to_have_text(
        re.compile(r'= \d{4}-\d{2}-\d{2} now'))
    card.get_by_role('button', name='Email it').click()
    status = card.locator('.form-status')
    expect(status).to_contain_text('queued')
    run = Run.get_by_id(int(re.search(r'Run #(\d+)', status.inner_text()).group(1)))
    today = reldates.local_today(datetime.timezone.utc, run.created_at)
    assert run.params == {'since': '%d-01-01' % today.year,
                          'until': str(today + datetime.timedelta(days=1)), 'status': None}
    shown = ('since=%d-01-01 (start of this year in UTC), until=%s (today + 1 day in UTC)'
             % (today.year, today + datetime.timedelta(days=1)))
    expect(page.locator('#run-%d-params' % run.id)).to_have_text(shown)
    [sent] = smtp_sink.wait_for(1, timeout=30)
    assert 'Parameters: ' + shown in body_of(sent['message']).splitlines()

    # The schedule form previews the next slot's values while it is typed.
    page.get_by_role('button', name='New schedule').click()
    form = page.locator('#schedule-form')
    form.get_by_label('Name').fill('daily-orders')
    form.get_by_label('Report').select_option('orders')
    form.get_by_label('Since').fill('yesterday')
    form.get_by_label('Until').fill('today')
    form.get_by_label('Email to').fill('ops@example.org')
    form.get_by_label('When (cron)').fill('0 7 * * *')
    form.get_by_label('Timezone').fill('Europe/Lisbon')
    preview = page.locator('#s-preview')
    expect(preview).to_contain_text('(yesterday in Europe/Lisbon)')
    text = preview.inner_text()
    slot_day = datetime.date.fromisoformat(re.search(r'Next run (\S+) 07:00 \(Europe/Lisbon\)',
                                                     text).group(1))
    assert 'since=%s (yesterday in Europe/Lisbon), until=%s (today in Europe/Lisbon)' % (
        slot_day - datetime.timedelta(days=1), slot_day) in text
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.locator('#schedule-editor').screenshot(
        path=os.path.join(ARTIFACTS, 'reldates-schedule-form.png'))
    form.get_by_label('Since').fill('the day before')
    expect(preview).to_contain_text('No preview: params.since:')
    form.get_by_role('button', name='Save schedule').click()
    expect_field_error(form, 'Since', "'the day before' is not " + reldates.HINT)
    form.get_by_label('Since').fill('-1d')
    expect(preview).to_contain_text('since=%s (today - 1 day in Europe/Lisbon)'
                                    % (slot_day - datetime.timedelta(days=1)))
    form.get_by_role('button', name='Save schedule').click()
    row = page.locator('#schedule-daily-orders')
    expect(row).to_contain_text('since=today - 1 day')
    schedule = Schedule.get(Schedule.name == 'daily-orders')

    # Editing shows the stored expressions and previews them again.
    page.get_by_role('button', name='Edit daily-orders').click()
    expect(form.get_by_label('Since')).to_have_value('today - 1 day')
    expect(preview).to_contain_text('(today - 1 day in Europe/Lisbon)')
    page.locator('#schedule-cancel').click()

    # Its slot comes (a tick at the slot's time): the run uses the slot's day.
    customer = Customer.create(name='Ana', email='ana@example.org')
    noon = datetime.time(12)
    for day in range(-2, 1):
        Order.create(customer=customer, status='paid', amount='2.00',
                     created_at=datetime.datetime.combine(
                         slot_day + datetime.timedelta(days=day), noon))
    upcoming = schedules.next_run(schedule, schedule.checked_through)[0]
    [slot_run] = make_jobs().tick(upcoming + datetime.timedelta(seconds=3))
    expected = 'since=%s (today - 1 day in Europe/Lisbon), until=%s (today in Europe/Lisbon)' \
        % (slot_day - datetime.timedelta(days=1), slot_day)
    expect(page.locator('#run-%d' % slot_run.id)).to_have_attribute('data-status', 'delivered',
                                                                    timeout=30000)
    expect(page.locator('#run-%d-params' % slot_run.id)).to_have_text(expected)
    sent = smtp_sink.wait_for(2, timeout=30)[1]
    assert sent['to'] == ['ops@example.org']
    assert 'Parameters: ' + expected in body_of(sent['message']).splitlines()
    window = (Order.select(Order.id).where(
        Order.created_at >= slot_day - datetime.timedelta(days=1), Order.created_at < slot_day)
        .order_by(Order.id))
    expected_ids = [str(o.id) for o in window]
    assert len(expected_ids) >= 1
    assert [r[0] for r in read_csv(attachment(sent['message'])[1])[1:]] == expected_ids
