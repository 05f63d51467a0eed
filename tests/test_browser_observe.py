"""The page's Consumers panel in a real browser: a huey_consumer started with
-n shows as live and not ticking, and once nobody has ticked the enabled
schedule for tick_alarm_after the panel says the page is degraded and why."""
import os

import pytest

from conftest import wait_until
from test_browser import ARTIFACTS, ON_POSTGRES, TOKEN, browser, serve  # noqa: F401
from test_e2e import _get_json

pytestmark = pytest.mark.slow


@pytest.fixture
def live(consumer_env, tmp_path):
    yield from serve(dict(consumer_env, NIGHTSHIFT_API_TOKEN=TOKEN,
                          NIGHTSHIFT_TICK_ALARM_AFTER='3', NIGHTSHIFT_CONSUMER_HEARTBEAT='1'),
                     tmp_path)


@ON_POSTGRES
def test_the_consumers_panel_shows_a_consumer_that_does_not_tick(browser, live):  # noqa: F811
    context = browser.new_context(http_credentials={'username': 'me', 'password': TOKEN},
                                  viewport={'width': 1280, 'height': 900})
    page = context.new_page()
    errors = []
    page.on('pageerror', lambda exc: errors.append(str(exc)))
    page.goto(live.base + '/')
    panel = page.locator('#consumers')
    assert 'No consumer has registered' in panel.inner_text()

    page.locator('#new-schedule').click()
    page.fill('#s-name', 'every-minute')
    page.select_option('#s-report', 'customers')
    page.fill('#s-cron', '* * * * *')
    page.fill('#s-to', 'ops@example.org')
    page.locator('#schedule-form button[type=submit]').click()
    wait_until(lambda: page.locator('#schedule-every-minute').count() == 1, timeout=10,
               message='the schedule on the page')

    proc = live._spawn(['-m', 'huey.bin.huey_consumer', 'tasks.huey', '-w', '1', '-k',
                        'thread', '-n'], 'consumer')
    auth = {'Authorization': 'Bearer ' + TOKEN}
    # It registers, then ticks once as it starts: degraded only after that
    # tick is older than tick_alarm_after (before it, it is "never").
    wait_until(lambda: [c['last_tick_at'] for c in (_get_json_with(
        live.base + '/healthz', auth) or {}).get('consumers', [])] not in ([], [None]),
        timeout=30, message='the consumer to tick as it starts')
    wait_until(lambda: '-n' in ' '.join(
        (_get_json_with(live.base + '/healthz', auth) or {}).get('problems', [])),
        timeout=30, message='/healthz degraded by a consumer started with -n')
    page.reload()
    row = panel.locator('tr[data-consumer]')
    assert row.count() == 1
    text = row.inner_text()
    assert 'pid %d' % proc.pid in text and 'live' in text and 'no (-n)' in text
    alert = panel.locator('[role=alert]')
    assert alert.count() == 1, (panel.inner_text(), _get_json_with(live.base + '/healthz', auth))
    assert 'Degraded' in alert.inner_text()
    assert 'started without periodic tasks (huey_consumer -n)' in alert.inner_text()
    os.makedirs(ARTIFACTS, exist_ok=True)
    panel.screenshot(path=os.path.join(ARTIFACTS, 'consumers-degraded.png'))
    # At phone width the table becomes labelled blocks, as the others do.
    page.set_viewport_size({'width': 375, 'height': 800})
    assert row.locator('td[data-label="Ticks schedules"]').is_visible()
    context.close()
    assert errors == []
    assert _get_json(live.base + '/healthz')['status'] == 'degraded'


def _get_json_with(url, headers):
    import json
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=2) as res:
            return json.load(res)
    except OSError:
        return None
