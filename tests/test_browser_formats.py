"""The file format choice on the page, in the real browser: a download, an
emailed run and a schedule, each in the format picked."""
import gzip
import io
import re

import openpyxl
import pytest

import demo
from conftest import attachment
from models import Run, Schedule
from test_browser import ON_POSTGRES, email_from_card, orders_csv, read_csv
from test_browser import browser, live, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def workbook_rows(data):
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    return [[cell.value for cell in row] for row in sheet.iter_rows()]


@ON_POSTGRES
def test_download_and_email_in_the_format_picked(page, live, smtp_sink):  # noqa: F811
    from playwright.sync_api import expect
    demo.seed(customers=20, orders=400)
    card = page.locator('#report-orders')
    card.get_by_label('Status').select_option('paid')
    card.get_by_label('File format').select_option('xlsx')
    button = card.get_by_role('button', name='Download XLSX')
    expect(button).to_be_visible()
    with page.expect_download() as download:
        button.click()
    assert re.fullmatch(r'orders-\d{8}-\d{6}\.xlsx', download.value.suggested_filename)
    with open(download.value.path(), 'rb') as got:
        rows = workbook_rows(got.read())
    expected = orders_csv(status='paid')
    assert rows[0] == expected[0]
    assert [r[0] for r in rows[1:]] == [int(r[0]) for r in expected[1:]]
    assert [r[5] for r in rows[1:]] == [float(r[5]) for r in expected[1:]]

    card.get_by_label('File format').select_option('csv.gz')
    expect(card.get_by_role('button', name='Download CSV.GZ')).to_be_visible()
    live.start_consumer()
    run_id = email_from_card(card, 'ana@example.org')
    [sent] = smtp_sink.wait_for(1, timeout=30)
    name, data = attachment(sent['message'])
    assert name.endswith('.csv.gz')
    assert read_csv(gzip.decompress(data)) == expected
    assert Run.get_by_id(run_id).format == 'csv.gz'
    expect(page.locator('#run-%d' % run_id)).to_have_attribute('data-status', 'delivered',
                                                               timeout=20000)
    expect(page.locator('#run-%d td[data-label="File"]' % run_id)).to_contain_text('csv.gz')


@ON_POSTGRES
def test_a_schedule_sends_the_format_picked(page, live, smtp_sink):  # noqa: F811
    from playwright.sync_api import expect
    demo.seed(customers=10, orders=60)
    live.start_consumer()
    page.get_by_role('button', name='New schedule').click()
    form = page.locator('#schedule-form')
    expect(form.get_by_label('File format')).to_have_value('csv')  # the default
    form.get_by_label('Name').fill('monthly-book')
    form.get_by_label('Report').select_option('orders')
    form.get_by_label('Email to').fill('ops@example.org')
    form.get_by_label('When (cron)').fill('0 6 1 * *')
    form.get_by_label('File format').select_option('xlsx')
    form.get_by_role('button', name='Save schedule').click()
    row = page.locator('#schedule-monthly-book')
    expect(row).to_contain_text('06:00 (in')
    expect(row).to_contain_text('orders as xlsx to ops@example.org')
    assert Schedule.get(Schedule.name == 'monthly-book').format == 'xlsx'

    # Editing shows the stored choice; a new schedule starts from CSV again.
    page.get_by_role('button', name='Edit monthly-book').click()
    expect(form.get_by_label('File format')).to_have_value('xlsx')
    page.locator('#schedule-cancel').click()
    page.get_by_role('button', name='New schedule').click()
    expect(form.get_by_label('File format')).to_have_value('csv')
    page.locator('#schedule-cancel').click()

    page.get_by_role('button', name='Run now monthly-book').click()
    [sent] = smtp_sink.wait_for(1, timeout=30)
    name, data = attachment(sent['message'])
    assert name.endswith('.xlsx')
    assert len(workbook_rows(data)) == len(orders_csv())
