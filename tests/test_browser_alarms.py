"""The notification log on the page, in a real browser (the fixtures of
test_browser.py: server.py on waitress, PostgreSQL, headless Chromium)."""
import json
import os

import pytest

from models import Notification
from test_browser import ARTIFACTS, ON_POSTGRES, browser, live, page  # noqa: F401

pytestmark = pytest.mark.slow


@ON_POSTGRES
def test_the_page_lists_what_was_announced(page, live):  # noqa: F811
    Notification.create(channel='webhook', target='https://hooks.example.org/T0/B0/secret-part',
                        body=json.dumps({'text': 'Nightshift: 20 runs failed\n• Run #1 ...',
                                         'events': []}),
                        events=20, status='failed', attempts=5, response_status=502,
                        error='HTTP 502')
    Notification.create(channel='email', target='ops@example.org',
                        subject='Nightshift: run #3 (orders) late', body='...', events=1,
                        status='sent', attempts=1)
    page.reload()
    rows = page.locator('#notifications-body tr[data-notification]')
    rows.first.wait_for()
    assert rows.count() == 2
    newest, oldest = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert 'Nightshift: run #3 (orders) late' in newest and 'ops@example.org' in newest
    assert 'Nightshift: 20 runs failed' in oldest and '20 events' in oldest
    assert 'https://hooks.example.org/***' in oldest and 'HTTP 502' in oldest
    assert 'secret-part' not in page.content()
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.locator('#notifications').screenshot(
        path=os.path.join(ARTIFACTS, 'alarms-notifications.png'))
