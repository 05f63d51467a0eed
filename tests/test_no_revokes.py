"""Nightshift's Huey never revokes a task (clock.NoRevokes): a run is
cancelled in the database. So running a task costs no revoke-flag read or
delete on the queue, and revoking says it is not how to stop a run."""
import pytest
import redis

import demo
import runs
from conftest import demo_catalogue, run_queued
from models import Run


def _calls(client):
    stats = client.info('commandstats')
    return {name: stats.get('cmdstat_%s' % name, {}).get('calls', 0)
            for name in ('hmget', 'hget', 'hdel', 'brpop', 'lpush')}


def test_a_task_runs_with_no_revoke_round_trips(jobs, settings, smtp_sink, redis_url):
    demo.seed(customers=5, orders=5)
    client = redis.Redis.from_url(redis_url)
    run = runs.create_run(demo_catalogue(), settings, 'customers', {}, ['a@example.org'])
    jobs.enqueue_run(run)
    before = _calls(client)
    assert run_queued(jobs) == 1
    after = _calls(client)
    assert Run.get_by_id(run.id).status == 'delivered'
    assert [m['to'] for m in smtp_sink.messages] == [['a@example.org']]
    # The task was taken from the queue, and nothing else was asked of Redis
    # for it: no flag read (HMGET/HGET), no flag deleted (HDEL).
    assert after['brpop'] - before['brpop'] == 1
    assert (after['hmget'], after['hget'], after['hdel']) == \
        (before['hmget'], before['hget'], before['hdel'])


def test_revoking_a_task_says_how_to_stop_a_run(jobs, make_settings, tmp_path):
    from tasks import create_huey
    embedded = make_settings({}, queue_path=str(tmp_path / 'queue.db'))
    assert embedded.queue == 'sqlite'
    for huey in (jobs.huey, create_huey(embedded)):
        assert not huey.is_revoked(object())
        with pytest.raises(NotImplementedError, match='cancel the run'):
            huey.revoke_by_id('some-task')
        with pytest.raises(NotImplementedError):
            huey.revoke_all(object)
