"""Acting on runs from the page, in a real browser: cancel a queued run, run
it again, backfill a schedule's past days; downloads listed with who made them."""
import datetime
import re
import zoneinfo

import pytest

from models import Run
from test_browser import ON_POSTGRES, browser, live, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@ON_POSTGRES
def test_cancel_rerun_and_backfill_from_the_page(page, live, smtp_sink):  # noqa: F811
    from playwright.sync_api import expect
    page.on('dialog', lambda dialog: dialog.accept())  # "Cancel run #1?"
    card = page.locator('#report-customers')
    card.get_by_label('Email to').fill('ana@example.org')
    card.get_by_role('button', name='Email it').click()
    expect(card.locator('.form-status')).to_contain_text('queued')

    # No consumer: the run waits, and can be cancelled.
    row = page.locator('#run-1')
    expect(row).to_have_attribute('data-status', 'queued')
    page.get_by_role('button', name='Cancel run 1').click()
    status = page.locator('#control-status')
    expect(status).to_have_text('Run #1 cancelled: nothing will be sent.')
    expect(row).to_have_attribute('data-status', 'cancelled')
    expect(page.locator('#announcer')).to_contain_text('Run #1 (customers) is cancelled')

    page.get_by_role('button', name='Re-run run 1').click()
    expect(status).to_have_text('Run #1 runs again as run #2.')
    expect(page.locator('#run-2')).to_contain_text('re-run of #1')
    live.start_consumer()
    expect(page.locator('#run-2')).to_have_attribute('data-status', 'delivered', timeout=30000)
    assert [m['to'] for m in smtp_sink.wait_for(1)] == [['ana@example.org']]

    # A schedule, and its last three days run after the fact.
    page.get_by_role('button', name='New schedule').click()
    form = page.locator('#schedule-form')
    form.get_by_label('Name').fill('morning')
    form.get_by_label('Report').select_option('customers')
    form.get_by_label('Email to').fill('team@example.org')
    form.get_by_label('When (cron)').fill('0 7 * * *')
    form.get_by_label('Timezone').fill('Europe/Lisbon')
    form.get_by_role('button', name='Save').click()
    schedule = page.locator('#schedule-morning')
    expect(schedule).to_be_visible()
    schedule.get_by_text('Backfill').click()
    today = datetime.datetime.now(zoneinfo.ZoneInfo('Europe/Lisbon')).date()
    schedule.get_by_label('From').fill((today - datetime.timedelta(days=3)).isoformat())
    schedule.get_by_label('to', exact=True).fill((today - datetime.timedelta(days=1))
                                                 .isoformat())
    schedule.get_by_role('button', name='Run past slots').click()
    expect(status).to_contain_text('Backfill of morning: 3 runs queued (#3, #4, #5)')
    for run_id in (3, 4, 5):
        expect(page.locator('#run-%d' % run_id)).to_have_attribute('data-status', 'delivered',
                                                                   timeout=30000)
    assert len({r.slot_at for r in Run.select().where(Run.schedule == 'morning')}) == 3

    # Twice is once.
    schedule.get_by_role('button', name='Run past slots').click()
    expect(status).to_contain_text('Backfill of morning: 0 runs queued; 3 slots left')
    expect(status).to_contain_text('delivered this slot')

    # A mistake names its field.
    schedule.get_by_label('From').fill('')
    schedule.get_by_role('button', name='Run past slots').click()
    expect(status).to_contain_text('Backfill of morning: from:')
    expect(schedule.get_by_label('From')).to_have_attribute('aria-invalid', 'true')

    # A download shows in the history with who made it.
    with page.expect_download():
        page.locator('#report-customers').get_by_role('button', name='Download CSV').click()
    download_row = page.locator('tr[data-run]', has_text='downloaded by')
    expect(download_row.first).to_contain_text(re.compile(r'downloaded by me with token 1'),
                                               timeout=15000)
